"""autoresearch: AI agents doing machine-learning research on one GPU, overnight."""

from autoresearch.hookspecs import hookimpl
from autoresearch.proposal import (
    HistoryEntry,
    Proposal,
    ProposalFailed,
    ProposalRequest,
    Proposer,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "HistoryEntry",
    "Proposal",
    "ProposalFailed",
    "ProposalRequest",
    "Proposer",
    "Usage",
    "__version__",
    "hookimpl",
]
