"""One failing rank ends the whole job within seconds, with one line saying which rank, where and why.

torchrun's agent kills the siblings of a failed worker on its own node only. Ranks on other nodes
would wait in their next collective until the process group's timeout (--ddp_timeout: 10 hours in
the full-scale scripts), since NCCL does not notice a peer's death. So a failing rank writes one
key into the job's c10d store (the TCPStore that every rank already shares), and a daemon thread
in every rank checks for it every POLL_S seconds and ends its process with one line. The store's
server lives in the main node's launcher: if it stops answering, that node's part of the job has
ended, and the thread ends its process too. The guard is closed before the run's last collective
(a finished or stopped run's launcher may go away while the other ranks are still exiting).
"""
from __future__ import annotations

import os
import sys
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from .logs import flush_open_logs

POLL_S = 1.0
GIB = 2**30


def failure_line(rank: int, step: int | None, err: BaseException) -> str:
    """'rank R failed at step S: Type: first line of the message' (+ GPU memory figures for a CUDA OOM)."""
    where = f"at step {step}" if step else "before training"
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = f"rank {rank} failed {where}: {type(err).__name__}: {message}"
    if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
        device = torch.cuda.current_device()
        line += (f" (GPU {device}: {torch.cuda.memory_allocated(device) / GIB:.2f} GiB allocated, "
                 f"{torch.cuda.memory_reserved(device) / GIB:.2f} GiB reserved, "
                 f"{torch.cuda.get_device_properties(device).total_memory / GIB:.2f} GiB total)")
    return line


class FailureGuard:
    """Created by cli(); started once the process group exists; told the step as the loop runs."""

    def __init__(self):
        self.rank, self.step = int(os.environ.get("RANK", "0")), None
        self.store, self.key = None, None
        self.closed = threading.Event()
        self.reporting = threading.Lock()  # one report per process: the watcher's or the main thread's

    def start(self, accelerator) -> None:
        self.rank = accelerator.process_index
        if accelerator.num_processes == 1 or not dist.is_initialized():
            return
        base = dist.distributed_c10d._get_default_store()
        while isinstance(base, dist.PrefixStore):
            base = base.underlying_store
        if not isinstance(base, dist.TCPStore):
            return
        # A connection of its own: the main thread may block on the shared one (e.g. NCCL's setup).
        self.store = dist.TCPStore(base.host, base.port, is_master=False, wait_for_workers=False,
                                   timeout=timedelta(seconds=30))
        self.key = f"apollo/failed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        threading.Thread(target=self._watch, name="apollo-failure-guard", daemon=True).start()

    def step_begins(self, step: int) -> None:
        """Optimizer step `step` (1-based) is being computed; APOLLO_TEST_FAIL_AT=RANK:STEP fails it (tests)."""
        self.step = step
        if os.environ.get("APOLLO_TEST_FAIL_AT") == f"{self.rank}:{step}":
            raise RuntimeError(f"APOLLO_TEST_FAIL_AT={self.rank}:{step}: a failure planted for a test")

    def announce(self, err: BaseException) -> str:
        """This rank failed with `err`: tell the other ranks; return the line to print."""
        line = failure_line(self.rank, self.step, err)
        if self.store is not None:
            try:
                self.store.set(self.key, line)
            except Exception:  # noqa: BLE001 - the store is gone: the launchers end the rest
                pass
        return line

    def failure_elsewhere(self) -> str | None:
        """The line of a rank that failed before this one, if any."""
        if self.store is None:
            return None
        try:
            return self._read()
        except Exception:  # noqa: BLE001
            return None

    def close(self) -> None:
        """Stop watching (before the run's last collectives, and before reporting a failure of this rank).
        If the watcher is ending the process at this moment, this waits for that."""
        with self.reporting:
            self.closed.set()

    def _read(self) -> str | None:
        return self.store.get(self.key).decode() if self.store.check([self.key]) else None

    def _watch(self) -> None:
        while not self.closed.wait(POLL_S):
            try:
                line = self._read()
            except Exception:  # noqa: BLE001 - the main node's launcher no longer answers
                line = "the job's store stopped answering (the main node's part of the job has ended)"
            if not line:
                continue
            with self.reporting:
                if self.closed.is_set():
                    return
                flush_open_logs()
                sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: rank {self.rank} stopped: {line}\n")
                sys.stderr.flush()
                os._exit(1)
