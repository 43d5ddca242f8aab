"""The trusted harness: the only part of autoresearch that a `train.py` imports.

    from autoresearch import harness
    ctx = harness.context()                 # device, seed, sequence_len, vocab_size, ...
    loader = harness.train_loader(batch_size=16)
    budget = harness.Budget(); budget.start()
    while not budget.done:
        x, y = next(loader); ...; harness.report(step, loss.item())
    harness.handover(model)                 # the harness scores it, in another process

Everything else (data, tokenizer, evaluation) is fixed by the harness, so a
candidate can only win by training a better model in the same time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.harness.clock import Budget
from autoresearch.harness.context import RunContext, context
from autoresearch.harness.events import report
from autoresearch.harness.handover import handover

if TYPE_CHECKING:
    import torch

__all__ = ["Budget", "RunContext", "context", "handover", "report", "train_loader"]


def train_loader(batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, y) batches of BOS-aligned rows from the training split, on the run's device."""
    from autoresearch.harness.dataloader import TrainLoader
    from autoresearch.harness.events import count_tokens

    ctx = context()
    loader = TrainLoader(
        Path(ctx.train_tokens_path), batch_size, ctx.sequence_len, ctx.bos_id, ctx.device, ctx.seed
    )
    for x, y in loader:
        count_tokens(x.numel())
        yield x, y
