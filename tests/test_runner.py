"""One experiment through the real runner: real subprocesses, real training, real evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import candidates
import pytest

from autoresearch.config import load_config
from autoresearch.runner import error_line, run_experiment


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
    # The last loss train.py reported, for proposers: a byte bigram starts near ln(257) = 5.5.
    assert out.final_loss is not None and 0 < out.final_loss < 6.0
    assert out.to_record(id="e0001").final_loss == out.final_loss
    assert set(out.fingerprints) == {"harness", "data", "tokenizer", "train"}
    assert (research_repo / ".autoresearch/runs/t/run.log").exists()


@pytest.mark.parametrize(
    ("source", "status", "reason"),
    [
        # Whatever it prints, a candidate that hands nothing over has no score.
        (candidates.FAKE_SCORE, "crash", "without calling harness.handover"),
        # Its own clock patched to train 3x longer: the runner's clock decides.
        (candidates.OVER_BUDGET, "timeout", "over the 2 s budget"),
        # Logits that see the next token would score near zero: the evaluator's probe refuses.
        (candidates.PEEKING, "invalid", "not causal"),
    ],
    ids=["fake-score", "patched-clock", "peeking-model"],
)
def test_a_misbehaving_candidate_gets_no_score(research_repo, source, status, reason):
    """Candidates that try to get a score they did not earn; faults (crashes, hangs, NaN,
    stray processes, ...) are in test_faults.py."""
    out = run(research_repo, source)
    assert (out.status, out.val_bpb) == (status, None)
    assert reason in out.reason


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


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            "Traceback (most recent call last):\n  File 'x'\nValueError: bad shape\n",
            "ValueError: bad shape",
        ),
        # torch prints a hint after its exception: the exception is the reason, not the hint.
        (
            "torch._dynamo.exc.TorchRuntimeError: fake tensor call failed\n\n"
            'Set TORCHDYNAMO_VERBOSE=1 for the internal stack trace (set TORCH_LOGS="+dynamo")\n',
            "torch._dynamo.exc.TorchRuntimeError: fake tensor call failed",
        ),
        ("step 10 loss 2.3\nno luck\n", "no luck"),
        ("", "no output"),
    ],
)
def test_crash_reason_is_the_error_line_of_the_log(log, expected):
    assert error_line(log) == expected


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"run.isolation": "on"}, True),
        ({"run.network": False}, True),
        ({"run.isolation": "auto"}, False),  # falls back to the guard and the file states
    ],
)
def test_isolation_that_cannot_be_had_is_refused_up_front(
    research_repo, monkeypatch, settings, refused
):
    import autoresearch.runner as runner
    from autoresearch.errors import UserError

    monkeypatch.setattr(runner, "isolation_works", lambda: False)
    config = load_config(research_repo, settings)
    if refused:
        with pytest.raises(UserError, match="unprivileged user namespaces"):
            runner.use_isolation(config)
    else:
        assert runner.use_isolation(config) is False


def test_a_run_folder_outside_any_research_repo_still_runs(research_repo, tmp_path):
    """Library users and benchmarks may run a train.py from anywhere: its run folder stays
    writable and the score is the harness's."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "train.py").write_text(candidates.HONEST)
    out = run_experiment(elsewhere / "train.py", load_config(research_repo), elsewhere / "run")
    assert out.status == "keep", out.reason
