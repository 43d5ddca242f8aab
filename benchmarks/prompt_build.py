"""How long a proposal's request and prompt take to build as the history grows.

    python benchmarks/prompt_build.py [--sizes 100,1000,10000] [--repeats 200]

A synthetic history of N records of one tag (a third of them failures with a
reason, a promotion every 50 with a real diff of the tiny baseline's train.py)
is added to the engine's `Book`, as the engine adds its records. Then, per
request (median of `--repeats`):

- **now**: what the engine does per request (the history view, the briefing,
  the `ProposalRequest`) plus the llm proposer's prompt (`prompt.llm_messages`);
- **before**: what it did until the briefing was kept up to date: the whole history
  sorted and copied into a tuple per request, and the prompt's sections filtered
  out of it.

Also: the briefing's refresh, made once per new record (noise and threshold are
computed by population.py then, as for judging, and are left out here), and the
prompt's size.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time
from pathlib import Path

from tabulate import tabulate

from autoresearch.briefing import Book, run_numbers, summarize, train_diff
from autoresearch.constants import read_constants, rewrite_constants
from autoresearch.default_plugins import prompt
from autoresearch.ledger import Record
from autoresearch.proposal import ProposalRequest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (ROOT / "baselines" / "tiny" / "train.py").read_text()
PROGRAM = (ROOT / "baselines" / "program.md").read_text()
PROMOTE_EVERY = 50
FAIL_EVERY = 3


def synthetic(n: int, seed: int = 0) -> tuple[list[Record], dict[str, str]]:
    """N records (e0001 the baseline) and the train.py of each promoted one, by commit."""
    rng = random.Random(seed)
    numeric = {k: v for k, v in read_constants(SOURCE).items() if type(v) in (int, float) and v}
    sources, records, champion = {"c1": SOURCE}, [], None
    for i in range(1, n + 1):
        failed = i > 1 and i % FAIL_EVERY == 0
        promoted = i == 1 or i % PROMOTE_EVERY == 0
        name = rng.choice(sorted(numeric))
        desc = f"{name} {numeric[name]} -> {numeric[name] * 2}: try a larger value of {name}"
        record = Record(
            id=f"e{i:04d}", status="crash" if failed else "keep", commit=f"c{i}",
            reason="exit code 1: RuntimeError: CUDA out of memory" if failed else "",
            parent=None if i == 1 else champion.id, val_bpb=None if failed else 1.0 - i * 1e-6,
            proposer="baseline" if i == 1 else "llm:m", description="baseline" if i == 1 else desc,
            promoted=promoted, num_steps=900, tokens=3_700_000, training_seconds=60.0,
            memory_gb=0.4, device="cpu", final_loss=3.1,
        )  # fmt: skip
        if promoted and i > 1:
            changed = rewrite_constants(sources[champion.commit], {name: numeric[name] * 2})
            sources[record.commit] = changed
        records.append(record)
        champion = record if promoted else champion
    return records, sources


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(n: int, repeats: int) -> list[object]:
    records, sources = synthetic(n)
    book = Book(lambda parent, r: train_diff(sources[parent.commit], sources[r.commit]))
    t0 = time.perf_counter()
    for r in records:
        book.add(r)
    add_ms = (time.perf_counter() - t0) / n * 1e3
    parent = records[-1]
    briefing = book.briefing(0.01, 0.02)

    def now() -> str:
        request = ProposalRequest(
            parent.id, SOURCE, PROGRAM, history=book.history(),
            parent_run=run_numbers(parent, "60 s"), briefing=book.briefing(0.01, 0.02),
        )  # fmt: skip
        return prompt.llm_messages(request)[1]["content"]

    def before() -> str:
        history = book.history()
        full = tuple(sorted((e for e in history if e.val_bpb is not None), key=lambda e: e.val_bpb))
        full += tuple(e for e in reversed(list(history)) if e.val_bpb is None)
        request = ProposalRequest(parent.id, SOURCE, PROGRAM, history=full)
        request = dataclasses.replace(request, briefing=summarize(full))
        return prompt.llm_messages(request)[1]["content"]

    refresh_ms = median_seconds(lambda: book.briefing(0.01, 0.02), repeats) * 1e3
    text = now()
    return [
        f"{n:,}", f"{median_seconds(now, repeats) * 1e3:.3f}",
        f"{median_seconds(before, max(repeats // 10, 5)) * 1e3:.3f}", f"{refresh_ms:.3f}",
        f"{add_ms * 1e3:.1f}", f"{len(text):,}", f"{len(briefing.table):,}",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    rows = [measure(int(n), args.repeats) for n in args.sizes.split(",")]
    headers = ["history", "now: request + prompt ms", "before: ms", "briefing refresh ms",
               "Book.add µs/record", "prompt chars", "table chars"]  # fmt: skip
    print(tabulate(rows, headers, tablefmt="github"))


if __name__ == "__main__":
    main()
