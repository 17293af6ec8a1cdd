#!/usr/bin/env python
"""When does growth pay? A training-length study of scratch vs growth schedules (GPT-2), gated.

    python benchmarks/growth_study.py gate          # 1. is this a regime where growth is a question at all?
    python benchmarks/growth_study.py sweep         # 2. peak LR per method at every length (needs the gate)
    python benchmarks/growth_study.py lengths       # 3. every method at every length, several seeds
    python benchmarks/growth_study.py trend         # the gate's depths at their best LR at shorter lengths
    python benchmarks/growth_study.py report        # tables + figure from whatever runs exist (no training)
    python benchmarks/growth_study.py gate --preset gpu --dataset_dir DIR   # the same on one GPU (README)
    python benchmarks/growth_study.py gate --preset cpu-docs    # the gate on the documentation corpus
    python benchmarks/growth_study.py gate --preset gpu --corpus data/docs  # ... on one GPU, no network

The gate comes first because a growth "saving" means nothing where depth does not pay: if a
2-layer model trained on the same tokens beats the 12-layer one, growing into 12 layers cannot be
judged against it (measured-facts: on the embedded corpus the 2-layer model wins at 4M tokens).
Gate, each condition measured and reported:
  (a) off the plateau: the best 12-layer scratch run ends >= 1.5 nats below the unigram entropy of
      the training text under the run's tokenizer;
  (b) depth pays: with each depth at its own best peak LR (from --gate_lrs), 12-layer scratch ends
      >= 0.1 nats below both the 2- and the 4-layer scratch runs; one epoch at most, so no
      training block is seen twice. With --gate_seeds 1,2 each depth's best LR runs again at
      seed 2 and both conditions use the mean final loss over the seeds.
The later phases refuse to start unless the gate passed (--force overrides, for a look only).

Methods (all GPT-2, same data, tokenizer, batch, token budget, schedule shape, evaluation):
  scratch      the full model from step 0
  apollo       the official full-scale recipe: layers 1,3,6,12, stages end at 5/10/25% of the run,
               LVPS depth sampling, interpolation (extend) growth
  stack        progressive stacking: same stages, depth = unique layers, stack growth
  late         one late growth: 2 layers (stacked) to 12 at 80% of the run
  apollo_knobs Apollo with the knob settings of --knobs (growth warmup, growth noise, WSD)

Every run is a `run_pretrain.py` command; its folder is named by a hash of the command (`runner.py`),
so re-running a phase skips finished runs and continues a stopped one from its newest checkpoint (saved
every 5% of a run, and on SIGTERM/SIGINT): resume a killed study by running it again. Results go to
benchmarks/results/growth_study/<preset>/ (summary.json, tables, figure); run folders (models,
not committed) to runs/growth_study/.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apollo.plot import format_over_seeds, load_run, mean_std, versus_reference  # noqa: E402
from benchmarks import runner  # noqa: E402
from benchmarks.runner import Job  # noqa: E402

# Model, data and evaluation of each preset; everything else is shared.
PRESETS = {
    # 2 CPU cores: width 128 (4 heads), no dropout, a 2k BPE trained on the embedded corpus (about
    # 2M training tokens: one epoch is ~950 steps of 16 x 128).
    "cpu": dict(width=128, heads=4, vocab=2048, seq=128, batch=16, dropout=0.0, eval_samples=200,
                gate_lrs="1e-3,2e-3,4e-3", jobs=2, threads=1, precision="no"),
    # The same on the ~45 MB documentation corpus (data/build_docs_corpus.py; ~14M training tokens at
    # this 2k BPE, one epoch ~7,000 steps), where the 12-layer deficit closed to 0.04 nats in a pilot.
    "cpu-docs": dict(width=128, heads=4, vocab=2048, seq=128, batch=16, dropout=0.0, eval_samples=200,
                     gate_lrs="1e-3,2e-3,4e-3", jobs=2, threads=1, precision="no", corpus="data/docs"),
    # One GPU: GPT2-Base width (768, 12 heads), sequence 512, bf16, a 32k BPE; data from
    # download_train_datasets.py (--dataset_dir), since 2M embedded tokens are far too few.
    # For the tests: seconds per run.
    "tiny": dict(width=32, heads=2, vocab=512, seq=32, batch=4, dropout=0.0, eval_samples=8,
                 gate_lrs="1e-3", jobs=1, threads=1, precision="no"),
    "gpu": dict(width=768, heads=12, vocab=32768, seq=512, batch=32, dropout=0.0, eval_samples=400,
                gate_lrs="3e-4,6e-4,1.2e-3", jobs=1, threads=8, precision="bf16"),
}
DEPTH = 12
PLATEAU_MARGIN = 1.5  # (a): nats the full-depth model must end below the unigram entropy
DEPTH_LEAD = 0.1  # (b): nats it must end below each shallower model (the gate, and per length in the savings table)
METHODS = ("scratch", "apollo", "stack", "late", "apollo_knobs")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("phase", choices=("gate", "trend", "sweep", "lengths", "report"), help="What to run (see above).")
    a("--preset", default="cpu", choices=sorted(PRESETS), help="Model/data size (see PRESETS).")
    a("--dataset_dir", help="A dataset saved by download_train_datasets.py (default: the embedded corpus).")
    a("--corpus", help="A folder with train.txt and validation.txt, e.g. data/docs from data/build_docs_corpus.py "
                       "(the cpu-docs preset's default); with --preset gpu, a GPU machine needs no network.")
    a("--gate_depths", default="2,4,12", help="Depths of the gate's scratch runs (the last is the full depth).")
    a("--gate_lrs", help="Peak LRs tried per depth in the gate (default: the preset's).")
    a("--gate_seeds", default="1",
      help="Seeds of the gate: its LR grid runs at the first; each depth's best LR runs again at the others, and "
           "(b) compares the depths' mean final losses over the seeds.")
    a("--gate_steps", type=int, help="Steps of the gate runs (default: one epoch; never more: no block twice).")
    a("--lengths", default="0.125,0.25,0.5,1.0", help="Training lengths as shares of one epoch (>= 8x apart).")
    a("--trend_lrs", help="Peak LRs the trend phase tries at every length besides each depth's best gate LR; "
                            "each depth is reported at its best LR of those tried at that length.")
    a("--sweep_lrs", help="Peak LRs of the sweep (default: --gate_lrs).")
    a("--sweep_at", choices=("every", "middle"), default="every",
      help="Lengths at which the sweep tries each method's LRs: every length (each length's cells use the LR best "
           "at that length) or only the middle one (one length's runs; every length then uses its LRs).")
    a("--lr", type=float, help="Skip the sweep: every method of the lengths phase uses this peak LR.")
    a("--methods", default=",".join(METHODS), help="Methods of the sweep and lengths phases.")
    a("--knobs", default="--growth_warmup_steps 0.02 --growth_noise 0.01",
      help="run_pretrain.py flags of apollo_knobs (growth warmup as a share of the run, noise, ...).")
    a("--seeds", default="1,2", help="Seeds per cell of the lengths phase (the shortest length adds one more).")
    a("--warmup_ratio", type=float, default=0.025, help="Linear warmup share (the official 0.025).")
    a("--extra", default="", help="Extra run_pretrain.py flags for every run, e.g. '--train_file A --validation_file B'.")
    a("--force", action="store_true", help="Run sweep/lengths even though the gate did not pass.")
    a("--jobs", type=int, help="Runs in parallel (default: the preset's).")
    a("--threads", type=int, help="OMP threads per run (default: the preset's).")
    a("--runs_dir", default=str(REPO / "runs" / "growth_study"), help="Where run folders go (large).")
    a("--results_dir", default=str(REPO / "benchmarks" / "results" / "growth_study"), help="Where results go.")
    a("--dry_run", action="store_true", help="Print the commands and exit.")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    args.corpus = corpus_path(args.corpus, preset.get("corpus"), args.dataset_dir)
    args.gate_lrs = args.gate_lrs or preset["gate_lrs"]
    args.sweep_lrs = args.sweep_lrs or args.gate_lrs
    args.jobs = args.jobs or preset["jobs"]
    args.threads = args.threads or preset["threads"]
    # Results per preset; a corpus the preset does not name adds its folder's name (gpu + data/docs: gpu-docs).
    own = args.corpus in (None, preset.get("corpus"))
    args.results = Path(args.results_dir) / (args.preset if own else f"{args.preset}-{Path(args.corpus).name}")
    return args


def corpus_path(given: str | None, preset_corpus: str | None, dataset_dir: str | None) -> str | None:
    """The corpus folder as the runs' commands name it, or None. Relative to the repository root when inside it
    (runs start there), so that a run folder's name, a hash of its command, is the same in every checkout."""
    if given is None and preset_corpus is None:
        return None
    if dataset_dir:
        sys.exit("growth_study.py: give --corpus or --dataset_dir, not both")
    path = Path(given).resolve() if given else REPO / preset_corpus  # a preset's is relative to the repository
    missing = [f for f in ("train.txt", "validation.txt") if not (path / f).is_file()]
    if missing:
        sys.exit(f"growth_study.py: the corpus {given or preset_corpus} is not built (no {' or '.join(missing)}): "
                 f"run `python data/build_docs_corpus.py --out {given or preset_corpus}` first")
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------
def base_command(args, depth: int, steps: int, lr: float, seed: int) -> list[str]:
    """Flags shared by every run of the study: model, data, budget, LR schedule, evaluation."""
    pr = PRESETS[args.preset]
    d = pr["dropout"]
    cmd = ["--model_type", "gpt2",
           "--config_overrides", f"n_layer={depth},n_embd={pr['width']},n_head={pr['heads']},"
                                 f"resid_pdrop={d},embd_pdrop={d},attn_pdrop={d}",
           "--tokenizer_vocab_size", pr["vocab"], "--max_seq_length", pr["seq"],
           "--per_device_train_batch_size", pr["batch"], "--num_train_epochs", 1, "--max_train_steps", steps,
           "--learning_rate", lr, "--lr_scheduler_type", "cosine", "--warmup_ratio", args.warmup_ratio,
           "--weight_decay", 0.01, "--eval_steps", max(1, round(steps / 20)),  # ~every 5% of the run
           "--max_eval_samples", pr["eval_samples"], "--save_strategy", "no",
           "--logging_steps", max(1, steps // 10), "--seed", seed, "--mixed_precision", pr["precision"]]
    if args.dataset_dir:
        cmd += ["--dataset_dir", args.dataset_dir]
    if args.corpus:
        cmd += ["--train_file", f"{args.corpus}/train.txt", "--validation_file", f"{args.corpus}/validation.txt"]
    return [str(x) for x in cmd + args.extra.split()]


def method_flags(method: str, steps: int, args) -> list[str]:
    """Schedule flags of a growth method, stage ends as shares of the run (--apollo_step_list fractions)."""
    if method == "scratch":
        return []
    if method == "late":
        return ["--apollo_layers", f"2,{DEPTH}", "--apollo_step_list", "0.8,1.0", "--dist_function", "constant_low",
                "--grow_method", "stack"]
    flags = ["--apollo_layers", f"1,3,6,{DEPTH}", "--apollo_step_list", "0.05,0.1,0.25,1.0"]
    if method == "stack":
        return flags + ["--dist_function", "constant_low", "--grow_method", "stack"]
    flags += ["--dist_function", "lvps", "--grow_method", "extend"]
    if method == "apollo_knobs":
        flags += knob_flags(args.knobs, steps)
    return flags


def knob_flags(knobs: str, steps: int) -> list[str]:
    """--knobs with a fractional --growth_warmup_steps turned into steps of this run's length."""
    words = knobs.split()
    for i, w in enumerate(words[:-1]):
        if w == "--growth_warmup_steps" and "." in words[i + 1]:
            words[i + 1] = str(max(1, round(float(words[i + 1]) * steps)))
    return words


def one_epoch_steps(args) -> int:
    """Optimizer steps in one epoch of the preset's data, read from a finished run's resolved config."""
    probe = base_command(args, 2, 1, 1e-3, 1)
    data = [probe[probe.index(flag) + 1] if flag in probe else None for flag in ("--train_file", "--dataset_dir")]
    for config in sorted(Path(args.runs_dir).glob("*/run_config.json")):
        c = json.loads(config.read_text())
        pr = PRESETS[args.preset]
        if (c.get("max_seq_length"), c.get("per_device_train_batch_size"), c.get("tokenizer_vocab_size"),
                (c.get("train_file") or [None])[0], c.get("dataset_dir")) == (pr["seq"], pr["batch"], pr["vocab"], *data):
            return int(c["steps_per_epoch"])
    return 0


# ----------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------
def probe_job(args) -> Job:
    """One short run of the shallowest model: it prepares the data and tells the epoch length."""
    return runner.job(args.runs_dir, "gpt2", "probe", 1, base_command(args, 2, 1, 1e-3, 1), {"phase": "probe"})


def gate_jobs(args, steps: int) -> list[Job]:
    """The gate's grid: every depth at every LR, at the first of --gate_seeds."""
    seed = int(args.gate_seeds.split(",")[0])
    return [_gate_job(args, depth, lr, seed, steps)
            for lr in map(float, args.gate_lrs.split(","))  # LR-major: the first results compare depths
            for depth in sorted(map(int, args.gate_depths.split(",")), reverse=True)]  # longest first


def gate_seed_jobs(args, steps: int, grid: list[Job]) -> list[Job]:
    """Each depth's best grid LR again at the other --gate_seeds, once all of that depth's grid runs ended."""
    jobs = []
    for seed in [int(x) for x in args.gate_seeds.split(",")][1:]:
        for depth, row in grid_best(grid).items():
            jobs.append(_gate_job(args, depth, row["lr"], seed, steps))
    return jobs


def _gate_job(args, depth: int, lr: float, seed: int, steps: int) -> Job:
    return runner.job(args.runs_dir, "gpt2", f"gate-L{depth}-lr{lr:g}", seed, base_command(args, depth, steps, lr, seed),
                      {"phase": "gate", "depth": depth, "lr": lr, "seed": seed, "steps": steps})


def grid_best(grid: list[Job]) -> dict[int, dict]:
    """Depth -> the row of its best grid run, for the depths whose grid runs all ended."""
    rows = [gate_row(job) for job in grid]
    open_depths = {r["depth"] for r in rows if r["final_eval_loss"] is None and not r["diverged"]}
    return {d: row for d, row in best_by_depth(rows).items() if d not in open_depths}


def best_by_depth(rows: list[dict]) -> dict[int, dict]:
    """Depth -> its row with the lowest final loss (rows without one are skipped)."""
    best = {}
    for row in rows:
        loss, depth = row["final_eval_loss"], row["depth"]
        if loss is not None and (depth not in best or loss < best[depth]["final_eval_loss"]):
            best[depth] = row
    return best


def trend_jobs(args, epoch_steps: int, gate: dict) -> list[Job]:
    """Scratch at every gate depth, at its best gate LR, at the --lengths shorter than one epoch: does the
    full-depth model's deficit against the shallow ones shrink with training tokens?"""
    jobs = []
    for share in [float(x) for x in args.lengths.split(",") if float(x) < 1]:
        steps = max(20, round(share * epoch_steps))
        for depth in sorted(map(int, args.gate_depths.split(",")), reverse=True):
            best = (gate.get("best") or {}).get(str(depth))
            if not best:
                continue
            extra = [float(x) for x in args.trend_lrs.split(",")] if args.trend_lrs else []
            for lr in sorted({best["lr"], *extra}):
                jobs.append(runner.job(args.runs_dir, "gpt2", f"trend-L{depth}-n{steps}-lr{lr:g}", 1,
                                       base_command(args, depth, steps, lr, 1),
                                       {"phase": "trend", "depth": depth, "lr": lr, "seed": 1, "steps": steps}))
    return jobs


def trend_table(gate: dict, jobs, tokens_per_step: int, depths: list[int]) -> tuple[str, list[dict]]:
    """Final eval loss per (length, depth), the gate's one-epoch runs included, and the full depth's lead."""
    rows, lrs = {}, {}  # (steps) -> depth -> best final loss over the LRs run at that length, and its LR
    done = [(j.meta, final_eval(j.out)) for j in jobs] + [(r, r["final_eval_loss"]) for r in gate.get("rows", [])]
    for meta, loss in done:
        cell = rows.setdefault(meta["steps"], {})
        if loss is not None and (cell.get(meta["depth"]) is None or loss < cell[meta["depth"]]):
            cell[meta["depth"]] = loss
            lrs[meta["steps"], meta["depth"]] = meta["lr"]
    head = ["steps", "tokens"] + [f"{d} layers" for d in depths] + [f"{depths[-1]}-layer lead over the best shallower"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out = []
    for steps in sorted(rows):
        losses = rows[steps]
        shallow = [losses.get(d) for d in depths[:-1]]
        full = losses.get(depths[-1])
        lead = None if full is None or not shallow or None in shallow else min(shallow) - full
        out.append({"steps": steps, "losses": {str(d): losses.get(d) for d in depths},
                    "lrs": {str(d): lrs.get((steps, d)) for d in depths}, "lead": lead})
        tokens = steps * tokens_per_step
        lines.append("| " + " | ".join([str(steps), f"{tokens:.3g}"] +
                                        ["-" if losses.get(d) is None else f"{losses[d]:.3f} ({lrs[steps, d]:g})"
                                         for d in depths] +
                                        ["-" if lead is None else f"{lead:+.3f}"]) + " |")
    return "\n".join(lines), out



def sweep_steps(args, epoch_steps: int) -> list[int]:
    """Lengths (in steps) of the sweep's runs. Every length by default, because the best peak LR depends on the
    length: warmup is a share of the run, and on cpu-docs the shallow models' best one-epoch LR (4e-3) stalled
    near 6.3 nats for ~80 of 783 steps with its 20 warmup steps (README, the trend on the documentation corpus)."""
    shares = [float(x) for x in args.lengths.split(",")]
    if args.sweep_at == "middle":
        shares = [shares[(len(shares) - 1) // 2]]
    return [max(20, round(share * epoch_steps)) for share in shares]


def study_jobs(args, phase: str, epoch_steps: int, best_lr: dict[tuple[str, int], float]) -> list[Job]:
    """The sweep's runs, or the lengths phase's: every method at every length and seed, at BEST_LR[(method,
    steps)] (see lr_at). A lengths cell whose run the sweep already made (seed 1, a swept length and LR) is that
    sweep run: same command, same folder, not trained twice."""
    methods = args.methods.split(",")
    swept = sweep_steps(args, epoch_steps)
    sweep_lrs = [float(x) for x in args.sweep_lrs.split(",")]
    jobs = []
    if phase == "sweep":
        for steps in swept:
            for lr in sweep_lrs:
                for method in methods:
                    jobs.append(_job(args, method, steps, lr, 1, "sweep"))
        return jobs
    seeds = [int(s) for s in args.seeds.split(",")]
    for i, share in enumerate(float(x) for x in args.lengths.split(",")):
        steps = max(20, round(share * epoch_steps))
        cell_seeds = seeds + ([max(seeds) + 1] if i == 0 else [])  # three seeds at the shortest length
        for seed in cell_seeds:
            for method in methods:
                lr = lr_at(best_lr, method, steps)
                if lr is None:  # neither the method nor scratch has a finished sweep run
                    continue
                made = seed == 1 and steps in swept and lr in sweep_lrs
                jobs.append(_job(args, method, steps, lr, seed, "sweep" if made else "lengths"))
    return jobs


def lr_at(best_lr: dict[tuple[str, int], float], method: str, steps: int) -> float | None:
    """The method's best swept LR at the swept length nearest STEPS (in ratio; the length itself when swept
    there); scratch's when all of the method's sweep runs failed."""
    for name in (method, "scratch"):
        mine = {s: lr for (m, s), lr in best_lr.items() if m == name}
        if mine:
            return mine[min(mine, key=lambda s: (abs(math.log(s / steps)), s))]
    return None


def best_swept_lrs(sweep_jobs: list[Job]) -> dict[tuple[str, int], tuple[float, float]]:
    """(method, steps) -> (LR, final eval loss) of the sweep's best finished run there."""
    best = {}
    for job in sweep_jobs:
        loss, meta = final_eval(job.out), job.meta
        key = (meta["method"], meta["steps"])
        if loss is not None and (key not in best or loss < best[key][1]):
            best[key] = (meta["lr"], loss)
    return best


def _job(args, method, steps, lr, seed, phase) -> Job:
    cmd = base_command(args, DEPTH, steps, lr, seed) + method_flags(method, steps, args)
    return runner.job(args.runs_dir, "gpt2", f"{phase}-{method}-n{steps}-lr{lr:g}", seed, cmd,
                      {"phase": phase, "method": method, "lr": lr, "seed": seed, "steps": steps, "depth": DEPTH})


CHECKPOINTS_PER_RUN = 20  # a run stopped by a signal or killed outright loses at most 5% of its steps


def run_jobs(args, jobs: list[Job]) -> None:
    """Run the phase's runs that are neither done nor failed (high LRs may diverge: the others go on)."""
    try:
        runner.run(jobs, parallel=args.jobs, threads=args.threads, checkpoints=CHECKPOINTS_PER_RUN,
                   allow_failure=True, dry_run=args.dry_run)
    finally:  # also when a stopped run ends the study
        if not args.dry_run:
            for job in jobs:
                if job.out.is_dir() and not (job.out / "study_meta.json").exists():  # the phase that made it
                    (job.out / "study_meta.json").write_text(json.dumps({**job.meta, "cmd": job.cmd}))


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------
def unigram_entropy(run: Path, cmd: list[str]) -> float:
    """Entropy (nats) of the token unigram distribution of the training text under the run's tokenizer."""
    from transformers import AutoTokenizer

    from apollo.corpus import load_text_splits
    from apollo.config import parse_config

    cfg = parse_config(cmd + ["--output_dir", str(run)])
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    counts = Counter()
    with contextlib.chdir(REPO):  # where the run started: its relative paths are relative to the repository
        texts = load_text_splits(cfg)["train"]["text"]
    for lo in range(0, len(texts), 1000):
        for ids in tokenizer(texts[lo:lo + 1000], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def final_eval(out: Path) -> float | None:
    if not (out / "model.safetensors").exists():
        return None
    run = load_run(out)
    return run.evals[-1]["eval_loss"] if run.evals else None


def latest_eval(out: Path) -> dict | None:
    """The newest eval line of a run that has not finished (None before its first eval): where it stands."""
    if not (out / "metrics.jsonl").exists():
        return None
    run = load_run(out)
    return {"step": run.evals[-1]["step"], "eval_loss": run.evals[-1]["eval_loss"]} if run.evals else None


def gate_report(args, jobs: list[Job], seed_jobs: list[Job] = ()) -> dict:
    """The grid's rows, each depth's best, and the verdict; with SEED_JOBS (gate_seed_jobs), the verdict
    compares each depth's mean final loss over the seeds at its best LR (the best LR stays the grid's)."""
    rows = [gate_row(job) for job in jobs]
    best = best_by_depth(rows)
    depths = sorted(map(int, args.gate_depths.split(",")))
    full, shallow = depths[-1], depths[:-1]
    result = {"rows": rows, "best": {str(d): best.get(d) for d in depths}}
    losses = {d: {b["seed"]: b["final_eval_loss"]} for d, b in best.items()}  # depth -> seed -> final loss
    seed_rows = [gate_row(job) for job in seed_jobs]
    for row in seed_rows:
        if row["final_eval_loss"] is not None:
            losses[row["depth"]][row["seed"]] = row["final_eval_loss"]
    mean = {d: statistics.mean(by_seed.values()) for d, by_seed in losses.items()}  # one seed: its loss
    if seed_jobs:
        result["seed_rows"] = seed_rows
        result["seed_losses"] = {str(d): {str(s): v for s, v in sorted(by_seed.items())} for d, by_seed in losses.items()}
    if full in best:
        h = unigram_entropy(Path(args.runs_dir) / best[full]["run"], best[full]["cmd"])
        result["unigram_entropy"] = h
        result["a_off_plateau"] = mean[full] <= h - PLATEAU_MARGIN
        result["a_margin"] = h - mean[full]
    # One depth alone (e.g. an LR added to a gate by hand: --gate_depths 12 --gate_lrs X) has no verdict.
    if full in best and shallow and all(d in best for d in shallow):
        margins = {str(d): mean[d] - mean[full] for d in shallow}
        result["b_margins"] = margins
        result["b_depth_pays"] = all(m >= DEPTH_LEAD for m in margins.values())
        if seed_jobs:  # the lead per seed, where both depths have that seed
            result["b_margins_by_seed"] = {str(d): {str(s): losses[d][s] - losses[full][s] for s in sorted(losses[d])
                                                    if s in losses[full]} for d in shallow}
    ended = lambda r: r["final_eval_loss"] is not None or r["diverged"]
    result["grid_complete"] = all(map(ended, rows))  # enough for the trend: it uses the grid's best LRs
    complete = all(map(ended, rows + seed_rows))
    result["complete"] = complete
    result["passed"] = bool(complete and result.get("a_off_plateau") and result.get("b_depth_pays"))
    return result


def gate_row(job: Job) -> dict:
    loss = final_eval(job.out)
    return {**job.meta, "final_eval_loss": loss, "diverged": runner.has_failed(job), "run": job.out.name,
            "cmd": job.cmd, "latest_eval": None if loss is not None else latest_eval(job.out)}


def unfinished_cell(row: dict) -> str:
    """A gate run without a final loss: not started, or its newest eval (not comparable with final losses:
    its cosine has not ended)."""
    latest = row.get("latest_eval")
    if not latest:
        return "(not started)"
    return f"(unfinished: {latest['eval_loss']:.3f} at step {latest['step']} of {row['steps']})"


def gate_table(gate: dict, lrs: list[float], depths: list[int]) -> str:
    head = ["depth"] + [f"lr {lr:g}" for lr in lrs] + ["best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for depth in depths:
        cells = [str(depth)]
        for lr in lrs:
            r = next((r for r in gate["rows"] if r["depth"] == depth and r["lr"] == lr), None)
            cells.append("-" if r is None else "diverged" if r["diverged"] else
                         f"{r['final_eval_loss']:.3f}" if r["final_eval_loss"] is not None else unfinished_cell(r))
        b = gate["best"].get(str(depth))
        cells.append("-" if not b else f"{b['final_eval_loss']:.3f} (lr {b['lr']:g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gate_seeds_table(gate: dict, depths: list[int]) -> str:
    """Each depth at its best grid LR: the final loss per seed, mean ± std, and the full depth's lead per seed."""
    seeds = sorted({r["seed"] for r in gate["seed_rows"]} | {b["seed"] for b in gate["best"].values() if b})
    full = str(depths[-1])
    head = ["depth", "lr"] + [f"seed {s}" for s in seeds] + ["mean ± std", f"{full}-layer lead (mean ± std)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for depth in map(str, depths):
        best = gate["best"].get(depth)
        if not best:
            continue
        by_seed = gate["seed_losses"].get(depth, {})
        pending = {str(r["seed"]): r for r in gate["seed_rows"] if str(r["depth"]) == depth}
        cells = [f"{by_seed[str(s)]:.3f}" if str(s) in by_seed else
                 unfinished_cell(pending[str(s)]) if str(s) in pending else "-" for s in seeds]
        leads = list(gate.get("b_margins_by_seed", {}).get(depth, {}).values())
        lines.append("| " + " | ".join([depth, f"{best['lr']:g}", *cells, format_over_seeds(list(by_seed.values()), ".3f"),
                                        format_over_seeds(leads, "+.3f") if depth != full else "-"]) + " |")
    return "\n".join(lines)


def lengths_report(jobs: list[Job]) -> dict:
    """Per (steps, method): FLOPs saved at equal loss etc. against the scratch run of the same seed. Empty until a
    growth method has a finished run: scratch alone (at seed 1 also the gate's and the trend's runs) is no study."""
    cells = {}
    done = {(j.meta["steps"], j.meta["method"], j.meta["seed"]): (load_run(j.out), j.meta["lr"]) for j in jobs
            if final_eval(j.out) is not None}
    for (steps, method, seed), (run, lr) in done.items():
        scratch = done.get((steps, "scratch", seed))
        if scratch is not None:
            cells.setdefault(f"{steps}:{method}", []).append({"seed": seed, "lr": lr,
                                                               **versus_reference(run, scratch[0])})
    return cells if any(not key.endswith(":scratch") for key in cells) else {}


def lengths_table(cells: dict, depth_leads: dict[int, float | None] | None = None) -> str:
    """One row per (length, method). DEPTH_LEADS (steps -> the full-depth scratch model's lead over the best
    shallower one at that length, from the trend phase) adds a column: a saving at a length where depth does not
    pay measures how fast a model becomes shallow, not growth (the gate's question, asked per length)."""
    depth_leads = depth_leads or {}
    head = ["steps", "tokens", "method", "peak LR", "seeds", "reached scratch's loss", "FLOPs saved at equal loss",
            "final loss", "Δ loss at equal FLOPs", "FLOPs / scratch", "wall / scratch",
            f"{DEPTH}-layer scratch lead over shallower (trend)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(cells, key=lambda k: (int(k.split(":")[0]), METHODS.index(k.split(":")[1]))):
        steps, method = key.split(":")
        rows = cells[key]
        lines.append("| " + " | ".join([steps, f"{rows[0]['tokens']:.3g}", method, f"{rows[0]['lr']:g}", str(len(rows)),
                                        f"{sum(r['reached_target'] for r in rows)}/{len(rows)}",
                                        format_over_seeds([r["flops_saved_pct"] for r in rows], "+.1f", "%"),
                                        format_over_seeds([r["final_loss"] for r in rows], ".3f"),
                                        format_over_seeds([r["equal_flops_delta"] for r in rows], "+.3f"),
                                        format_over_seeds([r["flops_ratio"] for r in rows], ".3f"),
                                        format_over_seeds([r["wall_ratio"] for r in rows], ".2f"),
                                        depth_lead_cell(depth_leads.get(int(steps)))]) + " |")
    return "\n".join(lines)


def depth_lead_cell(lead: float | None) -> str:
    if lead is None:
        return "-"
    return f"{lead:+.3f} ({'depth pays' if lead >= DEPTH_LEAD else 'depth does not pay'})"


def gate_figure(args, gate: dict, depths: list[int]) -> None:
    """The gate's best run per depth, validation loss against FLOPs, time and steps (apollo.plot);
    the full-depth run is the reference, so the table says what the shallow runs save to reach it."""
    import subprocess

    best = [gate["best"][str(d)] for d in reversed(depths)]
    subprocess.run([sys.executable, "-m", "apollo.plot", *[str(Path(args.runs_dir) / b["run"]) for b in best],
                    "--labels", ",".join(f"{b['depth']} layers (lr {b['lr']:g})" for b in best),
                    "--out", str(args.results / "gate.png"), "--json", str(args.results / "gate.json"),
                    "--title", "Gate: scratch at each depth (its best LR), one epoch, no block repeated"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def savings_figure(cells: dict, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for method in METHODS[1:]:
        pts = []
        for key, rows in cells.items():
            if key.endswith(f":{method}"):
                m, s = mean_std([r["flops_saved_pct"] for r in rows])
                if m is not None:
                    pts.append((rows[0]["tokens"], m, s))
        if pts:
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=3, label=method)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="training tokens", ylabel="FLOPs saved at equal loss vs scratch (%)",
           title="GPT-2: FLOPs saved at scratch's loss, by training length")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    args = parse_args(argv)
    summary_path = args.results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    start = time.time()

    epoch = one_epoch_steps(args)
    if args.phase != "report" and not epoch:
        run_jobs(args, [probe_job(args)])
        epoch = one_epoch_steps(args)
    gate_steps = args.gate_steps or epoch
    if gate_steps > epoch > 0:
        sys.exit(f"--gate_steps {gate_steps} is more than one epoch ({epoch} steps): blocks would repeat")
    gjobs = gate_jobs(args, gate_steps) if gate_steps else []
    if args.phase == "gate":
        run_jobs(args, gjobs)
    sjobs = gate_seed_jobs(args, gate_steps, gjobs)
    if args.phase == "gate":
        run_jobs(args, sjobs)
    gate = gate_report(args, gjobs, sjobs) if gjobs else {}
    tjobs = trend_jobs(args, epoch, gate) if gate.get("grid_complete") else []
    if args.phase == "trend":
        run_jobs(args, tjobs)
    lrs, depths = [float(x) for x in args.gate_lrs.split(",")], sorted(map(int, args.gate_depths.split(",")))
    summary.update(preset=args.preset, preset_config=PRESETS[args.preset], corpus=args.corpus, epoch_steps=epoch, gate=gate,
                   commit=os.popen(f"git -C {REPO} rev-parse HEAD").read().strip())

    if args.phase in ("sweep", "lengths") and not gate.get("passed") and not args.force:
        sys.exit("the gate has not passed (run `gate` first, or see the report): growth cannot be judged here; "
                 "--force runs it anyway")
    sweep_jobs = study_jobs(args, "sweep", epoch, {}) if epoch else []
    if args.phase == "sweep":
        run_jobs(args, sweep_jobs)
    best = best_swept_lrs(sweep_jobs)
    summary["sweep_best_lr"] = {f"{m}:{s}": {"lr": lr, "final_eval_loss": loss} for (m, s), (lr, loss) in best.items()}
    best_lr = {key: lr for key, (lr, _) in best.items()}
    if args.lr:
        best_lr = {(m, s): args.lr for m in args.methods.split(",") for s in sweep_steps(args, epoch)}
    len_jobs = study_jobs(args, "lengths", epoch, best_lr) if best_lr else []
    if args.phase == "lengths":
        run_jobs(args, len_jobs)
    cells = lengths_report(len_jobs) if len_jobs else {}
    summary["lengths"] = cells
    summary[f"{args.phase}_wall_s"] = time.time() - start

    text = [f"# Growth study, preset {args.preset}" + (f", corpus {args.corpus}" if args.corpus else "") + "\n",
            f"One epoch = {epoch} optimizer steps.\n"]
    if gate:
        text += ["## Gate: scratch final eval loss by depth and peak LR\n", gate_table(gate, lrs, depths), "",
                 f"Unigram entropy of the training text: {gate.get('unigram_entropy', float('nan')):.3f} nats. "
                 f"(a) off the plateau: {gate.get('a_off_plateau')} ({depths[-1]}-layer margin "
                 f"{gate.get('a_margin', float('nan')):.3f}, needs >= {PLATEAU_MARGIN}). "
                 f"(b) depth pays: {gate.get('b_depth_pays')}{'' if gate['complete'] else ' so far'} "
                 f"({depths[-1]}-layer lead over shallower models at their best LR"
                 f"{', mean over seeds ' + args.gate_seeds if sjobs else ''}: "
                 f"{', '.join(f'{d} layers {m:.3f}' for d, m in gate.get('b_margins', {}).items()) or '-'}; "
                 f"needs >= {DEPTH_LEAD} each). "
                 f"Gate {'PASSED' if gate['passed'] else 'not passed' if gate['complete'] else 'incomplete'}.\n"]
        if sjobs:
            text += ["### The gate's best LRs at every seed\n", gate_seeds_table(gate, depths), ""]
    if tjobs:
        table, trend = trend_table(gate, tjobs, PRESETS[args.preset]["batch"] * PRESETS[args.preset]["seq"], depths)
        summary["trend"] = trend
        text += ["## Depth against training length (scratch, seed 1; each depth at its best LR among those tried at "
                 "that length, in brackets)\n", table, ""]
    if args.dry_run:  # commands only: nothing is written
        return
    args.results.mkdir(parents=True, exist_ok=True)
    if gate.get("grid_complete") and all(gate["best"].get(str(d)) for d in depths):
        gate_figure(args, gate, depths)
        text += ["![gate](gate.png)\n"]
    if cells:
        leads = {row["steps"]: row["lead"] for row in summary.get("trend", [])}
        text += ["## FLOPs saved at equal loss, by length and method\n", lengths_table(cells, leads), ""]
        savings_figure(cells, args.results / "savings_vs_tokens.png")
    summary_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (args.results / "table.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
