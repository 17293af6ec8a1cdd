"""Validation loss against training FLOPs, wall-clock time and steps: the paper's figure.

    python -m apollo.plot SCRATCH_DIR APOLLO_DIR [...] --out fig.png [--json summary.json]

The first run (or --reference) is the baseline. Its final eval loss is the target; for each other
run we find where its eval curve first reaches the target (linear interpolation between the two
eval points that bracket the crossing) and report the FLOPs, seconds and steps saved relative to
the reference's final eval point, where the reference reached that loss. Savings are always
computed on the raw eval points; --smooth only changes the drawn curves. Eval losses are measured
at full depth on a fixed held-out set, so every run is judged on the same yardstick.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

AXES = ("flops", "elapsed_s", "step")  # x axes of the figure, also the keys of the summary
Point = tuple[float, float]  # (x, eval loss)


@dataclass
class Run:
    run_dir: str
    label: str
    evals: list[dict]  # eval lines, by step; one per step (the last one wins)
    train: list[dict] = field(default_factory=list)  # training lines, likewise
    config: dict | None = None
    growths: list[dict] = field(default_factory=list)  # growth events, likewise

    def points(self, axis: str = "flops") -> list[Point]:
        return [(float(e[axis]), float(e["eval_loss"])) for e in self.evals]


def _auto_label(config: dict | None, run_dir: Path) -> str:
    if not config:
        return run_dir.name
    if not config.get("apollo_layers"):
        return "scratch"
    return f"Apollo {config['apollo_layers']} {config.get('dist_function', '')} {config.get('grow_method', '')}".strip()


def load_run(run_dir, label: str | None = None) -> Run:
    """Read RUN_DIR/metrics.jsonl (eval and training lines) and RUN_DIR/run_config.json if present."""
    run_dir = Path(run_dir)
    evals, train, growths = {}, {}, {}
    for n, line in enumerate((run_dir / "metrics.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # e.g. a line cut short by a crash
            print(f"warning: {run_dir}/metrics.jsonl:{n}: not JSON, skipped", file=sys.stderr)
            continue
        # A resumed run may repeat a step: keep the latest line.
        if "eval_loss" in record:
            evals[record["step"]] = record
        elif record.get("event") == "growth":
            growths[record["step"]] = record
        elif "loss" in record and "event" not in record:
            train[record["step"]] = record
    config_path = run_dir / "run_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else None
    return Run(str(run_dir), label or _auto_label(config, run_dir), _by_step(evals), _by_step(train), config,
               _by_step(growths))


def _by_step(records: dict) -> list[dict]:
    return [records[step] for step in sorted(records)]


def growth_marks(run: Run) -> list[dict]:
    """Where the run grew, on every x axis: {"from", "to", "flops", "elapsed_s", "step"} of the last training line
    of the stage it grew from (the work done before the growth). Found by the unique-layer count, so the mark
    does not depend on whether an event names that step or the first step of the new stage."""
    marks = []
    for event in run.growths:
        before = [t for t in run.train if t["step"] <= event["step"] and t.get("unique_layers", event["from"]) == event["from"]]
        if before:
            marks.append({"from": event["from"], "to": event["to"], **{a: float(before[-1][a]) for a in AXES}})
    return marks


def flops_to_reach(points: list[Point], target: float) -> float | None:
    """First x at which the curve reaches loss <= target, interpolating linearly between the eval
    points that bracket the crossing; None if it never does. `points` are (x, loss) in training
    order; x may be FLOPs, seconds or steps."""
    for i, (x, loss) in enumerate(points):
        if loss <= target:
            if i == 0:
                return x
            (x0, l0) = points[i - 1]
            return x0 + (x - x0) * (l0 - target) / (l0 - loss)
    return None


def loss_at(points: list[Point], x: float) -> float | None:
    """Loss interpolated linearly at x; None outside the measured range."""
    for (x0, l0), (x1, l1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return l0 if x1 == x0 else l0 + (l1 - l0) * (x - x0) / (x1 - x0)
    if points and x == points[-1][0]:
        return points[-1][1]
    return None


def summarize(runs: list[Run], reference: Run) -> dict:
    """Target loss, cost to reach it and % saved per run, and loss at equal FLOPs. Returns
    {"reference": {label, run_dir, target_loss, flops, elapsed_s, step}, "savings_basis": str,
     "runs": [{label, run_dir, is_reference, n_evals,
               final / best: {eval_loss, flops, elapsed_s, step},
               reached_target: bool, to_target: {flops, elapsed_s, step} | None,
               saved_pct: {flops, elapsed_s, step} | None   (100 * (1 - run / reference)),
               equal_flops: {flops, basis, eval_loss, reference_eval_loss, delta}}]}
    (final, best, equal_flops are None for a run without eval lines)."""
    if not reference.evals:
        raise ValueError(f"reference run {reference.run_dir} has no eval lines")
    ref_final = reference.evals[-1]
    target = float(ref_final["eval_loss"])
    out = {"reference": {"label": reference.label, "run_dir": reference.run_dir, "target_loss": target,
                         **{a: float(ref_final[a]) for a in AXES}},
           "savings_basis": "raw eval points (smoothing changes only the drawn curves)", "runs": []}
    for run in runs:
        entry = {"label": run.label, "run_dir": run.run_dir, "is_reference": run is reference, "n_evals": len(run.evals)}
        out["runs"].append(entry)
        if not run.evals:
            entry.update(reached_target=False, to_target=None, saved_pct=None, final=None, best=None, equal_flops=None)
            continue
        final, best = run.evals[-1], min(run.evals, key=lambda e: e["eval_loss"])
        entry["final"] = {"eval_loss": float(final["eval_loss"]), **{a: float(final[a]) for a in AXES}}
        entry["best"] = {"eval_loss": float(best["eval_loss"]), **{a: float(best[a]) for a in AXES}}
        # By definition the reference reaches the target at its final point (even if an earlier,
        # noisier eval dipped below it).
        reach = {a: (float(ref_final[a]) if run is reference else flops_to_reach(run.points(a), target)) for a in AXES}
        entry["reached_target"] = reach["flops"] is not None
        entry["to_target"] = reach if entry["reached_target"] else None
        entry["saved_pct"] = ({a: 100.0 * (1.0 - reach[a] / float(ref_final[a])) if ref_final[a] else None for a in AXES}
                              if entry["reached_target"] else None)
        entry["equal_flops"] = equal_flops(run, reference)
    return out


def equal_flops(run: Run, reference: Run) -> dict:
    """Eval loss of the run and of the reference at the same FLOPs: the reference's final FLOPs, or the run's if
    it stopped first (interpolated between eval points)."""
    ref_x = float(reference.evals[-1]["flops"])
    x = min(float(run.evals[-1]["flops"]), ref_x)
    loss, ref_loss = loss_at(run.points(), x), loss_at(reference.points(), x)
    return {"flops": x, "basis": "reference final FLOPs" if x == ref_x else "this run's final FLOPs (it stopped earlier)",
            "eval_loss": loss, "reference_eval_loss": ref_loss, "delta": _minus(loss, ref_loss)}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def equal_loss_saving(run: Run, reference: Run, axis: str = "flops") -> tuple[float | None, bool]:
    """(% of `axis` saved at equal loss, whether the run reached the reference's final loss). Reached: the paper's
    measure, 1 - the run's cost to reach that loss / the reference's. Not reached: measured at the run's own final
    loss instead, 1 - the run's cost / the reference's cost to reach that loss, which is then negative (None if
    the reference never got that high); the two agree when the final losses are equal."""
    ref_final = reference.evals[-1]
    if run is reference:  # it reaches its own final loss at its final point, by definition (see `summarize`)
        return 0.0, True
    reach = flops_to_reach(run.points(axis), float(ref_final["eval_loss"]))
    if reach is not None:
        return 100.0 * (1 - reach / float(ref_final[axis])), True
    ref_reach = flops_to_reach(reference.points(axis), float(run.evals[-1]["eval_loss"]))
    return (None if not ref_reach else 100.0 * (1 - float(run.evals[-1][axis]) / ref_reach)), False


def versus_reference(run: Run, reference: Run, early_fraction: float = 0.25) -> dict:
    """The numbers benchmarks average over seeds, for one run against the reference of its seed (scratch):
    final loss and its difference, FLOPs and wall-clock saved at equal loss (`equal_loss_saving`), total FLOPs and
    time as ratios, and the loss difference at equal FLOPs, at the run's end and at `early_fraction` of the
    reference's FLOPs."""
    final, ref_final = run.evals[-1], reference.evals[-1]
    flops_saved, reached = equal_loss_saving(run, reference, "flops")
    early = early_fraction * float(ref_final["flops"])
    return {"final_loss": final["eval_loss"], "final_delta": final["eval_loss"] - ref_final["eval_loss"],
            "reached_target": reached, "flops_saved_pct": flops_saved,
            "wall_saved_pct": equal_loss_saving(run, reference, "elapsed_s")[0],
            "flops_ratio": final["flops"] / ref_final["flops"], "wall_ratio": final["elapsed_s"] / ref_final["elapsed_s"],
            "equal_flops_delta": equal_flops(run, reference)["delta"],
            "early_delta": _minus(loss_at(run.points(), early), loss_at(reference.points(), early)),
            "elapsed_s": final["elapsed_s"], "flops": final["flops"], "tokens": final.get("tokens")}


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value) of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_over_seeds(values, spec: str = "+.1f", unit: str = "") -> str:
    """'mean ± std' of per-seed values for a table ('-' when there is none; no ± for one seed)."""
    m, s = mean_std(values)
    if m is None:
        return "-"
    return f"{m:{spec}}{unit}" + (f" ± {s:{spec.lstrip('+')}}" if len(values) > 1 else "")


def _select(run_dirs, reference=None, labels=None) -> tuple[list[Run], Run]:
    labels = list(labels or [])
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} run directories")
    runs = [load_run(d, labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    ref = runs[0]
    if reference is not None:
        matches = [r for r in runs if Path(r.run_dir).resolve() == Path(reference).resolve()]
        ref = matches[0] if matches else load_run(reference)
        runs = [ref] + [r for r in runs if r is not ref]
    seen = Counter(r.label for r in runs)
    for r in runs:  # e.g. several seeds of one config: tell them apart by directory
        if seen[r.label] > 1:
            r.label = f"{r.label} [{Path(r.run_dir).name}]"
    return runs, ref


def summarize_runs(run_dirs, reference=None) -> dict:
    """Load run directories and summarize them; the reference is `reference` or the first dir."""
    return summarize(*_select(run_dirs, reference))


def _fmt(x, spec=".3g", none="-"):
    return none if x is None else format(x, spec)


def format_table(summary: dict) -> str:
    ref, w = summary["reference"], max([24] + [len(r["label"]) for r in summary["runs"]])
    lines = [f"reference: {ref['label']}; target loss {ref['target_loss']:.4f} = its final eval "
             f"({ref['flops']:.3e} FLOPs, {ref['elapsed_s']:.0f} s, step {ref['step']:.0f})", "",
             f"{'to reach the target':<{w}}  {'final loss':>10}  {'FLOPs':>9}  {'saved':>6}  {'seconds':>8}  "
             f"{'saved':>6}  {'steps':>8}  {'saved':>6}"]
    for r in summary["runs"]:
        head = f"{r['label']:<{w}}  {_fmt(r['final'] and r['final']['eval_loss'], '.4f'):>10}"
        if r["reached_target"]:
            t, pct = r["to_target"], {a: _fmt(v, ".1f") + "%" for a, v in r["saved_pct"].items()}
            lines.append(f"{head}  {t['flops']:>9.3e}  {pct['flops']:>6}  {t['elapsed_s']:>8.0f}  "
                         f"{pct['elapsed_s']:>6}  {t['step']:>8.0f}  {pct['step']:>6}")
        elif r["best"]:
            lines.append(f"{head}  never reached; best {r['best']['eval_loss']:.3f} at {r['best']['flops']:.3e} FLOPs")
        else:
            lines.append(f"{head}  no eval lines")
    lines += ["", f"{'loss at equal FLOPs':<{w}}  {'FLOPs':>9}  {'loss':>7}  {'ref loss':>8}  {'delta':>7}  taken at"]
    for r in summary["runs"]:
        eq = r["equal_flops"] or {}
        lines.append(f"{r['label']:<{w}}  {_fmt(eq.get('flops'), '.3e'):>9}  {_fmt(eq.get('eval_loss'), '.4f'):>7}  "
                     f"{_fmt(eq.get('reference_eval_loss'), '.4f'):>8}  {_fmt(eq.get('delta'), '+.4f'):>7}  "
                     f"{eq.get('basis', '-')}")
    return "\n".join(lines)


def _smooth(values: list[float], k: int) -> list[float]:
    """Trailing moving average over k points (k <= 1: unchanged)."""
    if k <= 1:
        return list(values)
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def plot(runs: list[Run], summary: dict, out=None, smooth: int = 0, train_loss: bool = False, title: str | None = None):
    """Validation loss against FLOPs (with a zoom on the target), wall-clock time and steps, every eval point in
    view, each growth marked on its run's curve; saved to `out` if given. Returns the matplotlib Figure."""
    # A bare Figure renders with Agg and leaves pyplot's global state (and backend) alone.
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    ref, entries = summary["reference"], {r["run_dir"]: r for r in summary["runs"]}
    target = ref["target_loss"]
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    fig = Figure(figsize=(16, 5.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2.2, 1, 1]})
    seconds_scale, seconds_unit = next((s, u) for s, u in ((3600, "h"), (60, "min"), (1, "s"))
                                       if max(r.evals[-1]["elapsed_s"] for r in runs if r.evals) >= 3 * s or s == 1)
    scale = {"flops": 1.0, "elapsed_s": 1.0 / seconds_scale, "step": 1.0}
    inset = axes[0].inset_axes([0.52, 0.53, 0.45, 0.37])
    for i, run in enumerate(runs):
        if not run.evals:
            continue
        color, entry = colors[i % len(colors)], entries[run.run_dir]
        width = 2.2 if run.run_dir == ref["run_dir"] else 1.6
        never = "" if entry["reached_target"] else " (never reached the target)"
        for ax, axis in zip(axes, AXES):
            xs = [x * scale[axis] for x, _ in run.points(axis)]
            ax.plot(xs, _smooth([l for _, l in run.points(axis)], smooth), color=color, lw=width, marker=".", ms=4,
                    label=run.label + never if axis == "flops" else None)
            if smooth > 1:  # the raw evals, which the crossings are computed on
                ax.plot(xs, [l for _, l in run.points(axis)], ".", color=color, ms=3, alpha=0.4)
            if entry["reached_target"] and run.run_dir != ref["run_dir"]:
                ax.plot(entry["to_target"][axis] * scale[axis], target, "o", color=color, ms=6, mec="black", zorder=5)
            _mark_growths(ax, run, axis, scale[axis], color, label_steps=ax is axes[0])
        inset.plot([x for x, _ in run.points()], _smooth([l for _, l in run.points()], smooth), color=color, lw=width,
                   marker=".", ms=4)
        _mark_growths(inset, run, "flops", 1.0, color, label_steps=False)
        if train_loss and run.train:
            tx = [t["flops"] for t in run.train]
            axes[0].plot(tx, _smooth([t["loss"] for t in run.train], max(smooth, 20)), color=color, lw=0.6, alpha=0.35)
        if run.run_dir != ref["run_dir"]:
            _annotate_saving(axes[0], inset, run, entry, target, color)
    if train_loss:
        axes[0].plot([], [], color="0.4", lw=0.6, label="training loss (faint; at the sampled depth)")
    if any(run.growths for run in runs):
        axes[0].plot([], [], "^", color="0.5", mec="black", ms=7, label="growth (to the unique layers written by it)")
    for ax, axis in zip([*axes, inset], [*AXES, None]):
        ax.axhline(target, color="0.35", ls="--", lw=1, label=f"target: {ref['label']} final loss {target:.3f}"
                   if ax is axes[0] else None)
        ax.grid(alpha=0.3)
        if axis == "flops":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    losses = [l for r in runs for _, l in r.points()]
    low, high = _padded(min(losses), max(losses), 0.06)
    for ax in axes:  # every eval point in view, the first (near-random) ones included; room for a label below
        ax.set_ylim(low - 0.08 * (high - low), high)
    _zoom_on_target(inset, runs, summary)
    axes[0].indicate_inset_zoom(inset, edgecolor="0.4")
    axes[0].set(xlabel="training FLOPs (forward + backward, executed depth)", ylabel="validation loss (full depth)",
                title="validation loss vs training FLOPs")
    axes[1].set(xlabel=f"wall-clock time ({seconds_unit})", title="vs wall-clock time")
    axes[2].set(xlabel="optimizer steps", title="vs steps")
    # Legend below the panels, where it cannot cover a curve.
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=10, frameon=False)
    note = f"; curves: trailing mean over {smooth} evals" if smooth > 1 else ""
    fig.suptitle(title or f"Validation loss; target = {ref['label']}'s final loss {target:.3f}{note}", fontsize=12)
    fig.tight_layout(rect=(0, 0.035 + 0.04 * math.ceil(len(names) / 4), 1, 1))
    if out is not None:
        fig.savefig(out, dpi=130)
    return fig


def _padded(lo: float, hi: float, share: float) -> tuple[float, float]:
    pad = share * (hi - lo) if hi > lo else 0.05 * (abs(hi) or 1.0)
    return lo - pad, hi + pad


def _mark_growths(ax, run: Run, axis: str, scale: float, color, label_steps: bool) -> None:
    """A triangle on the run's eval curve where it grew (one artist per run, gid "growth"), with the new unique
    layer count beside it if `label_steps`."""
    marks = growth_marks(run)
    if not marks:
        return
    points = run.points(axis)
    xs = [m[axis] for m in marks]
    # On the curve between the evals around the growth (the nearest eval if the growth is outside them).
    ys = [loss_at(points, x) if loss_at(points, x) is not None else min(points, key=lambda p: abs(p[0] - x))[1]
          for x in xs]
    ax.plot([x * scale for x in xs], ys, "^", color=color, mec="black", ms=7, zorder=6, gid="growth")
    if label_steps:
        for m, x, y in zip(marks, xs, ys):
            ax.annotate(f"{m['to']}", (x * scale, y), xytext=(0, 7), textcoords="offset points", ha="center",
                        fontsize=8, color=color)


def _annotate_saving(ax, inset, run: Run, entry: dict, target: float, color) -> None:
    """The FLOPs a run saved to reach the target (arrow to its crossing), or that it never reached it."""
    if entry["reached_target"]:
        x, saved = entry["to_target"]["flops"], entry["saved_pct"]["flops"]
        # Below the target line, left of the crossing: the run's curve is above the line there.
        ax.annotate(f"{-saved:+.1f}% FLOPs", (x, target), xytext=(-14, -26), textcoords="offset points",
                    ha="right", va="center", color=color, fontsize=11, fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85),
                    arrowprops=dict(arrowstyle="->", color=color, lw=1))
        inset.plot([x, x], [-1e30, target], ":", color=color, lw=1.2)  # from the crossing down
        inset.plot(x, target, "o", color=color, ms=6, mec="black", zorder=5)
        return
    best = entry["best"]
    stacked = sum(1 for t in ax.texts if t.get_text().startswith("never reached"))  # runs ending close together
    ax.annotate(f"never reached target\nbest {best['eval_loss']:.3f} at {best['flops']:.2e} FLOPs",
                (run.evals[-1]["flops"], run.evals[-1]["eval_loss"]), xytext=(-10, 22 + 30 * stacked),
                textcoords="offset points", ha="right", color=color, fontsize=9,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85),
                arrowprops=dict(arrowstyle="->", color=color, lw=1))


def _zoom_on_target(inset, runs: list[Run], summary: dict) -> None:
    """Limit the inset to the data around the target: from where the first other run crosses it or ends (less
    room for the labels) to the reference's end or the last crossing, and to the losses drawn there."""
    from matplotlib.ticker import FuncFormatter

    ref, others = summary["reference"], [e for e in summary["runs"] if not e["is_reference"] and e["final"]]
    data_x = [x for r in runs for x, _ in r.points()]
    crossings = [e["to_target"]["flops"] for e in others if e["reached_target"]]
    x_hi = max([ref["flops"], *crossings])
    x_lo = min([ref["flops"], *crossings, *(e["final"]["flops"] for e in others if not e["reached_target"])])
    x_lo -= 0.4 * (x_hi - x_lo) if x_hi > x_lo else 0.3 * (x_hi - min(data_x))
    x_lo = max(x_lo, min(data_x))
    # The curves are straight between eval points: their values at the window's edges and the points inside
    # bound what is drawn there.
    near = [ref["target_loss"]] + [l for r in runs for x, l in r.points() if x_lo <= x <= x_hi]
    near += [v for r in runs for v in (loss_at(r.points(), x_lo), loss_at(r.points(), x_hi)) if v is not None]
    inset.set(xlim=(x_lo, x_hi), ylim=_padded(min(near), max(near), 0.08))
    # Scale written into the title: an offset text ("1e20") below the inset would hit the main curves.
    exponent = math.floor(math.log10(x_hi)) if x_hi > 0 else 0
    inset.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 10 ** exponent:g}"))
    inset.tick_params(labelsize=8)
    inset.set_title(f"zoom on the target (FLOPs in units of 1e{exponent})", fontsize=9)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m apollo.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Directories with metrics.jsonl (+ run_config.json).")
    p.add_argument("--out", required=True, help="Figure file (PNG, PDF, SVG: by extension).")
    p.add_argument("--reference", help="Baseline run directory (default: the first RUN_DIR).")
    p.add_argument("--labels", help="Comma-separated legend labels, one per RUN_DIR in order "
                                    "(default: from run_config.json, else the directory name).")
    p.add_argument("--json", help="Also write the summary table as JSON here.")
    p.add_argument("--smooth", type=int, default=0, metavar="K",
                   help="Draw curves as a trailing moving average over K eval points (default: raw). The "
                        "target, crossings and savings are always computed on the raw eval points.")
    p.add_argument("--train-loss", action="store_true",
                   help="Also draw training loss vs FLOPs, thin and faint (trailing mean over max(K, 20) steps). "
                        "It is measured at the sampled depth, so it is not comparable to full-depth eval loss.")
    p.add_argument("--title", help="Figure title.")
    args = p.parse_args(argv)
    try:
        runs, ref = _select(args.run_dirs, args.reference, args.labels.split(",") if args.labels else None)
    except (OSError, ValueError) as e:  # a missing metrics.jsonl, a wrong number of labels
        p.error(str(e))
    summary = summarize(runs, ref)
    summary["smooth"] = args.smooth
    print(format_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    plot(runs, summary, args.out, smooth=args.smooth, train_loss=args.train_loss, title=args.title)
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))


if __name__ == "__main__":
    main()
