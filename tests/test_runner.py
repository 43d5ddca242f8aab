"""One experiment through the real runner: real subprocesses, real training, real evaluation."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import candidates
import pytest

from autoresearch.config import load_config
from autoresearch.runner import run_experiment


def run(repo: Path, source: str, **overrides):
    (repo / "train.py").write_text(source)
    config = load_config(repo, overrides)
    return run_experiment(repo / "train.py", config, repo / ".autoresearch" / "runs" / "t")


def test_honest_candidate_is_scored_by_the_harness(research_repo):
    out = run(research_repo, candidates.HONEST)
    assert out.status == "keep", out.reason
    # Byte-level uniform bound is 8 bits per byte; a trained bigram is far below it.
    assert out.val_bpb is not None and 0.5 < out.val_bpb < 6.0
    assert 1.5 < out.training_seconds < 4.0
    assert out.num_steps > 5 and out.tokens >= out.num_steps * 16 * 64
    assert out.num_params == 257 * 257  # counted from the hand-over, not reported by the candidate
    assert set(out.fingerprints) == {"harness", "data", "tokenizer", "train"}
    assert (research_repo / ".autoresearch/runs/t/run.log").exists()


def test_printed_score_is_never_the_score(research_repo):
    out = run(research_repo, candidates.FAKE_SCORE)
    assert out.status == "crash"
    assert out.val_bpb is None
    assert "handover" in out.reason


def test_crash_reason_is_the_last_log_line(research_repo):
    out = run(research_repo, candidates.CRASH)
    assert out.status == "crash"
    assert "boom: the candidate is broken" in out.reason


def test_hang_is_killed_at_the_hard_limit(research_repo):
    t0 = time.monotonic()
    out = run(research_repo, candidates.HANG, **{"run.budget_seconds": 1, "run.startup_seconds": 2})
    assert out.status == "timeout"
    assert time.monotonic() - t0 < 15


def test_grandchildren_are_killed(research_repo):
    out = run(
        research_repo, candidates.GRANDCHILD, **{"run.budget_seconds": 1, "run.startup_seconds": 2}
    )
    assert out.status == "timeout"
    pid = int((research_repo / "grandchild.pid").read_text())
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_nan_loss_fails_fast(research_repo):
    t0 = time.monotonic()
    out = run(research_repo, candidates.NAN, **{"run.budget_seconds": 30})
    assert out.status == "crash"
    assert "diverged" in out.reason
    assert time.monotonic() - t0 < 20  # long before the 30 s budget


def test_exiting_without_handover_is_a_crash(research_repo):
    out = run(research_repo, candidates.NO_HANDOVER)
    assert out.status == "crash"
    assert "harness.handover" in out.reason


def test_patched_clock_cannot_stretch_the_budget(research_repo):
    out = run(research_repo, candidates.OVER_BUDGET)
    assert out.status == "timeout"
    assert "over the 2 s budget" in out.reason


def test_model_peeking_at_future_tokens_is_refused(research_repo):
    out = run(research_repo, candidates.PEEKING)
    assert out.status == "crash"
    assert "not causal" in out.reason
    assert out.val_bpb is None


def test_candidate_environment_has_no_secrets(research_repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-PLANTED-SECRET-123")
    out = run(research_repo, candidates.SECRET_SNOOP)
    assert out.status == "keep", out.reason
    log = (research_repo / ".autoresearch/runs/t/run.log").read_text()
    assert "SECRET absent" in log
    assert "PLANTED-SECRET" not in log


def test_training_seconds_measured_by_the_runner(research_repo):
    out = run(research_repo, candidates.HONEST, **{"run.budget_seconds": 3})
    assert out.status == "keep"
    assert math.isclose(out.training_seconds, 3.0, abs_tol=0.8)
