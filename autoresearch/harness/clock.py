"""The training budget, as `train.py` sees it.

The budget is wall-clock training time (`run.budget_seconds`), or a number of
training tokens (`run.budget_tokens`), with the seconds then only a cap. Under the
runner the tokens are those the runner served (`harness.train_loader` keeps its
count), and `start()` tells the runner's data server that the budget starts. None
of this is trusted: the runner times the window with its own clock (from the first
`start` or the first batch it served, to the `handover`), counts the tokens it
served, and stops serving past the token budget, so a `Budget` patched inside the
candidate changes nothing but the candidate's own schedule.
"""

from __future__ import annotations

import time

from autoresearch.harness.context import context
from autoresearch.harness.events import _State, emit


class Budget:
    """`start()` it when training starts; train while not `done`; schedule by `progress`."""

    def __init__(self, seconds: float | None = None, tokens: int | None = None):
        ctx = context()
        self.seconds = ctx.budget_seconds if seconds is None else seconds
        self.tokens = ctx.budget_tokens if tokens is None else tokens
        self._start: float | None = None
        self._start_tokens = 0

    def start(self) -> None:
        # Imported here: the harness package is imported by the sandbox too, which must stay
        # single-threaded to enter its namespaces, and numpy may start threads.
        from autoresearch.harness.dataloader import data_channel

        self._start = time.monotonic()
        self._start_tokens = _State.tokens
        channel = data_channel()
        if channel:  # the runner's count of the batches drawn before this: they must be none
            channel.start()
        emit("start", budget_seconds=self.seconds, budget_tokens=self.tokens, tokens=_State.tokens)

    @property
    def elapsed(self) -> float:
        return 0.0 if self._start is None else time.monotonic() - self._start

    @property
    def tokens_trained(self) -> int:
        """Training tokens served since `start()` (counted by the runner, under the runner)."""
        return 0 if self._start is None else _State.tokens - self._start_tokens

    @property
    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]: drive LR schedules with this."""
        if self.tokens:
            return min(1.0, self.tokens_trained / self.tokens)
        return min(1.0, self.elapsed / self.seconds)

    @property
    def done(self) -> bool:
        return self._start is not None and self.progress >= 1.0
