"""apollo.plot on synthetic run directories whose answers are known by construction."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from apollo.plot import _smooth, flops_to_reach, format_table, growth_marks, load_run, loss_at, main, plot, summarize, \
    summarize_runs

REPO = Path(__file__).resolve().parents[1]
REF_FLOPS = 1e16  # the reference ends here, at loss 3.0


def write_run(path: Path, evals, config=None, extra_lines=()):
    """evals: (step, flops, elapsed_s, eval_loss). Adds training and event lines that must be ignored."""
    path.mkdir(parents=True)
    lines = []
    for step, flops, elapsed, loss in evals:
        lines.append({"step": step, "epoch": step / 100, "loss": loss + 0.5, "lr": 1e-4, "tokens": step * 512,
                      "step_flops": 1e14, "flops": flops, "stage": 1, "unique_layers": 1, "depth": 1.0,
                      "elapsed_s": elapsed})
        lines.append({"step": step, "flops": flops, "tokens": step * 512, "elapsed_s": elapsed, "eval_loss": loss})
    lines.append({"event": "growth", "step": 5, "from": 1, "to": 3})
    text = "".join(json.dumps(line) + "\n" for line in [*lines, *extra_lines])
    (path / "metrics.jsonl").write_text(text)
    if config is not None:
        (path / "run_config.json").write_text(json.dumps(config))
    return path


def reference_evals():
    # Loss falls linearly by 0.7 per 1e15 FLOPs: 10.0 at 0, 3.0 at 1e16 (step 100, 200 s).
    return [(10 * k, k * 1e15, 20.0 * k, 10.0 - 0.7 * k) for k in range(11)]


def apollo_evals(until=7):
    # Loss linear in FLOPs, reaching 3.0 at exactly 6e15 = 60% of the reference's FLOPs. Eval points
    # at multiples of 1.3e15 so the crossing (6e15) falls between 5.2e15 and 6.5e15.
    return [(10 * k, 1.3e15 * k, 15.0 * k, 10.0 - 7.0 * (1.3 * k) / 6.0) for k in range(until + 1)]


@pytest.fixture
def runs(tmp_path):
    ref = write_run(tmp_path / "scratch", reference_evals(), {"apollo_layers": None, "seed": 1})
    apollo = write_run(tmp_path / "apollo", apollo_evals(),
                       {"apollo_layers": "1,3,6,12", "dist_function": "lvps", "grow_method": "extend"})
    # Plateaus at 3.5: never reaches 3.0.
    stuck = write_run(tmp_path / "stuck", [(10 * k, k * 1e15, 10.0 * k, max(3.5, 10.0 - k)) for k in range(12)])
    return ref, apollo, stuck


def test_flops_to_reach_interpolates_first_crossing():
    points = [(0.0, 5.0), (10.0, 3.0), (20.0, 1.0), (30.0, 0.5)]
    assert flops_to_reach(points, 2.0) == pytest.approx(15.0)
    assert flops_to_reach(points, 3.0) == 10.0  # hit exactly at an eval point
    assert flops_to_reach(points, 6.0) == 0.0  # already below at the first point
    assert flops_to_reach(points, 0.1) is None
    # The first crossing counts, even if the curve goes back up.
    assert flops_to_reach([(0, 4.0), (1, 2.0), (2, 3.0), (3, 1.0)], 2.5) == pytest.approx(0.75)


def test_loss_at_interpolates_inside_and_refuses_outside():
    points = [(0.0, 5.0), (10.0, 3.0), (20.0, 1.0)]
    assert loss_at(points, 5.0) == pytest.approx(4.0)
    assert loss_at(points, 20.0) == 1.0
    assert loss_at(points, 0.0) == 5.0
    assert loss_at(points, 25.0) is None
    assert loss_at(points, -1.0) is None


def test_smooth_is_trailing_mean():
    assert _smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert _smooth([1.0, 2.0], 0) == [1.0, 2.0]


def test_load_run_keeps_eval_lines_only_and_last_of_a_repeated_step(tmp_path):
    path = write_run(tmp_path / "r", reference_evals(),
                     extra_lines=[{"step": 100, "flops": 1e16, "tokens": 1, "elapsed_s": 200.0, "eval_loss": 2.9}])
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"step": 101, "loss": 1.0, "flo')  # cut short by a crash
    run = load_run(path)
    assert [e["step"] for e in run.evals] == list(range(0, 101, 10))
    assert run.evals[-1]["eval_loss"] == 2.9  # the resumed run's re-evaluation wins
    assert len(run.train) == 11
    assert run.label == "r"  # no run_config.json: the directory name


def test_summary_apollo_saves_forty_percent(runs):
    ref, apollo, stuck = runs
    summary = summarize_runs([ref, apollo, stuck])
    assert summary["reference"]["target_loss"] == pytest.approx(3.0)
    assert summary["reference"]["flops"] == REF_FLOPS
    by_dir = {Path(r["run_dir"]).name: r for r in summary["runs"]}
    assert by_dir["scratch"]["is_reference"] and by_dir["scratch"]["saved_pct"]["flops"] == 0.0
    a = by_dir["apollo"]
    assert a["label"] == "Apollo 1,3,6,12 lvps extend"
    assert a["reached_target"]
    assert a["to_target"]["flops"] == pytest.approx(6e15)
    assert a["saved_pct"]["flops"] == pytest.approx(40.0)
    # Same bracket (eval points 4 and 5), same fraction 0.8/1.3, for seconds and steps.
    frac = 0.8 / 1.3
    assert a["to_target"]["elapsed_s"] == pytest.approx(60.0 + 15.0 * frac)
    assert a["to_target"]["step"] == pytest.approx(40.0 + 10.0 * frac)
    assert a["saved_pct"]["elapsed_s"] == pytest.approx(100 * (1 - (60.0 + 15.0 * frac) / 200.0))
    assert a["saved_pct"]["step"] == pytest.approx(100 * (1 - (40.0 + 10.0 * frac) / 100.0))
    # Apollo stopped at 9.1e15 < 1e16: loss at equal FLOPs is taken at its own final FLOPs.
    eq = a["equal_flops"]
    assert eq["flops"] == pytest.approx(9.1e15)
    assert "this run" in eq["basis"]
    assert eq["eval_loss"] == pytest.approx(10.0 - 7.0 * 9.1 / 6.0)
    assert eq["reference_eval_loss"] == pytest.approx(10.0 - 0.7 * 9.1)
    assert eq["delta"] == pytest.approx(eq["eval_loss"] - eq["reference_eval_loss"])


def test_summary_reports_never_reached(runs):
    ref, _, stuck = runs
    s = summarize_runs([ref, stuck])["runs"][1]
    assert not s["reached_target"] and s["to_target"] is None and s["saved_pct"] is None
    assert s["best"] == {"eval_loss": 3.5, "flops": 7e15, "elapsed_s": 70.0, "step": 70.0}  # first time at 3.5
    # Ran past the reference's FLOPs: equal-FLOPs loss at the reference's final FLOPs.
    assert s["equal_flops"]["basis"] == "reference final FLOPs"
    assert s["equal_flops"]["eval_loss"] == pytest.approx(3.5)
    assert "never reached; best 3.500" in format_table(summarize_runs([ref, stuck]))


def test_explicit_reference_and_duplicate_labels(runs, tmp_path):
    ref, apollo, _ = runs
    twin = write_run(tmp_path / "apollo_seed2", apollo_evals(),
                     {"apollo_layers": "1,3,6,12", "dist_function": "lvps", "grow_method": "extend"})
    summary = summarize_runs([apollo, twin], reference=ref)  # reference not among the run dirs
    labels = [r["label"] for r in summary["runs"]]
    assert labels == ["scratch", "Apollo 1,3,6,12 lvps extend [apollo]", "Apollo 1,3,6,12 lvps extend [apollo_seed2]"]
    assert [r["saved_pct"]["flops"] for r in summary["runs"][1:]] == pytest.approx([40.0, 40.0])
    # A reference given by a different spelling of the same path is not loaded twice.
    assert len(summarize_runs([ref, apollo], reference=str(ref) + "/")["runs"]) == 2


def test_reference_reaches_target_at_its_final_point_by_definition(tmp_path):
    # A noisy reference dips below its final loss earlier; the target is still reached at the end.
    evals = [(0, 0.0, 0.0, 5.0), (10, 1e15, 10.0, 2.9), (20, 2e15, 20.0, 3.0)]
    run = load_run(write_run(tmp_path / "ref", evals))
    entry = summarize([run], run)["runs"][0]
    assert entry["to_target"]["flops"] == 2e15 and entry["saved_pct"]["flops"] == 0.0


def test_cli_writes_png_json_and_table(runs, tmp_path):
    ref, apollo, stuck = runs
    out, js = tmp_path / "fig.png", tmp_path / "summary.json"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "apollo.plot", str(ref), str(apollo), str(stuck), "--out", str(out),
                           "--json", str(js), "--smooth", "2", "--train-loss", "--labels", "scratch,Apollo,stuck"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    summary = json.loads(js.read_text())
    assert summary["smooth"] == 2
    assert [r["label"] for r in summary["runs"]] == ["scratch", "Apollo", "stuck"]
    assert summary["runs"][1]["saved_pct"]["flops"] == pytest.approx(40.0)
    assert summary["runs"][2]["reached_target"] is False
    assert "40.0%" in proc.stdout and "never reached" in proc.stdout


def test_help_documents_smoothing(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "--smooth K" in helptext and "always computed on the raw eval points" in helptext


def grown_run(path: Path, event_at_first_step_of_stage: bool = True) -> Path:
    """Stages of 1, 3 and 6 unique layers ending at steps 20, 40 and 60, a training line every step, an eval every 10
    steps (loss 10 at 0, falling by 0.125 a step: the reference's 3.0 at step 56), FLOPs not proportional to steps."""
    path.mkdir(parents=True)
    lines = []
    for step in range(61):
        flops, elapsed = 5e13 * step * (1 + step / 60), 2.0 * step
        unique = 1 if step <= 20 else 3 if step <= 40 else 6
        if step in (21, 41):  # the event names the first step of the new stage, or the last one of the old
            lines.append({"step": step if event_at_first_step_of_stage else step - 1, "event": "growth",
                          "from": 1 if step == 21 else 3, "to": unique, "map": []})
        if step:
            lines.append({"step": step, "loss": 9.0 - step / 10, "flops": flops, "elapsed_s": elapsed,
                          "unique_layers": unique, "depth": unique})
        if step % 10 == 0:
            lines.append({"step": step, "flops": flops, "tokens": step * 512, "elapsed_s": elapsed,
                          "eval_loss": 10.0 - 0.125 * step})
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_growth_marks_sit_after_the_last_step_of_the_old_stage(tmp_path):
    for first_step in (True, False):
        run = load_run(grown_run(tmp_path / str(first_step), first_step))
        marks = growth_marks(run)
        assert [(m["from"], m["to"], m["step"]) for m in marks] == [(1, 3, 20), (3, 6, 40)]
        assert [m["flops"] for m in marks] == [5e13 * s * (1 + s / 60) for s in (20, 40)]
        assert [m["elapsed_s"] for m in marks] == [40.0, 80.0]


def drawn(ax):
    """The data-space lines of an Axes (not the target line, whose x is in axes coordinates), by gid."""
    return [line for line in ax.lines if line.get_transform() == ax.transData]


def test_figure_shows_every_eval_marks_every_growth_and_zooms_within_the_data(tmp_path):
    ref = load_run(write_run(tmp_path / "scratch", reference_evals(), {"apollo_layers": None}))  # 10.0 at step 0
    grown = load_run(grown_run(tmp_path / "grown"))
    # Stalls at 3.5 and stops at 8e15, before the reference's end: the reference's end is the last FLOPs drawn.
    stalled = load_run(write_run(tmp_path / "stalled", [(10 * k, k * 1e15, 10.0 * k, max(3.5, 10.0 - k)) for k in range(9)]))
    runs = [ref, grown, stalled]
    fig = plot(runs, summarize(runs, ref))
    flops_ax, time_ax, step_ax = fig.axes[:3]
    unit = {"h": 3600, "min": 60, "s": 1}[re.search(r"\((\w+)\)", time_ax.get_xlabel()).group(1)]
    for ax, axis, scale in ((flops_ax, "flops", 1), (time_ax, "elapsed_s", 1 / unit), (step_ax, "step", 1)):
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for run in runs:
            # Its curve: every eval point inside the axes.
            [curve] = [line for line in drawn(ax) if list(line.get_ydata()) == [loss for _, loss in run.points(axis)]]
            assert list(curve.get_xdata()) == pytest.approx([x * scale for x, _ in run.points(axis)])
            assert all(x0 <= x <= x1 for x in curve.get_xdata()) and all(y0 <= y <= y1 for y in curve.get_ydata())
            # Its growths (write_run's runs carry one event, at step 5: marked at their step-0 line), in its color,
            # on its curve.
            [marks] = [line for line in drawn(ax) if line.get_gid() == "growth" and line.get_color() == curve.get_color()]
            want = [m[axis] * scale for m in growth_marks(run)]
            assert list(marks.get_xdata()) == pytest.approx(want) and len(want) == (2 if run is grown else 1)
            assert list(marks.get_ydata()) == pytest.approx([loss_at(run.points(axis), x / scale) for x in want])
            assert all(x0 <= x <= x1 for x in marks.get_xdata()) and all(y0 <= y <= y1 for y in marks.get_ydata())
    [inset] = flops_ax.child_axes
    (x0, x1), (y0, y1) = inset.get_xlim(), inset.get_ylim()
    data_x = [x for run in runs for x, _ in run.points()]
    assert min(data_x) <= x0 < x1 <= max(data_x)  # within the data
    # What the curves (straight between evals) draw inside the window is all in view, with at most 10% of its
    # range as margin.
    grid = [x0 + (x1 - x0) * k / 400 for k in range(401)]
    seen = [loss for run in runs for x in grid if (loss := loss_at(run.points(), x)) is not None]
    lo, hi = min(seen), max(seen)
    assert y0 <= lo and hi <= y1 and y0 >= lo - 0.1 * (hi - lo) and y1 <= hi + 0.1 * (hi - lo)
