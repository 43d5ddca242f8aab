"""Both baselines through the real harness: a real subprocess trains, the evaluator scores.

The tiny baseline must learn for real in a few seconds; the GPU baseline runs
with its size constants shrunk (the same code otherwise), so a broken GPU
baseline cannot land unnoticed on a machine without a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autoresearch.config import load_config
from autoresearch.constants import rewrite_constants
from autoresearch.runner import run_experiment

BASELINES = Path(__file__).resolve().parents[1] / "baselines"
UNIFORM_BPB = 8.0  # a byte-level model that knows nothing: log2(256) bits per byte
GPT_ON_A_CPU = {
    "DEPTH": 2, "ASPECT_RATIO": 32, "HEAD_DIM": 32, "DEVICE_BATCH_SIZE": 4,
    "TOTAL_BATCH_SIZE": 512, "VE_GATE_CHANNELS": 8,
}  # fmt: skip


def train(repo: Path, source: str, budget: float, tokens: int = 0):
    (repo / "train.py").write_text(source)
    config = load_config(repo, {"run.budget_seconds": budget, "run.budget_tokens": tokens})
    return run_experiment(repo / "train.py", config, repo / ".autoresearch/runs/b")


# A token budget: 10 steps of the tiny baseline's 16 rows of 64 tokens however busy the
# machine is (the seconds are only a cap; on an idle one the steps take a few).
TINY_STEPS = 10
TINY_TOKENS = TINY_STEPS * 16 * 64


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, corpus):
    """The tiny baseline trained twice on the same token budget and seed, in one repo: the
    two tests below assert different facts of the same two (slow) trainings."""
    from conftest import make_research_repo

    repo = make_research_repo(tmp_path_factory.mktemp("tiny") / "research", corpus)
    (repo / "train.py").write_text((BASELINES / "tiny/train.py").read_text())
    config = load_config(repo, {"run.budget_tokens": TINY_TOKENS, "run.budget_seconds": 60})
    return [
        run_experiment(repo / "train.py", config, repo / f".autoresearch/runs/{i}")
        for i in range(2)
    ]


def test_tiny_baseline_learns_in_seconds(tiny_runs):
    out = tiny_runs[0]
    assert out.status == "keep", out.reason
    assert out.val_bpb < UNIFORM_BPB - 3, out.val_bpb  # clearly learnt something
    assert out.tokens == TINY_TOKENS and out.num_steps == TINY_STEPS


def test_gpt_baseline_runs_on_cpu_when_shrunk(research_repo):
    # 3 optimizer steps of TOTAL_BATCH_SIZE tokens (2 micro-batches each); 60 s is only a cap.
    source = rewrite_constants((BASELINES / "gpt/train.py").read_text(), GPT_ON_A_CPU)
    tokens = 3 * GPT_ON_A_CPU["TOTAL_BATCH_SIZE"]
    out = train(research_repo, source, budget=60, tokens=tokens)
    assert out.status == "keep", out.reason
    assert math.isfinite(out.val_bpb) and out.val_bpb < UNIFORM_BPB + 1
    assert out.num_steps >= 2 and out.num_params > 0


def test_token_budget_trains_a_fixed_amount_and_repeats_exactly(tiny_runs):
    """With run.budget_tokens the result does not depend on the machine's speed or load."""
    for out in tiny_runs:
        assert out.status == "keep", out.reason  # the tokens ended training, not the 60 s cap
        assert out.num_steps == TINY_STEPS and out.tokens == TINY_TOKENS
    assert tiny_runs[0].val_bpb == tiny_runs[1].val_bpb  # same tokens, same seed: same model


def test_a_loop_that_ignores_the_token_budget_times_out(research_repo):
    source = (
        (BASELINES / "tiny/train.py")
        .read_text()
        .replace("while not budget.done:", "while step < 12:")
    )
    (research_repo / "train.py").write_text(source)
    config = load_config(
        research_repo, {"run.budget_tokens": 2 * 16 * 64, "run.budget_seconds": 60}
    )
    out = run_experiment(research_repo / "train.py", config, research_repo / ".autoresearch/runs/t")
    assert out.status == "timeout" and "token budget" in out.reason, out.reason
