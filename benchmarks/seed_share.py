"""How much of val_bpb's noise is the training seed's, the same for every variant?

    python benchmarks/seed_share.py [--seeds 5] [--tokens 60000]

The engine compares runs made with the same seed (`population.seed_effects`): that
pays when the seed moves every variant of train.py alike, and costs a little when
each run's noise is its own. This trains the tiny baseline and VARIANTS (each a move
of one or two constants, as the proposers make them) with each of `--seeds` seeds,
under a token budget, and splits the variance of val_bpb two ways (variant x seed,
one run a cell): the seed's effect, common to all variants, and what is left (the
seed's effect that differs between variants, and any noise of a run's own). The
share is the seed's part of the two: what `benchmarks/landscape.py --seed-share`
simulates.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

# One thread, as in search.py: on a shared 2-core machine training with 2 ran 3-5x slower.
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

from common import tiny_repo  # noqa: E402
from search import BUDGET_CAP_SECONDS, train_once  # noqa: E402
from tabulate import tabulate  # noqa: E402

from autoresearch.config import load_config  # noqa: E402
from autoresearch.constants import read_constants, rewrite_constants  # noqa: E402

# Moves of the kind the proposers make (multipliers of the baseline's values).
VARIANTS = {
    "baseline": {},
    "MATRIX_LR x1.5": {"MATRIX_LR": 1.5},
    "EMBEDDING_LR x0.5": {"EMBEDDING_LR": 0.5},
    "WARMDOWN_RATIO x0.5, ADAM_BETA2 x0.99": {"WARMDOWN_RATIO": 0.5, "ADAM_BETA2": 0.99},
    "UNEMBEDDING_LR x2": {"UNEMBEDDING_LR": 2.0},
}


def variant(source: str, moves: dict[str, float]) -> str:
    values = read_constants(source)
    return rewrite_constants(source, {name: values[name] * k for name, k in moves.items()})


def split(table: dict[str, list[float]]) -> dict[str, float]:
    """Two-way analysis of variance, one run a cell: the seed's variance component, the
    residual's, and the seed's share of the two."""
    rows = list(table.values())
    v, s = len(rows), len(rows[0])
    grand = statistics.fmean(x for row in rows for x in row)
    row_mean = [statistics.fmean(row) for row in rows]
    col_mean = [statistics.fmean(row[j] for row in rows) for j in range(s)]
    residual = sum(
        (rows[i][j] - row_mean[i] - col_mean[j] + grand) ** 2 for i in range(v) for j in range(s)
    ) / ((v - 1) * (s - 1))
    seed_mean_square = v * sum((c - grand) ** 2 for c in col_mean) / (s - 1)
    seed = max((seed_mean_square - residual) / v, 0.0)
    return {"seed": seed, "residual": residual, "share": seed / (seed + residual)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="training seeds per variant")
    parser.add_argument("--tokens", type=int, default=60_000, help="training tokens each")
    args = parser.parse_args()
    repo = tiny_repo("seed-share-")
    baseline = (repo / "train.py").read_text(encoding="utf-8")
    table: dict[str, list[float]] = {}
    for number, (name, moves) in enumerate(VARIANTS.items()):
        source = variant(baseline, moves)
        for seed in range(1, args.seeds + 1):
            config = load_config(repo, {
                "run.budget_seconds": BUDGET_CAP_SECONDS, "run.budget_tokens": args.tokens,
                "run.seed": seed,
            })  # fmt: skip
            run = f"v{number}s{seed}"
            record = train_once(source, config, repo, run, proposer="seed-share", tag="seeds")
            if record.val_bpb is None:
                raise SystemExit(f"{name} with seed {seed}: {record.status} {record.reason}")
            table.setdefault(name, []).append(record.val_bpb)
            print(f"{name} seed {seed}: {record.val_bpb:.4f}", flush=True)
    headers = ["variant", *(f"seed {s}" for s in range(1, args.seeds + 1)), "mean"]
    rows = [
        [n, *(f"{x:.4f}" for x in xs), f"{statistics.fmean(xs):.4f}"] for n, xs in table.items()
    ]
    parts = split(table)
    print(tabulate(rows, headers=headers, disable_numparse=True))
    print(
        f"\nsd of the seed's common effect {parts['seed'] ** 0.5:.4f}, of the rest"
        f" {parts['residual'] ** 0.5:.4f}: the seed's share of the variance {parts['share']:.0%}"
        f" ({len(table)} variants x {args.seeds} seeds, {args.tokens} tokens; {Path(repo)})"
    )


if __name__ == "__main__":
    main()
