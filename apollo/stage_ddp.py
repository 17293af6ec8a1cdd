"""DDP over the layer slots the current stage trains, so that DDP never searches for unused parameters.

The model holds all L layer slots and a stage trains slots 0..U-1. Every depth plan uses all U of
them (extend and stack plans both cover each unique layer at any depth D >= U), so the only
parameters without a gradient are the idle slots U..L-1. They are kept out of DDP (torch's list
of parameters to ignore), DDP runs with find_unused_parameters=False (no graph search and no
extra all-reduce of a used-parameter map per step), and at each growth the DDP wrapper is built
anew over the grown set of slots. Only the wrapper changes: the module, its parameter objects and
the optimizer built once over all L slots (official positional Adam state) stay as they are, so
save_state/load_state see the same model and optimizer across stage boundaries.
"""
from __future__ import annotations

import gc
import itertools

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def keep_idle_slots_out_of_ddp(model: nn.Module, slots: nn.ModuleList, unique: int) -> bool:
    """Mark the parameters and buffers of slots unique.. as ignored by the next DDP built around `model`.

    Returns True if that changed what DDP must cover (then the current wrapper is out of date).
    """
    idle = {id(t) for slot in slots[unique:] for t in itertools.chain(slot.parameters(), slot.buffers())}
    names = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if id(t) in idle]
    if getattr(model, "_ddp_params_and_buffers_to_ignore", None) == names:
        return False
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    for _, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if id(t) not in idle and hasattr(t, "_ddp_ignored"):  # torch sets the mark but never clears it
            del t._ddp_ignored
    return True


def rewrap_ddp(accelerator, model: nn.Module) -> nn.Module:
    """A new DDP wrapper around the module of `model` (after keep_idle_slots_out_of_ddp), in Accelerate's place.

    Built with the same settings Accelerate used. The constructor broadcasts rank 0's weights, which
    every rank already holds (growth is deterministic), so no value changes. Not DDP: returned as is.
    """
    if not isinstance(model, DistributedDataParallel):
        return model
    kwargs = accelerator.ddp_handler.to_kwargs() if accelerator.ddp_handler is not None else {}
    new = DistributedDataParallel(model.module, device_ids=model.device_ids, output_device=model.output_device,
                                  **kwargs)
    if accelerator.ddp_handler is not None:
        accelerator.ddp_handler.register_comm_hook(new)
    # The old wrapper's reducer must not fire on the next backward: drop its hooks now rather than
    # whenever the last reference goes.
    model._remove_autograd_hooks()
    # Accelerate's list of prepared models (what save_state reads) holds the module under DDP, not
    # the wrapper; should a version hold the wrapper, it gets the new one.
    accelerator._models[:] = [new if m is model else m for m in accelerator._models]
    return new


def destroy_process_group_last() -> None:
    """Destroy the default process group once nothing else holds it (the end of a run; no-op without one).

    Why this order: a DDP reducer holds the process group from C++, and when Python frees the reducer
    it runs the group's destructor with the GIL held. Gloo's destructor joins its worker threads, and
    a worker that is still destroying the run's last all-reduce must take the GIL to release a Python
    object that the work captured: a deadlock, seen as a 2-process run that hangs after saving its
    model (torch 2.13, intermittent on loaded CPUs, every time in a loop of short runs). So the group
    must outlive every DDP wrapper: the caller lets main's objects go (and this collects the cycles
    among them), and only then is the group destroyed here, by Python, whose handle of the group
    releases the GIL in the destructor. Accelerate's end_training() would destroy it inside main.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return  # one process: no group (and no full collection per in-process run of the tests)
    gc.collect()  # cycles among main's objects may still hold a DDP wrapper
    torch.distributed.destroy_process_group()
