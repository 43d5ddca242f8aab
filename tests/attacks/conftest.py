"""The attack suite's shared fixture: the true score."""

from __future__ import annotations

import candidates
import pytest
from attacking import attack

_SCORES: dict[str, float] = {}


@pytest.fixture
def honest_bpb(research_repo) -> float:
    """The true score: what the honest bigram gets (the same in every repo of the session)."""
    if "honest" not in _SCORES:
        out = attack(research_repo, candidates.HONEST, check=False)
        assert out.status == "keep", out.reason
        _SCORES["honest"] = out.val_bpb
    return _SCORES["honest"]
