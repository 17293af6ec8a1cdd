"""Run a stock Hugging Face model along a plan of shared layers, without copying its forward.

The stock forward iterates over one `nn.ModuleList` of blocks (`transformer.h` in GPT-2,
`bert.encoder.layer` in BERT, `model.layers` in Llama-style decoders). For one pass we swap that
list for a list that repeats the unique block objects along the plan, then put the original back.
Parameters are shared module objects, so autograd adds up the gradients of every use.

The model always holds all L layer slots (slots U..L-1 are idle until growth reaches them); see
`run_pretrain.py` for why that design suits DDP and the optimizer.
"""
from __future__ import annotations

import contextlib

from torch import nn

# Where the stock models keep their block list, most specific first.
_KNOWN_LAYER_LISTS = ("transformer.h", "bert.encoder.layer", "encoder.layer", "model.layers", "gpt_neox.layers")


def _resolve(module: nn.Module, dotted: str):
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def find_layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the model's block list."""
    depth = model.config.num_hidden_layers
    for dotted in _KNOWN_LAYER_LISTS:
        layers = _resolve(model, dotted)
        if isinstance(layers, nn.ModuleList) and len(layers) == depth:
            parent_path, _, attr = dotted.rpartition(".")
            return (_resolve(model, parent_path) if parent_path else model), attr
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == depth:
                return module, attr
    raise ValueError(f"{type(model).__name__}: found no nn.ModuleList of {depth} blocks to share")


def layer_slots(model: nn.Module) -> nn.ModuleList:
    parent, attr = find_layer_list(model)
    return getattr(parent, attr)


@contextlib.contextmanager
def run_along(model: nn.Module, plan: list[int]):
    """Within the block, `model(...)` runs its layer positions along `plan` (slot index per position).

    The key/value cache is switched off inside: shared blocks carry the same `layer_idx`, so a
    second use would write into the first use's cache slot (measured: GPT-2 gradients 35% wrong).
    Keep `config.num_hidden_layers` at L: Llama-style models run only `layers[:num_hidden_layers]`.
    """
    parent, attr = find_layer_list(model)
    slots = getattr(parent, attr)
    config = model.config
    saved_use_cache = getattr(config, "use_cache", None)
    if list(plan) != list(range(len(slots))):
        # setattr (not a raw __dict__ write) keeps `_modules` consistent for hooks during the pass.
        setattr(parent, attr, nn.ModuleList([slots[i] for i in plan]))
    config.use_cache = False
    try:
        yield
    finally:
        setattr(parent, attr, slots)
        config.use_cache = saved_use_cache
