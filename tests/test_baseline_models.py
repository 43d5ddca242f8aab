"""Standalone checks of the baseline models and optimizers (no harness run, no data).

Each baseline ``train.py`` is imported as a module (its training lives in
``main()`` behind the ``__main__`` guard), its size constants are shrunk, and
the model is checked against the contract the harness relies on: output shape
and dtype, causality, torch.export at a fixed shape matching eager, and that
the real optimizers (Muon + AdamW) make the loss fall.
"""

from __future__ import annotations

import ast
import warnings

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
    """An S layer sees its own token and the `window` before it; the last layer is full."""
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
    assert affected == list(range(j, j + window + 1)), affected


def test_gpt_window_of_1024_sees_1025_keys():
    """At full size (2048 tokens, half-length windows) a query sees 1025 keys, as a flash
    attention window of 1024 does; the first 1024 queries see all keys before them."""
    module = load_baseline("gpt")
    seq = 2048
    window = module.window_sizes(8, seq)[0]
    assert window == 1024
    attn = module.CausalSelfAttention(16, 1, 16, window, seq, use_ve=False)
    keys = attn.mask.sum(dim=1)
    assert keys[window:].eq(window + 1).all()
    assert torch.equal(keys[:window], torch.arange(1, window + 1))


def test_gpt_flex_attention_matches_masked_sdpa():
    """The windowed layers' FlexAttention path (CUDA's) gives SDPA-with-band-mask's output,
    and the exported graph, which the evaluator scores, falls back to the masked SDPA."""
    _, model = build("gpt", SHORT_WINDOW_FRAC=0.25)
    model.eval()
    torch.manual_seed(0)
    for block in model.blocks:
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)  # c_proj starts at zero
    idx = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        dense = model(idx)
        model.use_flex_attention()
        assert model.blocks[0].attn.block_mask is not None
        assert model.blocks[-1].attn.block_mask is None  # full layers keep SDPA's causal path
        with warnings.catch_warnings():  # eager FlexAttention warns that it is not fused
            warnings.simplefilter("ignore", UserWarning)
            flex = model(idx)
    assert not torch.equal(flex, dense)  # a different kernel really ran
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)
    program = torch.export.export(model, (idx,))
    assert "flex_attention" not in str(program.graph)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(idx), dense, rtol=1e-5, atol=1e-5)


def test_gpt_value_embeddings_on_alternating_layers():
    _, model = build("gpt")
    depth = SIZES["gpt"]["DEPTH"]
    assert sorted(int(k) for k in model.value_embeds) == list(range(1, depth, 2))
    for i, block in enumerate(model.blocks):
        assert (block.attn.ve_gate is not None) == (str(i) in model.value_embeds)


@pytest.mark.parametrize("shape", [(3, 64, 16), (2, 16, 48)])
def test_newton_schulz_orthogonalises(shape):
    module = load_baseline("tiny")
    G = torch.randn(*shape)
    X = module.zeropower_via_newtonschulz5(G, 5)
    assert X.shape == G.shape
    singular = torch.linalg.svdvals(X)
    assert singular.min() > 0.5 and singular.max() < 1.3, singular


@pytest.mark.parametrize("shape", [(3, 64, 16), (2, 16, 48), (2, 32, 32)])
def test_polar_express_approaches_the_svd_orthogonalisation(shape):
    """Five Polar Express steps land within about 10% of U V^T (the exact orthogonal factor
    of G = U S V^T), twice as close as five classic Newton-Schulz steps."""
    module = load_baseline("gpt")
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    exact = U @ Vh

    def error(method):
        X = module.orthogonalise(G, 5, method)
        assert X.shape == G.shape and X.dtype == G.dtype
        return ((X - exact).norm(dim=(-2, -1)) / exact.norm(dim=(-2, -1))).max().item()

    polar, classic = error("polar_express"), error("newton_schulz")
    assert polar < 0.15 and polar < 0.6 * classic, (polar, classic)
    singular = torch.linalg.svdvals(module.orthogonalise(G, 5, "polar_express"))
    assert singular.min() > 0.8 and singular.max() < 1.2, singular


def test_normuon_state_shapes_and_norm():
    """Muon keeps a momentum of each stacked group and NorMuon one second moment per row of a
    tall matrix (per column of a wide one); NorMuon keeps each update's overall norm."""
    module, model = build("gpt")
    _, muon = module.build_optimizers(model)
    for p in model.blocks.parameters():
        p.grad = torch.randn_like(p)
    muon.step()
    seen = set()
    for group in muon.param_groups:
        n, (rows, cols) = len(group["params"]), group["params"][0].shape
        state = muon.state[group["params"][0]]
        assert state["momentum_buffer"].shape == (n, rows, cols)
        expected = (n, rows, 1) if rows >= cols else (n, 1, cols)
        assert state["second_moment"].shape == expected
        assert state["second_moment"].gt(0).all()
        seen.add("tall" if rows > cols else "wide" if rows < cols else "square")
    assert seen == {"tall", "wide", "square"}  # MLP in, MLP out, attention
    update = torch.randn(2, 32, 8)
    scaled = module.normuon_scale(update, torch.zeros(2, 32, 1), 0.95)
    torch.testing.assert_close(scaled.norm(dim=(-2, -1)), update.norm(dim=(-2, -1)))
    assert not torch.allclose(scaled, update)


def test_lr_schedule(baseline):
    module = load_baseline(baseline, WARMUP_RATIO=0.0, WARMDOWN_RATIO=0.5, FINAL_LR_FRAC=0.0)
    values = [module.lr_multiplier(p / 100) for p in range(101)]
    assert values[0] == 1.0 and values[50] == 1.0
    assert values[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))
