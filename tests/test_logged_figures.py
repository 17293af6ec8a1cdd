"""Every figure a plot reads from metrics.jsonl against a count made outside the loop (issue 14, item 10).

`assert_figures_are_independent_counts(run_dir, Flags(...))` recomputes, from the flags the test passed
(never from run_config.json, which the loop writes), for every training line: the step count and the stage
boundaries (epochs x steps per epoch, steps, or shares of the run rounded to the nearest step), the stage
and unique layers, each micro-batch's depth (the spec's pure draw), the tokens (steps x processes x batch x
accumulation x sequence), the FLOPs (`torch.utils.flop_counter.FlopCounterMode` on a stock Hugging Face
model of that depth, x processes, summed over the step's micro-batches), the learning rate (cosine with
linear warmup, written out) and the growth events.

The runs it checks: here, one process without accumulation, stage ends as shares; in
test_eval_and_flops_logging.py, one process with accumulation 2 and stage ends as steps, and a scratch run;
in test_full_scripts.py, the smoke run: 2 processes (accelerate launch, gloo), accumulation 2, stage ends
as epochs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from apollo.sampling import sample_depth
from conftest import read_jsonl, run_inprocess
from test_flops import CPU_SDPA_FLOPS


@dataclass(frozen=True)
class Flags:
    """The flags of a run, as the test gave them."""
    world: int
    batch: int
    accum: int
    seq: int
    blocks: int  # training blocks the run trains on (its --max_train_samples)
    epochs: int | None = None
    max_steps: int | None = None
    layers: tuple[int, ...] | None = None  # --apollo_layers; None: from scratch
    ends: tuple = ()  # the stage ends as given: epochs, steps, or shares (floats)
    ends_in: str = "steps"  # "epochs", "steps" or "shares"
    seed: int = 42
    dist: str = "lvps"
    lr: float = 1e-4
    warmup_ratio: float = 0.0


def step_plan(f: Flags, full_depth: int) -> tuple[int, int, list[int], list[int]]:
    """(steps per epoch, total steps, stage end steps, unique layers per stage) from the flags alone."""
    per_epoch = max(f.blocks // (f.batch * f.world * f.accum), 1)
    total = f.max_steps or per_epoch * f.epochs
    if f.layers is None:
        return per_epoch, total, [total], [full_depth]
    if f.ends_in == "epochs":
        ends = [e * per_epoch for e in f.ends]
    elif f.ends_in == "shares":
        ends = [math.floor(s * total + 0.5) for s in f.ends]  # nearest step (the tests avoid exact halves)
    else:
        ends = list(f.ends)
    return per_epoch, total, ends, list(f.layers)


def cosine_lr(f: Flags, step: int, total: int) -> float:
    """The LR at 0-based step `step`: linear warmup over ceil(ratio x total) steps, then half a cosine to 0."""
    warmup = math.ceil(f.warmup_ratio * total)
    if step < warmup:
        return f.lr * step / warmup
    return f.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


class CountedFlops:
    """Training FLOPs (forward + backward) of one micro-batch of a stock model of the run's config at depth D,
    as FlopCounterMode counts them. Counted at depths 1 and 2 and extended linearly (the stock model's blocks
    are identical, so its count is affine in depth); `check_linear_at` counts one more depth to confirm."""

    def __init__(self, run_dir: Path, batch: int, seq: int):
        self.run_dir, self.batch, self.seq = str(run_dir), batch, seq
        self.base, self.per_layer = self.counted(1), self.counted(2) - self.counted(1)

    @lru_cache(maxsize=None)
    def counted(self, depth: int) -> int:
        config = AutoConfig.from_pretrained(self.run_dir, num_hidden_layers=depth)
        auto = AutoModelForMaskedLM if config.model_type == "bert" else AutoModelForCausalLM
        torch.manual_seed(0)
        model = auto.from_config(config, attn_implementation="sdpa").train()
        ids = torch.randint(0, config.vocab_size, (self.batch, self.seq), generator=torch.Generator().manual_seed(0))
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
            model(input_ids=ids, labels=ids).loss.backward()
        return counter.get_total_flops()

    def __call__(self, depth: int) -> int:
        return self.base + (depth - 1) * self.per_layer

    def check_linear_at(self, depth: int) -> None:
        assert self(depth) == self.counted(depth), depth


def assert_figures_are_independent_counts(run_dir, f: Flags) -> None:
    run_dir = Path(run_dir)
    lines = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in lines if "loss" in r and "event" not in r]
    growths = [r for r in lines if r.get("event") == "growth"]
    full_depth = AutoConfig.from_pretrained(run_dir).num_hidden_layers
    # The number of blocks is a fact of the data (the loop's arithmetic starts from it).
    assert json.loads((run_dir / "run_config.json").read_text())["num_train_blocks"] == f.blocks
    per_epoch, total, ends, layers = step_plan(f, full_depth)
    assert [r["step"] for r in train] == list(range(1, total + 1))
    drawn = {}  # 0-based step -> (stage, unique layers, the depth of each micro-batch)
    for step in range(total):
        stage = next(s for s, end in enumerate(ends) if step < end)
        drawn[step] = stage, layers[stage], [sample_depth(f.dist, layers[stage], full_depth, f.seed, step, m)
                                             for m in range(f.accum)]
    flops = CountedFlops(run_dir, f.batch, f.seq)
    flops.check_linear_at(max(d for _, _, depths in drawn.values() for d in depths))
    cumulative_flops = 0
    for r in train:
        stage, unique, depths = drawn[r["step"] - 1]
        step_flops = f.world * sum(flops(d) for d in depths)
        cumulative_flops += step_flops
        expected = {"epoch": round(r["step"] / per_epoch, 4), "stage": stage, "unique_layers": unique,
                    "depth": sum(depths) / f.accum, "tokens": r["step"] * f.world * f.batch * f.accum * f.seq,
                    "step_flops": step_flops, "flops": cumulative_flops}
        wrong = {k: (r[k], v) for k, v in expected.items() if r[k] != v}
        assert not wrong, f"step {r['step']}: logged vs independent count {wrong}"
        assert math.isclose(r["lr"], cosine_lr(f, r["step"] - 1, total), rel_tol=1e-12, abs_tol=1e-20), r["step"]
    assert [(g["step"], g["from"], g["to"]) for g in growths] == \
        [(end, a, b) for end, a, b in zip(ends, layers, layers[1:])]  # after `end` steps


# ------------------------------------------------------------------------------------------------
# One process, no accumulation, stage ends as shares of the run: 0.17 and 0.33 of 10 steps round to
# steps 2 and 3 (truncation would give 1, rounding up 4).
# ------------------------------------------------------------------------------------------------
SHARES = Flags(world=1, batch=2, accum=1, seq=32, blocks=20, max_steps=10, layers=(1, 2, 4), ends=(0.17, 0.33, 1.0),
               ends_in="shares", seed=5, lr=1e-3, warmup_ratio=0.2)


def test_shares_run_logs_the_independent_counts(tiny_corpus, tmp_path):
    f = SHARES
    out = tmp_path / "run"
    result = run_inprocess([*tiny_corpus, "--tokenizer_vocab_size", 2048, "--model_type", "gpt2",
                            "--config_overrides", "n_layer=4,n_embd=32,n_head=2", "--output_dir", out,
                            "--max_seq_length", f.seq, "--per_device_train_batch_size", f.batch,
                            "--max_train_samples", f.blocks, "--max_train_steps", f.max_steps,
                            "--apollo_layers", ",".join(map(str, f.layers)),
                            "--apollo_step_list", ",".join(map(str, f.ends)), "--seed", f.seed,
                            "--learning_rate", f.lr, "--warmup_ratio", f.warmup_ratio, "--eval_steps", 100,
                            "--max_eval_samples", 4, "--save_strategy", "no", "--logging_steps", 100])
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_plan(f, 4)[2] == [2, 3, 10]  # the rounding the run must match, written out
    assert_figures_are_independent_counts(out, f)
