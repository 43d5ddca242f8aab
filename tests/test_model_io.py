"""The hand-over format: exported under the evaluation's precision, loaded without pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import SEQ, build

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


# --- the evaluator runs only pure tensor math ------------------------------------------


def graph_of(module: nn.Module, idx: torch.Tensor, tmp_path, autocast: bool = False) -> dict:
    """The parsed model.json that the hand-over of `module` would write."""
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.no_grad()
    with torch.no_grad(), context:
        program = torch.export.export(module.eval(), (idx,))
    model_io.save_exported(program, tmp_path)
    return json.loads((tmp_path / model_io.GRAPH_FILE).read_text())


class TypicalGPTOps(nn.Module):
    """The building blocks agents write into a GPT, each once."""

    def __init__(self, vocab: int = 17, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, dim // 2) / dim))

    def forward(self, idx):
        x = F.rms_norm(self.embed(idx), (x_dim := self.embed.embedding_dim,))
        t = torch.arange(idx.size(1), dtype=torch.float32)
        angles = torch.outer(t, self.inv_freq)
        cos, sin = angles.cos(), angles.sin()
        half = x_dim // 2
        x = torch.cat([x[..., :half] * cos - x[..., half:] * sin, x[..., half:] * cos], dim=-1)
        q, k, v = self.qkv(self.norm(x)).unsqueeze(1).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        y = F.gelu(y) + F.silu(y) + F.relu(y).square()
        flat = torch.addmm(torch.zeros(x_dim), y.reshape(-1, x_dim), torch.eye(x_dim))
        logits = self.head(flat.view_as(y)).float()
        pos = torch.arange(idx.size(1)).unsqueeze(-1)
        logits = logits.masked_fill((pos >= 1) & (pos < 2), 0.0)  # masks built with operators
        return 15 * torch.tanh(logits / 15)  # soft-capping


class AutocastInside(CastsToFloat):
    def forward(self, idx):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.head(self.embed(idx))
        return h.float()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["tiny", "gpt"])
def test_every_baseline_graph_passes_the_check(tmp_path, name, autocast):
    _, model = build(name)
    idx = torch.zeros(2, SEQ, dtype=torch.long)
    model_io.check_graph(graph_of(model, idx, tmp_path, autocast))  # a too strict list fails


@pytest.mark.parametrize("module", [CastsToFloat, TypicalGPTOps, AutocastInside])
def test_typical_model_graphs_pass_the_check(tmp_path, module):
    graph = graph_of(module(), torch.randint(0, 17, (2, 6)), tmp_path)
    model_io.check_graph(graph)
    if module is AutocastInside:  # a higher-order op, whose subgraph is checked like the rest
        assert "wrap_with_autocast" in json.dumps(graph)


@pytest.fixture
def honest_graph(tmp_path) -> dict:
    return graph_of(CastsToFloat(), torch.randint(0, 17, (2, 5)), tmp_path)


def nodes(graph: dict) -> list[dict]:
    return graph["graph_module"]["graph"]["nodes"]


@pytest.mark.parametrize(
    "target, named",
    [
        ("torch.ops.aten.from_file.default", "aten.from_file"),
        ("torch.ops.aten.rand.default", "aten.rand"),
        ("torch.ops.aten.empty.memory_format", "aten.empty"),
        ("torch.ops._c10d_functional.all_reduce.default", "_c10d_functional.all_reduce"),
        ("torch.ops.evil.steal.default", "evil.steal"),  # a custom op
        ("torch.load", "torch.load"),  # the deserializer would resolve it to the function
        ("torch.ops.aten.__dict__.keys", "aten.__dict__"),
    ],
)
def test_a_graph_calling_a_forbidden_op_is_refused(honest_graph, target, named):
    nodes(honest_graph)[0]["target"] = target
    with pytest.raises(model_io.ForbiddenGraph, match=f"calls {named}, which is not allowed"):
        model_io.check_graph(honest_graph)


@pytest.mark.parametrize(
    "target",
    ["torch.ops.aten.linear.out", "torch.ops.aten.add_.Tensor", "torch.ops.aten.copy_.default"],
)
def test_a_mutating_op_is_refused(honest_graph, target):
    nodes(honest_graph)[0]["target"] = target
    with pytest.raises(model_io.ForbiddenGraph, match=f"{target[10:]}, which writes to its"):
        model_io.check_graph(honest_graph)


def test_a_forbidden_op_inside_a_subgraph_is_refused(tmp_path):
    graph = graph_of(AutocastInside(), torch.randint(0, 17, (2, 5)), tmp_path)
    text = json.dumps(graph).replace(
        "torch.ops.aten.embedding.default", "torch.ops.aten.rand.default"
    )
    with pytest.raises(model_io.ForbiddenGraph, match="aten.rand"):
        model_io.check_graph(json.loads(text))


def test_attention_dropout_is_refused(tmp_path):
    class Dropped(CastsToFloat):
        def forward(self, idx):
            e = self.embed(idx).unsqueeze(1)
            return self.head(F.scaled_dot_product_attention(e, e, e, dropout_p=0.1).squeeze(1))

    graph = graph_of(Dropped(), torch.randint(0, 17, (2, 5)), tmp_path)
    with pytest.raises(model_io.ForbiddenGraph, match="dropout_p = 0.1"):
        model_io.check_graph(graph)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda g: g["graph_module"]["signature"]["output_specs"].append(
            {"buffer_mutation": {"arg": {"name": "to"}, "buffer_name": "b"}}
        ), "has a buffer_mutation output"),
        (lambda g: g["graph_module"]["signature"]["output_specs"].append(
            {"user_input_mutation": {"arg": {"name": "to"}, "user_input_name": "idx"}}
        ), "has a user_input_mutation output"),
        (lambda g: g["graph_module"]["signature"]["input_specs"].append(
            {"custom_obj": {"arg": {"name": "obj"}, "custom_obj_name": "obj"}}
        ), "has a custom_obj input"),
        (lambda g: g.update(guards_code=["True"]), "shape guards"),
        (lambda g: g["graph_module"]["graph"].update(
            sym_int_values={"s0": {"as_expr": {"expr_str": "s0", "hint": None}}}
        ), "uses sym_int_values"),
        (lambda g: nodes(g)[0]["inputs"].append(
            {"name": "fn", "arg": {"as_operator": "torch.ops.aten.rand.default"}, "kind": 1}
        ), "uses as_operator"),
    ],
    ids=["buffer-mutation", "input-mutation", "script-object", "guards", "symbolic", "operator"],
)  # fmt: skip
def test_a_graph_that_writes_back_or_is_not_static_is_refused(honest_graph, edit, message):
    edit(honest_graph)
    with pytest.raises(model_io.ForbiddenGraph, match=message):
        model_io.check_graph(honest_graph)


def test_a_forbidden_graph_is_refused_before_deserialising(tmp_path, monkeypatch):
    from torch._export.serde import serialize

    idx = torch.randint(0, 17, (2, 5))
    model_io.save_exported(model_io.export(CastsToFloat().eval(), idx, "cpu"), tmp_path)
    graph = json.loads((tmp_path / model_io.GRAPH_FILE).read_text())
    nodes(graph)[0]["target"] = "torch.ops.aten.from_file.default"
    (tmp_path / model_io.GRAPH_FILE).write_text(json.dumps(graph))
    calls = []
    monkeypatch.setattr(serialize, "deserialize", lambda *a, **k: calls.append(a))
    with pytest.raises(model_io.ForbiddenGraph, match="aten.from_file"):
        model_io.load_exported(tmp_path, "cpu")
    assert calls == []
