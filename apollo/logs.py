"""Run logs: metrics.jsonl (main process) and the official per-rank schedule file.

Both are JSON lines. On resume from step k, lines that belong to steps after k (written before
a crash, past the last checkpoint) are dropped so the files continue without duplicates.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class JsonLines:
    def __init__(self, path, keep_through_step: int | None, step_key: str):
        """Open for appending; with `keep_through_step`, first drop lines whose `step_key` exceeds it."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_through_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if (record := _parse(line)) is not None and record.get(step_key, 0) <= keep_through_step]
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        elif keep_through_step is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _parse(line: str) -> dict | None:
    """A record, or None for a blank line or the torn last line of a process killed mid-write."""
    try:
        return json.loads(line)
    except ValueError:
        return None


def schedule_record(micro_index: int, step: int, unique: int, depth: int, plan: list[int], grows: bool,
                    gmap: list[int] | None) -> dict:
    """One micro-batch of the schedule file, with the official release's field names."""
    return {"curr_global_step_with_accu": micro_index, "curr_global_step": step, "curr_unique_layer": unique,
            "curr_meta_layer": depth, "extend_layer_list": plan, "do_stack": grows, "stack_info": gmap or []}
