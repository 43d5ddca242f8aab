"""What a proposer is asked, and what it answers.

These types are the whole contract between the engine and a proposer plugin:
a proposer reads a `ProposalRequest` and returns a `Proposal` holding the
complete new `train.py`. Proposers are called from worker threads, so they
must not keep per-request state on themselves.
"""

from __future__ import annotations

import random
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


@dataclass(frozen=True)
class ProposalRequest:
    parent_id: str
    parent_source: str  # the parent's train.py
    program: str  # program.md: the research instructions
    history: tuple[HistoryEntry, ...] = ()  # best results first, then recent failures
    crash_log: str | None = None  # tail of the parent's log when the parent crashed
    rng: random.Random = field(default_factory=random.Random)  # seeded by the engine
    work_dir: Path | None = None  # a folder of the candidate's own, for prompts and replies


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
