"""The trusted harness: the only part of autoresearch that a `train.py` imports.

    from autoresearch import harness
    ctx = harness.context()                 # device, seed, sequence_len, vocab_size, ...
    loader = harness.train_loader(batch_size=16)
    budget = harness.Budget(); budget.start()
    while not budget.done:
        x, y = next(loader); ...; harness.report(step, loss.item())
    harness.handover(model)                 # the harness scores it, in another process

Everything else (data, tokenizer, evaluation) is fixed by the harness, so a
candidate can only win by training a better model in the same time. Under the
runner the time and the tokens are the runner's: it serves the training rows
itself, counts them, and times the window on its own clock.
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
    """(x, y) batches of BOS-aligned rows from the training split, on the run's device.

    Under the runner the rows are served by the runner, which counts them: with a token
    budget the batches end once it is spent. Run by hand they are read from the file here.
    """
    from autoresearch.harness.dataloader import ServedLoader, TrainLoader, data_channel
    from autoresearch.harness.events import _State, count_tokens

    ctx = context()
    channel = data_channel()
    if channel:
        for x, y in ServedLoader(channel, batch_size, ctx.sequence_len, ctx.device):
            _State.tokens = channel.tokens_served
            yield x, y
        return
    loader = TrainLoader(
        Path(ctx.train_tokens_path), batch_size, ctx.sequence_len, ctx.bos_id, ctx.device, ctx.seed
    )
    for x, y in loader:
        count_tokens(x.numel())
        yield x, y
