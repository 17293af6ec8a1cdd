"""Run logs: metrics.jsonl (main process) and the official per-rank schedule file.

Both are JSON lines. On resume from checkpoint k, lines the checkpoint does not cover (written before
a crash, past the last checkpoint; `apollo.checkpoint.Resume` decides) are dropped so the files continue
without duplicates.
Lines are buffered and reach the file at `flush()` (the loop flushes at logging steps, evaluations,
checkpoints and exit; `flush_open_logs` on errors), not once per step or micro-batch on every rank.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from .plan import growth_map


# Logs not yet closed, held here so that a run ending with an error (whose frames, logs included, are
# gone by then) still writes their last lines: cli() closes them, the failure guard flushes them.
_OPEN: set["JsonLines"] = set()


class JsonLines:
    def __init__(self, path, keep: Callable[[dict], bool] | None = None):
        """Open for appending. A new file without `keep`; with it (a resumed run), the lines of the
        interrupted run that `keep` accepts stay and the rest go (a torn last line goes too)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if (record := _parse(line)) is not None and keep(record)]
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        elif keep is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")
        self.pending: list[str] = []
        _OPEN.add(self)

    def write(self, record: dict) -> None:
        self.pending.append(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self.pending and not self.file.closed:
            self.file.write("".join(self.pending))
            self.file.flush()
        self.pending = []

    def close(self) -> None:
        self.flush()
        self.file.close()
        _OPEN.discard(self)


def flush_open_logs() -> None:
    """Write out every open log's buffered lines (on an error, before the process ends)."""
    for log in list(_OPEN):
        log.flush()


def close_open_logs() -> None:
    """Write out and close every log still open (at the end of a run, however it ended)."""
    for log in list(_OPEN):
        log.close()


def _parse(line: str) -> dict | None:
    """A record, or None for a blank line or the torn last line of a process killed mid-write."""
    try:
        return json.loads(line)
    except ValueError:
        return None


def schedule_record(micro_index: int, step: int, unique: int, depth: int, plan: list[int], grows: bool,
                    gmap: list[int] | None) -> dict:
    """One micro-batch of the schedule file, with the official release's field names.

    `gmap` is what the official file writes as stack_info on every line: the growth map into the
    current stage (see `stack_info`), not only on the line where growth happens.
    """
    return {"curr_global_step_with_accu": micro_index, "curr_global_step": step, "curr_unique_layer": unique,
            "curr_meta_layer": depth, "extend_layer_list": plan, "do_stack": grows, "stack_info": gmap or []}


def stack_info(layers, stage: int, method: str) -> list[int]:
    """The official schedule file's `stack_info` during stage `stage` (0-based) of `layers`.

    The official trainer writes, on every micro-batch, the map from layers[stage - 1] to
    layers[stage]: the most recent growth. Before the first growth that index is -1, so it maps the
    *last* stage's count onto the first (Python's layers[-1]): [0] for 12 -> 1 with extend, [11]
    with stack. We write the same values, so tools written for the official logs read ours.
    """
    if stage > 0:
        return growth_map(layers[stage - 1], layers[stage], method)
    old, new = layers[-1], layers[0]  # more layers than targets: the official formulas, written out
    if method == "extend":  # int(k / (new / old)) in integers
        return [k * old // new for k in range(new)]
    return list(range(old - new, old))  # stack: the top-most `new` layers


class RunLogs:
    """A run's JSON-lines logs: metrics.jsonl (the main process's; None on the others) and the schedule file
    (every rank's, with --apollo_info_output_file; else None)."""

    def __init__(self, metrics: JsonLines | None, schedule: JsonLines | None):
        self.metrics, self.schedule = metrics, schedule

    def write_metrics(self, record: dict) -> None:
        if self.metrics:
            self.metrics.write(record)

    def write_schedule(self, step: int, unique: int, plans: list[list[int]], grows: bool, gmap: list[int]) -> None:
        """The schedule file's lines of optimizer step `step` (0-based), one per micro-batch; growth, if any, is
        on the first; `gmap` is the file's stack_info (see `stack_info`)."""
        if self.schedule:
            for micro, plan in enumerate(plans):
                self.schedule.write(schedule_record(step * len(plans) + micro, step, unique, len(plan), plan,
                                                    grows and micro == 0, gmap))

    def flush(self) -> None:
        for log in (self.metrics, self.schedule):
            if log:
                log.flush()

    def close(self) -> None:
        for log in (self.metrics, self.schedule):
            if log:
                log.close()
