"""Console streams whose loss does not end a run.

A scheduler's preemption signals every process of a job, including a `tee` that copies the run's
output into a log. Once it has died, the next print raises BrokenPipeError, which would end the
run before it could checkpoint. The example and full-scale scripts keep their `tee` alive through
such a signal; these streams cover a user's own pipeline: after a broken pipe, output goes nowhere.
"""
from __future__ import annotations

import os


class SurvivingStream:
    """Wraps sys.stdout or sys.stderr; everything but write/flush is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._lost()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._lost()

    def _lost(self) -> None:
        # The wrapped stream's buffer still holds what could not be written: it must not be flushed
        # again at exit (Python would report the broken pipe and exit with status 120).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        self._stream = open(os.devnull, "w")

    def __getattr__(self, name):
        return getattr(self._stream, name)
