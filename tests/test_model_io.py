"""The hand-over format: exported under the evaluation's precision, loaded without pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn as nn

from autoresearch.harness import model_io


class CastsToFloat(nn.Module):
    """Agents write `.float()` in forward often; the evaluator must cope under autocast."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(17, 8)
        self.head = nn.Linear(8, 17)

    def forward(self, idx):
        return self.head(self.embed(idx)).float()


@pytest.fixture
def bf16_precision(monkeypatch):
    """CPU bf16 autocast stands in for the CUDA autocast of a GPU evaluation."""
    monkeypatch.setattr(
        model_io, "precision", lambda device: torch.autocast("cpu", dtype=torch.bfloat16)
    )


def test_a_model_exported_under_the_evaluation_precision_runs_under_it(tmp_path, bf16_precision):
    idx = torch.randint(0, 17, (2, 5))
    model = CastsToFloat().eval()
    model_io.save_exported(model_io.export(model, idx, "cpu"), tmp_path)
    loaded = model_io.load_exported(tmp_path, "cpu").module()
    with torch.no_grad(), model_io.precision("cpu"):
        out, expected = loaded(idx), model(idx)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected)


def test_the_mismatch_that_shared_precision_prevents(tmp_path, bf16_precision):
    idx = torch.randint(0, 17, (2, 5))
    program = torch.export.export(CastsToFloat().eval(), (idx,))  # traced in fp32
    with torch.no_grad(), model_io.precision("cpu"), pytest.raises(Exception, match="dtype"):
        program.module()(idx)


def test_hand_over_files_hold_no_pickle(tmp_path):
    idx = torch.randint(0, 17, (2, 5))
    model_io.save_exported(model_io.export(CastsToFloat().eval(), idx, "cpu"), tmp_path)
    json.loads((tmp_path / model_io.GRAPH_FILE).read_text())  # a JSON graph
    assert (tmp_path / model_io.WEIGHTS_FILE).read_bytes()[8:9] == b"{"  # a safetensors header


class Payload:
    def __reduce__(self):
        return (open, ("/dev/null",))  # proof of execution would be any call at all


def test_a_pickled_weights_file_is_refused_not_executed(tmp_path, monkeypatch):
    idx = torch.randint(0, 17, (2, 5))
    model_io.save_exported(model_io.export(CastsToFloat().eval(), idx, "cpu"), tmp_path)
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    (tmp_path / model_io.WEIGHTS_FILE).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; execution would not raise
        model_io.load_exported(tmp_path, "cpu")
    assert calls == []  # nothing tried to unpickle it
