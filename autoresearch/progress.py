"""Live progress of an experiment on stderr, fed by the harness's events.

The numbers come from the events the harness sends over its pipe (step,
loss, tokens served by the harness's own loader), never from parsing what
the candidate prints. On a terminal one bar is redrawn in place:

    e0007: ▕██████████░░░░░░░░░░▏  52%  step 1234  loss 3.2101  48,120 tok/s  144 s left

Elsewhere (a log file, a pipe, or `CI` set) a plain line is written every
`LINE_INTERVAL_SECONDS` at most (more often for short budgets), so logs stay
readable. Each finished experiment gets one line of its own either way
(`finished`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

LINE_INTERVAL_SECONDS = 10.0  # between plain lines when stderr is not a terminal
MIN_LINES_PER_RUN = 5  # plain lines per experiment, however short its budget
REDRAW_SECONDS = 0.1  # at most ten redraws a second on a terminal
RATE_WINDOW_SECONDS = 5.0  # tokens/s over the last few seconds: the current speed, not the mean
BAR_WIDTH = 20
MIN_BAR_WIDTH = 5  # narrower than this, the bar is left out
BAR_CHARS = ("█", "░", "▕", "▏")  # filled, empty, left and right edges
ASCII_BAR_CHARS = ("#", "-", "[", "]")  # when the stream cannot encode the block characters
MIN_COLUMNS = 40


def interactive(stream: TextIO) -> bool:
    """Redraw in place only on a real terminal and never under CI."""
    isatty = getattr(stream, "isatty", None)
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return bool(isatty and isatty()) and not ci


class LiveProgress:
    """An event callback (`runner.run_experiment(on_event=...)`) drawing one experiment's progress.

    Events arrive on the runner's reader thread; `finished` is called from the
    caller's thread once the experiment is over.
    """

    def __init__(
        self,
        budget_seconds: float,
        stream: TextIO | None = None,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.budget = budget_seconds
        self.stream = stream or sys.stderr
        self.label = label
        self.interactive = interactive(self.stream)
        # A short experiment still gets a few lines; a long one one line every 10 s at most.
        self._line_interval = min(LINE_INTERVAL_SECONDS, budget_seconds / MIN_LINES_PER_RUN)
        self._clock = clock
        self._start: float | None = None
        self._last_draw: float | None = None
        self._samples: deque[tuple[float, int]] = deque()  # (time, tokens) in the rate window
        self._bar_open = False  # a bar is drawn on the current terminal line
        encodable = _can_encode(self.stream, "".join(BAR_CHARS))
        self._bar_chars = BAR_CHARS if encodable else ASCII_BAR_CHARS

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self._start = self._clock()
            self._samples.clear()
            if not self.interactive:
                self._line(f"training for {self.budget:.0f} s")
        elif kind == "step":
            self._step(event)
        elif kind == "handover":
            self._line("training done; exporting the model for evaluation")
        elif kind == "handed_over":
            self._line("evaluating")

    def close(self) -> None:
        """End a bar left open (a crash sends no hand-over), so the next output starts clean."""
        if self.interactive and self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False

    # -- drawing

    def _step(self, event: dict[str, Any]) -> None:
        now = self._clock()
        if self._start is None:  # a step before `start`: the clock starts now
            self._start = now
        tokens = event.get("tokens")
        if isinstance(tokens, int):
            self._samples.append((now, tokens))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_SECONDS:
                self._samples.popleft()
        interval = REDRAW_SECONDS if self.interactive else self._line_interval
        if self._last_draw is not None and now - self._last_draw < interval:
            return
        self._last_draw = now
        elapsed = now - self._start
        if self.interactive:
            self._draw(elapsed, self._numbers(event, elapsed))
        else:
            self._line(f"{self._percent(elapsed):>4.0%}  " + self._numbers(event, elapsed))

    def _numbers(self, event: dict[str, Any], elapsed: float) -> str:
        loss = event.get("loss")
        loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else "?"
        left = max(0.0, self.budget - elapsed)
        return (
            f"step {event.get('step', 0)}  loss {loss_text}"
            f"  {self.tokens_per_second():,.0f} tok/s  {left:.0f} s left"
        )

    def tokens_per_second(self) -> float:
        """The current training speed, over the last `RATE_WINDOW_SECONDS`."""
        if len(self._samples) >= 2:
            (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
            if t1 > t0:
                return (n1 - n0) / (t1 - t0)
        if self._samples and self._start is not None:  # one sample: the mean since the start
            t1, n1 = self._samples[-1]
            return n1 / (t1 - self._start) if t1 > self._start else 0.0
        return 0.0

    def _percent(self, elapsed: float) -> float:
        return min(1.0, elapsed / self.budget) if self.budget > 0 else 0.0

    def _bar(self, elapsed: float, width: int) -> str:
        full, empty, left, right = self._bar_chars
        filled = round(self._percent(elapsed) * width)
        return f"{left}{full * filled}{empty * (width - filled)}{right}"

    def _draw(self, elapsed: float, numbers: str) -> None:
        """Redraw in place, within the terminal's width so the line never wraps.

        The numbers matter more than the bar: a narrow terminal shrinks the bar first.
        """
        columns = max(MIN_COLUMNS, shutil.get_terminal_size().columns - 1)
        percent = f"{self._percent(elapsed):>4.0%}"
        room = columns - len(self._prefixed(f"  {percent}  {numbers}")) - 2
        width = min(BAR_WIDTH, room)
        bar = self._bar(elapsed, width) + " " if width >= MIN_BAR_WIDTH else ""
        text = self._prefixed(f"{bar}{percent}  {numbers}")[:columns]
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self._bar_open = True

    def _line(self, text: str, prefix: bool = True) -> None:
        """A line of its own; on a terminal it first clears the bar."""
        clear = "\r\033[K" if self.interactive and self._bar_open else ""
        self._bar_open = False
        self.stream.write(clear + (self._prefixed(text) if prefix else text) + "\n")
        self.stream.flush()

    def _prefixed(self, text: str) -> str:
        return f"{self.label}: {text}" if self.label else text


def _can_encode(stream: TextIO, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
