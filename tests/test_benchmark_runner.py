"""benchmarks/runner.py, shared by compare.py and growth_study.py: run folders keep the names they had before the
runner (a running study finds its finished and stopped runs again), done and failed markers, launch flags, and
compare.py's table on runs whose answers are known by construction."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import compare, growth_study, runner
from conftest import REPO, subprocess_env
from test_plot import apollo_evals, reference_evals, write_run

RECORDED = json.loads((REPO / "tests" / "fixtures" / "run_folder_names.json").read_text())
DOCS_FIXTURE = REPO / "tests" / "fixtures" / "docs_corpus" / "expected"


def study_folder_names(preset: str, epoch: int, corpus: str | None) -> list[str]:
    """Every run folder of the study's phases, in the order the fixture records them."""
    argv = ["gate", "--preset", preset, "--trend_lrs", "1e-3,2e-3,4e-3"]
    if corpus:  # any built corpus passes the check; the commands then name `corpus`, as a checkout with it built
        argv += ["--corpus", str(DOCS_FIXTURE)]
    args = growth_study.parse_args(argv)
    args.corpus = corpus
    gate = {"best": {str(d): {"lr": 1e-3} for d in (2, 4, 12)}}
    jobs = [growth_study.probe_job(args), *growth_study.gate_jobs(args, epoch), *growth_study.trend_jobs(args, epoch, gate),
            *growth_study.study_jobs(args, "sweep", epoch, {}),
            *growth_study.study_jobs(args, "lengths", epoch, {(m, steps): 2e-3 for m in growth_study.METHODS
                                                              for steps in growth_study.sweep_steps(args, epoch)})]
    return [j.out.name for j in jobs]


@pytest.mark.parametrize("preset, epoch, corpus", [("cpu-docs", 6263, "data/docs"), ("cpu", 761, None)])
def test_study_run_folders_keep_their_recorded_names(preset, epoch, corpus):
    assert study_folder_names(preset, epoch, corpus) == RECORDED[preset]


def printed_folders(stdout: str) -> list[str]:
    return [line.split("--output_dir ")[1].rsplit("/", 1)[1] for line in stdout.splitlines()
            if line.startswith("python run_pretrain.py")]


def test_dry_runs_print_the_recorded_folders(tmp_path):
    """As a user runs them: compare.py's default, and the cpu gate once a run has told the epoch length."""
    env = {**subprocess_env(), "PYTHONPATH": ""}
    dry = subprocess.run([sys.executable, "benchmarks/compare.py", "--dry_run", "--runs_dir", str(tmp_path / "c")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert printed_folders(dry.stdout) == RECORDED["compare-default"]
    probe = tmp_path / "g" / RECORDED["cpu"][0]
    probe.mkdir(parents=True)
    (probe / "run_config.json").write_text(json.dumps({
        "max_seq_length": 128, "per_device_train_batch_size": 16, "tokenizer_vocab_size": 2048, "train_file": None,
        "dataset_dir": None, "steps_per_epoch": 761}))
    gate = subprocess.run([sys.executable, "benchmarks/growth_study.py", "gate", "--dry_run", "--runs_dir",
                           str(tmp_path / "g"), "--results_dir", str(tmp_path / "results")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert gate.returncode == 0, gate.stderr[-2000:]
    assert printed_folders(gate.stdout) == RECORDED["cpu"][1:10]
    assert all(re.search(r"--save_steps 38 --save_total_limit 2 --output_dir ", line) for line in gate.stdout.splitlines())
    assert not (tmp_path / "results").exists()


def test_done_and_failed_markers(tmp_path):
    cmd = ["--model_type", "gpt2", "--max_train_steps", "40", "--save_strategy", "no", "--seed", "1"]
    job = runner.job(tmp_path, "gpt2", "x", 1, cmd)
    job.out.mkdir()
    assert not runner.is_done(job) and not runner.has_failed(job)
    (job.out / "compare_cmd.json").write_text(json.dumps(cmd))
    assert not runner.is_done(job)  # no final model
    (job.out / "model.safetensors").write_bytes(b"")
    assert runner.is_done(job)
    # As growth_study.py wrote it before the runner when a study was killed: the launched command.
    launched = runner.launch_command(job, checkpoints=20)
    assert launched == cmd + ["--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "2"]
    (job.out / "compare_cmd.json").write_text(json.dumps(launched + ["--resume_from_checkpoint", "latest"]))
    assert runner.is_done(job)
    for other in (cmd[:-1] + ["2"], cmd + ["--seed", "2"], cmd + ["--save_steps"], cmd[:-2]):  # another run
        (job.out / "compare_cmd.json").write_text(json.dumps(other))
        assert not runner.is_done(job), other
    (job.out / "compare_failed.json").write_text(json.dumps(cmd))
    assert runner.has_failed(job) and not runner.has_failed(runner.job(tmp_path, "gpt2", "x", 1, cmd + ["--seed", "2"]))
    (job.out / "checkpoint-20").mkdir()
    (job.out / "checkpoint-20" / "trainer_state.json").write_text("{}")
    assert runner.launch_command(job) == cmd + ["--resume_from_checkpoint", "latest"]


def test_compare_table_on_runs_with_known_answers(tmp_path):
    """Scratch falls linearly to 3.0 at 1e16 FLOPs (seed 2: with a dip to 2.99 at 5e15); apollo reaches 3.0 at 60%
    (seed 1) and 80% (seed 2) of that; stack stalls at 3.5, which scratch (seed 1) reached at 9.2857e15 FLOPs while
    stack used 1.1e16."""
    flags = ["--models", "gpt2", "--seeds", "1,2", "--tag", "t", "--runs_dir", str(tmp_path / "runs"),
             "--results_dir", str(tmp_path / "results")]
    args = compare.parse_args(flags)
    stalled = [(10 * k, k * 1e15, 10.0 * k, max(3.5, 10.0 - k)) for k in range(12)]
    slower = [(10 * k, 1e15 * k, 15.0 * k, 10.0 - 7.0 * k / 8.0) for k in range(11)]  # 3.0 at 8e15
    dip = [(step, flops, t, 2.99 if step == 50 else loss) for step, flops, t, loss in reference_evals()]
    for seed, scratch, apollo in ((1, reference_evals(), apollo_evals()), (2, dip, slower)):
        for method, evals in (("scratch", scratch), ("apollo", apollo), ("stack", stalled)):
            write_run(runner.run_dir(args.runs_dir, "gpt2", method, seed, compare.run_command("gpt2", method, seed, args)),
                      evals)
    result = subprocess.run([sys.executable, "benchmarks/compare.py", "--report_only", *flags], cwd=REPO,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    per_seed = json.loads((tmp_path / "results" / "t" / "summary.json").read_text())["per_seed"]["gpt2"]
    assert [per_seed[s]["apollo"]["flops_saved_pct"] for s in "12"] == pytest.approx([40.0, 20.0])
    assert per_seed["1"]["apollo"]["early_delta"] == pytest.approx((10 - 7 * 2.5 / 6) - (10 - 0.7 * 2.5))
    stack = per_seed["1"]["stack"]
    assert not stack["reached_target"] and stack["flops_saved_pct"] == pytest.approx(100 * (1 - 1.1e16 / (6.5 / 0.7 * 1e15)))
    assert stack["equal_flops_delta"] == pytest.approx(3.5 - 3.0) and stack["flops_ratio"] == pytest.approx(1.1)
    # Scratch is its own target, reached at its end by definition, even after an earlier dip below it.
    assert per_seed["2"]["scratch"]["flops_saved_pct"] == 0.0 and per_seed["2"]["scratch"]["wall_saved_pct"] == 0.0
    table = (tmp_path / "results" / "t" / "table.md").read_text()
    assert "| gpt2 | apollo | 2/2 | +30.0% ± 14.1 |" in table and "| gpt2 | scratch | 2/2 | +0.0% ± 0.0 |" in table
    assert (tmp_path / "results" / "t" / "gpt2.png").exists() and (tmp_path / "results" / "t" / "all_seeds.png").exists()


def test_a_command_already_run_under_another_name_uses_that_folder(tmp_path):
    """A run is its command: a second benchmark or phase asking for the same command (any name) gets the folder
    the first one made; another seed, model or command gets its own."""
    cmd = ["--model_type", "gpt2", "--seed", "1", "--learning_rate", "0.002"]
    first = runner.job(tmp_path, "gpt2", "trend-L12-n40-lr0.002", 1, cmd)
    assert runner.job(tmp_path, "gpt2", "sweep-scratch-n40-lr0.002", 1, cmd).out != first.out  # nothing made yet
    first.out.mkdir()
    again = runner.job(tmp_path, "gpt2", "sweep-scratch-n40-lr0.002", 1, cmd)
    assert again.out == first.out and again.cmd == cmd
    other = cmd[:-1] + ["0.004"]
    assert runner.job(tmp_path, "gpt2", "sweep-scratch-n40-lr0.004", 1, other).out.name.startswith("gpt2-sweep-")
    assert runner.job(tmp_path, "bert", "sweep-scratch-n40-lr0.002", 1, cmd).out.name.startswith("bert-sweep-")
    assert runner.job(tmp_path, "gpt2", "trend-L12-n40-lr0.002", 1, cmd).out == first.out  # its own name: itself


def test_a_run_another_runner_is_training_is_waited_for_not_started_twice(tmp_path, capsys):
    """Two phases may share a run (same command). While another runner's process trains it (its lock names a live
    process whose command line holds the folder), this runner does not start it; it waits, and counts the run as
    done once the other one finished it. A stale lock (the pid now runs something else) holds nothing."""
    cmd = ["--model_type", "gpt2", "--seed", "1", "--no_such_flag"]  # if launched here, it fails at once
    job = runner.job(tmp_path, "gpt2", "trend-L12-n40-lr0.002", 1, cmd)
    job.out.mkdir()
    runner.lock_path(job).parent.mkdir()
    runner.lock_path(job).write_text(str(os.getpid()))  # this test process: its command line names no run folder
    assert runner.holder(job) is None
    finish = (f"import json, sys, time; from pathlib import Path; out = Path(sys.argv[1]); time.sleep(3); "
              f"(out / 'model.safetensors').write_bytes(b''); (out / {runner.DONE!r}).write_text(json.dumps({cmd!r}))")
    other = subprocess.Popen([sys.executable, "-c", finish, str(job.out)])
    runner.lock_path(job).write_text(str(other.pid))
    assert runner.holder(job) == other.pid
    times = runner.run([job], parallel=1, threads=1)
    assert other.wait() == 0 and times == {} and runner.is_done(job)
    out = capsys.readouterr().out
    assert f"{job.out.name} is being trained by another runner (pid {other.pid})" in out
    assert f"{job.out.name} was ended by another runner" in out and "[runner] start" not in out
