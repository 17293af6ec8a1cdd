"""One optimizer step of the loop: the micro-batches along their depth plans, the divergence check, the
step's learning rate (the growth ramp) and the update (torchtitan's `train_step`).

The inputs are typed and the step knows nothing of the run around it, so a property of the loop can be
checked on a tiny model without a command-line run (tests/test_train_step.py). The plans are a pure
function of (seed, step, micro-step) (`DepthDraws`), the same on every rank and after a resume.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .plan import depth_plan
from .sampling import sample_depth
from .shared_layers import run_along


@dataclass(frozen=True)
class DepthDraws:
    """How each forward pass's depth and plan are chosen (method spec, sections 1 and 2)."""
    dist_function: str  # --dist_function
    grow_method: str  # --grow_method: the depth plan's map
    seed: int
    full_depth: int  # L

    def plans(self, step: int, unique: int, micro_batches: int) -> list[list[int]]:
        """The plan (slot index per layer position) of each micro-batch of optimizer step `step` (0-based)."""
        return [depth_plan(unique, sample_depth(self.dist_function, unique, self.full_depth, self.seed, step, micro),
                           self.grow_method) for micro in range(micro_batches)]


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the micro-batches and the ranks
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step applied (first parameter group)
    stop: bool  # some rank was asked to stop (SIGTERM/SIGINT): checkpoint and exit after this step


def diverged(what: str, step: int, last_checkpoint: Path | None) -> FloatingPointError:
    """The error a non-finite loss or gradient norm ends the run with (exit status 3)."""
    where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
    return FloatingPointError(f"non-finite {what} at step {step}; stopped ({where})")


def train_step(accelerator, model, raw_model, optimizer, lr_scheduler, batches: Iterator[dict],
               plans: Sequence[list[int]], *, step: int, lr_factor: float = 1.0, max_grad_norm: float = 0.0, stop_requested: bool = False,
               last_checkpoint: Path | None = None) -> StepResult:
    """Optimizer step `step` (0-based: `step` steps have finished): one micro-batch from `batches` per plan,
    gradients averaged over them, clipped at `max_grad_norm` (0: not clipped), and the update at the
    scheduled LR times `lr_factor`. A non-finite loss or gradient norm raises `diverged` before the update.

    `model` is what Accelerate prepared (the DDP wrapper on several processes), `raw_model` the model it
    wraps (accelerator.unwrap_model), whose layer list the plans swap. `optimizer` is Accelerate's;
    `lr_scheduler` is stepped once here."""
    accum = len(plans)
    loss_sum = 0.0
    for micro, plan in enumerate(plans):
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
        # Gradients are synchronised across ranks only on the last micro-batch of the step.
        sync = accelerator.no_sync(model) if micro < accum - 1 else contextlib.nullcontext()
        with sync, run_along(raw_model, plan):
            loss = model(**batch).loss
            accelerator.backward(loss / accum)
        loss_sum += loss.detach().float()
    # Clipping at infinity only measures the norm. The step's one wait for the device follows.
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
    loss_mean, grad_norm, stopping = step_outcome(accelerator, loss_sum / accum, grad_norm, stop_requested)
    # Stop before a non-finite update reaches the weights (and a checkpoint); fp16's grad scaler
    # skips overflowing steps by itself.
    bad = None if math.isfinite(loss_mean) else f"loss {loss_mean}"
    if bad is None and accelerator.scaler is None and not math.isfinite(grad_norm):
        bad = f"gradient norm {grad_norm}"
    if bad:
        raise diverged(bad, step + 1, last_checkpoint)
    # The scheduler sets each group's LR from the step alone; the growth ramp scales it for this
    # step only (the scheduler's next step recomputes it from its base LR).
    for group, scheduled in zip(optimizer.param_groups, lr_scheduler.get_last_lr()):
        group["lr"] = scheduled * lr_factor
    lr = optimizer.param_groups[0]["lr"]  # the rate this step applies, logged as such
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_mean, grad_norm, lr, stopping)


def step_outcome(accelerator, loss, grad_norm, stop_requested: bool) -> tuple[float, float, bool]:
    """The step's loss (mean over ranks), gradient norm and whether any rank was asked to stop.

    One all-reduce and one transfer to the host for the three: each `.item()` waits for the device.
    The gradient norm needs no reduction: DDP has already averaged the gradients on every rank. The
    flag is filled in on the device (torch.full), not copied from the host.
    """
    shared = torch.stack([loss.float(), torch.full((), float(stop_requested), device=loss.device)])
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(shared)  # sum: a mean for the loss, "any" for the flag
    loss_sum, stops, norm = torch.cat([shared, grad_norm.detach().float().reshape(1)]).tolist()
    return loss_sum / accelerator.num_processes, norm, stops > 0
