"""What a proposer is asked, and what it answers.

These types are the whole contract between the engine and a proposer plugin:
a proposer reads a `ProposalRequest` and returns a `Proposal` holding the
complete new `train.py`. Proposers are called from worker threads, so they
must not keep per-request state on themselves.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class HistoryEntry:
    """One finished experiment, as a proposer sees it."""

    id: str
    parent: str | None
    status: str  # one of autoresearch.ledger.STATUSES
    val_bpb: float | None
    delta: float | None  # val_bpb minus the parent's; negative is better
    description: str
    proposer: str
    reason: str = ""  # why this status: "trained 17.0 s, over the 10 s budget", why invalid


@dataclass(frozen=True)
class RunNumbers:
    """What one experiment's run measured (the parent's, in a request)."""

    status: str
    reason: str  # one line: why this status
    val_bpb: float | None
    budget: str  # what it trained under: "300 s", "2,000,000 tokens (at most 300 s)"
    device: str
    training_seconds: float
    num_steps: int
    tokens: int
    memory_gb: float  # peak GPU memory; peak process memory on CPU
    final_loss: float | None = None  # the last training loss train.py reported (its claim)

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.training_seconds if self.training_seconds > 0 else None


@dataclass(frozen=True)
class Promotion:
    """A candidate that became the champion, and its change to its parent's train.py."""

    entry: HistoryEntry
    diff: str  # unified diff of train.py from its parent, cut to a bounded size


@dataclass(frozen=True)
class Briefing:
    """The bounded summary of the run a prompt shows, kept up to date by the engine as
    records arrive (`autoresearch.briefing.Book`): taking one costs the same with 10,000
    records as with 10."""

    best: tuple[HistoryEntry, ...] = ()  # the best scored experiments, best first
    failures: tuple[HistoryEntry, ...] = ()  # the most recent failures, newest first
    promotions: tuple[Promotion, ...] = ()  # the most recent promotions, newest first
    table: str = ""  # the run's results as TSV, a header and the newest rows that fit a cap
    table_rows: int = 0  # rows of the whole table: more than `table` holds when it was cut
    noise: float | None = None  # σ of val_bpb between runs of one train.py; None: unmeasured
    threshold: float | None = None  # how much a new candidate must beat the champion's mean by


@dataclass(frozen=True)
class ProposalRequest:
    parent_id: str
    parent_source: str  # the parent's train.py
    program: str  # program.md: the research instructions
    # Every experiment of the run: scored best first, then failures newest first.
    history: Sequence[HistoryEntry] = ()
    crash_log: str | None = None  # tail of the parent's log when the parent crashed
    rng: random.Random = field(default_factory=random.Random)  # seeded by the engine
    work_dir: Path | None = None  # a folder of the candidate's own, for prompts and replies
    parent_run: RunNumbers | None = None  # the parent's numbers; None before it has trained
    briefing: Briefing | None = None  # None: a prompt summarises `history` itself


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class Proposal:
    source: str  # the complete new train.py
    description: str  # one line: what changed and why
    usage: Usage = field(default_factory=Usage)


class ProposalFailed(RuntimeError):
    """This one proposal failed after spending `usage` (tokens, USD, seconds): the engine
    records it `invalid` with that spend, so that it counts toward `--max-cost-usd`."""

    def __init__(self, message: str, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage or Usage()


@runtime_checkable
class Proposer(Protocol):
    """Anything with a name and a thread-safe `propose` method."""

    name: str

    def propose(self, request: ProposalRequest) -> Proposal: ...
