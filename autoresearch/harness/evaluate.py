"""The trusted evaluation: val_bpb of a handed-over model, in its own process.

    python -m autoresearch.harness.evaluate '<spec json>'     # then "warm", "go" on stdin

The runner starts this with the candidate. Once the candidate's training has
started, "warm" tells it to import torch and its model loader and to load the
validation rows, then wait (not earlier: on a CPU that work would slow the
candidate's start-up, which is overhead, while during training it only costs a
core for a second or two). Once the training process has handed over and exited,
the runner writes "go" and this process loads the
exported graph (no candidate Python runs here), scores a fixed number of
tokens of the pinned validation split, and prints one JSON line. Before
scoring, two probes catch models that cheat through their forward pass:
changing future tokens must not change earlier logits (causality), and the
same batch must give the same logits twice (no dependence on evaluation order).

Bits per byte: the summed cross-entropy (nats) of every target token, over
ln(2) times the UTF-8 bytes those tokens stand for; BOS targets stand for no
bytes and are left out. Independent of the tokenizer, so any vocabulary competes.

The graph is untrusted, and this process runs it: `model_io` refuses any graph
that is not side-effect-free tensor math before it is deserialised, and `main`
first confines this process (no new privileges, no core dumps; when the run is
isolated, namespaces of its own where every mount is read-only and there is no
network). Its only way out is the result line on stdout.
A hand-over that cheats or is no plain model is refused as `invalid` (the
result says so); one that cannot be loaded or run is a crash.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.errors import UserError

if TYPE_CHECKING:
    import torch

    from autoresearch.harness.tokenizer import Tokenizer

WARM = "warm"  # the runner's first signal on stdin: training has started, load what you can
GO = "go"  # the runner's signal on stdin: the hand-over is complete, score it
# The causality probe compares log-probabilities (shift-invariant: no scaling of the logits
# widens the margin) before the cut against fixed bounds that nothing the model returns moves.
# Positions before the cut see identical inputs: on a CPU both baselines reproduce them exactly
# (measured: 0.0 in fp32 and under bf16 autocast), and 1e-4 leaves room for kernels that reduce
# in another order. On CUDA (bf16 autocast, not measured here) kernels may pick other tilings
# for other contents; bf16 keeps 8 bits of mantissa, 4e-3 relative on log-probabilities of a
# few units, so 1e-2 there. Whatever peeks within it gains less than that per token.
PROBE_TOLERANCE = 1e-4
PROBE_TOLERANCE_BF16 = 1e-2
# No honest model needs logits this large (a softmax saturates long before): larger, or not
# finite, and a logit of a never-scored token could hide what the model does elsewhere.
LOGIT_LIMIT = 1e4


@dataclass(frozen=True)
class EvalSpec:
    model_dir: str
    tokenizer_path: str
    val_tokens_path: str
    sequence_len: int
    eval_tokens: int
    batch_size: int
    device: str
    isolated: bool = False  # the runner isolates this run: confine the evaluator the same way


@dataclass(frozen=True)
class EvalResult:
    val_bpb: float
    tokens: int
    num_params: int
    seconds: float
    device_name: str


class EvalError(Exception):
    """The hand-over cannot be scored; the message says why (it becomes the crash reason)."""


class Refused(EvalError):
    """The hand-over is not an honest model to score (status `invalid`): it runs more than
    tensor math, peeks ahead, depends on evaluation order or returns absurd logits."""


@dataclass(frozen=True)
class EvalData:
    """Everything the score needs except the model: loaded before the model exists."""

    tokenizer: Tokenizer
    token_bytes: torch.Tensor  # UTF-8 bytes per token id, on the device
    rows: torch.Tensor  # [n_rows, T + 1] validation rows, on the CPU


def load_data(spec: EvalSpec) -> EvalData:
    """The tokenizer, byte counts and validation rows, and the model loader imported."""
    import numpy as np
    import torch

    from autoresearch.harness.dataloader import eval_rows
    from autoresearch.harness.model_io import warm_up
    from autoresearch.harness.tokenizer import Tokenizer

    warm_up()
    tokenizer = Tokenizer.load(Path(spec.tokenizer_path))
    token_bytes = torch.from_numpy(tokenizer.token_bytes().astype(np.int64)).to(spec.device)
    n_rows = spec.eval_tokens // spec.sequence_len
    rows = eval_rows(Path(spec.val_tokens_path), spec.sequence_len, n_rows, tokenizer.bos_id)
    return EvalData(tokenizer, token_bytes, torch.from_numpy(rows))


def evaluate(spec: EvalSpec, data: EvalData | None = None) -> EvalResult:
    import torch
    import torch.nn.functional as F

    from autoresearch.harness.model_io import ForbiddenGraph, load_exported, precision

    data = data or load_data(spec)
    t0 = time.monotonic()
    device = torch.device(spec.device)
    tokenizer, token_bytes, rows = data.tokenizer, data.token_bytes, data.rows
    n_rows = len(rows)
    try:
        program = load_exported(Path(spec.model_dir), spec.device)
    except ForbiddenGraph as e:
        raise Refused(str(e)) from None
    except Exception as e:
        raise EvalError(f"hand-over could not be loaded: {type(e).__name__}: {e}") from None
    model = program.module()
    num_params = sum(p.numel() for p in program.state_dict.values())

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), precision(spec.device):
            out = model(x)
        if not isinstance(out, torch.Tensor) or out.shape[:2] != x.shape:
            raise EvalError(f"model must return logits [B, T, V], got {getattr(out, 'shape', out)}")
        if out.shape[-1] < tokenizer.vocab_size:
            raise EvalError(
                f"model returns {out.shape[-1]} logits, vocabulary has {tokenizer.vocab_size}"
            )
        out = out[..., : tokenizer.vocab_size].float()
        largest = out.abs().max().item()  # NaN or inf included
        if not largest <= LOGIT_LIMIT:
            raise Refused(
                f"model returns a logit of magnitude {largest:.3g}: the evaluator"
                f" accepts finite logits up to {LOGIT_LIMIT:g}"
            )
        return out

    B = spec.batch_size
    first = _batch(rows, 0, B).to(device)
    reference = logits_of(first[:, :-1])
    tolerance = PROBE_TOLERANCE_BF16 if device.type == "cuda" else PROBE_TOLERANCE
    # The probe's rows and cuts are drawn afresh for each evaluation, from a seed no candidate
    # can know: a model that knew them could peek at the next token everywhere else.
    generator = torch.Generator(device="cpu").manual_seed(int.from_bytes(os.urandom(8), "little"))
    probed = rows[torch.randint(0, n_rows, (B,), generator=generator)].to(device)[:, :-1]
    vocab = tokenizer.vocab_size
    _probe_causality(logits_of, probed, logits_of(probed), vocab, tolerance, generator)

    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, n_rows, B):
        batch = _batch(rows, start, B).to(device)
        real = min(B, n_rows - start)  # the last batch is padded to the exported batch size
        y = batch[:real, 1:]
        logits = logits_of(batch[:, :-1])[:real]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        weight = token_bytes[y.reshape(-1)]
        nats += (loss * (weight > 0)).sum(dtype=torch.float64)
        nbytes += weight.sum()
    if not torch.equal(logits_of(first[:, :-1]), reference):
        raise Refused(
            "model gives different logits for the same batch: it depends on evaluation order"
        )
    val_bpb = nats.item() / (math.log(2) * nbytes.item())
    if not math.isfinite(val_bpb):
        raise EvalError(f"val_bpb is {val_bpb}: the model produces non-finite logits")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return EvalResult(val_bpb, n_rows * spec.sequence_len, num_params, time.monotonic() - t0, name)


def _batch(rows, start: int, size: int):
    """Rows [start, start + size), padded by repeating the first row to the exported size."""
    import torch

    batch = rows[start : start + size]
    if len(batch) < size:
        batch = torch.cat([batch, rows[:1].expand(size - len(batch), -1)])
    return batch


def _probe_causality(
    logits_of, x, reference, vocab_size: int, tolerance: float, generator: torch.Generator
) -> None:
    """Edit rows from a cut on; the log-probabilities before the cut must not move.

    Every position is the cut of some row in some pass (a random permutation of them, dealt
    over the rows, as many passes as that takes): a model that looks ahead from any position
    p is caught by the cut at p + 1. (Random cuts missed one that peeks at 5 positions of 63
    in about 7% of evaluations, and a peek at 5 positions of 2048 almost always.)
    """
    import torch

    rows, length = x.shape
    reference = reference.log_softmax(dim=-1)
    passes = math.ceil((length - 1) / rows)
    every = torch.randperm(length - 1, generator=generator) + 1
    spare = torch.randint(1, length, (passes * rows - len(every),), generator=generator)
    for cuts in torch.cat([every, spare]).view(passes, rows, 1):
        edited_part = (torch.arange(length) >= cuts).to(x.device)
        noise = torch.randint(0, vocab_size - 1, x.shape, generator=generator).to(x.device)
        edited = logits_of(torch.where(edited_part, noise, x)).log_softmax(dim=-1)
        moved = (edited - reference).abs().amax(dim=-1)
        moved = moved.masked_fill(edited_part, 0.0)  # only positions before the cut must hold
        if moved.max().item() > tolerance:
            row = int(moved.amax(dim=1).argmax())
            raise Refused(
                f"model is not causal: in row {row}, logits before position {int(cuts[row])}"
                " depend on later tokens"
            )


def confine(isolated: bool) -> None:
    """Confine this process before it loads the untrusted graph; called first thing, before
    any import that may start threads (a process with threads cannot enter a user namespace)."""
    from autoresearch.harness import sandbox

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dump with the data in it
    sandbox.prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1)
    if isolated:
        # torch asks for a temporary folder on import (and writes nothing there): pick it while
        # one is writable, as tempfile cannot find one afterwards. Its compiler's cache folder
        # (made on import by torch.export's serializer, /tmp/torchinductor_<user> unless set)
        # would be created in a read-only tree: this process compiles nothing, so it is
        # pointed at that folder, which exists.
        tempfile.tempdir = tempfile.gettempdir()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.tempdir
        sandbox.confine_in_place()  # nothing writable: the result leaves on the stdout pipe


def main() -> None:
    spec = EvalSpec(**json.loads(sys.argv[1]))
    try:
        confine(spec.isolated)
        signal = sys.stdin.readline().strip()
        data = load_data(spec) if signal in (WARM, GO) else None
        if signal == WARM:
            signal = sys.stdin.readline().strip()
        if signal != GO:
            return  # the candidate failed: nothing to score
        result = evaluate(spec, data)
    except (EvalError, UserError) as e:
        print(json.dumps({"error": str(e), "invalid": isinstance(e, Refused)}))
        sys.exit(1)
    print(json.dumps(asdict(result)), flush=True)
    os._exit(0)  # the result is out; tearing torch down would only delay the next experiment


if __name__ == "__main__":
    main()
