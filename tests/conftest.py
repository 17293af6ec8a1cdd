"""Shared test fixtures: one tokenizer/data cache per session, and ways to run the entry point.

Set APOLLO_TEST_CACHE to a folder to keep the cache (trained tokenizers, token blocks) between
sessions; by default it lives in a session temporary folder.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session", autouse=True)
def apollo_cache(tmp_path_factory):
    """APOLLO_CACHE for every run of the session (in-process and subprocesses inherit it)."""
    path = os.environ.get("APOLLO_TEST_CACHE") or str(tmp_path_factory.mktemp("apollo_cache"))
    saved = os.environ.get("APOLLO_CACHE")
    os.environ["APOLLO_CACHE"] = path
    yield Path(path)
    if saved is None:
        os.environ.pop("APOLLO_CACHE", None)
    else:
        os.environ["APOLLO_CACHE"] = saved


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> list[str]:
    """Flags for a small slice of the embedded corpus: tokenizer training and tokenization in ~1 s."""
    from apollo.corpus import embedded_sample

    return embedded_sample(tmp_path_factory.mktemp("tiny_corpus"), {"train": 120, "validation": 20})


TORCHRUN_2 = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


def entry_command(args, launcher=(sys.executable,)) -> list[str]:
    """The command line of `run_pretrain.py ARGS` (launcher e.g. TORCHRUN_2 for two CPU processes)."""
    return [*launcher, str(REPO / "run_pretrain.py"), *map(str, args)]


def subprocess_env() -> dict:
    # One thread per process: faster on a shared 2-core machine, and the same arithmetic as run_inprocess.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_subprocess(args, *, launcher=(sys.executable,), timeout=300) -> subprocess.CompletedProcess:
    """`run_pretrain.py ARGS` in fresh processes; stdout and stderr captured as text."""
    return subprocess.run(entry_command(args, launcher), cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_inprocess(args) -> subprocess.CompletedProcess:
    """`run_pretrain.cli(ARGS)` in this process on one thread (no import cost), reported like run_subprocess."""
    import torch
    from accelerate.state import AcceleratorState

    import run_pretrain

    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_pretrain.cli([str(a) for a in args])
    except SystemExit as exc:  # argparse errors and the preemption exit
        code = exc.code
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)  # the next run builds its own
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


WALL_CLOCK_FIELDS = ("elapsed_s", "tokens_per_s", "mfu")  # metrics.jsonl fields that vary between identical runs


def signal_whole_job(pid: int, signum) -> None:
    """What a batch scheduler does on preemption or cancel: signal every process of the job at once.

    `pid` leads a process group (started with start_new_session). The group holds the shell, `tee`
    and the launcher; torchrun starts each rank in a session of its own, so the ranks and their
    DataLoader workers are reached as descendants.
    """
    import psutil

    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)
    for proc in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signum)


def preempt(command, *, env, ready, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    """Run COMMAND in a session of its own; once `ready()` holds, SIGTERM to every process of it (a scheduler's
    preemption); wait for it to end. Its stdout and stderr come back together as stdout."""
    import signal
    import time

    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.005)
        signal_whole_job(proc.pid, signal.SIGTERM)
        console, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            signal_whole_job(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, console, "")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def metrics_without_wall_clock(output_dir) -> list[dict]:
    """OUTPUT_DIR/metrics.jsonl without the fields that differ between identical runs."""
    records = read_jsonl(Path(output_dir) / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


def final_weights(output_dir) -> dict:
    """The final model a run saved in OUTPUT_DIR, as a name -> tensor dict."""
    from safetensors.torch import load_file

    return load_file(str(Path(output_dir) / "model.safetensors"))


def assert_grads_are_summed_over_uses(slots, ref_slots, plan, unique: int) -> None:
    """Each unique slot's gradient equals the sum of the gradients of its uses along `plan` in the
    explicitly unrolled reference (within 1e-6 relative)."""
    for u in range(unique):
        for (name, p), *uses in zip(slots[u].named_parameters(),
                                     *[ref_slots[k].parameters() for k, s in enumerate(plan) if s == u]):
            summed = sum(q.grad for q in uses)
            rel = (p.grad - summed).norm() / summed.norm().clamp_min(1e-12)
            assert rel < 1e-6, (u, name, rel.item())
