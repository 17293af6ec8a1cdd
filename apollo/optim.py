"""The optimizer and the LR schedule: AdamW built once over every layer slot (official positional state at
growth), and transformers' scheduler, whose LR is a function of the step alone."""
from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from .config import ConfigError, TrainConfig


def build_optimizer(cfg: TrainConfig, model) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm weights (all 1-D tensors), as the HF Trainer does.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)


def build_lr_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    """transformers' scheduler. Not passed to Accelerate's prepare(), which would step it once per process:
    the loop steps it once per optimizer step (and scales one step's LR after a growth: train_step)."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    extra = None
    if cfg.lr_scheduler_type == "warmup_stable_decay":
        decay = max(1, round(cfg.lr_decay_ratio * total_steps))
        if warmup + decay > total_steps:
            raise ConfigError("lr_decay_ratio", f"{warmup} warmup and {decay} decay steps exceed the run's "
                                                f"{total_steps} steps")
        extra = {"num_decay_steps": decay, "decay_type": cfg.lr_decay_type}
    return get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=extra)
