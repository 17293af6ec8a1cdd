"""DataLoader workers and a job-wide stop signal (issue 14, item 2): a SIGTERM that reaches a worker while it
starts, after torch has installed its own SIGTERM handler and before our worker_init_fn ignores the signal,
must not kill it. Seen in a CI-like run under load: "DataLoader worker (pid ...) is killed by signal:
Terminated" at step 1 of a preempted example run with --dataloader_num_workers 2."""
from __future__ import annotations

import os
import signal

import datasets

import apollo.batches
from apollo.batches import MicroBatchSampler, training_batches
from apollo.preemption import ignore_stop_signals


def signalled_before_ignoring(worker_id: int) -> None:
    """The job's SIGTERM, arriving in the window: torch's worker handler is installed, ours has not run."""
    os.kill(os.getpid(), signal.SIGTERM)
    ignore_stop_signals(worker_id)


def test_a_stop_signal_while_the_workers_start_kills_no_worker(monkeypatch):
    monkeypatch.setattr(apollo.batches, "ignore_stop_signals", signalled_before_ignoring)
    blocks = datasets.Dataset.from_dict({"input_ids": [[i] * 4 for i in range(8)]})
    sampler = MicroBatchSampler(num_blocks=8, batch_size=2, world_size=1, rank=0, seed=7, micro_per_epoch=4,
                                start=0, stop=8)
    keys = lambda rows: [row["key"] for row in rows]  # noqa: E731 - the collator: the keys, in order
    got = list(training_batches(blocks, sampler, keys, num_workers=2, pin_memory=False))
    assert got == list(sampler)  # every micro-batch arrived (a killed worker raises instead)
