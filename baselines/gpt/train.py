"""GPT baseline for one H100-class GPU and a 5-minute training budget.

A from-scratch GPT in the spirit of nanochat / the original autoresearch:
rotary embeddings, parameter-free RMSNorm, QK-norm, ReLU^2 MLP, untied
embedding and unembedding, gated value embeddings on alternating layers,
learned per-layer residual scalars, logit soft-capping and a sliding-window
attention pattern, trained with Muon (matrices) + AdamW (everything else)
under a time-based learning-rate warmdown.

The model contract (the harness relies on it, keep it when you edit):
  * ``model(idx)`` with ``idx`` long [B, T] returns logits float32 [B, T, vocab_size];
    ``model(idx, targets)`` returns the mean cross-entropy loss (training only).
  * The forward pass is causal: logits at position t depend on idx[:, :t+1] only.
  * The forward pass is torch.export-able at a fixed shape: no data-dependent
    Python control flow and no ``.item()`` inside ``forward``.
  * ``model.estimate_flops()`` returns training FLOPs per token.
  * Only tensor ops the evaluator allows may appear in the exported graph: the windowed
    layers train with FlexAttention on CUDA but export the equivalent band-masked SDPA
    (FlexAttention's graph cannot be serialized for the evaluator).
  * At the end, ``harness.handover(model, ...)`` gives the trained model to the
    harness, which measures val_bpb in a separate process. Wrapping the model in
    ``torch.compile`` is fine: the harness unwraps ``_orig_mod`` itself.
Everything else (architecture, optimizer, schedule, sizes) is yours to change.
"""

import gc
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from autoresearch import harness

# ---------------------------------------------------------------------------
# Hyperparameters (plain literals: tools rewrite them in place)
# ---------------------------------------------------------------------------
DEPTH = 8  # number of transformer blocks
ASPECT_RATIO = 64  # model width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128  # channels per attention head
MLP_RATIO = 4  # MLP hidden width as a multiple of the model width
WINDOW_PATTERN = "SSSL"  # per-layer attention, repeated: S = sliding window, L = full causal
SHORT_WINDOW_FRAC = 0.5  # S layers look back this fraction of the sequence length (+ themselves)
FLEX_ATTENTION = True  # S layers use FlexAttention's sliding-window kernel on CUDA
ROPE_BASE = 10000.0  # rotary embedding base frequency
SOFTCAP = 15.0  # logits are squashed to SOFTCAP * tanh(logits / SOFTCAP)
VE_GATE_CHANNELS = 32  # input channels of the value-embedding gates
TOTAL_BATCH_SIZE = 524288  # tokens per optimizer step (2**19), reached by gradient accumulation
DEVICE_BATCH_SIZE = 128  # rows per forward/backward pass
EMBEDDING_LR = 0.6  # AdamW LR of the token and value embeddings (scaled by width)
UNEMBEDDING_LR = 0.004  # AdamW LR of the output layer (scaled by width)
MATRIX_LR = 0.04  # Muon LR of the transformer's 2-D weight matrices
SCALAR_LR = 0.5  # AdamW LR of the per-layer residual scalars
WEIGHT_DECAY = 0.2  # Muon (cautious) weight decay, decays linearly to 0 over the budget
ADAM_BETA1 = 0.8  # AdamW beta1
ADAM_BETA2 = 0.95  # AdamW beta2
MUON_MOMENTUM = 0.95  # Muon momentum after its warm-up
MUON_MOMENTUM_START = 0.85  # Muon momentum at step 0
MUON_MOMENTUM_WARMUP_STEPS = 300  # steps to ramp Muon momentum from start to final
ORTHOGONALISER = "polar_express"  # Muon's: polar_express | newton_schulz (classic quintic)
NS_STEPS = 5  # orthogonalisation iterations per Muon update
MUON_BETA2 = 0.95  # NorMuon: decay of the per-row second moment of the update (0 turns it off)
WARMUP_RATIO = 0.0  # fraction of the time budget spent on linear LR warm-up
WARMDOWN_RATIO = 0.5  # fraction of the time budget spent on linear LR warmdown at the end
FINAL_LR_FRAC = 0.0  # LR at the end of the budget, as a fraction of the peak
COMPILE = True  # torch.compile the model and the Muon step (CUDA only)
LOG_EVERY_SECONDS = 10.0  # how often to print a progress line


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------
def norm(x):
    """RMSNorm without learnable parameters."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    """Rotate channel pairs (i, i + D/2) of x [B, H, T, D] by position-dependent angles."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def has_value_embedding(layer, n_layer):
    """Alternating layers get a value embedding, always including the last one."""
    return layer % 2 == (n_layer - 1) % 2


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, n_head, head_dim, window, seq_len, use_ve):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        inner = n_head * head_dim
        self.c_q = nn.Linear(dim, inner, bias=False)
        self.c_k = nn.Linear(dim, inner, bias=False)
        self.c_v = nn.Linear(dim, inner, bias=False)
        self.c_proj = nn.Linear(inner, dim, bias=False)
        self.gate_channels = min(VE_GATE_CHANNELS, dim)
        self.ve_gate = nn.Linear(self.gate_channels, n_head, bias=False) if use_ve else None
        self.window = window
        self.block_mask = None  # FlexAttention's sparse form of `mask`, see use_flex_attention
        if window < seq_len:
            # band mask: query i sees keys j with i - window <= j <= i (window + 1 keys, as a
            # flash-attention window of `window`)
            i = torch.arange(seq_len)[:, None]
            j = torch.arange(seq_len)[None, :]
            self.register_buffer("mask", (j <= i) & (j >= i - window), persistent=False)
        else:
            self.mask = None

    def forward(self, x, ve, cos, sin):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if ve is not None:
            # value embedding mixed in through a per-head gate in (0, 2)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.gate_channels]))  # [B, T, H]
            ve = ve.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
            v = v + gate.transpose(1, 2).unsqueeze(-1) * ve
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        if self.mask is None:  # full causal: SDPA's flash kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.block_mask is not None and not torch.compiler.is_exporting():
            # autocast does not reach flex_attention: give it one dtype, as SDPA gets
            y = flex_attention(q.to(v.dtype), k.to(v.dtype), v, block_mask=self.block_mask)
        else:  # the same band as a dense mask: CPU, and the graph the evaluator scores
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask[:T, :T])
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


def sliding_window_block_mask(window, seq_len, device):
    """FlexAttention block mask of the band `CausalSelfAttention.mask` (window + 1 keys)."""

    def band(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx <= window)

    return create_block_mask(band, None, None, seq_len, seq_len, device=device)


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim, n_head, head_dim, window, seq_len, use_ve):
        super().__init__()
        self.attn = CausalSelfAttention(dim, n_head, head_dim, window, seq_len, use_ve)
        self.mlp = MLP(dim, MLP_RATIO * dim)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(norm(x), ve, cos, sin)
        return x + self.mlp(norm(x))


def window_sizes(n_layer, seq_len):
    """Per-layer attention window from WINDOW_PATTERN; the last layer is always full."""
    short = max(1, int(seq_len * SHORT_WINDOW_FRAC))
    pattern = WINDOW_PATTERN.upper() or "L"
    sizes = [short if pattern[i % len(pattern)] == "S" else seq_len for i in range(n_layer)]
    sizes[-1] = seq_len
    return sizes


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len, depth, dim, n_head, head_dim):
        super().__init__()
        self.vocab_size, self.seq_len, self.dim = vocab_size, seq_len, dim
        self.windows = window_sizes(depth, seq_len)
        ve_layers = [i for i in range(depth) if has_value_embedding(i, depth)]
        self.wte = nn.Embedding(vocab_size, dim)
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(vocab_size, n_head * head_dim) for i in ve_layers}
        )
        self.blocks = nn.ModuleList(
            Block(dim, n_head, head_dim, self.windows[i], seq_len, i in ve_layers)
            for i in range(depth)
        )
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(depth))  # scales the residual stream
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))  # mixes in the initial embedding
        inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(seq_len).float(), inv_freq)  # [T, D/2]
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)
        # float32 [1]: dividing by it promotes bf16 logits to float32 without a dtype cast,
        # which would pin the exported graph to the dtype it was exported at
        self.register_buffer("softcap", torch.full((1,), SOFTCAP), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        bound = 3**0.5 * self.dim**-0.5  # uniform with std 1/sqrt(dim)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -bound, bound)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def use_flex_attention(self):
        """Train the windowed layers with FlexAttention (CUDA, under torch.compile)."""
        masks = {}
        for block in self.blocks:
            attn = block.attn
            if attn.mask is not None:
                if attn.window not in masks:
                    masks[attn.window] = sliding_window_block_mask(
                        attn.window, self.seq_len, attn.mask.device
                    )
                attn.block_mask = masks[attn.window]

    def use_bf16_tables(self):
        """Keep the token and value embeddings (so their Adam state) and the rotary tables in
        bf16, as autocast would compute with them anyway: half the memory and bandwidth."""
        self.wte.to(torch.bfloat16)
        self.value_embeds.to(torch.bfloat16)
        self.cos, self.sin = self.cos.bfloat16(), self.sin.bfloat16()

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = norm(self.wte(idx))
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin)
        logits = self.lm_head(norm(x))
        logits = self.softcap * torch.tanh(logits / self.softcap)  # soft-capped, float32
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )

    def estimate_flops(self):
        """Training FLOPs per token: 6 per matmul weight, plus attention scores and values."""
        embed = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul_params = sum(p.numel() for p in self.parameters()) - embed - scalars
        attn = sum(12 * self.dim * min(w, self.seq_len) for w in self.windows)
        return 6 * matmul_params + attn


# ---------------------------------------------------------------------------
# Optimizers: Muon for 2-D block matrices, AdamW for the rest
# ---------------------------------------------------------------------------
# Polar Express (Amsel et al. 2025): per-iteration (a, b, c) of X <- a X + b (X X^T) X +
# c (X X^T)^2 X, each chosen for the fastest worst-case convergence of the singular values to 1
polar_express_coeffs = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
newton_schulz_coeffs = ((3.4445, -4.7750, 2.0315),)  # the classic quintic, every iteration


def orthogonalise(G, steps, method="polar_express"):
    """Approximately U V^T of each matrix G = U S V^T of G [N, m, n] (bf16 on CUDA)."""
    if method == "polar_express":
        coeffs, scale, eps = polar_express_coeffs[:steps], 1.02, 1e-6  # 2% margin on the norm
    else:
        coeffs, scale, eps = newton_schulz_coeffs * steps, 1.0, 1e-7
    X = G.bfloat16() if G.is_cuda else G.float()
    transpose = G.size(-2) > G.size(-1)  # iterate on the smaller Gram matrix
    if transpose:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * scale + eps)
    for a, b, c in coeffs:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    if transpose:
        X = X.mT
    return X.to(G.dtype)


def second_moment_shape(shape):
    """NorMuon's second moment of a stack of matrices [N, m, n]: one value per row of a tall
    (or square) matrix, one per column of a wide one."""
    n, rows, cols = shape
    return (n, rows, 1) if rows >= cols else (n, 1, cols)


def normuon_scale(update, second_moment, beta2):
    """NorMuon: divide each row (column) of the orthogonalised update by the running RMS of
    that row (column), then restore the update's overall norm. Updates second_moment."""
    reduce = -1 if second_moment.size(-1) == 1 else -2
    size = update.size(reduce)
    v = update.float().square().mean(dim=reduce, keepdim=True)
    second_moment.lerp_(v.to(second_moment.dtype), 1 - beta2)
    step = second_moment.clamp_min(1e-10).rsqrt()
    norm = (v.sum(dim=(-2, -1), keepdim=True) * size).sqrt()
    new_norm = (v * size * step.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return update * (step * norm / new_norm.clamp_min(1e-10)).to(update.dtype)


def muon_step(grads, params, momentum_buffer, second_moment, momentum, lr, wd, beta2, steps):
    """One Muon update of the stacked params (in place): Nesterov momentum, orthogonalisation,
    NorMuon, cautious weight decay. The scalars are 0-d tensors, so that a compiled step does
    not recompile when the schedules change them."""
    momentum_buffer.lerp_(grads, 1 - momentum)
    update = orthogonalise(grads.lerp_(momentum_buffer, momentum), steps, ORTHOGONALISER)
    if MUON_BETA2 > 0:
        update = normuon_scale(update, second_moment, beta2)
    update = update.to(params.dtype)
    agrees = (update * params) >= 0  # cautious: decay only where the update agrees in sign
    params.sub_(lr * (update + wd * params * agrees))


class Muon(torch.optim.Optimizer):
    """Muon with NorMuon variance reduction, for 2-D matrices.

    Parameters of the same shape are stacked so each group costs one batched
    update per step.
    """

    def __init__(self, params, lr, momentum, weight_decay, ns_steps):
        params = list(params)
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [{"params": [p for p in params if tuple(p.shape) == s]} for s in shapes]
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps, beta2=MUON_BETA2
        )
        super().__init__(groups, defaults)
        self._step = muon_step  # main() swaps in a compiled one on CUDA
        # host-side 0-d scalars, refilled each step (new values would recompile a constant)
        self._scalars = {k: torch.zeros(()) for k in ("momentum", "lr", "wd", "beta2")}

    def _state(self, group):
        params = group["params"]
        state = self.state[params[0]]
        if "momentum_buffer" not in state:
            stacked = (len(params), *params[0].shape)
            p = params[0]
            state["momentum_buffer"] = torch.zeros(stacked, dtype=p.dtype, device=p.device)
            state["second_moment"] = torch.zeros(
                second_moment_shape(stacked), dtype=p.dtype, device=p.device
            )
        return state

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = group["params"]
            if any(p.grad is None for p in params):
                continue
            state = self._state(group)
            rows, cols = params[0].shape
            s = self._scalars
            s["momentum"].fill_(group["momentum"])
            s["lr"].fill_(group["lr"] * max(1.0, rows / cols) ** 0.5)
            s["wd"].fill_(group["weight_decay"])
            s["beta2"].fill_(group["beta2"])
            stacked = torch.stack(params)
            self._step(
                torch.stack([p.grad for p in params]), stacked, state["momentum_buffer"],
                state["second_moment"], s["momentum"], s["lr"], s["wd"], s["beta2"],
                group["ns_steps"],
            )  # fmt: skip
            torch._foreach_copy_(params, list(stacked.unbind(0)))

    @torch.no_grad()
    def warm_up(self):
        """Run (and so compile) the step of every group on zeros, changing no state."""
        for group in self.param_groups:
            p = group["params"][0]
            shape = (len(group["params"]), *p.shape)
            zeros = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(3)]
            second = torch.zeros(second_moment_shape(shape), dtype=p.dtype, device=p.device)
            self._step(*zeros, second, *self._scalars.values(), group["ns_steps"])


def build_optimizers(model):
    width_scale = (model.dim / 768) ** -0.5  # AdamW LRs were tuned at width 768
    embeds = [model.wte.weight] + [e.weight for e in model.value_embeds.values()]
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    assert len(matrices) == sum(1 for _ in model.blocks.parameters())
    adam_groups = [
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * width_scale),
        dict(params=embeds, lr=EMBEDDING_LR * width_scale),
        dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    fused = model.wte.weight.is_cuda
    adamw = torch.optim.AdamW(
        adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=fused
    )
    muon = Muon(matrices, MATRIX_LR, MUON_MOMENTUM, WEIGHT_DECAY, NS_STEPS)
    for opt in (adamw, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return adamw, muon


def lr_multiplier(progress):
    """Time-based schedule: linear warm-up, constant, then linear warmdown to FINAL_LR_FRAC."""
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress <= 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = max(0.0, 1.0 - progress) / max(WARMDOWN_RATIO, 1e-8)
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


def build_model(vocab_size, seq_len):
    """The model for this file's size constants (used by training and by tests)."""
    dim = (DEPTH * ASPECT_RATIO + HEAD_DIM - 1) // HEAD_DIM * HEAD_DIM
    return GPT(vocab_size, seq_len, DEPTH, dim, dim // HEAD_DIM, HEAD_DIM)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def main():
    ctx = harness.context()
    torch.manual_seed(ctx.seed)
    device = ctx.device
    if device == "cuda":
        torch.cuda.manual_seed(ctx.seed)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    T = ctx.sequence_len
    model = build_model(ctx.vocab_size, T).to(device)
    if device == "cuda":
        model.use_bf16_tables()
        if FLEX_ATTENTION:
            model.use_flex_attention()
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.estimate_flops()
    tokens_per_micro = DEVICE_BATCH_SIZE * T
    grad_accum = max(1, TOTAL_BATCH_SIZE // tokens_per_micro)
    tokens_per_step = grad_accum * tokens_per_micro
    print(
        f"model: depth {DEPTH}, dim {model.dim}, heads {model.dim // HEAD_DIM}, "
        f"windows {model.windows}, params {n_params / 1e6:.1f}M, "
        f"{flops_per_token / 1e6:.1f} MFLOP/token; batch {tokens_per_step} tokens "
        f"({grad_accum} x {DEVICE_BATCH_SIZE} x {T})",
        flush=True,
    )

    adamw, muon = build_optimizers(model)
    use_compile = COMPILE and device == "cuda"
    train_model = torch.compile(model, dynamic=False) if use_compile else model
    if use_compile:
        muon._step = torch.compile(muon_step, dynamic=False)
    if device == "cuda":
        autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    else:
        autocast = torch.autocast(device_type=device, enabled=False)
    loader = harness.train_loader(batch_size=DEVICE_BATCH_SIZE)

    t_compile = time.time()
    if use_compile:  # compile forward, backward and the Muon step before the clock starts
        # on made-up tokens: the harness refuses real training batches before budget.start()
        x = y = torch.zeros(DEVICE_BATCH_SIZE, T, dtype=torch.long, device=device)
        with autocast:
            train_model(x, y).backward()
        muon.warm_up()
        model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    if use_compile:
        print(f"compiled in {time.time() - t_compile:.1f} s", flush=True)

    budget = harness.Budget()
    budget.start()
    step, smooth_loss, last_log, t_last, tokens_seen = 0, 0.0, 0.0, time.time(), 0
    while not budget.done:
        for _ in range(grad_accum):
            x, y = next(loader)
            with autocast:
                loss = train_model(x, y)
            (loss / grad_accum).backward()
        progress = min(budget.progress, 1.0)
        lrm = lr_multiplier(progress)
        for group in adamw.param_groups:
            group["lr"] = group["initial_lr"] * lrm
        ramp = min(step / max(MUON_MOMENTUM_WARMUP_STEPS, 1), 1.0)
        for group in muon.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            group["momentum"] = MUON_MOMENTUM_START + ramp * (MUON_MOMENTUM - MUON_MOMENTUM_START)
            group["weight_decay"] = WEIGHT_DECAY * (1.0 - progress)
        adamw.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        loss_f = loss.item()
        harness.report(step, loss_f)
        step += 1
        tokens_seen += tokens_per_step
        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_f
        if step == 1:  # everything long-lived exists now; stop the GC from scanning it
            gc.collect()
            gc.freeze()
        now = budget.elapsed
        if now - last_log >= LOG_EVERY_SECONDS or step == 1:
            wall = time.time()
            debiased = smooth_loss / (1 - 0.9**step)
            tok_s = tokens_seen / max(wall - t_last, 1e-9)
            mfu = ""
            if device == "cuda":
                mfu = f" | mfu {100 * flops_per_token * tok_s / 989e12:.1f}% (bf16 H100 peak)"
            print(
                f"step {step:05d} | {100 * progress:5.1f}% | loss {debiased:.4f} | "
                f"lrm {lrm:.2f} | {tok_s:,.0f} tok/s{mfu}",
                flush=True,
            )
            last_log, t_last, tokens_seen = now, wall, 0

    print(f"done: {step} steps, {step * tokens_per_step / 1e6:.1f}M tokens", flush=True)
    harness.handover(model, flops_per_token=flops_per_token)


if __name__ == "__main__":
    main()
