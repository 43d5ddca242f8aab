"""Live progress of a training run on stderr, fed by the harness's events.

On a terminal one status line is redrawn in place; elsewhere (a log file, CI)
a plain line is written every few seconds, so logs stay readable.
"""

from __future__ import annotations

import os
import sys
import time

LINE_INTERVAL_SECONDS = 10.0  # between plain lines when stderr is not a terminal


class LiveProgress:
    def __init__(self, budget_seconds: float, stream=None):
        self.budget = budget_seconds
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() and not os.environ.get("CI")
        self._start: float | None = None
        self._last_line = 0.0

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self._start = time.monotonic()
        elif kind == "step":
            self._step(event)
        elif kind == "handover":
            self._write("training done; exporting the model for evaluation", final=True)

    def _step(self, event: dict) -> None:
        elapsed = time.monotonic() - self._start if self._start else 0.0
        now = time.monotonic()
        if not self.interactive and now - self._last_line < LINE_INTERVAL_SECONDS:
            return
        self._last_line = now
        loss = event.get("loss")
        loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else "?"
        rate = event.get("tokens", 0) / elapsed if elapsed > 0 else 0.0
        self._write(
            f"step {event.get('step', 0):>6}  loss {loss_text}  {rate:,.0f} tok/s"
            f"  {elapsed:5.1f}/{self.budget:.0f} s"
        )

    def _write(self, text: str, final: bool = False) -> None:
        if self.interactive:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
