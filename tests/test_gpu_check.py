"""full-scripts/gpu_check.sh on the CPU (issue 14, item 1): every check runs, and a failing one fails the script.

No GPU here: a stand-in `nvidia-smi` on PATH lists two GPUs and reports memory, and GPU_CHECK_ON_CPU=1 runs
every check's command at tiny shapes on the CPU (in two halves side by side, selected with CHECKS). This proves
that each check executes (its own output is in its log and its figures in the summary) and that the script's
verdict follows the checks; it proves nothing about a GPU (README, "The GPU check").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

from apollo.flops import training_flops
from conftest import REPO, read_jsonl

STAND_IN = """#!/bin/sh
case "$*" in
  -L) printf 'GPU 0: Stand-in (UUID: GPU-0)\\nGPU 1: Stand-in (UUID: GPU-1)\\n' ;;
  *memory.used*) printf '1000\\n1500\\n' ;;
  *) exit 9 ;;
esac
"""
PEAK_TFLOPS = 0.05  # a made-up CPU peak, to check the MFU arithmetic


def gpu_check(tmp_path, results, **env) -> subprocess.Popen:
    """gpu_check.sh RESULTS with the stand-in nvidia-smi first on PATH, started in the background."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "nvidia-smi").write_text(STAND_IN)
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GPU_CHECK_ON_CPU": "1", **env}
    env.pop("APOLLO_CACHE", None)  # the script's own fresh cache, as on a GPU machine
    return subprocess.Popen([str(REPO / "full-scripts" / "gpu_check.sh"), str(results)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, results: Path):
    stdout, stderr = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), \
        json.loads((results / "summary.json").read_text())


# All checks, in two halves run side by side (CHECKS selects them; data_path needs bert_base's step time).
HALVES = ("env,bf16,fp16,compile,ddp2", "bert_base,gpt2_base,data_path,fsdp_probe,fsdp2")


@pytest.fixture(scope="module")
def full_check(tmp_path_factory):
    """(console output of both halves, one summary with every check)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    procs = [(gpu_check(tmp, tmp / f"half{i}", PEAK_TFLOPS=str(PEAK_TFLOPS), CHECKS=half), tmp / f"half{i}")
             for i, half in enumerate(HALVES)]
    halves = [finished(proc, results) for proc, results in procs]
    for proc, summary in halves:
        assert proc.returncode == 0 and summary["exit_status"] == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert summary["mode"].startswith("cpu")
    stdout = "".join(proc.stdout for proc, _ in halves)
    return stdout, {name: r for _, summary in halves for name, r in summary["checks"].items()}


def test_every_check_runs_and_the_summary_records_it(full_check):
    stdout, checks = full_check
    assert {name: r["status"] for name, r in checks.items()} == {
        "env": "ok", "bf16": "ok", "fp16": "skipped", "compile": "ok", "bert_base": "ok", "gpt2_base": "ok",
        "data_path": "ok", "ddp2": "ok", "fsdp_probe": "ok", "fsdp2": "skipped"}
    assert "fp16 needs a CUDA GPU" in checks["fp16"]["detail"] and "only on GPUs" in checks["fsdp2"]["detail"]
    for name, r in checks.items():  # one console line per check
        assert f"{ {'ok': 'PASS', 'skipped': 'SKIP'}[r['status']]} {name}" in stdout

    def log(name):
        return Path(checks[name]["log"]).read_text()

    # Each check's own output: a run_pretrain run with its flags, the recompile log, the probe's verdicts.
    assert "device: cpu" in log("env") and "torch" in log("env")
    for name, precision, world in (("bf16", "bf16", 1), ("compile", "bf16", 1), ("ddp2", "bf16", 2)):
        config = json.loads((Path(checks[name]["log"]).parent / name / "run_config.json").read_text())
        assert (config["mixed_precision"], config["world_size"]) == (precision, world)
        assert config["apollo_layers"] == "1,3,6,12"
        assert [(g["from"], g["to"]) for g in read_jsonl(Path(checks[name]["log"]).parent / name / "metrics.jsonl")
                if g.get("event") == "growth"] == [(1, 3), (3, 6), (6, 12)]
    assert checks["compile"]["recompiles"] == log("compile").count("Recompiling function") >= 1  # eval: no_grad
    assert checks["compile"]["dynamic_symbols"] == log("compile").count("create_symbol")
    assert "--torch_compile" in log("compile").splitlines()[0]
    assert log("fsdp_probe").count("ok   ") == 4 and "FAIL" not in log("fsdp_probe")
    assert "against your GPU step of" in log("data_path")
    assert checks["data_path"]["in_process_pct"] > 0 and checks["data_path"]["wait_pct_2_workers"] >= 0


@pytest.mark.parametrize("name, vocab", [("bert_base", 30522), ("gpt2_base", 50257)])
def test_base_shape_runs_keep_the_real_vocabulary_and_their_figures_add_up(full_check, name, vocab):
    """Tokens/s and MFU recomputed from the flags and the analytic FLOPs, against the summary's step time."""
    _, checks = full_check
    r = checks[name]
    run_dir = Path(r["log"]).parent / name
    config = AutoConfig.from_pretrained(run_dir)
    assert config.vocab_size == vocab
    flags = json.loads((run_dir / "run_config.json").read_text())
    batch, seq = flags["per_device_train_batch_size"], flags["max_seq_length"]
    assert r["tokens_per_s"] == pytest.approx(batch * seq / r["step_s"], rel=2e-3)
    flops = training_flops(config, batch, seq, config.num_hidden_layers)
    assert r["mfu"] == pytest.approx(flops / r["step_s"] / (PEAK_TFLOPS * 1e12), rel=2e-3)
    assert r["peak_memory_mib"] == 1500  # the most the stand-in nvidia-smi reported, on its second GPU
    assert r["steps_timed"] == 4  # 6 steps, the first third left out


def test_a_failing_check_fails_the_script(tmp_path):
    """bf16 alone, stopped by a 1-second limit: the check fails, the summary says why, the exit status is 1."""
    proc, summary = finished(gpu_check(tmp_path, tmp_path / "results", CHECKS="bf16", CHECK_TIMEOUT_S="1"),
                             tmp_path / "results")
    assert proc.returncode == 1 and summary["exit_status"] == 1
    assert list(summary["checks"]) == ["bf16"] and summary["checks"]["bf16"]["status"] == "failed"
    assert summary["checks"]["bf16"]["detail"] == "timed out after 1 s"
    assert "FAIL bf16: timed out after 1 s" in proc.stdout


def test_without_a_gpu_the_script_refuses(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # python, and no nvidia-smi
    proc = subprocess.run([str(REPO / "full-scripts" / "gpu_check.sh"), str(tmp_path / "r")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "lists no GPU" in proc.stderr
