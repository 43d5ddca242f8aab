"""Both baselines through the real harness: a real subprocess trains, the evaluator scores.

The tiny baseline must learn for real in a few seconds; the GPU baseline runs
with its size constants shrunk (the same code otherwise), so a broken GPU
baseline cannot land unnoticed on a machine without a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

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


def test_tiny_baseline_learns_in_seconds(research_repo):
    # A token budget: 20 steps of 16 rows of 64 tokens however busy the machine is (the
    # seconds are only a cap; on an idle one they take a few).
    tokens = 20 * 16 * 64
    out = train(research_repo, (BASELINES / "tiny/train.py").read_text(), 60, tokens)
    assert out.status == "keep", out.reason
    assert out.val_bpb < UNIFORM_BPB - 3, out.val_bpb  # clearly learnt something
    assert out.tokens == tokens and out.num_steps == 20


def test_gpt_baseline_runs_on_cpu_when_shrunk(research_repo):
    source = rewrite_constants((BASELINES / "gpt/train.py").read_text(), GPT_ON_A_CPU)
    out = train(research_repo, source, budget=6)
    assert out.status == "keep", out.reason
    assert math.isfinite(out.val_bpb) and out.val_bpb < UNIFORM_BPB + 1
    assert out.num_steps >= 2 and out.num_params > 0


def test_token_budget_trains_a_fixed_amount_and_repeats_exactly(research_repo):
    """With run.budget_tokens the result does not depend on the machine's speed or load."""
    (research_repo / "train.py").write_text((BASELINES / "tiny/train.py").read_text())
    tokens = 40 * 16 * 64  # 40 steps of the tiny baseline's 16 rows of 64 tokens
    config = load_config(research_repo, {"run.budget_tokens": tokens, "run.budget_seconds": 60})
    runs = [
        run_experiment(
            research_repo / "train.py", config, research_repo / f".autoresearch/runs/{i}"
        )
        for i in range(2)
    ]
    for out in runs:
        assert out.status == "keep", out.reason  # the tokens ended training, not the 60 s cap
        assert out.num_steps == 40 and out.tokens == tokens
    assert runs[0].val_bpb == runs[1].val_bpb  # same tokens, same seed: the same model


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
