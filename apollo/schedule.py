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
