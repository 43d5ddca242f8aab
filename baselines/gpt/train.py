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

from autoresearch import harness

# ---------------------------------------------------------------------------
# Hyperparameters (plain literals: tools rewrite them in place)
# ---------------------------------------------------------------------------
DEPTH = 8  # number of transformer blocks
ASPECT_RATIO = 64  # model width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128  # channels per attention head
MLP_RATIO = 4  # MLP hidden width as a multiple of the model width
WINDOW_PATTERN = "SSSL"  # per-layer attention, repeated: S = sliding window, L = full causal
SHORT_WINDOW_FRAC = 0.5  # S layers see this fraction of the sequence length
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
NS_STEPS = 5  # Newton-Schulz iterations per Muon update
WARMUP_RATIO = 0.0  # fraction of the time budget spent on linear LR warm-up
WARMDOWN_RATIO = 0.5  # fraction of the time budget spent on linear LR warmdown at the end
FINAL_LR_FRAC = 0.0  # LR at the end of the budget, as a fraction of the peak
COMPILE = True  # torch.compile the model (CUDA only)
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
        if window < seq_len:
            # band mask: query i sees keys j with i - window < j <= i
            i = torch.arange(seq_len)[:, None]
            j = torch.arange(seq_len)[None, :]
            self.register_buffer("mask", (j <= i) & (j > i - window), persistent=False)
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
        if self.mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask[:T, :T])
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


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
def zeropower_via_newtonschulz5(G, steps):
    """Approximately orthogonalise each matrix of G [N, m, n] (quintic Newton-Schulz)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    transpose = G.size(-2) > G.size(-1)
    if transpose:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transpose:
        X = X.mT
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum (Nesterov) -> Newton-Schulz orthogonalisation -> cautious weight decay.

    Parameters of the same shape are stacked so each group costs one batched
    orthogonalisation per step.
    """

    def __init__(self, params, lr, momentum, weight_decay, ns_steps):
        params = list(params)
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [{"params": [p for p in params if tuple(p.shape) == s]} for s in shapes]
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps)
        super().__init__(groups, defaults)
        self._ns = zeropower_via_newtonschulz5

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            state = self.state[params[0]]
            grads = torch.stack([p.grad for p in params])
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grads)
            buf, mom = state["momentum_buffer"], group["momentum"]
            buf.lerp_(grads, 1 - mom)
            update = self._ns(grads.lerp_(buf, mom), group["ns_steps"])
            p0 = params[0]
            update = update * max(1.0, p0.size(-2) / p0.size(-1)) ** 0.5
            lr, wd = group["lr"], group["weight_decay"]
            stacked = torch.stack(params)
            if wd > 0:  # cautious: only decay where the update agrees with the weight's sign
                update = update + wd * stacked * ((update * stacked) > 0)
            torch._foreach_add_(params, list(update.unbind(0)), alpha=-lr)


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
        muon._ns = torch.compile(zeropower_via_newtonschulz5, dynamic=False)
    if device == "cuda":
        autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    else:
        autocast = torch.autocast(device_type=device, enabled=False)
    loader = harness.train_loader(batch_size=DEVICE_BATCH_SIZE)

    if use_compile:  # compile forward, backward and Newton-Schulz before the clock starts
        # on made-up tokens: the harness refuses real training batches before budget.start()
        x = y = torch.zeros(DEVICE_BATCH_SIZE, T, dtype=torch.long, device=device)
        with autocast:
            train_model(x, y).backward()
        for group in muon.param_groups:
            p = group["params"][0]
            muon._ns(torch.zeros(len(group["params"]), *p.shape, device=device), NS_STEPS)
        model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()

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
