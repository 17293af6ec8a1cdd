"""The run's length in optimizer steps, and the stage schedule: how many unique layers train at each
optimizer step (method spec, names).

Stage s covers optimizer steps [end_{s-1}, end_s). Boundaries are counted in optimizer steps,
never in micro-batches. Everything here is a pure function of the step index, so a resumed run
knows its stage from the step alone (the official generator-based schedule restarted at stage 1).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from .config import ConfigError, TrainConfig


@dataclass(frozen=True)
class StepCounts:
    """The run's step arithmetic. An epoch is the whole number of global batches in the training blocks (the
    rest is dropped), and at least one: fewer blocks than a global batch make one step, padded by wrapping
    round the epoch's permutation as DistributedSampler pads (apollo/batches.py: MicroBatchSampler)."""
    batch_size: int  # blocks per device per micro-batch
    world_size: int  # processes
    accumulation: int  # micro-batches per optimizer step
    per_epoch: int  # optimizer steps per epoch
    total: int  # optimizer steps of the run
    eval_every: int
    save_every: int

    @property
    def global_batch(self) -> int:
        """Blocks per optimizer step, over all processes and micro-batches."""
        return self.batch_size * self.world_size * self.accumulation


def step_counts(cfg: TrainConfig, num_blocks: int, world_size: int) -> StepCounts:
    b, accum = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    per_epoch = max(num_blocks // (b * world_size * accum), 1)
    total = cfg.max_train_steps or per_epoch * cfg.num_train_epochs
    eval_every = cfg.eval_steps or max(total // 10, 1)
    save_every = per_epoch if cfg.save_strategy == "epoch" else cfg.save_steps or max(total // 4, 1)
    return StepCounts(b, world_size, accum, per_epoch, total, eval_every, save_every)


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


def stage_schedule(cfg: TrainConfig, steps: StepCounts, full_depth: int) -> StageSchedule:
    """The run's stages from --apollo_layers and the stage ends (epochs, steps or shares); one stage from scratch."""
    if not cfg.apollo:
        return StageSchedule.single_stage(full_depth, steps.total)
    if cfg.apollo_epoch_list:
        schedule = StageSchedule.from_epochs(cfg.layer_list(), cfg.stage_ends(), steps.per_epoch)
        flag = "apollo_epoch_list"
    elif cfg.step_fractions:
        schedule = StageSchedule.from_fractions(cfg.layer_list(), cfg.stage_ends(), steps.total)
        flag = "apollo_step_list"
    else:
        schedule = StageSchedule(cfg.layer_list(), cfg.stage_ends())
        flag = "apollo_step_list"
    ends = schedule.end_steps
    if ends[0] < 1 or any(b <= a for a, b in zip(ends, ends[1:])):
        raise ConfigError(flag, f"stages end at optimizer steps {list(ends)}: each stage needs at least one step "
                                f"({steps.per_epoch} steps per epoch)")
    if ends[-1] > steps.total:  # a stage the run never finishes is a mistake, not a truncation
        raise ConfigError(flag, f"stages end at optimizer steps {list(ends)}, beyond the run's {steps.total} steps "
                                f"({steps.per_epoch} steps per epoch)")
    return schedule
