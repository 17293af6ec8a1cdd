"""Two CPU processes (torchrun, gloo) against one (issue #4, part 3, and preemption of all ranks).

GPT-2 with dropout off: dropout masks come from each rank's own RNG stream, so with dropout on,
2 processes and 1 process necessarily drop different units. BERT is not used for the weight
comparison: its per-rank MLM loss is a mean over that rank's masked tokens, and ranks hold different
numbers of them, so the DDP average of two rank means is not the one-process mean over all tokens
(a real, expected difference, not a bug). GPT-2's causal loss has the same token count on every row.
Each torchrun launch costs 15-40 s on two cores, so the launches are few and each checks much.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
import torch

from apollo.checkpoint import complete_checkpoints, read_trainer_state
from conftest import REPO, TORCHRUN_2, entry_command, final_weights, read_jsonl, run_inprocess, run_subprocess, \
    subprocess_env

TOTAL = 8
GROWTH_STEPS = [3, 5]  # stages 1, 2, 4 unique layers end after steps 2 and 4


@pytest.fixture(scope="module")
def run_args(tiny_corpus):
    def args(out, per_device_batch, *extra):
        # 32 blocks; global batch 4 x 2 micro-batches: 4 steps per epoch, two growths, an epoch boundary.
        # The default learning rate (1e-4): the first Adam steps of a freshly grown slot move each weight
        # by about lr * g / (|g| + eps), so float-rounding differences in near-zero gradients become
        # lr-sized weight differences (measured 4e-8 at 1e-4 but 1.3e-5 at lr 1e-3).
        return [*tiny_corpus, "--tokenizer_vocab_size", 2048, "--model_type", "gpt2",
                "--config_overrides", "n_layer=4,n_embd=32,n_head=4,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0",
                "--output_dir", out, "--max_seq_length", 32, "--max_train_samples", 32, "--max_eval_samples", 8,
                "--per_device_train_batch_size", per_device_batch, "--gradient_accumulation_steps", 2,
                "--apollo_layers", "1,2,4", "--apollo_step_list", "2,4,8",
                "--max_train_steps", TOTAL, "--eval_steps", 4, "--apollo_info_output_file", "sched", *extra]

    return args


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, run_args):
    out = tmp_path_factory.mktemp("one_process") / "run"
    result = run_inprocess(run_args(out, 4, "--save_strategy", "no"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, run_args):
    out = tmp_path_factory.mktemp("two_processes") / "run"
    result = run_subprocess(run_args(out, 2, "--save_strategy", "no"), launcher=TORCHRUN_2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_jsonl(out / "metrics.jsonl")  # rank 0 logged
    return out


def test_two_processes_match_one_process_with_twice_the_batch(one_process, two_processes):
    one, two = final_weights(one_process), final_weights(two_processes)
    assert one.keys() == two.keys()
    diff = max((one[n] - two[n]).abs().max().item() for n in one)
    assert diff <= 1e-5, f"max abs weight difference {diff:.3g} between 1 and 2 processes"
    # Same trajectory step by step, not only at the end.
    losses = lambda out: [(r["step"], r.get("loss", r.get("eval_loss"))) for r in read_jsonl(out / "metrics.jsonl")
                          if "event" not in r]
    for (step_1, loss_1), (step_2, loss_2) in zip(losses(one_process), losses(two_processes), strict=True):
        assert step_1 == step_2 and loss_1 == pytest.approx(loss_2, rel=1e-5, abs=1e-6)
    growth = lambda out: [r for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "growth"]
    assert [r["step"] for r in growth(two_processes)] == GROWTH_STEPS
    assert growth(two_processes) == growth(one_process)


def test_schedule_files_of_both_ranks_are_identical(one_process, two_processes):
    rank0, rank1 = read_jsonl(two_processes / "sched.rank_0"), read_jsonl(two_processes / "sched.rank_1")
    assert len(rank0) == TOTAL * 2
    assert rank0 == rank1
    assert rank0 == read_jsonl(one_process / "sched.rank_0")  # and the same depth draws as one process
    assert not (one_process / "sched.rank_1").exists()


def test_sigterm_to_one_rank_stops_all_ranks_then_resumes_exactly(run_args, two_processes, tmp_path):
    """Preemption may reach one rank first: every rank must stop after the same step, with one
    checkpoint; resuming on two processes then ends exactly where the uninterrupted run did."""
    out = tmp_path / "preempted"
    proc = subprocess.Popen(entry_command(run_args(out, 2, "--save_strategy", "no"), TORCHRUN_2), cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        # Rank 0 writes the step-0 evaluation after both ranks installed their handlers (it needs
        # rank 1 inside the evaluation's all-reduce), and before step 1.
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        [rank1] = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        rank1.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    [ckpt] = complete_checkpoints(out)
    stopped = read_trainer_state(ckpt)["step"]
    assert 1 <= stopped < TOTAL, "the stop request was not honoured before the run ended"
    assert f"Stop requested: saved a checkpoint at step {stopped}" in stdout
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    rank0, rank1 = read_jsonl(out / "sched.rank_0"), read_jsonl(out / "sched.rank_1")
    assert rank0 == rank1 and rank0[-1]["curr_global_step"] == stopped - 1  # both ranks stopped after it
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r][-1] == stopped
    assert not (out / "model.safetensors").exists()

    result = run_subprocess(run_args(out, 2, "--save_strategy", "no", "--resume_from_checkpoint", "latest"),
                            launcher=TORCHRUN_2)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, reference = final_weights(out), final_weights(two_processes)
    assert all(torch.equal(resumed[n], reference[n]) for n in reference), "2-process resume is not exact"
    for name in ("sched.rank_0", "sched.rank_1"):
        assert read_jsonl(out / name) == read_jsonl(two_processes / name)


def test_gradient_checkpointing_matches_bit_for_bit(run_args, two_processes, tmp_path):
    """Apollo under 2-process DDP with --gradient_checkpointing: shared blocks run several times in one
    pass. Reentrant checkpointing would mark their parameters ready once per use, which DDP refuses;
    the non-reentrant kind trains, and recomputation changes no bit of the result on CPU."""
    out = tmp_path / "checkpointed"
    result = run_subprocess(run_args(out, 2, "--save_strategy", "no", "--gradient_checkpointing"), launcher=TORCHRUN_2)
    assert result.returncode == 0, result.stderr[-3000:]
    plain, checkpointed = final_weights(two_processes), final_weights(out)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.equal(plain[n], checkpointed[n]) for n in plain)
    losses = lambda run: [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert losses(out) == losses(two_processes) and len(losses(out)) == TOTAL
