"""The end of training: the model leaves the candidate's process.

`handover(model)` exports the model's forward pass with torch.export at the
evaluation shape and writes it out with the metadata the summary needs. The
score is computed afterwards by `autoresearch.harness.evaluate` in a separate
process that runs only the exported graph, never the candidate's Python.

The runner times the export on its own clock, from the `handover` event to
`handed_over`, and a run whose export takes longer than its bound is invalid:
the export is not a place to go on training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from autoresearch.harness.context import context
from autoresearch.harness.events import _State, emit
from autoresearch.harness.model_io import export, save_exported

META_FILE = "handover.json"


def handover(model: Any, flops_per_token: float | None = None) -> None:
    """Export `model` (idx [B, T] -> logits [B, T, V]) for the trusted evaluation."""
    import torch

    ctx = context()
    # Training is over: the runner stops the training clock here and times the export, which
    # it bounds (work done here would be training off the clock).
    emit("handover")
    module = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    module.eval()
    peak_vram_mb = torch.cuda.max_memory_allocated() / 2**20 if ctx.device == "cuda" else 0.0
    idx = torch.zeros(ctx.eval_batch_size, ctx.sequence_len, dtype=torch.long, device=ctx.device)
    try:
        program = export(module, idx, ctx.device)
    except Exception as e:
        sys.exit(
            f"handover failed: torch.export could not export the model ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); keep forward free of data-dependent "
            "Python control flow"
        )
    folder = Path(ctx.handover_dir)
    save_exported(program, folder)
    meta = {
        "flops_per_token": flops_per_token,
        "peak_vram_mb": peak_vram_mb,
        "tokens": _State.tokens,
        "steps": _State.steps,
    }
    (folder / META_FILE).write_text(json.dumps(meta) + "\n")
    emit("handed_over", tokens=_State.tokens)
