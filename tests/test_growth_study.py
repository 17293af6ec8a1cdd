"""benchmarks/growth_study.py end to end on a tiny preset: the gate's runs, its verdict and its numbers.

The verdict is recomputed here from the runs' own metrics.jsonl (final eval losses) and a unigram
count of the training text, independently of the script's report code.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch

from conftest import REPO, final_weights, read_jsonl, subprocess_env

sys.path.insert(0, str(REPO / "benchmarks"))


def study(tmp: Path, tiny_corpus, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "benchmarks" / "growth_study.py"), *args, "--preset", "tiny",
           "--runs_dir", str(tmp / "runs"), "--results_dir", str(tmp / "results"), "--extra", " ".join(tiny_corpus)]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)


def test_gate_runs_reports_and_blocks_the_study(tmp_path, tiny_corpus):
    result = study(tmp_path, tiny_corpus, "gate", "--gate_depths", "1,2", "--gate_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "tiny" / "summary.json").read_text())
    gate = summary["gate"]
    finals = {}
    for row in gate["rows"]:
        evals = [r for r in read_jsonl(tmp_path / "runs" / row["run"] / "metrics.jsonl") if "eval_loss" in r]
        assert evals[-1]["step"] == 3  # 3 steps: within one epoch, so no block is seen twice
        finals[row["depth"]] = evals[-1]["eval_loss"]
        assert row["final_eval_loss"] == finals[row["depth"]]
    assert gate["b_margins"] == {"1": finals[1] - finals[2]}
    # The unigram entropy of the training text under the run's tokenizer, counted here.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "runs" / gate["best"]["2"]["run"]))
    train_file = tiny_corpus[tiny_corpus.index("--train_file") + 1]
    counts = Counter(i for line in Path(train_file).read_text().splitlines() if line.strip()
                     for i in tokenizer(line, add_special_tokens=False)["input_ids"])
    n = sum(counts.values())
    entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    assert abs(gate["unigram_entropy"] - entropy) < 1e-9
    assert gate["a_off_plateau"] == (finals[2] <= entropy - 1.5) and gate["complete"]
    assert not gate["passed"]  # 3 steps are nowhere near 1.5 nats below the unigram entropy
    table = (tmp_path / "results" / "tiny" / "table.md").read_text()
    assert f"{finals[2]:.3f}" in table and "not passed" in table

    again = study(tmp_path, tiny_corpus, "gate", "--gate_depths", "1,2", "--gate_steps", "3")
    assert again.returncode == 0 and "[runner] start" not in again.stdout  # finished runs are not repeated

    # A run stopped after its checkpoint at step 2 goes on from there when the study runs again, and ends
    # exactly where it ended uninterrupted (the checkpoints come from the study's periodic saves).
    row = next(r for r in gate["rows"] if r["depth"] == 2)
    run = tmp_path / "runs" / row["run"]
    uninterrupted = final_weights(run)
    (run / "model.safetensors").unlink()
    (run / "compare_cmd.json").unlink()
    shutil.rmtree(run / "checkpoint-3")
    resumed = study(tmp_path, tiny_corpus, "gate", "--gate_depths", "1,2", "--gate_steps", "3")
    assert resumed.returncode == 0 and resumed.stdout.count("[runner] start") == 1, resumed.stderr[-3000:]
    log = (tmp_path / "runs" / "logs" / f"{run.name}.log").read_text()
    assert f"Resumed from {run / 'checkpoint-2'} at step 2" in log
    # The relaunch appended to the first launch's log: a header line per launch, the first run's console kept.
    launches = re.findall(r"^# \S+ \S+ \S+/run_pretrain.py .*$", log, flags=re.M)
    assert len(launches) == 2 and "--resume_from_checkpoint latest" in launches[1] and "--resume" not in launches[0]
    first = log[log.index(launches[0]) + len(launches[0]):log.index(launches[1])]
    assert "step 3: eval_loss" in first
    assert all(torch.equal(w, final_weights(run)[k]) for k, w in uninterrupted.items())
    assert json.loads((run / "compare_cmd.json").read_text()) == row["cmd"]  # done, under the run's own command
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 1, 2, 3] and evals[-1]["eval_loss"] == finals[2]  # none twice
    refused = study(tmp_path, tiny_corpus, "sweep", "--gate_depths", "1,2", "--gate_steps", "3")
    assert refused.returncode != 0 and "the gate has not passed" in refused.stderr


DOCS_FIXTURE = REPO / "tests" / "fixtures" / "docs_corpus" / "expected"  # a corpus the docs builder wrote


def test_a_corpus_preset_refuses_an_unbuilt_corpus_and_trains_on_a_built_one(tmp_path):
    base = [sys.executable, str(REPO / "benchmarks" / "growth_study.py"), "gate", "--dry_run",
            "--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results")]
    (tmp_path / "docs").mkdir()
    refused = subprocess.run(base + ["--preset", "cpu-docs", "--corpus", str(tmp_path / "docs")], cwd=REPO,
                             env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "is not built" in refused.stderr and "build_docs_corpus.py" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
    for preset in ("cpu-docs", "gpu"):  # the GPU preset takes the same corpus instead of a Hub download
        ok = subprocess.run(base + ["--preset", preset, "--corpus", str(DOCS_FIXTURE)], cwd=REPO,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr[-2000:]
        probe = ok.stdout.split()
        folder = "tests/fixtures/docs_corpus/expected"  # relative to the repository: the run folder's hash is too
        assert probe[probe.index("--train_file") + 1] == f"{folder}/train.txt"
        assert probe[probe.index("--validation_file") + 1] == f"{folder}/validation.txt"
        assert "--dataset_dir" not in probe


def test_epoch_length_is_read_from_a_run_on_the_same_data(tmp_path):
    import growth_study

    runs = tmp_path / "runs"
    for name, train_file, steps in (("a-embedded", None, 761), ("b-docs", ["tests/fixtures/docs_corpus/expected/train.txt"], 7000)):
        (runs / name).mkdir(parents=True)
        (runs / name / "run_config.json").write_text(json.dumps({
            "max_seq_length": 128, "per_device_train_batch_size": 16, "tokenizer_vocab_size": 2048,
            "train_file": train_file, "dataset_dir": None, "steps_per_epoch": steps}))
    docs = growth_study.parse_args(["gate", "--preset", "cpu-docs", "--corpus", str(DOCS_FIXTURE), "--runs_dir", str(runs)])
    assert growth_study.one_epoch_steps(docs) == 7000
    assert growth_study.one_epoch_steps(growth_study.parse_args(["gate", "--preset", "cpu", "--runs_dir", str(runs)])) == 761


def test_the_gate_table_tells_an_unfinished_run_from_one_not_started(tmp_path):
    """While the gate runs, the committed table shows each unfinished run's newest eval (step and loss, read
    here from its metrics.jsonl) and never counts it as a final loss."""
    import growth_study
    import runner

    def folder(name, evals, finished):
        out = tmp_path / name
        out.mkdir()
        lines = [{"step": s, "eval_loss": v} for s, v in evals] + [{"step": 9, "loss": 1.0}]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if finished:
            (out / "model.safetensors").write_bytes(b"")
        return out

    meta = lambda depth, lr: {"phase": "gate", "depth": depth, "lr": lr, "seed": 1, "steps": 40}
    jobs = [runner.Job("gpt2", folder("done", [(0, 7.0), (40, 3.5)], True), ["a"], meta(1, 1e-3)),
            runner.Job("gpt2", folder("half", [(0, 7.0), (10, 4.25), (20, 3.875)], False), ["b"], meta(2, 1e-3)),
            runner.Job("gpt2", tmp_path / "never", ["c"], meta(2, 2e-3))]
    args = growth_study.parse_args(["gate", "--preset", "tiny", "--gate_depths", "1,2", "--runs_dir", str(tmp_path)])
    gate = growth_study.gate_report(args, jobs)
    assert [r["final_eval_loss"] for r in gate["rows"]] == [3.5, None, None]
    assert gate["rows"][1]["latest_eval"] == {"step": 20, "eval_loss": 3.875} and gate["rows"][2]["latest_eval"] is None
    assert gate["best"]["2"] is None and not gate["complete"] and "b_margins" not in gate
    table = growth_study.gate_table(gate, [1e-3, 2e-3], [1, 2]).splitlines()
    assert table[2] == "| 1 | 3.500 | - | 3.500 (lr 0.001) |"
    assert table[3] == "| 2 | (unfinished: 3.875 at step 20 of 40) | (not started) | - |"


def test_a_gate_of_one_depth_has_no_verdict_and_its_trend_table_has_no_lead(tmp_path, monkeypatch):
    """Runs added to a gate by hand (--gate_depths 12 --gate_lrs X) report their losses; with no shallower
    depth there is nothing to compare, so the gate neither passes nor crashes in its trend table."""
    import growth_study
    import runner

    out = tmp_path / "L2"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 40, "eval_loss": 2.5}) + "\n")
    (out / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(growth_study, "unigram_entropy", lambda run, cmd: 6.0)  # 3.5 nats above the loss
    job = runner.Job("gpt2", out, ["a"], {"phase": "gate", "depth": 2, "lr": 1e-3, "seed": 1, "steps": 40})
    args = growth_study.parse_args(["gate", "--preset", "tiny", "--gate_depths", "2", "--runs_dir", str(tmp_path)])
    gate = growth_study.gate_report(args, [job])
    assert gate["complete"] and gate["a_off_plateau"] and "b_depth_pays" not in gate and not gate["passed"]
    table, trend = growth_study.trend_table(gate, [], 2048, [2])
    assert trend == [{"steps": 40, "losses": {"2": 2.5}, "lrs": {"2": 1e-3}, "lead": None}]
    assert table.splitlines()[-1] == "| 40 | 8.19e+04 | 2.500 (0.001) | - |"


def test_the_savings_table_says_at_which_lengths_depth_pays():
    """Each (length, method) row carries the trend's full-depth scratch lead at that length, so a saving at a
    length where a shallow model is as good (or better) is not read as growth paying."""
    import growth_study

    def cell(tokens, saved):
        return [{"seed": 1, "lr": 2e-3, "tokens": tokens, "reached_target": True, "flops_saved_pct": saved, "final_loss": 3.5,
                 "equal_flops_delta": -0.01, "flops_ratio": 0.8, "wall_ratio": 0.9}]

    cells = {"800:apollo": cell(1.6e6, 30.0), "100:apollo": cell(2e5, 60.0), "100:scratch": cell(2e5, 0.0)}
    lines = growth_study.lengths_table(cells, {100: -0.05, 800: 0.125}).splitlines()
    assert lines[0].endswith("| 12-layer scratch lead over shallower (trend) |")
    assert [line.split(" | ")[:4] for line in lines[2:]] == [["| 100", "2e+05", "scratch", "0.002"],
                                                           ["| 100", "2e+05", "apollo", "0.002"],
                                                           ["| 800", "1.6e+06", "apollo", "0.002"]]
    assert lines[3].endswith("| +60.0% | 3.500 | -0.010 | 0.800 | 0.90 | -0.050 (depth does not pay) |")
    assert lines[4].endswith("| +30.0% | 3.500 | -0.010 | 0.800 | 0.90 | +0.125 (depth pays) |")
    assert growth_study.lengths_table(cells).splitlines()[2].endswith("| - |")  # no trend run at that length


def test_each_length_of_the_study_uses_the_lr_swept_best_at_that_length(tmp_path):
    """The sweep tries every LR at every length (the best LR moves with the length: warmup is a share of the
    run); each lengths cell then trains at its own length's best LR, and its seed-1 run is the sweep's run.
    With --sweep_at middle, only the middle length is swept and every length takes its LR."""
    import growth_study

    base = ["sweep", "--preset", "tiny", "--runs_dir", str(tmp_path), "--lengths", "0.25,0.5,1.0",
            "--sweep_lrs", "1e-3,2e-3", "--methods", "scratch,apollo", "--seeds", "1,2"]
    args = growth_study.parse_args(base)
    sweep = growth_study.study_jobs(args, "sweep", 400, {})
    assert sorted((j.meta["steps"], j.meta["lr"], j.meta["method"]) for j in sweep) == sorted(
        (n, lr, m) for n in (100, 200, 400) for lr in (1e-3, 2e-3) for m in ("scratch", "apollo"))
    # Final losses for the sweep's runs: at 100 steps lr 2e-3 is best, at 200 and 400 lr 1e-3 (apollo at 400: 2e-3).
    winner = {100: 2e-3, 200: 1e-3, 400: 1e-3}
    for job in sweep:
        job.out.mkdir(parents=True)
        won = job.meta["lr"] == (2e-3 if (job.meta["method"], job.meta["steps"]) == ("apollo", 400)
                                 else winner[job.meta["steps"]])
        (job.out / "metrics.jsonl").write_text(json.dumps({"step": job.meta["steps"], "eval_loss": 3.0 if won else 3.5}) + "\n")
        (job.out / "model.safetensors").write_bytes(b"")
    best = growth_study.best_swept_lrs(sweep)
    assert best[("apollo", 400)] == (2e-3, 3.0) and best[("scratch", 100)] == (2e-3, 3.0)
    lengths = growth_study.study_jobs(args, "lengths", 400, {k: v[0] for k, v in best.items()})
    cells = {(j.meta["steps"], j.meta["method"], j.meta["seed"]): j for j in lengths}
    assert sorted(cells) == sorted((n, m, s) for n in (100, 200, 400) for m in ("scratch", "apollo")
                                   for s in ((1, 2, 3) if n == 100 else (1, 2)))
    for (steps, method, seed), job in cells.items():
        expected = 2e-3 if (method, steps) == ("apollo", 400) else winner[steps]
        assert job.meta["lr"] == expected, (steps, method, seed)
        sweep_run = [j for j in sweep if (j.meta["steps"], j.meta["method"], j.meta["lr"]) == (steps, method, expected)]
        assert (job.out == sweep_run[0].out) == (seed == 1)  # not trained twice; other seeds get their own folder

    middle = growth_study.parse_args(base + ["--sweep_at", "middle"])
    sweep = growth_study.study_jobs(middle, "sweep", 400, {})
    assert {j.meta["steps"] for j in sweep} == {200} and len(sweep) == 4
    lengths = growth_study.study_jobs(middle, "lengths", 400, {("scratch", 200): 1e-3, ("apollo", 200): 2e-3})
    assert {(j.meta["method"], j.meta["lr"]) for j in lengths} == {("scratch", 1e-3), ("apollo", 2e-3)}
    # A method whose sweep runs all failed takes scratch's LR rather than being dropped.
    assert growth_study.lr_at({("scratch", 100): 4e-3, ("scratch", 400): 1e-3}, "late", 300) == 1e-3


def test_more_gate_seeds_rerun_each_depths_best_lr_and_the_verdict_takes_the_mean(tmp_path, monkeypatch):
    """--gate_seeds 1,2: the LR grid at seed 1, then each depth's best LR at seed 2 (only once that depth's grid
    has ended); (b) compares the mean final losses, computed here from the fabricated runs' losses."""
    import growth_study

    monkeypatch.setattr(growth_study, "unigram_entropy", lambda run, cmd: 6.0)

    def finish(job, loss):
        job.out.mkdir(parents=True, exist_ok=True)
        (job.out / "metrics.jsonl").write_text(json.dumps({"step": 40, "eval_loss": loss}) + "\n")
        (job.out / "model.safetensors").write_bytes(b"")

    args = growth_study.parse_args(["gate", "--preset", "tiny", "--gate_depths", "2,6", "--gate_lrs", "1e-3,2e-3",
                                    "--gate_seeds", "1,2", "--runs_dir", str(tmp_path)])
    grid = growth_study.gate_jobs(args, 40)
    assert {j.meta["seed"] for j in grid} == {1} and len(grid) == 4
    grid_loss = {(2, 1e-3): 3.60, (2, 2e-3): 3.55, (6, 1e-3): 3.47, (6, 2e-3): 3.50}  # seed 1: 6 leads 2 by 0.08
    for job in grid:
        if job.meta["depth"] == 6:
            finish(job, grid_loss[6, job.meta["lr"]])
    finish(next(j for j in grid if j.meta["depth"] == 2), 3.60)  # one of depth 2's two runs ended
    seeds = growth_study.gate_seed_jobs(args, 40, grid)
    assert [(j.meta["depth"], j.meta["lr"], j.meta["seed"]) for j in seeds] == [(6, 1e-3, 2)]  # depth 2 still open
    for job in grid:
        finish(job, grid_loss[job.meta["depth"], job.meta["lr"]])
    seeds = growth_study.gate_seed_jobs(args, 40, grid)
    assert sorted((j.meta["depth"], j.meta["lr"], j.meta["seed"]) for j in seeds) == [(2, 2e-3, 2), (6, 1e-3, 2)]
    for job in seeds:
        cmd = job.cmd
        assert cmd[cmd.index("--seed") + 1] == "2" and float(cmd[cmd.index("--learning_rate") + 1]) == job.meta["lr"]
        assert job.out not in {g.out for g in grid}

    one_seed = growth_study.gate_report(args, grid)
    assert one_seed["complete"] and not one_seed["b_depth_pays"]  # 0.08 on seed 1 alone
    pending = growth_study.gate_report(args, grid, seeds)
    assert pending["grid_complete"] and not pending["complete"] and not pending["passed"]
    seed2 = {2: 3.62, 6: 3.46}  # seed 2: 6 leads 2 by 0.16
    for job in seeds:
        finish(job, seed2[job.meta["depth"]])
    gate = growth_study.gate_report(args, grid, seeds)
    mean2, mean6 = (3.55 + 3.62) / 2, (3.47 + 3.46) / 2
    assert gate["complete"] and abs(gate["b_margins"]["2"] - (mean2 - mean6)) < 1e-12 and gate["b_depth_pays"]
    assert gate["b_margins_by_seed"]["2"] == {"1": 3.55 - 3.47, "2": 3.62 - 3.46}
    assert abs(gate["a_margin"] - (6.0 - mean6)) < 1e-12 and gate["passed"]
    assert gate["best"]["6"]["lr"] == 1e-3 and gate["best"]["6"]["seed"] == 1  # the best LR stays the grid's
    table = growth_study.gate_seeds_table(gate, [2, 6]).splitlines()
    assert table[0] == "| depth | lr | seed 1 | seed 2 | mean ± std | 6-layer lead (mean ± std) |"
    assert table[2] == "| 2 | 0.002 | 3.550 | 3.620 | 3.585 ± 0.049 | +0.120 ± 0.057 |"
    assert table[3] == "| 6 | 0.001 | 3.470 | 3.460 | 3.465 ± 0.007 | - |"


def test_scratch_runs_the_gate_or_trend_already_made_are_not_trained_again(tmp_path):
    """12-layer scratch at seed 1 is the same command as the gate's (one epoch) and the trend's (shorter) run at
    the same LR: once those folders exist, the sweep and lengths phases use them instead of training again."""
    import growth_study

    args = growth_study.parse_args(["sweep", "--preset", "tiny", "--runs_dir", str(tmp_path), "--lengths", "0.25,1.0",
                                    "--gate_depths", "2,12", "--gate_lrs", "1e-3,2e-3", "--trend_lrs", "1e-3",
                                    "--sweep_lrs", "1e-3,2e-3,4e-3", "--methods", "scratch,apollo"])
    fresh = growth_study.study_jobs(args, "sweep", 400, {})  # before any run exists: the sweep's own folders
    gate = growth_study.gate_jobs(args, 400)
    trend = growth_study.trend_jobs(args, 400, {"best": {"2": {"lr": 1e-3}, "12": {"lr": 2e-3}}})
    made = {(j.meta["depth"], j.meta["steps"], j.meta["lr"]): j.out for j in gate + trend if j.meta["depth"] == 12}
    assert set(made) == {(12, 400, 1e-3), (12, 400, 2e-3), (12, 100, 1e-3), (12, 100, 2e-3)}
    for job in gate + trend:
        job.out.mkdir(parents=True)
    sweep = growth_study.study_jobs(args, "sweep", 400, {})
    for before, job in zip(fresh, sweep):
        assert job.cmd == before.cmd and job.meta == before.meta
        key = (12, job.meta["steps"], job.meta["lr"])
        if job.meta["method"] == "scratch" and key in made:
            assert job.out == made[key] != before.out
        else:
            assert job.out == before.out and job.out not in made.values()
    assert sum(job.out in made.values() for job in sweep) == 4 and len(sweep) == 12  # lr 4e-3, apollo: new


def test_the_lengths_table_waits_for_a_growth_method(tmp_path):
    """Finished scratch runs alone (the gate's and trend's, shared with the sweep) make no savings table; the
    first finished growth run at a length makes its row and scratch's, with the saving computed against it."""
    import growth_study
    import runner
    from test_plot import apollo_evals, reference_evals, write_run

    def job(name, method, evals):
        write_run(tmp_path / name, evals)
        (tmp_path / name / "model.safetensors").write_bytes(b"")
        return runner.Job("gpt2", tmp_path / name, [name], {"steps": 100, "method": method, "seed": 1, "lr": 2e-3})

    scratch = job("scratch", "scratch", reference_evals())
    assert growth_study.lengths_report([scratch]) == {}
    cells = growth_study.lengths_report([scratch, job("apollo", "apollo", apollo_evals())])
    assert sorted(cells) == ["100:apollo", "100:scratch"]
    assert abs(cells["100:apollo"][0]["flops_saved_pct"] - 40.0) < 1e-9  # 3.0 at 60% of scratch's FLOPs
