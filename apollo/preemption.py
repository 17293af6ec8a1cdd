"""Preemption: SIGTERM/SIGINT finish the step, write a checkpoint and exit with status 0.

A batch scheduler signals every process of a job, DataLoader workers included. The workers ignore
the signals (the rank still needs their batches to finish its step), and are killed at exit if the
loader has not shut them down.
"""
from __future__ import annotations

import multiprocessing
import signal


class StopRequest:
    """Installs the handlers; `requested` turns True at the first SIGTERM/SIGINT."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers outlive a job-wide SIGTERM/SIGINT (a scheduler signals every process of the
    job): the rank still needs their batches to finish its step and checkpoint. They end when the
    loader shuts them down, when the rank dies (they watch their parent), or at kill_loader_workers."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def kill_loader_workers() -> None:
    """At exit (atexit; it runs before multiprocessing's own exit function): workers the loader has not
    shut down, after an error, would ignore that function's SIGTERM and keep the rank waiting forever."""
    for worker in multiprocessing.active_children():
        worker.kill()
