"""Tiny GPT baseline: learns visibly in a 60-second budget on a 2-core laptop CPU.

The same design as the GPU baseline, sized down and simplified: byte-level
tokens, rotary embeddings, parameter-free RMSNorm, QK-norm, ReLU^2 MLP,
learned per-layer residual scalars, logit soft-capping and full causal
attention, trained with Muon (block matrices) + AdamW (the rest) under a
time-based learning-rate warmdown.

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

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch import harness

# ---------------------------------------------------------------------------
# Hyperparameters (plain literals: tools rewrite them in place)
# ---------------------------------------------------------------------------
DEPTH = 1  # number of transformer blocks (deeper loses in a 60 s CPU budget)
MODEL_DIM = 128  # width of the residual stream
N_HEAD = 4  # attention heads (MODEL_DIM must be divisible by N_HEAD)
MLP_RATIO = 4  # MLP hidden width as a multiple of MODEL_DIM
ROPE_BASE = 10000.0  # rotary embedding base frequency
SOFTCAP = 15.0  # logits are squashed to SOFTCAP * tanh(logits / SOFTCAP)
DEVICE_BATCH_SIZE = 16  # rows per forward/backward pass (one optimizer step)
EMBEDDING_LR = 0.6  # AdamW LR of the token embedding
UNEMBEDDING_LR = 0.004  # AdamW LR of the output layer
MATRIX_LR = 0.04  # Muon LR of the transformer's 2-D weight matrices
SCALAR_LR = 0.5  # AdamW LR of the per-layer residual scalars
WEIGHT_DECAY = 0.0  # Muon (cautious) weight decay, decays linearly to 0 over the budget
ADAM_BETA1 = 0.8  # AdamW beta1
ADAM_BETA2 = 0.95  # AdamW beta2
MUON_MOMENTUM = 0.95  # Muon momentum after its warm-up
MUON_MOMENTUM_START = 0.85  # Muon momentum at step 0
MUON_MOMENTUM_WARMUP_STEPS = 100  # steps to ramp Muon momentum from start to final
NS_STEPS = 5  # Newton-Schulz iterations per Muon update
WARMUP_RATIO = 0.0  # fraction of the time budget spent on linear LR warm-up
WARMDOWN_RATIO = 0.5  # fraction of the time budget spent on linear LR warmdown at the end
FINAL_LR_FRAC = 0.0  # LR at the end of the budget, as a fraction of the peak
NUM_THREADS = 0  # torch CPU threads; 0 keeps torch's default
COMPILE = False  # torch.compile the model (slow to start on CPU)
LOG_EVERY_SECONDS = 5.0  # how often to print a progress line


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


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.c_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        qkv = self.c_qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, T, D]
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.attn = CausalSelfAttention(dim, n_head)
        self.mlp = MLP(dim, MLP_RATIO * dim)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len, depth, dim, n_head):
        super().__init__()
        self.vocab_size, self.seq_len, self.dim = vocab_size, seq_len, dim
        self.wte = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head) for _ in range(depth))
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(depth))  # scales the residual stream
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))  # mixes in the initial embedding
        head_dim = dim // n_head
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
        for block in self.blocks:
            nn.init.uniform_(block.attn.c_qkv.weight, -bound, bound)
            nn.init.uniform_(block.mlp.c_fc.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = norm(self.wte(idx))
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x))
        logits = self.softcap * torch.tanh(logits / self.softcap)  # soft-capped, float32
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )

    def estimate_flops(self):
        """Training FLOPs per token: 6 per matmul weight, plus attention scores and values."""
        skip = self.wte.weight.numel() + self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul_params = sum(p.numel() for p in self.parameters()) - skip
        return 6 * matmul_params + 12 * self.dim * self.seq_len * len(self.blocks)


# ---------------------------------------------------------------------------
# Optimizers: Muon for 2-D block matrices, AdamW for the rest
# ---------------------------------------------------------------------------
def zeropower_via_newtonschulz5(G, steps):
    """Approximately orthogonalise each matrix of G [N, m, n] (quintic Newton-Schulz)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
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
            update = zeropower_via_newtonschulz5(grads.lerp_(buf, mom), group["ns_steps"])
            p0 = params[0]
            update = update * max(1.0, p0.size(-2) / p0.size(-1)) ** 0.5
            lr, wd = group["lr"], group["weight_decay"]
            if wd > 0:  # cautious: only decay where the update agrees with the weight's sign
                stacked = torch.stack(params)
                update = update + wd * stacked * ((update * stacked) > 0)
            torch._foreach_add_(params, list(update.unbind(0)), alpha=-lr)


def build_optimizers(model):
    width_scale = (model.dim / 768) ** -0.5  # AdamW LRs were tuned at width 768
    adam_groups = [
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * width_scale),
        dict(params=[model.wte.weight], lr=EMBEDDING_LR * width_scale),
        dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    adamw = torch.optim.AdamW(
        adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0
    )
    muon = Muon(model.blocks.parameters(), MATRIX_LR, MUON_MOMENTUM, WEIGHT_DECAY, NS_STEPS)
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
    return GPT(vocab_size, seq_len, DEPTH, MODEL_DIM, N_HEAD)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def main():
    ctx = harness.context()
    torch.manual_seed(ctx.seed)
    if NUM_THREADS > 0:
        torch.set_num_threads(NUM_THREADS)
    device = ctx.device
    T = ctx.sequence_len
    model = build_model(ctx.vocab_size, T).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.estimate_flops()
    tokens_per_step = DEVICE_BATCH_SIZE * T
    print(
        f"model: depth {DEPTH}, dim {MODEL_DIM}, heads {N_HEAD}, params {n_params / 1e6:.2f}M, "
        f"{flops_per_token / 1e6:.1f} MFLOP/token; batch {tokens_per_step} tokens "
        f"({DEVICE_BATCH_SIZE} x {T}); {torch.get_num_threads()} threads",
        flush=True,
    )
    adamw, muon = build_optimizers(model)
    train_model = torch.compile(model, dynamic=False) if COMPILE else model
    loader = harness.train_loader(batch_size=DEVICE_BATCH_SIZE)

    budget = harness.Budget()
    budget.start()
    step, smooth_loss, last_log, t_last, tokens_seen = 0, 0.0, 0.0, time.time(), 0
    while not budget.done:
        x, y = next(loader)
        loss = train_model(x, y)
        loss.backward()
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
        now = budget.elapsed
        if now - last_log >= LOG_EVERY_SECONDS or step == 1:
            wall = time.time()
            debiased = smooth_loss / (1 - 0.9**step)
            tok_s = tokens_seen / max(wall - t_last, 1e-9)
            print(
                f"step {step:05d} | {100 * progress:5.1f}% | loss {debiased:.4f} | "
                f"lrm {lrm:.2f} | {tok_s:,.0f} tok/s",
                flush=True,
            )
            last_log, t_last, tokens_seen = now, wall, 0

    print(f"done: {step} steps, {step * tokens_per_step / 1e6:.2f}M tokens", flush=True)
    harness.handover(model, flops_per_token=flops_per_token)


if __name__ == "__main__":
    main()
