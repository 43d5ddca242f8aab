"""Tiny baseline on this machine: throughput, val_bpb, and the overhead of one run.

    python benchmarks/run_overhead.py [--budget 60] [--repeats 1]

Creates a fresh research repo from the tiny baseline (stdlib data, prepared
into the normal cache), runs `autoresearch run` and prints a table of where
the wall-clock time of each run went. Target: non-training overhead at most
15% of a 60 s budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import autoresearch
from tabulate import tabulate

PHASES = ("startup", "training", "export", "exit", "evaluation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    repo = Path(tempfile.mkdtemp(prefix="bench-overhead-")) / "research"
    autoresearch("init", str(repo), "--baseline", "tiny", cwd=repo.parent)
    t0 = time.monotonic()
    autoresearch("prepare", cwd=repo)
    prepare_seconds = time.monotonic() - t0
    rows = []
    for _ in range(args.repeats):
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "autoresearch", "run", "--budget", str(args.budget)],
            cwd=repo,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        wall = time.monotonic() - t0
        record = json.loads((repo / ".autoresearch/ledger.jsonl").read_text().splitlines()[-1])
        t = record["timings"]
        overhead = wall - t["training"]
        rows.append([
            record["id"], record["status"], record["val_bpb"], record["tokens"] / t["training"],
            *(t.get(p, 0.0) for p in PHASES), wall - record["total_seconds"], wall,
            100 * overhead / args.budget,
        ])  # fmt: skip
    headers = ["run", "status", "val_bpb", "tok/s", *(f"{p} s" for p in PHASES), "cli s", "wall s",
               "overhead % of budget"]  # fmt: skip
    print(f"prepare (first time in this cache, or a no-op): {prepare_seconds:.1f} s")
    print(tabulate(rows, headers=headers, floatfmt=".2f", intfmt=","))
    print("cli s: process start-up, config, ledger and summary outside the runner")


if __name__ == "__main__":
    main()
