"""Run run_pretrain.py (under torchrun) while counting, per optimizer step, what makes the host wait.

    python -m torch.distributed.run ... tests/count_syncs.py RUN_PRETRAIN_ARGS...

Counted: every call that copies a tensor's value to the host (item, tolist, float/int/bool of a
tensor, cpu, numpy) and every collective issued through torch.distributed's Python API. Not
counted: what happens inside optimizer.step (AdamW reads its step counters, CPU tensors on every
device, with .item()), and DDP's own gradient synchronisation (its C++ reducer, the essence of DDP).
On the CPU every tensor is a host tensor, so this counts the calls that would wait for a GPU.
Also recorded: evaluations, growths and checkpoints, so that a test can tell steady-state steps, and,
at each destruction of the process group, how many DDP wrappers are still alive (a DDP reducer that
outlives the group can deadlock the process's exit: apollo/stage_ddp.py:destroy_process_group_last).
Writes OUTPUT_DIR/syncs.rank_N.json: a list of intervals, each {"syncs": [...], "collectives": [...],
"events": [...]}: interval i holds the work from the update of step i (0: the start) through the
update of step i+1; the last one, the work after the last update. And OUTPUT_DIR/teardown.rank_N.json:
one number per destruction of the process group, the DDP wrappers alive at that moment.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import run_pretrain  # noqa: E402

intervals = [{"syncs": [], "collectives": [], "events": []}]
in_optimizer_step = [False]
teardown = []


def call_site() -> str:
    """'file:function' of the code that made the call, and the innermost frame of ours that led to it."""
    stack = traceback.extract_stack()[:-2]
    ours = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stack)
                 if Path(f.filename).name == "run_pretrain.py" or Path(f.filename).parent.name == "apollo"), "?")
    return f"{Path(stack[-1].filename).name}:{stack[-1].name} via {ours}"


def counting(kind: str, name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not in_optimizer_step[0]:
            intervals[-1][kind].append(f"{name} in {call_site()}")
        return fn(*args, **kwargs)
    return wrapper


def recording(event: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        intervals[-1]["events"].append(event)
        return fn(*args, **kwargs)
    return wrapper


def ddp_alive_at_destruction(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        teardown.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
        return fn(*args, **kwargs)
    return wrapper


def step_begins(optimizer, args, kwargs):
    in_optimizer_step[0] = True


def step_ends(optimizer, args, kwargs):
    in_optimizer_step[0] = False
    intervals.append({"syncs": [], "collectives": [], "events": []})


for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
    setattr(torch.Tensor, name, counting("syncs", name, getattr(torch.Tensor, name)))
for name in ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "reduce",
             "gather", "scatter", "barrier", "all_gather_object", "broadcast_object_list"):
    setattr(dist, name, counting("collectives", name, getattr(dist, name)))
dist.destroy_process_group = ddp_alive_at_destruction(dist.destroy_process_group)
run_pretrain.evaluate = recording("evaluation", run_pretrain.evaluate)
run_pretrain.grow_at_boundary = recording("growth", run_pretrain.grow_at_boundary)
run_pretrain.save_checkpoint = recording("checkpoint", run_pretrain.save_checkpoint)
register_optimizer_step_pre_hook(step_begins)
register_optimizer_step_post_hook(step_ends)

code = run_pretrain.cli(sys.argv[1:])
out = Path(sys.argv[sys.argv.index("--output_dir") + 1])
rank = os.environ.get("RANK", "0")
(out / f"syncs.rank_{rank}.json").write_text(json.dumps(intervals, indent=1))
(out / f"teardown.rank_{rank}.json").write_text(json.dumps(teardown))
sys.exit(code)
