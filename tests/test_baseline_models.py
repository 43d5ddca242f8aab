"""Standalone checks of the baseline models and optimizers (no harness run, no data).

Each baseline ``train.py`` is imported as a module (its training lives in
``main()`` behind the ``__main__`` guard), its size constants are shrunk, and
the model is checked against the contract the harness relies on: output shape
and dtype, causality, torch.export at a fixed shape matching eager, and that
the real optimizers (Muon + AdamW) make the loss fall.
"""

from __future__ import annotations

import ast

import pytest
import torch
from helpers import BASELINES, SEQ, SIZES, VOCAB, build, load_baseline


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and threads thrash on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(params=sorted(SIZES))
def baseline(request):
    return request.param


def test_hyperparameters_are_plain_literals(baseline):
    tree = ast.parse((BASELINES / baseline / "train.py").read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id.isupper():
                value = node.value
                if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
                    value = value.operand
                assert isinstance(value, ast.Constant), f"{target.id} is not a plain literal"
                names.append(target.id)
    assert {"DEPTH", "DEVICE_BATCH_SIZE", "MATRIX_LR", "COMPILE"} <= set(names)
    assert len(names) == len(set(names)), "a constant is assigned twice"


def test_forward_shape_dtype_and_loss(baseline):
    _, model = build(baseline)
    idx = torch.randint(0, VOCAB, (3, SEQ))
    logits = model(idx)
    assert logits.shape == (3, SEQ, VOCAB)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    loss = model(idx, torch.randint(0, VOCAB, (3, SEQ)))
    assert loss.ndim == 0
    # near-uniform predictions at init (lm_head starts tiny)
    assert abs(loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 0.5
    # bf16 autocast (the CUDA training path) still yields float32 logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(idx).dtype == torch.float32


def test_estimate_flops(baseline):
    _, model = build(baseline)
    embed = model.wte.weight.numel()
    flops = model.estimate_flops()
    assert isinstance(flops, int)
    assert flops >= 6 * (sum(p.numel() for p in model.parameters()) - embed) // 2
    assert flops > 0


def test_loss_decreases_with_real_optimizers(baseline):
    module, model = build(baseline)
    adamw, muon = module.build_optimizers(model)
    assert sum(len(g["params"]) for g in muon.param_groups) > 0, "Muon got no matrices"
    n_opt = sum(len(g["params"]) for o in (adamw, muon) for g in o.param_groups)
    assert n_opt == len(list(model.parameters())), "every parameter has exactly one optimizer"
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, VOCAB, (4, SEQ + 1), generator=g)
    x, y = batch[:, :-1], batch[:, 1:]
    losses = []
    for step in range(30):
        loss = model(x, y)
        loss.backward()
        lrm = module.lr_multiplier(step / 30)
        for opt in (adamw, muon):
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        adamw.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_causal(baseline):
    _, model = build(baseline)
    model.eval()
    idx = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        base = model(idx)
        for j in (0, SEQ // 3, SEQ - 1):
            changed = idx.clone()
            changed[:, j] = (changed[:, j] + 1) % VOCAB
            out = model(changed)
            assert torch.equal(out[:, :j], base[:, :j]), f"position < {j} saw token {j}"
            assert not torch.allclose(out[:, j], base[:, j]), f"position {j} ignored token {j}"


def test_export_matches_eager(baseline):
    _, model = build(baseline)
    model.eval()
    idx = torch.randint(0, VOCAB, (2, SEQ))
    program = torch.export.export(model, (idx,))
    other = torch.randint(0, VOCAB, (2, SEQ))  # the export is not specialised to its example
    with torch.no_grad():
        for inp in (idx, other):
            torch.testing.assert_close(program.module()(inp), model(inp), rtol=1e-5, atol=1e-5)
        # exported in float32, the graph must also run under the evaluator's bf16 autocast
        # (an explicit dtype cast in forward would pin it to float32 and fail here)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, ref = program.module()(idx), model(idx)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_gpt_sliding_window_attention():
    """An S layer only sees the last `window` tokens; the last layer is always full."""
    _, model = build("gpt", WINDOW_PATTERN="SL", SHORT_WINDOW_FRAC=0.25)
    window = SEQ // 4
    assert model.windows == [window, SEQ, window, SEQ]
    module_pattern = load_baseline("gpt", WINDOW_PATTERN="S")
    assert module_pattern.window_sizes(3, SEQ) == [SEQ // 2, SEQ // 2, SEQ]
    attn = model.blocks[0].attn
    attn.eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(attn.c_proj.weight, std=0.1)  # c_proj starts at zero
    x = torch.randn(1, SEQ, model.dim)
    cos, sin = model.cos[:, :, :SEQ], model.sin[:, :, :SEQ]
    with torch.no_grad():
        base = attn(x, None, cos, sin)
        j = 3
        x2 = x.clone()
        x2[:, j] += 1.0
        out = attn(x2, None, cos, sin)
    diff = (out - base).abs().amax(dim=-1)[0]
    affected = (diff > 1e-6).nonzero().flatten().tolist()
    assert affected == list(range(j, j + window)), affected


def test_gpt_value_embeddings_on_alternating_layers():
    _, model = build("gpt")
    depth = SIZES["gpt"]["DEPTH"]
    assert sorted(int(k) for k in model.value_embeds) == list(range(1, depth, 2))
    for i, block in enumerate(model.blocks):
        assert (block.attn.ve_gate is not None) == (str(i) in model.value_embeds)


@pytest.mark.parametrize("shape", [(3, 64, 16), (2, 16, 48)])
def test_newton_schulz_orthogonalises(baseline, shape):
    module = load_baseline(baseline)
    G = torch.randn(*shape)
    X = module.zeropower_via_newtonschulz5(G, 5)
    assert X.shape == G.shape
    singular = torch.linalg.svdvals(X)
    assert singular.min() > 0.5 and singular.max() < 1.3, singular


def test_lr_schedule(baseline):
    module = load_baseline(baseline, WARMUP_RATIO=0.0, WARMDOWN_RATIO=0.5, FINAL_LR_FRAC=0.0)
    values = [module.lr_multiplier(p / 100) for p in range(101)]
    assert values[0] == 1.0 and values[50] == 1.0
    assert values[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))
