"""Preemption: SIGTERM/SIGINT finish the step, write a checkpoint and exit with status 0.

A batch scheduler signals every process of a job, DataLoader workers included. The workers ignore
the signals (the rank still needs their batches to finish its step), and are killed at exit if the
loader has not shut them down.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Installs the handlers; `requested` turns True at the first SIGTERM/SIGINT."""

    def __init__(self):
        self.requested = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


@contextlib.contextmanager
def stop_signals_held():
    """Hold SIGTERM/SIGINT back while DataLoader workers are forked (around `iter(loader)`).

    A worker installs torch's own SIGTERM handler (it ends the worker unless the parent sent the signal)
    before the worker_init_fn runs, so a job-wide SIGTERM in between killed a worker and failed the run
    (seen under load, the signal arriving as the workers started). Forked workers inherit the blocked
    mask: the signal waits until ignore_stop_signals discards it. The rank's own signal is delivered
    when the mask is restored here, to its StopRequest.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers outlive a job-wide SIGTERM/SIGINT (a scheduler signals every process of the
    job): the rank still needs their batches to finish its step and checkpoint. They end when the
    loader shuts them down, when the rank dies (they watch their parent), or at kill_loader_workers.
    A signal held since the fork (stop_signals_held) is discarded by SIG_IGN before the unblocking."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def kill_loader_workers() -> None:
    """At exit (atexit; it runs before multiprocessing's own exit function): workers the loader has not
    shut down, after an error, would ignore that function's SIGTERM and keep the rank waiting forever."""
    for worker in multiprocessing.active_children():
        worker.kill()
