"""The stage schedule: how many unique layers train at each optimizer step (method spec, names).

Stage s covers optimizer steps [end_{s-1}, end_s). Boundaries are counted in optimizer steps,
never in micro-batches. Everything here is a pure function of the step index, so a resumed run
knows its stage from the step alone (the official generator-based schedule restarted at stage 1).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class StageSchedule:
    layers: tuple[int, ...]  # unique-layer count of each stage, strictly increasing, last = L
    end_steps: tuple[int, ...]  # first optimizer step (0-based) after each stage

    @classmethod
    def from_epochs(cls, layers, end_epochs, steps_per_epoch: int) -> "StageSchedule":
        return cls(tuple(layers), tuple(int(e * steps_per_epoch) for e in end_epochs))

    @classmethod
    def from_fractions(cls, layers, end_fractions, total_steps: int) -> "StageSchedule":
        """Stage ends given as shares of the run, each rounded to the nearest optimizer step."""
        return cls(tuple(layers), tuple(round(f * total_steps) for f in end_fractions))

    @classmethod
    def single_stage(cls, full_depth: int, total_steps: int) -> "StageSchedule":
        """Training from scratch: one stage in which all layers are unique."""
        return cls((full_depth,), (total_steps,))

    def stage_index(self, step: int) -> int:
        """Stage of the optimizer step with 0-based index `step`; after the last end, the last stage."""
        return min(bisect.bisect_right(self.end_steps, step), len(self.layers) - 1)

    def unique_layers(self, step: int) -> int:
        return self.layers[self.stage_index(step)]

    def grows_at(self, step: int) -> bool:
        """True if `step` is the first step of a new stage: growth happens just before it."""
        return step > 0 and self.stage_index(step) != self.stage_index(step - 1)

    def growth_lr_factor(self, step: int, warmup_steps: int) -> float:
        """LR multiplier of --growth_warmup_steps N: a linear ramp over the first N steps of every grown
        stage, (k + 1) / N at the k-th step (0-based) after the growth; 1 in the first stage and with N = 0."""
        stage = self.stage_index(step)
        if warmup_steps <= 0 or stage == 0:
            return 1.0
        return min(1.0, (step - self.end_steps[stage - 1] + 1) / warmup_steps)
