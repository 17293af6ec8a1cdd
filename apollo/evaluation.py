"""Evaluation: the mean loss per target token on the fixed validation blocks, always at full depth.

For an Apollo run, full depth means L layer positions along the plan over the unique layers trained so
far (extend: each repeated in a contiguous block), the model the run would be if it stopped here. Masks
are the fixed evaluation masks (apollo/batches.py: EVAL_MASK_SEED), so runs with different seeds compare.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import DistributedType

from .batches import eval_batches
from .kinds import kind_of
from .plan import depth_plan
from .schedule import StageSchedule
from .shared_layers import run_along


@dataclass(frozen=True)
class EvalSet:
    """What an evaluation runs on: the fixed validation blocks, their collator (fixed masks) and batching."""
    blocks: object  # a datasets.Dataset of token blocks
    collator: object  # apollo.batches.BlockCollator with EVAL_MASK_SEED
    batch_size: int  # per device
    pad: bool  # fill a last, partial batch (compiled blocks see no new shape)


def full_depth_plan(schedule: StageSchedule, step: int, full_depth: int, method: str) -> list[int]:
    """The plan evaluation runs after `step` finished optimizer steps: full depth over that step's unique layers."""
    return depth_plan(schedule.unique_layers(max(step - 1, 0)), full_depth, method)


def evaluate(accelerator, model, slots_plan, blocks, collator, batch_size, pad: bool = False) -> float:
    """Mean loss per target token over the fixed validation blocks, along `slots_plan`, over all ranks.

    With `pad`, a last, partial batch is filled up to `batch_size` rows that carry no target (labels
    all -100): the same loss, and no new input shape for compiled blocks."""
    raw = accelerator.unwrap_model(model)
    raw.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    runs = 0
    with torch.no_grad(), run_along(raw, slots_plan), accelerator.autocast():
        for batch in eval_batches(blocks, batch_size, accelerator.process_index, accelerator.num_processes, collator,
                                  pad=pad):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            loss = raw(**batch).loss.double()
            labels = batch["labels"][:, kind_of(raw.config.model_type).label_shift:]  # the targets the loss counts
            count = (labels != -100).sum()
            total += torch.stack([loss * count, count.double()])
            runs += 1
        if accelerator.distributed_type == DistributedType.FSDP:
            # Every FSDP forward gathers weights from all ranks, so all ranks must run equally many:
            # one with fewer batches runs extra passes whose results are ignored.
            most = int(accelerator.reduce(torch.tensor(runs, device=accelerator.device), "max").item())
            if most > runs:
                spare = next(eval_batches(blocks, batch_size, 0, accelerator.num_processes, collator))
                for _ in range(most - runs):
                    raw(**{k: v.to(accelerator.device) for k, v in spare.items()})
    raw.train()
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1]).item()
