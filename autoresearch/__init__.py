"""autoresearch: AI agents doing machine-learning research on one GPU, overnight."""

from autoresearch.hookspecs import hookimpl
from autoresearch.proposal import (
    Briefing,
    HistoryEntry,
    Promotion,
    Proposal,
    ProposalFailed,
    ProposalRequest,
    Proposer,
    RunNumbers,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "Briefing",
    "HistoryEntry",
    "Promotion",
    "Proposal",
    "ProposalFailed",
    "ProposalRequest",
    "Proposer",
    "RunNumbers",
    "Usage",
    "__version__",
    "hookimpl",
]
