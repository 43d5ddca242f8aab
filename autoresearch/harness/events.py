"""Progress events from the training process to the runner.

Each event is one JSON line written to a pipe the runner opened. The candidate
holds the pipe and can write any line to it, so nothing here is trusted: the
runner stamps every event with its own clock on arrival, takes the training
window's start from the earlier of the `start` event and the first batch it
served, and bounds the export (`handover` to `handed_over`) and the start-up,
so a forged event can only make a run look slower or invalid. The fields are
progress information, never the score nor the token count.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from autoresearch.harness.context import EVENTS_ENV

LOSS_LIMIT = 100.0  # a loss above this has exploded: stop now instead of wasting the budget
STEP_EVENT_INTERVAL = 0.25  # seconds between step events; enough for a live progress bar


class _State:
    fd: int | None = int(os.environ[EVENTS_ENV]) if os.environ.get(EVENTS_ENV) else None
    last_step_event = 0.0
    tokens = 0  # training tokens served (under the runner: as the runner counted them)
    steps = 0  # steps reported (step events are throttled; this counts every one)


def emit(event: str, **fields: object) -> None:
    """Send one event to the runner (a no-op when run by hand)."""
    if _State.fd is None:
        return
    line = json.dumps({"event": event, **fields}) + "\n"
    try:
        os.write(_State.fd, line.encode())
    except OSError:  # the runner went away: keep training, nobody is listening
        _State.fd = None


def count_tokens(n: int) -> None:
    _State.tokens += n


def report(step: int, loss: float) -> None:
    """Call once per training step: live progress, and a fast stop when the loss diverges."""
    loss = float(loss)
    if not math.isfinite(loss) or loss > LOSS_LIMIT:
        emit("diverged", step=step, loss=loss if math.isfinite(loss) else str(loss))
        sys.exit(f"training diverged: loss {loss} at step {step}")
    _State.steps = step + 1
    now = time.monotonic()
    if step == 0 or now - _State.last_step_event >= STEP_EVENT_INTERVAL:
        _State.last_step_event = now
        emit("step", step=step, loss=loss, tokens=_State.tokens)
