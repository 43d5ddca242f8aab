"""Running a candidate `train.py` through the real runner, as `evolve` does: the shared
helpers of the attack suite (tests/attacks/) and of the tests of the sandbox and its caps.

The honest reference is the bigram of tests/candidates.py under a fixed token budget, so
every honest run trains the same steps on the same data and gets the same val_bpb, up to the
last bits of float reductions (which some machines order differently between processes):
an attack that trains the same model and still moves the score by more than that has
changed the measurement.
"""

from __future__ import annotations

from pathlib import Path

import candidates
import pytest

from autoresearch.config import load_config
from autoresearch.harness.sandbox import isolation_works
from autoresearch.ledger import FAILED_STATUSES
from autoresearch.runner import Outcome, run_experiment
from autoresearch.validation import validate_proposal

TOKENS = 12 * 16 * 64  # 12 steps of 16 rows of 64 tokens
# Float reductions summed in another order move val_bpb in about the 7th digit; the smallest
# gain a cheat is after is orders of magnitude larger.
SAME_SCORE = 1e-6
needs_isolation = pytest.mark.skipif(
    not isolation_works(), reason="this system does not allow unprivileged user namespaces"
)


def attack(
    repo: Path, source: str, isolation: str = "off", check: bool = True, **overrides
) -> Outcome:
    """Check `source` as evolve does (unless `check` is off: the attack aims at what comes
    after), then run it as evolve does; `invalid` if refused."""
    reason = check and validate_proposal(candidates.HONEST, source, seen_hashes=())
    if reason:
        return Outcome("invalid", reason)
    settings = {"run.budget_tokens": TOKENS, "run.budget_seconds": 30, "run.isolation": isolation}
    config = load_config(repo, settings | overrides)
    run_dir = repo / ".autoresearch" / "runs" / f"a{len(list(repo.glob('.autoresearch/runs/*')))}"
    run_dir.mkdir(parents=True)
    (run_dir / "train.py").write_text(source)
    return run_experiment(run_dir / "train.py", config, run_dir)


def same_score(score: float, honest: float) -> bool:
    """The honest model's score, up to the order of float reductions."""
    return abs(score - honest) <= SAME_SCORE * abs(honest)


def defended(out: Outcome, honest: float) -> bool:
    """Refused, or scored no better than the honest model it really is."""
    return out.status in FAILED_STATUSES or out.val_bpb >= honest * (1 - SAME_SCORE)


def in_repo(path: str) -> str:
    """Code for a candidate (working in its run folder) naming a repo file, hidden from the
    static checks: they are easy to get around, and these attacks test what comes after."""
    hidden = f"bytes.fromhex({path.encode().hex()!r}).decode()"
    return f"__import__('pathlib').Path.cwd().parents[2] / {hidden}"
