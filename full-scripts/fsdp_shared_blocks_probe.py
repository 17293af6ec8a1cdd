#!/usr/bin/env python
"""Does FSDP, with one unit per block, give Apollo's gradients when a block runs several times per pass?

    torchrun --nproc_per_node 2 full-scripts/fsdp_shared_blocks_probe.py           # CPU (gloo) or GPUs (nccl)

Apollo swaps the model's block list for a list that repeats the unique blocks along a plan
(apollo/shared_layers.py), grows by copying blocks in place (apollo/growth.py), and leaves the
slots beyond the current stage idle. Under FSDP each block is a sharded unit that is gathered
before and freed after each use, so this probe checks, on a small BERT, against the same model
unsharded on the union of all ranks' batches: the loss and every gradient for (a) the plain plan,
(b) a plan that uses each block twice with two idle slots, (c) one block three times, and (d) a
pass after growth applied to the sharded weights. It prints one line per case and exits 1 on a
mismatch (relative gradient error above 1e-4) or an error.

FSDP2 (`fully_shard`, what accelerate_fsdp.yaml selects) runs on CPU with gloo; FSDP1 refuses
CPU-only machines. Passing this probe is necessary, not sufficient, for Apollo under FSDP:
run_pretrain.py still refuses Apollo+FSDP until a full run (growth, evaluation, checkpoints,
the final save) has been checked on GPUs; see full-scripts/README.md.
"""
import copy
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from apollo.growth import grow_layers  # noqa: E402
from apollo.shared_layers import layer_slots, run_along  # noqa: E402

TOLERANCE = 1e-4


def main() -> int:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # compare in full float32
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=4, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    reference = BertForMaskedLM(config).to(device)
    sharded = copy.deepcopy(reference)
    for block in layer_slots(sharded):
        fully_shard(block)
    fully_shard(sharded)

    ids = torch.randint(0, 100, (2 * world, 16), generator=torch.Generator().manual_seed(1)).to(device)
    mine = slice(2 * rank, 2 * rank + 2)

    def reference_pass(plan):
        reference.zero_grad()
        with run_along(reference, plan):
            loss = reference(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad for n, p in reference.named_parameters()}

    def sharded_pass(plan):
        sharded.zero_grad()
        with run_along(sharded, plan):
            loss = sharded(input_ids=ids[mine], labels=ids[mine]).loss
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        grads = {n: (p.grad.full_tensor() if p.grad is not None else None) for n, p in sharded.named_parameters()}
        return mean.item() / world, grads

    failures = 0

    def compare(plan, what):
        nonlocal failures
        ref_loss, ref_grads = reference_pass(plan)
        try:
            loss, grads = sharded_pass(plan)
        except Exception as err:  # report the failure as a result of the probe
            failures += 1
            if rank == 0:
                print(f"FAIL {what}, plan {plan}: {type(err).__name__}: {str(err).splitlines()[0]}")
            return
        worst, presence = 0.0, []
        for name, g in ref_grads.items():
            h = grads.get(name)
            if (g is None) != (h is None):
                presence.append(name)
            elif g is not None:
                worst = max(worst, ((g - h).norm() / (g.norm() + 1e-12)).item())
        ok = not presence and worst < TOLERANCE and abs(loss - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
        failures += not ok
        if rank == 0:
            print(f"{'ok  ' if ok else 'FAIL'} {what}, plan {plan}: loss {loss:.6f} vs {ref_loss:.6f}, worst relative "
                  f"gradient error {worst:.1e}" + (f", gradient on one side only: {presence[:3]}" if presence else ""))

    compare([0, 1, 2, 3], "plain pass")
    compare([0, 0, 1, 1], "U=2, D=4: each block twice, slots 2-3 idle")
    compare([0, 0, 0], "U=1, D=3: one block three times")
    grow_layers(layer_slots(reference), [0, 0, 1, 1])
    try:
        grow_layers(layer_slots(sharded), [0, 0, 1, 1])  # each rank copies its own shards
        compare([0, 1, 2, 3], "after growth 2 -> 4 on the sharded weights")
    except Exception as err:
        failures += 1
        if rank == 0:
            print(f"FAIL growth on sharded weights: {type(err).__name__}: {str(err).splitlines()[0]}")
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
