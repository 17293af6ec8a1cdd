"""Checkpoints that are never half-written: save into a temporary folder, then rename.

A folder `checkpoint-<step>` exists only once complete (its `trainer_state.json` is written
before the rename), so `latest` never points at a partial one and rotation deletes only
complete ones.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

_CKPT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def complete_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(spec: str, output_dir) -> Path | None:
    """The checkpoint folder named by --resume_from_checkpoint ('latest' or a path)."""
    if spec == "latest":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    return Path(spec)


def save_checkpoint(accelerator, output_dir, step: int, trainer_state: dict, run_config: dict,
                    save_total_limit=None) -> Path:
    """All ranks call this. Writes checkpoint-<step> atomically and applies the rotation limit."""
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        for stale in Path(output_dir).glob(".tmp-checkpoint-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, scheduler, every rank's RNG states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "run_config.json").write_text(json.dumps(run_config, indent=1, default=str))
        with open(tmp / STATE_FILE, "w") as f:  # written last: its presence marks a complete checkpoint
            json.dump(trainer_state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # a stale copy of the same step from an earlier, overwritten attempt
            _remove(final)
        os.rename(tmp, final)
        if save_total_limit:
            for old in complete_checkpoints(output_dir)[:-save_total_limit]:
                if old != final:  # never the one just written, even if a stale later one exists
                    _remove(old)
    accelerator.wait_for_everyone()
    return final


def _remove(checkpoint: Path) -> None:
    # Unmark it first: a run killed mid-delete must not leave a half-deleted "complete" checkpoint.
    (checkpoint / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(checkpoint)


def read_trainer_state(checkpoint: Path) -> dict:
    with open(Path(checkpoint) / STATE_FILE) as f:
        return json.load(f)
