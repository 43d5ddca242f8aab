"""Test doubles for code that drives proposers: the engine's tests and plugin authors'.

    proposer = ScriptedProposer([new_source, (other_source, "double DEPTH"), TimeoutError()])
    with installed_plugins(scripted_plugin(proposer)):
        make_proposer("scripted", {}).propose(make_request(parent_source))

Each `propose` call takes the next reply of the script: a source (a default
description is made up), a `(source, description)` pair, a whole `Proposal`,
an exception instance (raised, to test recovery), or a callable taking the
request. Every request is kept in `proposer.requests` for assertions.

    runner = ScriptedRunner(lambda source: 3.0 - 0.1 * source.count("better"), seconds=0.2)
    Engine(repo, config, tag, proposers, say=print, runner=runner).run(base_commit)

`ScriptedRunner` stands in for the real runner: each experiment's outcome is
computed from its `train.py` source (a val_bpb, or a whole `Outcome` such as a
crash), after an optional sleep, so the engine's rules are tested in
milliseconds and its concurrency with sleeps. Every call is kept in
`runner.calls`.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from autoresearch.config import Config
from autoresearch.hookspecs import hookimpl
from autoresearch.plugins import PluginManager, check_hooks, get_plugin_manager
from autoresearch.proposal import HistoryEntry, Proposal, ProposalRequest
from autoresearch.runner import Outcome
from autoresearch.slots import WHOLE_MACHINE, Slot
from autoresearch.workspace import RUN_LOG

SCRIPTED = "scripted"
DESCRIPTION = "a scripted test double"

Reply = Union[  # noqa: UP007 - evaluated at runtime on Python 3.10
    str, tuple[str, str], Proposal, BaseException, Callable[[ProposalRequest], object]
]


class ScriptExhausted(RuntimeError):
    """The scripted proposer was asked more often than it has replies."""


class ScriptedProposer:
    """A thread-safe proposer that answers from a queue of replies."""

    def __init__(self, replies: Iterable[Reply] = (), name: str = SCRIPTED) -> None:
        self.name = name
        self.requests: list[ProposalRequest] = []
        self._replies: deque[Reply] = deque(replies)
        self._lock = threading.Lock()

    def add(self, *replies: Reply) -> None:
        """Queue more replies."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._replies)

    def propose(self, request: ProposalRequest) -> Proposal:
        with self._lock:
            self.requests.append(request)
            number = len(self.requests)
            if not self._replies:
                raise ScriptExhausted(f"{self.name}: no reply left for request {number}")
            reply = self._replies.popleft()
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply) and not isinstance(reply, Proposal):
            reply = reply(request)
        return _as_proposal(reply, f"{self.name} proposal {number}")


@dataclass(frozen=True)
class RunnerCall:
    """One experiment the scripted runner was given."""

    source: str
    run_dir: Path
    slot: Slot  # where the engine ran it
    seed: int  # the training seed it was given (config.run.seed): repeats get their own
    started: float  # time.monotonic() when it began
    ended: float


class ScriptedRunner:
    """A thread-safe runner whose outcomes are computed from the source: `score(source)`
    returns a val_bpb (status `keep`) or a whole `Outcome`, or raises (as the real runner
    does on a machine fault). Each experiment takes `seconds` (a sleep), or
    `seconds(source)`: experiments of different lengths finish out of order on slots."""

    def __init__(
        self,
        score: Callable[[str], float | Outcome],
        seconds: float | Callable[[str], float] = 0.0,
    ) -> None:
        self.score = score
        self.seconds = seconds
        self.calls: list[RunnerCall] = []
        self._lock = threading.Lock()

    def __call__(
        self,
        train_py: Path,
        config: Config,
        run_dir: Path,
        on_event: Callable[[dict], None] | None = None,
        slot: Slot = WHOLE_MACHINE,
    ) -> Outcome:
        started = time.monotonic()
        source = train_py.read_text(encoding="utf-8")
        run_dir.mkdir(parents=True, exist_ok=True)
        seconds = self.seconds(source) if callable(self.seconds) else self.seconds
        time.sleep(seconds)
        scored = self.score(source)
        outcome = (
            scored
            if isinstance(scored, Outcome)
            else Outcome(
                "keep", "scored by a test double", val_bpb=float(scored),
                training_seconds=seconds, total_seconds=seconds, device="cpu",
            )  # fmt: skip
        )
        # The engine hands a crash back to its proposer with the run's log tail.
        (run_dir / RUN_LOG).write_text(f"{outcome.status}: {outcome.reason}\n", encoding="utf-8")
        with self._lock:
            self.calls.append(
                RunnerCall(source, run_dir, slot, config.run.seed, started, time.monotonic())
            )
        return outcome


def _as_proposal(reply: object, default_description: str) -> Proposal:
    if isinstance(reply, Proposal):
        return reply
    if isinstance(reply, str):
        return Proposal(source=reply, description=default_description)
    if isinstance(reply, tuple) and len(reply) == 2:
        return Proposal(source=reply[0], description=reply[1])
    # Deliberately passed through: tests of the engine feed it garbage on purpose.
    return reply  # type: ignore[return-value]


def scripted_plugin(proposer: ScriptedProposer, description: str = DESCRIPTION) -> object:
    """A plugin object that registers `proposer` under its name (ignoring options)."""

    class ScriptedPlugin:
        @hookimpl
        def register_proposers(self, register):
            register(proposer.name, lambda options: proposer, description)

    return ScriptedPlugin()


@contextmanager
def installed_plugins(*plugins: object, pm: PluginManager | None = None) -> Iterator[PluginManager]:
    """Register plugin objects on `pm` (default: the process-wide manager) for a `with` block."""
    pm = pm if pm is not None else get_plugin_manager()
    for plugin in plugins:
        pm.register(plugin)
    try:
        check_hooks(pm)  # a typo in a test plugin fails here, not silently
        yield pm
    finally:
        for plugin in plugins:
            if pm.is_registered(plugin):
                pm.unregister(plugin)


def make_request(
    parent_source: str,
    history: Iterable[HistoryEntry] = (),
    seed: int = 0,
    parent_id: str = "c0000",
    program: str = "",
    **fields: object,
) -> ProposalRequest:
    """A `ProposalRequest` with a seeded generator and quiet defaults."""
    return ProposalRequest(
        parent_id=parent_id,
        parent_source=parent_source,
        program=program,
        history=tuple(history),
        rng=random.Random(seed),
        **fields,  # type: ignore[arg-type]
    )
