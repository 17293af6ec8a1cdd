#!/usr/bin/env python
"""Side-by-side benchmark: scratch vs Apollo vs progressive stacking, for GPT-2 and BERT, over seeds.

    python benchmarks/compare.py                      # the default (38 CPU-minutes: ~20-25 min on 2 idle cores)
    python benchmarks/compare.py --tag tiny --steps 20 --width 32 --seeds 1 --eval_every 5   # smoke test

For every model and seed it trains, on the embedded corpus with the same tokenizer, batch, token
budget (steps x batch x sequence), learning-rate schedule and evaluation (same held-out blocks, same
cadence, at full depth):
  scratch  the full 12-layer model from step 0;
  apollo   layers 1,3,6,12, LVPS depth sampling, interpolation (`extend`) growth: the paper's method;
  stack    layers 1,3,6,12, depth = unique layers (`constant_low`), `stack` growth: progressive stacking.
Stages end at --stage_fractions of the run (the last stage ends with it).

Then, per seed, `apollo.plot.versus_reference` with scratch as the reference, and over seeds mean and
sample std of:
  FLOPs saved at equal loss  the paper's measure: 1 - FLOPs to reach scratch's final eval loss / scratch's
                             FLOPs. When a run never reaches that loss we measure at the run's own final
                             loss instead (1 - run's FLOPs / FLOPs scratch needed to reach it), which is
                             then negative; the two agree when the final losses are equal. The table says
                             how many seeds reached scratch's loss.
  wall-clock saved           the same on the elapsed training seconds (noisy: shared CPUs).
  loss at equal FLOPs        run's eval loss minus scratch's, at the run's final FLOPs (interpolated), and
                             early in training, at 25% of scratch's FLOPs.
Writes RESULTS/TAG/{table.md, summary.json, <model>.png (seed 1, by `python -m apollo.plot`),
<model>.json, all_seeds.png}. Run folders go to --runs_dir, named by a hash of their command (`runner.py`):
a run whose final model exists with the same command is not run again (resume a killed benchmark by
re-running it), and knob variations reuse the identical scratch runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apollo.plot import format_over_seeds, load_run, versus_reference  # noqa: E402
from benchmarks import runner  # noqa: E402

METHODS = ("scratch", "apollo", "stack")
METHOD_FLAGS = {"apollo": ["--dist_function", "lvps", "--grow_method", "extend"],
                "stack": ["--dist_function", "constant_low", "--grow_method", "stack"]}
DEFAULT_LR = {"gpt2": 3e-4, "bert": 3e-4}
EARLY_FRACTION = 0.25  # "loss at equal FLOPs" is also read at this share of scratch's FLOPs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--tag", default="default", help="Name of this configuration: results go to RESULTS/TAG.")
    a("--models", default="gpt2,bert", help="Comma-separated: gpt2, bert.")
    a("--methods", default=",".join(METHODS), help="Comma-separated subset of scratch,apollo,stack (scratch is "
                                                   "always run: it is the reference).")
    a("--seeds", default="1,2,3", help="Comma-separated seeds (model init, data order, masks, depth draws).")
    # Model and budget
    a("--width", type=int, default=128, help="Hidden size (GPT-2 n_embd, BERT hidden_size).")
    a("--heads", type=int, default=None, help="Attention heads (default: width / 32).")
    a("--vocab", type=int, default=8192, help="Size of the locally trained tokenizer (sets the head's cost).")
    a("--seq", type=int, default=64, help="Tokens per block.")
    a("--batch", type=int, default=8, help="Blocks per optimizer step.")
    a("--steps", type=int, default=200, help="Optimizer steps of every run (token budget = steps x batch x seq).")
    # Apollo / stacking schedule and optimizer
    a("--apollo_layers", default="1,3,6,12", help="Unique layers per stage; the last is the model's depth.")
    a("--stage_fractions", default="0.1,0.2,0.5",
      help="Where each stage but the last ends, as a share of --steps (the debugging examples' 1,2,5 of 10 "
           "epochs; the official full-scale schedule is 0.05,0.1,0.25: 75%% of training at full depth).")
    a("--copy_optimizer_state", action="store_true",
      help="Pass --copy_optimizer_state_on_growth (Adam moments follow the weights at growth).")
    a("--lr_gpt2", type=float, default=DEFAULT_LR["gpt2"], help="Peak learning rate for GPT-2.")
    a("--lr_bert", type=float, default=DEFAULT_LR["bert"], help="Peak learning rate for BERT.")
    a("--warmup_ratio", type=float, default=0.025, help="Linear warmup share (the official 0.025).")
    # Evaluation
    a("--eval_every", type=int, default=10, help="Evaluate every N steps (same for every run).")
    a("--eval_samples", type=int, default=48, help="Held-out blocks evaluated (same fixed set for every run).")
    # Execution
    a("--jobs", type=int, default=2, help="Runs in parallel.")
    a("--threads", type=int, default=None, help="OMP threads per run (default: 2 / jobs, at least 1).")
    a("--runs_dir", default=str(REPO / "runs" / "compare"), help="Where run folders go (large: final models).")
    a("--results_dir", default=str(REPO / "benchmarks" / "results"), help="Where RESULTS/TAG goes.")
    a("--extra", default="", help="Extra run_pretrain.py flags for every run, e.g. '--max_grad_norm 0'.")
    a("--report_only", action="store_true", help="Do not train; summarise the runs that exist.")
    a("--collect", metavar="TAG,TAG,...", help="Do not train; tabulate RESULTS/TAG/summary.json of several "
                                                "configurations against the first (knob variations) into "
                                                "RESULTS/knobs.md.")
    a("--dry_run", action="store_true", help="Print the commands and exit.")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------
def stage_steps(args) -> str:
    fractions = [float(x) for x in args.stage_fractions.split(",")]
    ends = [max(1, round(f * args.steps)) for f in fractions] + [args.steps]
    if len(ends) != len(args.apollo_layers.split(",")):
        sys.exit(f"--stage_fractions has {len(fractions)} entries; --apollo_layers needs "
                 f"{len(args.apollo_layers.split(',')) - 1}")
    return ",".join(map(str, ends))


def model_overrides(model: str, args) -> str:
    depth = args.apollo_layers.split(",")[-1]
    heads = args.heads or max(1, args.width // 32)
    if model == "gpt2":
        return f"n_layer={depth},n_embd={args.width},n_head={heads}"
    return (f"num_hidden_layers={depth},hidden_size={args.width},num_attention_heads={heads},"
            f"intermediate_size={4 * args.width}")


def run_command(model: str, method: str, seed: int, args) -> list[str]:
    """The run_pretrain.py flags of one run; everything but the method flags is shared by all runs."""
    cmd = ["--model_type", model, "--config_overrides", model_overrides(model, args),
           "--tokenizer_vocab_size", args.vocab, "--max_seq_length", args.seq,
           "--per_device_train_batch_size", args.batch, "--max_train_steps", args.steps, "--num_train_epochs", 1,
           "--learning_rate", args.lr_gpt2 if model == "gpt2" else args.lr_bert,
           "--lr_scheduler_type", "cosine", "--warmup_ratio", args.warmup_ratio, "--weight_decay", 0.01,
           "--eval_steps", args.eval_every, "--max_eval_samples", args.eval_samples,
           "--save_strategy", "no", "--logging_steps", max(args.steps // 5, 1), "--seed", seed]
    if method != "scratch":
        cmd += ["--apollo_layers", args.apollo_layers, "--apollo_step_list", stage_steps(args), *METHOD_FLAGS[method]]
        if args.copy_optimizer_state:
            cmd.append("--copy_optimizer_state_on_growth")
    cmd += args.extra.split()
    return [str(x) for x in cmd]


def seed_metrics(dirs: dict[str, Path]) -> dict:
    """Per-method numbers for one seed, scratch being the reference."""
    ref = load_run(dirs["scratch"])
    return {method: versus_reference(ref if method == "scratch" else load_run(d), ref, EARLY_FRACTION)
            for method, d in dirs.items()}


COLUMNS = [("FLOPs saved at equal loss", "flops_saved_pct", "+.1f", "%"),
           ("wall-clock saved at equal loss", "wall_saved_pct", "+.1f", "%"),
           ("final loss", "final_loss", ".3f", ""),
           ("final Δ vs scratch", "final_delta", "+.3f", ""),
           ("Δ loss at equal FLOPs (run's end)", "equal_flops_delta", "+.3f", ""),
           (f"Δ loss at {int(EARLY_FRACTION * 100)}% of scratch FLOPs", "early_delta", "+.3f", ""),
           ("total FLOPs / scratch", "flops_ratio", ".3f", ""),
           ("total train time / scratch", "wall_ratio", ".2f", "")]


def table(per_seed: dict, models, methods, seeds) -> str:
    head = ["model", "method", "reached scratch's final loss"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        for method in methods:
            rows = [per_seed[model][s][method] for s in seeds]
            cells = [model, method, f"{sum(r['reached_target'] for r in rows)}/{len(rows)}"]
            cells += [format_over_seeds([r[key] for r in rows], spec, unit) for _, key, spec, unit in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def all_seeds_figure(per_dirs: dict, models, methods, out: Path) -> None:
    from matplotlib.figure import Figure

    colors = {"scratch": "C0", "apollo": "C1", "stack": "C2"}
    fig = Figure(figsize=(6.2 * len(models), 4.4))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        late = []
        for method in methods:
            for i, d in enumerate(per_dirs[model][method]):
                run = load_run(d)
                xs, ys = zip(*run.points())
                ax.plot(xs, ys, color=colors[method], lw=1.2, alpha=0.8, label=method if i == 0 else None)
                late += [y for x, y in run.points() if x >= 0.15 * max(xs)]
        lo, hi = min(late), max(late)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.set(title=f"{model}: every seed", xlabel="training FLOPs", ylabel="validation loss (full depth)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def report(args, models, methods, seeds, dirs, times, wall_s) -> None:
    results = Path(args.results_dir) / args.tag
    results.mkdir(parents=True, exist_ok=True)
    per_seed = {m: {s: seed_metrics({me: dirs[m, me, s] for me in methods}) for s in seeds} for m in models}
    md = table(per_seed, models, methods, seeds)
    for model in models:  # the paper's figure for the first seed
        first = [str(dirs[model, me, seeds[0]]) for me in methods]
        subprocess.run([sys.executable, "-m", "apollo.plot", *first, "--labels", ",".join(methods),
                        "--out", str(results / f"{model}.png"), "--json", str(results / f"{model}.json"),
                        "--title", f"{model}, seed {seeds[0]}: validation loss; target = scratch's final loss"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    all_seeds_figure({m: {me: [dirs[m, me, s] for s in seeds] for me in methods} for m in models},
                     models, methods, results / "all_seeds.png")
    config = {k: v for k, v in vars(args).items() if k not in ("report_only", "dry_run", "runs_dir", "results_dir")}
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = {"config": config, "benchmark_wall_s": wall_s, "run_wall_s": times,
               "runs_cpu_s": cpu.ru_utime + cpu.ru_stime,  # all runs started by this invocation, all threads
               "load_average_at_end": os.getloadavg(),
               "commands": {f"{m}-{me}-s{s}": "python run_pretrain.py " + " ".join(run_command(m, me, s, args))
                            for m in models for me in methods for s in seeds},
               "per_seed": {m: {str(s): per_seed[m][s] for s in seeds} for m in models}}
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    command = "python benchmarks/compare.py " + " ".join(sys.argv[1:])
    text = (f"# {args.tag}\n\n`{command}`\n\n{md}\n\nMean ± sample std over seeds {','.join(map(str, seeds))}. "
            f"Benchmark wall time {wall_s / 60:.1f} min (including runs reused from earlier invocations: "
            f"{sum(times.values()) / 60:.1f} min of run processes this time, "
            f"{summary['runs_cpu_s'] / 60:.1f} CPU-minutes; load average at the end "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}).\n")
    (results / "table.md").write_text(text)
    print(text)


def collect(args) -> None:
    """One row per (configuration, model, growth method): the settings that differ from the first tag."""
    tags = args.collect.split(",")
    summaries = {t: json.loads((Path(args.results_dir) / t / "summary.json").read_text()) for t in tags}
    base = summaries[tags[0]]["config"]
    ignore = {"tag", "seeds", "methods", "models", "jobs", "threads", "collect"}
    head = ["configuration", "changed settings", "model", "method", "seeds", "reached scratch's final loss",
            "FLOPs saved at equal loss", "final Δ vs scratch", "Δ loss at equal FLOPs", "Δ loss at 25% FLOPs",
            "total FLOPs / scratch", "scratch final loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    # The baseline again on just the knob runs' seeds, so that single-seed rows have a like-for-like row.
    knob_seeds = sorted({s for t in tags[1:] for m in summaries[t]["per_seed"].values() for s in m}, key=int)
    entries = [(t, summaries[t], None) for t in tags]
    base_seeds = {s for m in summaries[tags[0]]["per_seed"].values() for s in m}
    if knob_seeds and set(knob_seeds) != base_seeds and set(knob_seeds) <= base_seeds:
        entries.insert(1, (tags[0], summaries[tags[0]], knob_seeds))
    for tag, summary, only in entries:
        changed = ", ".join(f"{k}={v}" for k, v in summary["config"].items()
                            if k not in ignore and base.get(k) != v) or "(baseline)"
        for model, by_seed in summary["per_seed"].items():
            by_seed = {s: v for s, v in by_seed.items() if only is None or s in only}
            methods = [m for m in next(iter(by_seed.values())) if m != "scratch"]
            for method in methods:
                rows = [by_seed[s][method] for s in by_seed]
                scratch = [by_seed[s]["scratch"]["final_loss"] for s in by_seed]
                lines.append("| " + " | ".join([
                    tag, changed, model, method, ",".join(by_seed), f"{sum(r['reached_target'] for r in rows)}/{len(rows)}",
                    format_over_seeds([r["flops_saved_pct"] for r in rows], "+.1f", "%"),
                    format_over_seeds([r["final_delta"] for r in rows], "+.3f"),
                    format_over_seeds([r["equal_flops_delta"] for r in rows], "+.3f"),
                    format_over_seeds([r["early_delta"] for r in rows], "+.3f"),
                    format_over_seeds([r["flops_ratio"] for r in rows], ".3f"), format_over_seeds(scratch, ".3f")]) + " |")
    text = "\n".join(lines) + "\n"
    (Path(args.results_dir) / "knobs.md").write_text(text)
    print(text)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.collect:
        return collect(args)
    models = args.models.split(",")
    methods = ["scratch"] + [m for m in args.methods.split(",") if m != "scratch"]
    seeds = [int(s) for s in args.seeds.split(",")]
    if bad := [m for m in methods if m not in METHODS] + [m for m in models if m not in DEFAULT_LR]:
        sys.exit(f"unknown model or method: {bad}")
    # Seed-major, so that a pair running side by side is scratch and a growth run.
    jobs = {(model, method, seed): runner.job(args.runs_dir, model, method, seed, run_command(model, method, seed, args))
            for seed in seeds for model in models for method in methods}
    threads = args.threads or max(1, 2 // args.jobs)
    if args.dry_run:
        runner.run(list(jobs.values()), parallel=args.jobs, threads=threads, dry_run=True)
        return
    start = time.time()
    times = {} if args.report_only else runner.run(list(jobs.values()), parallel=args.jobs, threads=threads)
    report(args, models, methods, seeds, {key: j.out for key, j in jobs.items()}, times, time.time() - start)


if __name__ == "__main__":
    main()
