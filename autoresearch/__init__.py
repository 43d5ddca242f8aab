"""autoresearch: AI agents doing machine-learning research on one GPU, overnight."""

from autoresearch.hookspecs import hookimpl
from autoresearch.proposal import HistoryEntry, Proposal, ProposalRequest, Proposer, Usage

__version__ = "0.1.0"

__all__ = [
    "HistoryEntry",
    "Proposal",
    "ProposalRequest",
    "Proposer",
    "Usage",
    "__version__",
    "hookimpl",
]
