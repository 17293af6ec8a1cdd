"""Evaluation the plot can trust (issue #3, section 2), through the real entry point.

(a) Evaluating every 2 steps leaves training bit-identical to evaluating only at the end: same loss,
    depth and FLOPs per step, same schedule file, same final weights. GPT-2 runs from scratch with
    dropout on (an evaluation that left the model in train mode, or drew from the global RNG, would
    shift every later dropout mask); BERT runs Apollo with MLM masking and gradient accumulation (an
    evaluation that touched the training masks or the depth draws would show up here).
(b) `step_flops` is the analytic count of what ran: training_flops(config, batch, seq, 12) for
    scratch, and for Apollo the sum over the schedule file's sampled depths of that step.
(c) Every eval line carries the cumulative training FLOPs, tokens and seconds of the step it follows.

Four tiny runs (12 layers of width 32, 32 positions, 16 blocks, batch 4) run in parallel once per module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from apollo.flops import training_flops
from conftest import REPO, read_jsonl
from test_logged_figures import Flags, assert_figures_are_independent_counts

SEQ, BATCH, BLOCKS = 32, 4, 16
TINY = {"gpt2": "n_layer=12,n_embd=32,n_head=2",
        "bert": "num_hidden_layers=12,hidden_size=32,num_attention_heads=2,intermediate_size=64"}
COMMON = ["--max_seq_length", SEQ, "--per_device_train_batch_size", BATCH, "--max_train_samples", BLOCKS,
          "--max_eval_samples", 8, "--per_device_eval_batch_size", 4, "--tokenizer_vocab_size", 512,
          "--save_strategy", "no", "--logging_steps", 100, "--seed", 7]
# GPT-2 scratch: 4 steps per epoch x 2 epochs. BERT Apollo: accumulation 2 -> 2 steps per epoch x 4 epochs,
# one stage per 2 steps, so evaluations at steps 2, 4, 6 fall right before a growth.
RUNS = {
    "gpt2": ["--model_type", "gpt2", "--config_overrides", TINY["gpt2"], "--num_train_epochs", 2],
    "bert": ["--model_type", "bert", "--config_overrides", TINY["bert"], "--num_train_epochs", 4,
             "--gradient_accumulation_steps", 2, "--apollo_layers", "1,3,6,12", "--apollo_step_list", "2,4,6,8",
             "--dist_function", "lvps", "--grow_method", "extend", "--apollo_info_output_file", "schedule"],
}
TOTAL_STEPS = 8
EVAL_CADENCE = {"every2": 2, "end_only": 1000}  # eval_steps; both also evaluate at step 0 and at the end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(model, cadence): run dir}, the four runs launched side by side."""
    root = tmp_path_factory.mktemp("eval_runs")
    text = (REPO / "data" / "embedded" / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join(text[:300]) + "\n")  # small: a tokenizer in well under a second
    (root / "validation.txt").write_text("\n".join(text[-40:]) + "\n")
    data = ["--train_file", root / "train.txt", "--validation_file", root / "validation.txt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = {}
    for model, args in RUNS.items():
        for cadence, every in EVAL_CADENCE.items():
            out = root / f"{model}-{cadence}"
            cmd = [sys.executable, str(REPO / "run_pretrain.py"), *map(str, [*COMMON, *data, *args]),
                   "--eval_steps", str(every), "--output_dir", str(out)]
            procs[model, cadence] = (out, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                                           stderr=subprocess.STDOUT, text=True))
    for (model, cadence), (out, proc) in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{model} {cadence}:\n{log[-3000:]}"
    return {key: out for key, (out, _) in procs.items()}


def split(run_dir):
    lines = read_jsonl(Path(run_dir) / "metrics.jsonl")
    train = [r for r in lines if "loss" in r and "event" not in r]
    evals = [r for r in lines if "eval_loss" in r]
    return train, evals


@pytest.mark.parametrize("model", list(RUNS))
def test_evaluation_does_not_change_training(runs, model):
    (train_a, evals_a), (train_b, evals_b) = split(runs[model, "every2"]), split(runs[model, "end_only"])
    assert [e["step"] for e in evals_a] == [0, 2, 4, 6, 8]  # the cadence really differs
    assert [e["step"] for e in evals_b] == [0, 8]
    assert len(train_a) == len(train_b) == TOTAL_STEPS
    for a, b in zip(train_a, train_b):  # bit-identical: exact float equality, not a tolerance
        assert (a["step"], a["loss"], a["depth"], a["step_flops"], a["lr"]) == \
               (b["step"], b["loss"], b["depth"], b["step_flops"], b["lr"]), (a, b)
    # Same final eval (same weights, same fixed held-out set and eval mask).
    assert evals_a[-1]["eval_loss"] == evals_b[-1]["eval_loss"]
    weights_a = load_file(runs[model, "every2"] / "model.safetensors")
    weights_b = load_file(runs[model, "end_only"] / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert not different, different[:5]
    if model == "bert":  # the depth draws and growth points, micro-batch by micro-batch
        assert read_jsonl(runs[model, "every2"] / "schedule.rank_0") == read_jsonl(runs[model, "end_only"] / "schedule.rank_0")


def test_dropout_is_on_so_the_gpt2_check_means_something(runs):
    config = json.loads((runs["gpt2", "every2"] / "run_config.json").read_text())["model_config"]
    assert min(config["resid_pdrop"], config["embd_pdrop"], config["attn_pdrop"]) > 0


def test_scratch_step_flops_are_full_depth(runs):
    out = runs["gpt2", "every2"]
    config = AutoConfig.from_pretrained(out)
    expected = training_flops(config, BATCH, SEQ, 12)
    train, _ = split(out)
    assert [r["step_flops"] for r in train] == [expected] * TOTAL_STEPS
    assert [r["depth"] for r in train] == [12.0] * TOTAL_STEPS


def test_apollo_step_flops_follow_the_schedule_file(runs):
    out = runs["bert", "every2"]
    config = AutoConfig.from_pretrained(out)
    schedule = read_jsonl(out / "schedule.rank_0")
    assert len(schedule) == 2 * TOTAL_STEPS  # one line per micro-batch
    expected = {}
    for rec in schedule:
        step = rec["curr_global_step"] + 1  # metrics.jsonl numbers steps from 1
        expected[step] = expected.get(step, 0) + training_flops(config, BATCH, SEQ, rec["curr_meta_layer"])
    # The check is only meaningful if some passes ran deeper than their unique-layer count.
    assert any(rec["curr_meta_layer"] != rec["curr_unique_layer"] for rec in schedule)
    train, _ = split(out)
    assert {r["step"]: r["step_flops"] for r in train} == expected
    total = 0
    for r in train:  # cumulative FLOPs are the running sum
        total += r["step_flops"]
        assert r["flops"] == total


@pytest.mark.parametrize("model", list(RUNS))
@pytest.mark.parametrize("cadence", list(EVAL_CADENCE))
def test_eval_lines_carry_cumulative_training_flops(runs, model, cadence):
    train, evals = split(runs[model, cadence])
    by_step = {r["step"]: r for r in train}
    assert evals[0]["step"] == 0 and evals[0]["flops"] == 0 and evals[0]["tokens"] == 0
    for e in evals[1:]:
        t = by_step[e["step"]]
        assert e["flops"] == t["flops"] == sum(r["step_flops"] for r in train if r["step"] <= e["step"])
        assert (e["tokens"], e["elapsed_s"]) == (t["tokens"], t["elapsed_s"])


# The flags of the "every2" runs, for the independent counts of tests/test_logged_figures.py: one process
# from scratch, and one process with accumulation 2 and stage ends given as steps.
FLAGS = {"gpt2": Flags(world=1, batch=BATCH, accum=1, seq=SEQ, blocks=BLOCKS, epochs=2, seed=7),
         "bert": Flags(world=1, batch=BATCH, accum=2, seq=SEQ, blocks=BLOCKS, epochs=4, layers=(1, 3, 6, 12),
                       ends=(2, 4, 6, 8), ends_in="steps", seed=7)}


@pytest.mark.parametrize("model", list(RUNS))
def test_logged_figures_equal_independent_counts(runs, model):
    assert_figures_are_independent_counts(runs[model, "every2"], FLAGS[model])
