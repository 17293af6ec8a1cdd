"""2-process DDP (gloo) step time of Apollo's last stage against a scratch step at the same depth, side by side.

    python benchmarks/ddp_last_stage.py [--model gpt2|bert] [--width 128] [--repeats 5] [--steps 3]

It launches itself with torchrun (2 CPU processes, 1 thread each) unless already launched. Three copies of
one 12-layer model, each under its own DDP wrapper, take turns (so machine noise hits all alike):
- scratch: DDP over every parameter, find_unused_parameters=False (a scratch run's setup);
- apollo: the last Apollo stage as run_pretrain.py sets it up (apollo/stage_ddp.py: idle slots out of DDP,
  none left in the last stage; find_unused_parameters=False), stepping along the stage's plan with run_along;
- apollo_find_unused: the former setup, every slot in DDP with find_unused_parameters=True: DDP then searches
  the autograd graph for unused parameters and all-reduces a map of them on every step.
One step = forward + backward (gradients all-reduced) + gradient clipping + the loop's one-sync step
outcome + AdamW. Prints the median seconds per step of each and the ratios to scratch (1.00: no overhead).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python benchmarks/...` from the repo root
from apollo.plan import depth_plan  # noqa: E402
from apollo.shared_layers import layer_slots, run_along  # noqa: E402
from apollo.stage_ddp import keep_idle_slots_out_of_ddp  # noqa: E402

LAYERS = 12


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("gpt2", "bert"), default="gpt2")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="blocks per process")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5, help="rounds of the three setups, alternating")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setup and round (after one warm-up step)")
    return p.parse_args()


def build(kind, width, vocab):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=LAYERS, n_embd=width, n_head=4, vocab_size=vocab, n_positions=512))
    return BertForMaskedLM(BertConfig(num_hidden_layers=LAYERS, hidden_size=width, num_attention_heads=4,
                                      intermediate_size=4 * width, vocab_size=vocab))


def setups(base):
    """name -> (DDP-wrapped copy, plan). Each copy has parameters of its own (one DDP reducer per parameter)."""
    out = {}
    for name in ("scratch", "apollo", "apollo_find_unused"):
        model = copy.deepcopy(base)
        if name == "apollo":
            keep_idle_slots_out_of_ddp(model, layer_slots(model), LAYERS)  # the last stage: U = L
        out[name] = (DistributedDataParallel(model, find_unused_parameters=name == "apollo_find_unused"),
                     depth_plan(LAYERS, LAYERS, "extend"))
    return out


def step_fn(ddp, plan, batch):
    from apollo.train_step import step_outcome  # the loop's own one-sync function

    raw = ddp.module
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    world = type("World", (), {"num_processes": dist.get_world_size()})

    def step():
        with run_along(raw, plan):
            loss = ddp(**batch).loss
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        step_outcome(world, loss.detach(), norm, False)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    args = parse_args()
    if "RANK" not in os.environ:  # launch two gloo processes of this script
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   __file__, *sys.argv[1:]]
        sys.exit(subprocess.run(command, env=env).returncode)
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone()}
    models = setups(build(args.model, args.width, args.vocab))
    steps = {name: step_fn(ddp, plan, batch) for name, (ddp, plan) in models.items()}
    for step in steps.values():  # warm-up: DDP builds its buckets on the first steps
        step()
        step()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            dist.barrier()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            dist.barrier()
            times[name].append((time.perf_counter() - t) / args.steps)
    if rank == 0:
        scratch = statistics.median(times["scratch"])
        print(f"{args.model}, 12 layers, width {args.width}, 2 processes x {args.batch} x {args.seq} tokens, gloo, "
              f"{args.repeats} rounds x {args.steps} steps; median s/step and ratio to scratch:")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:<20} {median:.4f} s   {median / scratch:.3f}   (rounds: "
                  f"{', '.join(f'{v:.3f}' for v in values)})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
