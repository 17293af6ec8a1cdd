"""The benchmarks' runs: run_pretrain.py commands, one folder each, run side by side, resumed when relaunched.

Used by compare.py and growth_study.py. A run is its command (`Job.cmd`, the run_pretrain.py flags but
--output_dir): its folder is named by a hash of it, and it is done when its final model exists and the
folder's done marker holds that same command. So re-running a benchmark skips finished runs, and two
benchmarks (or knob variations, or phases of a study) that need an identical run share it, whatever name the
first one gave its folder. A run stopped by a signal or killed goes on from its newest checkpoint when
relaunched, if its launch saves checkpoints (`checkpoints`): the flags that do that say when a run saves, not
what it computes (resume is exact), so they are not part of its command. Each run's console is appended to
RUNS_DIR/logs/<folder>.log, one header line per launch.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The markers' names date from when compare.py alone ran benchmarks: existing run folders carry them.
DONE = "compare_cmd.json"  # the command of a finished run
FAILED = "compare_failed.json"  # the command of a failed run, when failures are allowed (a diverging LR)
LAUNCH_ONLY = ("--save_strategy", "--save_steps", "--save_total_limit", "--resume_from_checkpoint")


@dataclass
class Job:
    model: str  # model type: the first run of each prepares the data (tokenizer, token cache) alone
    out: Path  # the run's folder (`run_dir`)
    cmd: list[str]  # run_pretrain.py flags but --output_dir: what the run computes, its identity
    meta: dict = field(default_factory=dict)  # what the benchmark needs to know about it (phase, depth, LR...)


def run_dir(runs_dir, model: str, name: str, seed: int, cmd: list[str]) -> Path:
    """RUNS_DIR/<model>-<name>-s<seed>-<first 10 hex digits of the command's sha256>."""
    digest = hashlib.sha256(json.dumps(cmd).encode()).hexdigest()[:10]
    return Path(runs_dir) / f"{model}-{name}-s{seed}-{digest}"


def job(runs_dir, model: str, name: str, seed: int, cmd: list[str], meta: dict | None = None) -> Job:
    """The run of `cmd`, in its own folder or, when another benchmark or phase already made this command under
    another name (the growth study's 12-layer scratch is a gate run at one epoch and a trend run at the shorter
    lengths), in that folder: a run is its command, trained once."""
    out = run_dir(runs_dir, model, name, seed, cmd)
    if not out.exists():
        digest = out.name.rsplit("-", 1)[1]
        made = sorted(Path(runs_dir).glob(f"{model}-*-s{seed}-{digest}"))
        out = made[0] if made else out
    return Job(model, out, cmd, meta or {})


def _marked(out: Path, marker: str, cmd: list[str]) -> bool:
    """OUT/MARKER holds `cmd`, or (as written before markers held the run's own command) `cmd` plus launch-only
    flags."""
    path = out / marker
    if not path.exists():
        return False
    recorded = json.loads(path.read_text())
    extra = recorded[len(cmd):]
    return recorded[:len(cmd)] == cmd and len(extra) % 2 == 0 and all(f in LAUNCH_ONLY for f in extra[::2])


def is_done(job: Job) -> bool:
    return (job.out / "model.safetensors").exists() and _marked(job.out, DONE, job.cmd)


def has_failed(job: Job) -> bool:
    return _marked(job.out, FAILED, job.cmd)


def launch_command(job: Job, checkpoints: int = 0) -> list[str]:
    """The run's flags as launched: with `checkpoints` evenly spaced saves per run (0: as its command says), and
    from its newest checkpoint when a stopped run left one (SIGTERM/SIGINT also save one)."""
    cmd = list(job.cmd)
    if checkpoints:
        steps = int(cmd[cmd.index("--max_train_steps") + 1])
        cmd += ["--save_strategy", "steps", "--save_steps", str(max(1, steps // checkpoints)), "--save_total_limit", "2"]
    if any(job.out.glob("checkpoint-*/trainer_state.json")):
        cmd += ["--resume_from_checkpoint", "latest"]
    return cmd


def run(jobs: list[Job], *, parallel: int, threads: int, checkpoints: int = 0, allow_failure: bool = False,
        dry_run: bool = False) -> dict[str, float]:
    """Run the jobs that are neither done nor failed, `parallel` at a time with OMP_NUM_THREADS=`threads` each;
    returns each run's process wall time by folder name. With `dry_run`, print their commands instead.

    A failed run stops everything, unless `allow_failure`: then its folder gets the FAILED marker and the
    others go on. The first run of a model type runs alone until its data is prepared (metrics.jsonl appears),
    so that parallel runs do not each train the tokenizer and tokenize the corpus.
    """
    todo = [j for j in jobs if not is_done(j) and not has_failed(j)]
    if dry_run:
        for j in todo:
            print("python run_pretrain.py", " ".join(launch_command(j, checkpoints)), "--output_dir", j.out)
        return {}
    # The tokenizer and block cache is run_pretrain.py's usual one ($APOLLO_CACHE or ~/.cache/apollo).
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    pending, running, times, ready, waiting = list(todo), [], {}, set(), set()
    while pending or running:
        for launched in list(running):
            j, proc, start = launched
            if (j.out / "metrics.jsonl").exists():
                ready.add(j.model)
            if proc.poll() is None:
                continue
            running.remove(launched)
            lock_path(j).unlink(missing_ok=True)
            if _finished(j, proc.returncode, allow_failure):
                times[j.out.name] = time.time() - start
                print(f"[runner] done {j.out.name} in {times[j.out.name]:.0f} s ({len(pending)} to start)", flush=True)
        for j in [j for j in pending if j.out in waiting and holder(j) is None]:
            waiting.discard(j.out)  # another runner (another phase sharing the run) ended it
            if is_done(j) or has_failed(j):
                pending.remove(j)
                print(f"[runner] {j.out.name} was ended by another runner", flush=True)
        for j in pending:
            if j.out not in waiting and (pid := holder(j)) is not None:
                waiting.add(j.out)
                print(f"[runner] {j.out.name} is being trained by another runner (pid {pid}): not started here",
                      flush=True)
        while pending and len(running) < parallel:
            startable = [j for j in pending if j.out not in waiting and
                         (j.model in ready or not any(r[0].model == j.model for r in running))]
            if not startable:
                break
            pending.remove(startable[0])
            print(f"[runner] start {startable[0].out.name} (OMP_NUM_THREADS={threads})", flush=True)
            running.append((startable[0], _launch(startable[0], checkpoints, env), time.time()))
        time.sleep(1)
    return times


def log_path(job: Job) -> Path:
    return job.out.parent / "logs" / f"{job.out.name}.log"


def lock_path(job: Job) -> Path:
    """Holds the pid of the process training the run while a runner has it (two phases may share a run)."""
    return job.out.parent / "locks" / f"{job.out.name}.pid"


def holder(job: Job) -> int | None:
    """The pid of a live process training JOB for some runner, else None (no lock; or a stale one, left by a
    killed runner, whose pid is gone or now runs something else: its command line does not name the folder)."""
    try:
        pid = int(lock_path(job).read_text())
        for _ in range(10):  # empty while the process is still being exec'ed (milliseconds after its launch)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline:
                break
            time.sleep(0.1)
    except (OSError, ValueError):
        return None
    return pid if str(job.out).encode() in cmdline.split(b"\0") else None


def _launch(job: Job, checkpoints: int, env: dict) -> subprocess.Popen:
    full = [sys.executable, str(REPO / "run_pretrain.py"), *launch_command(job, checkpoints), "--output_dir",
            str(job.out), "--overwrite_output_dir"]
    log_path(job).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path(job), "a") as log:  # a relaunch keeps the stopped run's log
        log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(full)}\n")
        log.flush()
        proc = subprocess.Popen(full, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    lock_path(job).parent.mkdir(exist_ok=True)
    lock_path(job).write_text(str(proc.pid))
    return proc


def _finished(job: Job, returncode: int, allow_failure: bool) -> bool:
    """Mark an ended run done (True) or failed; a run that failed without `allow_failure` ends the benchmark."""
    if returncode == 0 and (job.out / "model.safetensors").exists():  # exit 0 also on a stop request
        (job.out / DONE).write_text(json.dumps(job.cmd))
        return True
    if allow_failure and returncode != 0:
        job.out.mkdir(parents=True, exist_ok=True)  # also when it failed before making its folder
        (job.out / FAILED).write_text(json.dumps(job.cmd))
        print(f"[runner] FAILED {job.out.name} (exit {returncode}); log: {log_path(job)}", flush=True)
        return False
    sys.exit(f"run failed or stopped (exit {returncode}): {job.out}; log: {log_path(job)}")
