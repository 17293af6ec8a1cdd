"""Exact resume and no lost work (issue #4, parts 1 and 2) on tiny GPT-2 and BERT runs.

The reference is always an independent, uninterrupted run with the same flags. A resumed run must
match it bit for bit on CPU: the final weights, every metrics.jsonl record (wall-clock time aside:
losses, learning rates, eval losses, growth events) and the schedule file (depth draws, plans,
growth). Dropout stays on, so the global RNG must resume too; BERT adds MLM masking.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from apollo.checkpoint import TrainerState, complete_checkpoints
from conftest import final_weights, metrics_without_wall_clock, read_jsonl, run_inprocess

ARCH = {"gpt2": "n_layer=4,n_embd=32,n_head=4",
        "bert": "num_hidden_layers=4,hidden_size=32,num_attention_heads=4,intermediate_size=64"}
TOTAL = 10
GROWTH_STEPS = [3, 6]  # stages end after steps 3 and 6; a growth line names the finished steps


@pytest.fixture(scope="module")
def run_args(tiny_corpus):
    def args(model, out, *extra):
        # 16 blocks, 2 per micro-batch, 2 micro-batches per step: 4 steps per epoch, so the run
        # crosses two epoch boundaries and two stage boundaries (1 -> 2 -> 4 unique layers).
        return [*tiny_corpus, "--tokenizer_vocab_size", 2048, "--model_type", model,
                "--config_overrides", ARCH[model], "--output_dir", out, "--max_seq_length", 32,
                "--max_train_samples", 16, "--max_eval_samples", 8, "--per_device_train_batch_size", 2,
                "--gradient_accumulation_steps", 2, "--learning_rate", 1e-3, "--apollo_layers", "1,2,4",
                "--apollo_step_list", "3,6,10", "--max_train_steps", TOTAL, "--eval_steps", 4,
                "--apollo_info_output_file", "sched", *extra]

    return args


def train(args) -> subprocess.CompletedProcess:
    result = run_inprocess(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_outputs(out: Path):
    metrics = metrics_without_wall_clock(out)
    return final_weights(out), metrics, read_jsonl(out / "sched.rank_0")


def assert_same_run(out: Path, reference: Path) -> None:
    weights, metrics, sched = run_outputs(out)
    ref_weights, ref_metrics, ref_sched = run_outputs(reference)
    assert weights.keys() == ref_weights.keys()
    differ = {n: (weights[n] - ref_weights[n]).abs().max().item() for n in weights
              if not torch.equal(weights[n], ref_weights[n])}
    assert not differ, f"final weights differ from the uninterrupted run (max abs diff): {differ}"
    for i, (got, want) in enumerate(zip(metrics, ref_metrics)):
        assert got == want, f"metrics.jsonl line {i + 1} differs"
    assert len(metrics) == len(ref_metrics), "metrics.jsonl duplicated or truncated"
    for i, (got, want) in enumerate(zip(sched, ref_sched)):
        assert got == want, f"schedule line {i + 1} differs"
    assert len(sched) == len(ref_sched), "schedule file duplicated or truncated"


def growth_records(out: Path):
    return [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "growth"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_args):
    """runs(model) -> folder with `reference` (uninterrupted) and `saved` (a checkpoint after every step)."""
    done = {}

    def get(model: str) -> Path:
        if model not in done:
            tmp = tmp_path_factory.mktemp(model)
            train(run_args(model, tmp / "reference", "--save_strategy", "no"))
            train(run_args(model, tmp / "saved", "--save_steps", 1))
            # What the resumed runs must reproduce: two growths, at the stage ends, in both logs.
            assert growth_records(tmp / "reference") == GROWTH_STEPS
            sched = read_jsonl(tmp / "reference" / "sched.rank_0")
            assert [r["curr_global_step"] for r in sched if r["do_stack"]] == GROWTH_STEPS  # 0-based: the next step
            done[model] = tmp
        return done[model]

    return get


def killed_after(saved: Path, k: int, dest: Path) -> Path:
    """OUTPUT_DIR as a crash leaves it: checkpoint k complete, k+1 half-written, no final model.

    Log lines past step k stay, with a torn last line: the resume must drop them and go on.
    """
    shutil.copytree(saved, dest)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        (dest / name).unlink(missing_ok=True)
    for ckpt in complete_checkpoints(dest):
        step = int(ckpt.name.split("-")[1])
        if step == k + 1:  # half-written: what an interrupted save leaves behind
            (ckpt / "trainer_state.json").unlink()
            ckpt.rename(dest / f".tmp-checkpoint-{step}")
        elif step > k:
            shutil.rmtree(ckpt)
    for log in ("metrics.jsonl", "sched.rank_0"):  # the kill may tear the last line, too
        with open(dest / log, "a") as f:
            f.write('{"step": 9, "lo')
    assert [p.name for p in complete_checkpoints(dest)][-1] == f"checkpoint-{k}"
    return dest


# Gradient accumulation is 2 throughout. k=3: the checkpoint written at the step that ends stage 1
# (pre-growth: growth 1 -> 2 must happen once, after loading), mid-epoch. k=4: mid-stage, at an
# epoch boundary. k=5: mid-stage and mid-epoch.
@pytest.mark.parametrize("k, spec", [(3, "path"), (4, "path"), (5, "latest")])
@pytest.mark.parametrize("model", ["gpt2", "bert"])
def test_resume_is_bit_identical(runs, run_args, model, k, spec):
    tmp = runs(model)
    out = killed_after(tmp / "saved", k, tmp / f"resumed-{k}")
    resume = str(out / f"checkpoint-{k}") if spec == "path" else "latest"
    result = train(run_args(model, out, "--save_steps", 1, "--resume_from_checkpoint", resume))
    assert f"Resumed from {out / f'checkpoint-{k}'} at step {k}" in result.stdout
    assert growth_records(out) == GROWTH_STEPS, "growth repeated or lost across the resume"
    assert_same_run(out, tmp / "reference")


def written_before_trainer_state(out: Path) -> None:
    """OUTPUT_DIR as runs wrote it before the `TrainerState` class and the growth-step convention: each
    trainer_state.json a plain dict (here without `last_checkpoint`, which the oldest lacked) and growth
    lines named after the first step of the new stage (finished steps + 1)."""
    for ckpt in complete_checkpoints(out):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        (ckpt / "trainer_state.json").write_text(json.dumps({k: state[k] for k in ("step", "tokens", "flops",
                                                                                    "elapsed_s")}))
    lines = (out / "metrics.jsonl").read_text().splitlines()  # the last one torn (killed_after)
    for i, line in enumerate(lines):
        if '"event": "growth"' in line:
            record = json.loads(line)
            lines[i] = json.dumps({**record, "step": record["step"] + 1})
    (out / "metrics.jsonl").write_text("\n".join(lines))


def test_a_checkpoint_and_logs_written_before_the_trainer_state_class_resume(runs, run_args):
    tmp = runs("gpt2")
    out = killed_after(tmp / "saved", 4, tmp / "resumed-old-format")
    written_before_trainer_state(out)
    train(run_args("gpt2", out, "--save_steps", 1, "--resume_from_checkpoint", "latest"))
    # The growth before checkpoint 4 stays as the old run logged it, once; the next is logged the new way.
    assert growth_records(out) == [GROWTH_STEPS[0] + 1, GROWTH_STEPS[1]]
    lines = read_jsonl(out / "metrics.jsonl")
    for line in lines:  # that line put in the new convention, the run equals the uninterrupted one
        if line.get("event") == "growth" and line["step"] == GROWTH_STEPS[0] + 1:
            line["step"] = GROWTH_STEPS[0]
    (out / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert_same_run(out, tmp / "reference")
    old = TrainerState.read(out / "checkpoint-4")  # 4 steps of 2 x 2 blocks of 32 tokens
    assert (old.step, old.tokens, old.last_checkpoint) == (4, 4 * 2 * 2 * 32, None)


# ---- no work lost ----------------------------------------------------------------------------
class Killed(BaseException):  # not an Exception: cli() reports those as failures
    """Stands in for the process dying."""


@pytest.fixture(scope="module")
def killed_while_saving(tmp_path_factory, runs, run_args):
    """A GPT-2 run whose save of checkpoint 4 dies half-way; then `--resume_from_checkpoint latest`."""
    tmp = tmp_path_factory.mktemp("killed_while_saving")
    out = tmp / "run"
    real_save_state = Accelerator.save_state

    def dying_save_state(self, output_dir=None, **kwargs):
        if Path(output_dir).name.endswith("checkpoint-4"):
            real_save_state(self, output_dir, **kwargs)
            (Path(output_dir) / "model.safetensors").write_bytes(b"torn")
            raise Killed
        return real_save_state(self, output_dir, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Accelerator, "save_state", dying_save_state)
        with pytest.raises(Killed):
            run_inprocess(run_args("gpt2", out, "--save_steps", 1))
    after_kill = [p.name for p in complete_checkpoints(out)], sorted(p.name for p in out.iterdir())
    (out / "checkpoint-0").mkdir()  # an incomplete folder of someone else's: rotation must leave it alone
    (out / ".tmp-checkpoint-99").mkdir()  # an older kill's leftover: the next save clears it
    train(run_args("gpt2", out, "--save_steps", 1, "--save_total_limit", 2, "--resume_from_checkpoint", "latest"))
    return out, runs("gpt2") / "reference", after_kill


def test_kill_while_saving_keeps_previous_checkpoint(killed_while_saving):
    out, reference, (complete, names) = killed_while_saving
    assert complete == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert ".tmp-checkpoint-4" in names and "checkpoint-4" not in names  # the torn save stays out of sight
    assert_same_run(out, reference)  # `latest` resumed from checkpoint-3 and finished exactly


def test_save_total_limit_deletes_only_complete_checkpoints(killed_while_saving):
    out, _, _ = killed_while_saving
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-9", f"checkpoint-{TOTAL}"]
    assert (out / "checkpoint-0").is_dir()
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert TrainerState.read(out / f"checkpoint-{TOTAL}").step == TOTAL


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_checkpoints_at_step_boundary_and_resumes_exactly(runs, run_args, tmp_path, signum):
    """Preemption: the signal arrives mid-run; a checkpoint at the next step boundary, a clear exit.

    In-process to spare a fresh interpreter's imports; the 2-process test sends a real process the signal.
    """
    out = tmp_path / "preempted"
    sent = threading.Event()

    def preempt():  # the step-0 evaluation record is written after the handler is installed, before step 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text():
                os.kill(os.getpid(), signum)
                sent.set()
                return
            time.sleep(0.002)

    # A late signal (after the run restored the handlers) must not take pytest down with it.
    previous = signal.signal(signum, lambda *_: None)
    try:
        watcher = threading.Thread(target=preempt, daemon=True)
        watcher.start()
        # --save_strategy no: a stop request must checkpoint anyway.
        result = run_inprocess(run_args("gpt2", out, "--save_strategy", "no"))
        watcher.join()
    finally:
        signal.signal(signum, previous)
    assert sent.is_set() and result.returncode == 0, result.stderr[-3000:]
    [ckpt] = complete_checkpoints(out)
    stopped = TrainerState.read(ckpt).step
    assert 1 <= stopped < TOTAL and ckpt.name == f"checkpoint-{stopped}"
    assert f"Stop requested: saved a checkpoint at step {stopped}" in result.stdout
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r][-1] == stopped
    assert not (out / "model.safetensors").exists()

    train(run_args("gpt2", out, "--save_strategy", "no", "--resume_from_checkpoint", "latest"))
    assert_same_run(out, runs("gpt2") / "reference")


@pytest.mark.parametrize("eval_steps, message, kept", [
    (100, "non-finite loss nan at step 2", ["checkpoint-1"]),  # step 1's update blew the weights up
    (1, "non-finite eval_loss nan at step 1", []),  # caught by evaluation before checkpoint 1 is saved
])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(run_args, tmp_path, eval_steps, message, kept):
    out = tmp_path / "diverged"
    # A real cause: an absurd learning rate makes the first update overflow the next forward pass.
    result = run_inprocess(run_args("gpt2", out, "--learning_rate", 1e30, "--save_steps", 1,
                                    "--eval_steps", eval_steps))
    assert result.returncode == 3
    [line] = [ln for ln in result.stderr.splitlines() if "error:" in ln]
    assert message in line and "Traceback" not in result.stderr
    assert [p.name for p in complete_checkpoints(out)] == kept
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == kept  # nothing half-saved
    if kept:
        assert f"last good checkpoint: {out / kept[-1]}" in line
