"""The training time budget, as `train.py` sees it.

The budget is wall-clock training time. The runner checks it independently
(from the arrival of the `start` and `handover` events), so a clock patched
inside the candidate changes nothing but the candidate's own schedule.
"""

from __future__ import annotations

import time

from autoresearch.harness.context import context
from autoresearch.harness.events import emit


class Budget:
    """`start()` it when training starts; train while not `done`; schedule by `progress`."""

    def __init__(self, seconds: float | None = None):
        self.seconds = context().budget_seconds if seconds is None else seconds
        self._start: float | None = None

    def start(self) -> None:
        self._start = time.monotonic()
        emit("start", budget_seconds=self.seconds)

    @property
    def elapsed(self) -> float:
        return 0.0 if self._start is None else time.monotonic() - self._start

    @property
    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]: drive LR schedules with this."""
        return min(1.0, self.elapsed / self.seconds)

    @property
    def done(self) -> bool:
        return self._start is not None and self.elapsed >= self.seconds
