"""The evaluator process and its stdin protocol: nothing before `warm`, a score after `go`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from autoresearch.config import load_config
from autoresearch.harness import evaluate, model_io, sandbox
from autoresearch.harness.evaluate import GO, WARM, EvalSpec
from autoresearch.harness.prepare import load_manifest
from autoresearch.harness.tokenizer import Tokenizer
from autoresearch.runner import minimal_env

QUIET_SECONDS = 2.0  # how long the evaluator is watched for an early torch import
LOAD_SECONDS = 120.0  # generous: importing torch on a loaded 2-core machine


class Bigram(nn.Module):
    """A causal model small enough to export in a moment."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, vocab)

    def forward(self, idx):
        return self.head(self.embed(idx)).float()


@pytest.fixture
def spec(research_repo, tmp_path) -> EvalSpec:
    config = load_config(research_repo)
    manifest = load_manifest(config)
    example = torch.zeros(config.eval.batch_size, config.data.sequence_len, dtype=torch.long)
    vocab = Tokenizer.load(Path(manifest.tokenizer_path)).vocab_size
    program = model_io.export(Bigram(vocab).eval(), example, "cpu")
    model_io.save_exported(program, tmp_path / "handover")
    return EvalSpec(
        model_dir=str(tmp_path / "handover"), tokenizer_path=str(manifest.tokenizer_path),
        val_tokens_path=str(manifest.val_path), sequence_len=config.data.sequence_len,
        eval_tokens=config.eval.tokens, batch_size=config.eval.batch_size, device="cpu",
    )  # fmt: skip


def start(spec: EvalSpec) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autoresearch.harness.evaluate", json.dumps(asdict(spec))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def has_torch(proc: subprocess.Popen) -> bool:
    """Whether torch's shared library is mapped into the process: it is imported."""
    return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()


def score(proc: subprocess.Popen, signal: str) -> dict:
    out, err = proc.communicate(f"{signal}\n".encode(), timeout=LOAD_SECONDS)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_the_evaluator_imports_torch_only_when_told_to_warm_up(spec):
    proc = start(spec)
    try:
        deadline = time.monotonic() + QUIET_SECONDS
        while time.monotonic() < deadline:  # the candidate's start-up is not slowed
            assert not has_torch(proc), "the evaluator imported torch before `warm`"
            time.sleep(0.1)
        proc.stdin.write(f"{WARM}\n".encode())
        proc.stdin.flush()
        deadline = time.monotonic() + LOAD_SECONDS
        while not has_torch(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert has_torch(proc), "the evaluator did not load after `warm`"
        result = score(proc, GO)
    finally:
        proc.kill()
    assert math.isfinite(result["val_bpb"]) and result["tokens"] == spec.eval_tokens


def test_go_alone_scores_the_same_model(spec):
    """`warm` only moves work earlier: an evaluator told `go` straight away loads, then scores."""
    warmed = start(spec)
    warmed.stdin.write(f"{WARM}\n".encode())
    warmed.stdin.flush()
    assert score(start(spec), GO)["val_bpb"] == score(warmed, GO)["val_bpb"]


@pytest.mark.skipif(not sandbox.isolation_works(), reason="needs user namespaces")
def test_an_isolated_evaluator_scores_where_torch_has_no_cache_folder_yet(spec):
    """On a fresh machine torch's compile cache folder (/tmp/torchinductor_<user>) does not
    exist yet, and importing torch.export makes it: in a read-only tree it cannot. A user
    name of its own gives this test such a machine."""
    user = f"autoresearch-test-{uuid.uuid4().hex[:8]}"
    env = minimal_env({"USER": user})
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # set by torch in this process once it exported
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoresearch.harness.evaluate",
         json.dumps(asdict(spec) | {"isolated": True})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert math.isfinite(score(proc, GO)["val_bpb"])
    assert not Path(tempfile.gettempdir(), f"torchinductor_{user}").exists()  # nothing written


def test_an_evaluator_never_told_anything_exits_without_a_result(spec):
    proc = start(spec)
    out, _ = proc.communicate(b"", timeout=LOAD_SECONDS)
    assert proc.returncode == 0 and out == b""


def _peeking_at(position: int, vocab: int):
    """Logits of a model that is causal except that `position` also sees the next token."""

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.one_hot(x, vocab).float()
        out[:, position] += nn.functional.one_hot(x[:, position + 1], vocab).float()
        return out

    return logits_of


@pytest.mark.parametrize("rows,length", [(4, 50), (32, 64), (8, 9)])
def test_the_causality_probe_catches_a_peek_from_any_single_position(rows, length):
    # Random cuts missed a peek at a few positions in a share of evaluations: every position is
    # now some row's cut, so a peek from one position is caught at every position, every time.
    vocab = 1000  # the probe's random token equals the one it replaces once in 999
    x = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0))
    for position in range(length - 1):
        logits_of = _peeking_at(position, vocab)
        generator = torch.Generator().manual_seed(position)
        with pytest.raises(evaluate.Refused, match="not causal"):
            evaluate._probe_causality(logits_of, x, logits_of(x), vocab, 1e-4, generator)
    causal = lambda t: nn.functional.one_hot(t, vocab).float()  # noqa: E731
    evaluate._probe_causality(causal, x, causal(x), vocab, 1e-4, torch.Generator())  # passes
