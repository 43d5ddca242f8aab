"""Live progress: a bar redrawn in place on a terminal, plain throttled lines elsewhere."""

from __future__ import annotations

import io

import pytest

from autoresearch.progress import LINE_INTERVAL_SECONDS, LiveProgress


class Terminal(io.StringIO):
    """A stream that says it is a terminal, and can encode the bar's block characters."""

    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(progress: LiveProgress, clock: Clock, seconds: float, tokens_per_second: float) -> None:
    """A training run as the harness reports it: a step event every 0.25 s."""
    progress({"event": "start"})
    step = 0
    while step * 0.25 < seconds:
        clock.now += 0.25
        step += 1
        tokens = int(step * 0.25 * tokens_per_second)
        progress({"event": "step", "step": step, "loss": 5.0 - step * 0.01, "tokens": tokens})


@pytest.fixture(autouse=True)
def wide_terminal_without_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("COLUMNS", "120")  # shutil.get_terminal_size reads it first


def test_terminal_gets_a_bar_redrawn_in_place():
    stream, clock = Terminal(), Clock()
    progress = LiveProgress(60.0, stream=stream, label="c0007", clock=clock)
    assert progress.interactive
    feed(progress, clock, seconds=30.0, tokens_per_second=4000.0)
    out = stream.getvalue()
    frames = out.split("\r\x1b[K")[1:]
    assert len(frames) > 20  # redrawn, not appended
    assert "\n" not in out  # the bar stays on one line until something ends it
    last = frames[-1]
    assert last.startswith("c0007: ▕██████████░░░░░░░░░░▏  50%")
    assert "step 120" in last and "loss 3.8000" in last
    assert "4,000 tok/s" in last and "30 s left" in last
    progress({"event": "handover"})
    assert stream.getvalue().endswith(
        "\r\x1b[Kc0007: training done; exporting the model for evaluation\n"
    )


def test_a_narrow_terminal_shrinks_the_bar_never_the_numbers(monkeypatch):
    monkeypatch.setenv("COLUMNS", "62")
    stream, clock = Terminal(), Clock()
    progress = LiveProgress(60.0, stream=stream, label="c0007", clock=clock)
    feed(progress, clock, seconds=30.0, tokens_per_second=4000.0)
    last = stream.getvalue().split("\r\x1b[K")[-1]
    assert last == "c0007:  50%  step 120  loss 3.8000  4,000 tok/s  30 s left"


def test_not_a_terminal_gets_plain_throttled_lines():
    stream, clock = io.StringIO(), Clock()
    progress = LiveProgress(60.0, stream=stream, label="c0007", clock=clock)
    assert not progress.interactive
    feed(progress, clock, seconds=60.0, tokens_per_second=4000.0)
    progress({"event": "handover"})
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert lines[0] == "c0007: training for 60 s"
    steps = [line for line in lines if "step" in line]
    assert len(steps) == int(60 / LINE_INTERVAL_SECONDS)  # one every interval, not 240
    assert steps[0] == "c0007:   0%  step 1  loss 4.9900  4,000 tok/s  60 s left"
    assert steps[-1].startswith("c0007:  84%  step 201")
    assert lines[-1] == "c0007: training done; exporting the model for evaluation"


def test_ci_makes_a_terminal_quiet(monkeypatch):
    monkeypatch.setenv("CI", "true")
    progress = LiveProgress(60.0, stream=Terminal())
    assert not progress.interactive


def test_tokens_per_second_is_the_current_speed():
    stream, clock = io.StringIO(), Clock()
    progress = LiveProgress(60.0, stream=stream, clock=clock)
    feed(progress, clock, seconds=20.0, tokens_per_second=1000.0)
    tokens = 20_000
    for step in range(81, 121):  # ten seconds at 5,000 tokens/s
        clock.now += 0.25
        tokens += 1250
        progress({"event": "step", "step": step, "loss": 3.0, "tokens": tokens})
    assert progress.tokens_per_second() == pytest.approx(5000.0)


def test_close_ends_an_open_bar():
    stream, clock = Terminal(), Clock()
    progress = LiveProgress(60.0, stream=stream, clock=clock)
    feed(progress, clock, seconds=2.0, tokens_per_second=100.0)
    progress.close()
    assert stream.getvalue().endswith("left\n")


def test_ascii_bar_when_the_stream_cannot_encode_blocks():
    class AsciiTerminal(Terminal):
        encoding = "ascii"

    stream, clock = AsciiTerminal(), Clock()
    progress = LiveProgress(10.0, stream=stream, clock=clock)
    feed(progress, clock, seconds=5.0, tokens_per_second=100.0)
    assert "[##########----------]  50%" in stream.getvalue()


@pytest.mark.parametrize(
    ("value", "quiet"), [("true", True), ("1", True), ("false", False), ("", False)]
)
def test_ci_values(monkeypatch, value, quiet):
    monkeypatch.setenv("CI", value)
    assert LiveProgress(60.0, stream=Terminal()).interactive is not quiet


def test_a_short_budget_still_gets_a_few_plain_lines():
    stream, clock = io.StringIO(), Clock()
    progress = LiveProgress(10.0, stream=stream, clock=clock)
    feed(progress, clock, seconds=10.0, tokens_per_second=100.0)
    assert len([line for line in stream.getvalue().splitlines() if "step" in line]) == 5
