"""Checkpoints: what one holds, writing it so that it is never half-written, and resuming from one.

A `checkpoint-<step>` folder holds Accelerate's state (model, optimizer, LR scheduler, every rank's
RNG states), the run's counters (`trainer_state.json`: a `TrainerState`) and the resolved
configuration (`run_config.json`). It exists only once complete: it is saved into a temporary
folder whose `trainer_state.json` is written last, then renamed, so `latest` never points at a
partial one and rotation deletes only complete ones.

Resuming is decided here too, before any data is read (`resume_point`): which checkpoint, whether
its flags, model shape and (once the processes exist) process count match this run's, and which
lines of the interrupted run's logs the checkpoint covers (`Resume.keeps_metrics_line`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, TrainConfig

_CKPT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
RUN_CONFIG_FILE = "run_config.json"

# Flags that must match between a checkpoint and the run that resumes from it (the model's shape is
# compared field by field, so --config_overrides may be reordered).
RESUME_MUST_MATCH = ("model_type", "tokenizer_name", "tokenizer_vocab_size",
                     "max_seq_length", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
                     "num_train_epochs", "max_train_steps", "apollo_layers", "apollo_epoch_list", "apollo_step_list",
                     "dist_function", "grow_method", "copy_optimizer_state_on_growth", "learning_rate",
                     "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
                     "adam_epsilon", "max_grad_norm", "mlm_probability", "max_train_samples", "lr_decay_ratio",
                     "lr_decay_type", "growth_warmup_steps", "growth_noise")
TOKENIZER_FIELDS = {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"}  # set from the tokenizer


@dataclass
class TrainerState:
    """The run's counters: besides Accelerate's state, all a run changes as it goes (torchtitan's trainer
    state). Stored as `trainer_state.json`, with the keys of the plain dict written before this class."""
    step: int = 0  # finished optimizer steps
    tokens: int = 0  # training tokens, all processes
    flops: float = 0.0  # training FLOPs at the executed depths, all processes (apollo/flops.py)
    elapsed_s: float = 0.0  # training seconds (evaluation and saving excluded)
    last_checkpoint: int | None = None  # the step of the last checkpoint written

    def add_step(self, tokens: int, flops: float, seconds: float) -> None:
        self.step += 1
        self.tokens += tokens
        self.flops += flops
        self.elapsed_s += seconds

    def write(self, path: Path) -> None:
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def read(cls, checkpoint) -> "TrainerState":
        """The counters of a checkpoint; keys this class does not know (none so far) are left out."""
        saved = json.loads((Path(checkpoint) / STATE_FILE).read_text())
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


def complete_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(accelerator, output_dir, state: TrainerState, run_config: dict, save_total_limit=None) -> Path:
    """All ranks call this. Writes checkpoint-<state.step> atomically and applies the rotation limit."""
    state.last_checkpoint = state.step
    final = Path(output_dir) / f"checkpoint-{state.step}"
    tmp = Path(output_dir) / f".tmp-checkpoint-{state.step}"
    if accelerator.is_main_process:
        for stale in Path(output_dir).glob(".tmp-checkpoint-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, scheduler, every rank's RNG states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / RUN_CONFIG_FILE).write_text(json.dumps(run_config, indent=1, default=str))
        state.write(tmp / STATE_FILE)  # written last: its presence marks a complete checkpoint
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


# ----------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resume:
    """The checkpoint a run resumes from, with its run_config.json (read once) and its counters."""
    checkpoint: Path
    run_config: dict
    state: TrainerState

    def check_world(self, world_size: int) -> None:
        """The data order, stage boundaries and per-rank RNG states all assume the checkpoint's process count."""
        saved = self.run_config.get("world_size", world_size)
        if saved != world_size:
            raise ConfigError("resume_from_checkpoint", f"{self.checkpoint} was written by {saved} processes, this "
                                                        f"run has {world_size}; resume with the same number of "
                                                        f"processes")

    def keeps_metrics_line(self, record: dict, unique_layers_at_checkpoint: int) -> bool:
        """Whether a line of the interrupted run's metrics.jsonl is covered by the checkpoint (else dropped).

        Step and evaluation lines up to the checkpoint's step are. A growth line is if the checkpoint's weights
        already hold that growth (its `to` is at most the unique layers of the checkpoint's last step): a
        growth right after the checkpointed step is logged with that step but happens after the save, and
        the resumed run does it again. Deciding by `to` also reads logs written when growth lines named the
        first step of the new stage (before `step` meant finished steps there too)."""
        if record.get("event") == "growth":
            return record["to"] <= unique_layers_at_checkpoint
        return record.get("step", 0) <= self.state.step

    def keeps_schedule_line(self, record: dict) -> bool:
        """Whether a line of the interrupted run's schedule file (0-based `curr_global_step`) is covered."""
        return record.get("curr_global_step", 0) < self.state.step


def resume_point(cfg: TrainConfig, config) -> Resume | None:
    """Refuse to clobber a user's files; the checkpoint to resume from, checked against this run's flags, if any."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("output_dir", f"{out} exists and is not a folder")
    if not cfg.resume_from_checkpoint:
        if out.exists() and any(out.iterdir()) and not cfg.overwrite_output_dir:
            raise ConfigError("output_dir", f"{out} is not empty; pass --overwrite_output_dir or "
                                            f"--resume_from_checkpoint")
        return None
    latest = cfg.resume_from_checkpoint == "latest"
    found = complete_checkpoints(out) if latest else [Path(cfg.resume_from_checkpoint)]
    ckpt = found[-1] if found else None
    if ckpt is None or not (ckpt / STATE_FILE).is_file() or not (ckpt / RUN_CONFIG_FILE).is_file():
        raise ConfigError("resume_from_checkpoint", f"no complete checkpoint at {cfg.resume_from_checkpoint}"
                                                    f"{' in ' + str(out) if latest else ''}")
    saved = json.loads((ckpt / RUN_CONFIG_FILE).read_text())
    _check_same_run(cfg, config, saved)
    return Resume(ckpt, saved, TrainerState.read(ckpt))


def _check_same_run(cfg: TrainConfig, config, saved: dict) -> None:
    for name in RESUME_MUST_MATCH:
        # A flag newer than the checkpoint had its default then (the knobs are off by default).
        theirs = saved.get(name, TrainConfig.__dataclass_fields__[name].default)
        if theirs != getattr(cfg, name):
            raise ConfigError(name, f"{getattr(cfg, name)!r} differs from the checkpoint's {theirs!r}")
    # The model's shape, however it was given (--config_name or --config_overrides, in any order).
    # Token ids and vocabulary size follow the tokenizer, which the flags above already pin down.
    ours = json.loads(json.dumps(config.to_dict(), default=str))
    theirs = saved.get("model_config") or ours
    for key in sorted((set(ours) | set(theirs)) - TOKENIZER_FIELDS):
        if ours.get(key) != theirs.get(key):
            raise ConfigError("config_name" if cfg.config_name else "config_overrides",
                              f"model {key}={ours.get(key)!r} differs from the checkpoint's {theirs.get(key)!r}")
