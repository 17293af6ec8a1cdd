"""Growth at a stage boundary (method spec, section 3): copy unique layers along the growth map.

Copies are in place (`copy_` under no_grad via `load_state_dict`), so parameter objects keep
their identity and the optimizer that holds them stays valid; only the DDP wrapper is rebuilt,
to cover the grown slots (apollo/stage_ddp.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .plan import growth_map
from .shared_layers import layer_slots
from .stage_ddp import keep_idle_slots_out_of_ddp, rewrap_ddp


@dataclass(frozen=True)
class Growth:
    """How a run grows, from its flags."""
    method: str  # --grow_method: the growth map (and the depth plans)
    copy_optimizer_state: bool  # --copy_optimizer_state_on_growth
    noise: float  # --growth_noise
    seed: int  # --seed: the noise is a function of (seed, step)

    @classmethod
    def from_config(cls, cfg) -> "Growth":
        return cls(cfg.grow_method, cfg.copy_optimizer_state_on_growth, cfg.growth_noise, cfg.seed)


def grow_at_boundary(accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, old: int, new: int,
                     growth: Growth, step: int, idle_slots_out_of_ddp: bool) -> tuple[nn.Module, list[int]]:
    """Grow from `old` to `new` unique layers after `step` finished optimizer steps, before the next forward.

    Returns the model to train with (a new DDP wrapper when idle slots are kept out of DDP and DDP must now
    cover the grown slots; else `model`) and the growth map.
    """
    raw = accelerator.unwrap_model(model)
    slots = layer_slots(raw)
    gmap = growth_map(old, new, growth.method)
    grow_layers(slots, gmap, optimizer, growth.copy_optimizer_state, noise=growth.noise,
                noise_seed=growth_noise_seed(growth.seed, step))
    if idle_slots_out_of_ddp and keep_idle_slots_out_of_ddp(raw, slots, new):
        model = rewrap_ddp(accelerator, model)
    return model, gmap


@torch.no_grad()
def grow_layers(slots: nn.ModuleList, gmap: list[int], optimizer: torch.optim.Optimizer | None = None,
                copy_optimizer_state: bool = False, noise: float = 0.0, noise_seed: int = 0) -> None:
    """Slot j (j < len(gmap)) becomes a copy of slot gmap[j].

    Sources are snapshotted first, so no source is overwritten before it is read.
    Optimizer state: by default untouched, as in the official release (slots below U_old keep their
    own Adam moments although their weights were replaced; new slots start with no state). With
    `copy_optimizer_state`, each parameter's state (moments and step) is copied from its source.
    """
    sources = sorted(set(gmap))
    weights = {i: {k: v.detach().clone() for k, v in slots[i].state_dict().items()} for i in sources}
    states = {}
    if copy_optimizer_state and optimizer is not None:
        states = {i: [copy.deepcopy(optimizer.state.get(p)) for p in slots[i].parameters()] for i in sources}
    for j, src in enumerate(gmap):
        slots[j].load_state_dict(weights[src])
        if copy_optimizer_state and optimizer is not None:
            for p, state in zip(slots[j].parameters(), states[src]):
                if state is None:
                    optimizer.state.pop(p, None)
                else:
                    optimizer.state[p] = copy.deepcopy(state)
    if noise:
        add_growth_noise(slots, gmap, noise, noise_seed)


def growth_noise_seed(seed: int, step: int) -> int:
    """The noise of the growth before optimizer step `step`: a function of (seed, step), the same on every rank."""
    return int(np.random.SeedSequence([seed, step, 0x6E01]).generate_state(1, np.uint64)[0] >> 1)


@torch.no_grad()
def add_growth_noise(slots: nn.ModuleList, gmap: list[int], scale: float, seed: int) -> None:
    """Every copy but the first of each source gets N(0, (scale * std of the tensor)^2) on each parameter.

    The first copy of a source stays exact, so each old layer survives once. Noise is drawn on the CPU
    in a fixed order from one generator, so it does not depend on the device or the process.
    """
    g = torch.Generator().manual_seed(seed)
    seen = set()
    for j, src in enumerate(gmap):
        if src not in seen:
            seen.add(src)
            continue
        for p in slots[j].parameters():
            if p.numel() < 2 or not p.is_floating_point():
                continue
            std = p.detach().float().std().item()
            p.add_((torch.randn(p.shape, generator=g) * (scale * std)).to(p.device, p.dtype))
