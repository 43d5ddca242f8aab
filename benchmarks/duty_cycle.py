"""Does the device wait for the proposer? Duty cycle with and without prefetch.

    python benchmarks/duty_cycle.py [--budget 20] [--experiments 6]

Three arms on the tiny baseline, side by side in one run:
  instant  - the random proposer answering at once (the reference), prefetch 2
  slow     - the same proposer sleeping as long as the budget, prefetch 2
  serial   - the same slow proposer, prefetch 0 (propose, then train)

Duty cycle = training seconds / wall seconds of the search phase (after the
baseline). Target: slow reaches at least 90% of instant's duty cycle.
"""

from __future__ import annotations

import argparse
import time

import git
from common import tiny_repo
from tabulate import tabulate

from autoresearch.config import load_config
from autoresearch.engine import Engine
from autoresearch.plugins import make_proposer
from autoresearch.proposal import Proposal, ProposalRequest


class Sleepy:
    """Wraps a proposer so every proposal takes `delay` seconds longer."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.name = inner, delay, f"slow-{inner.name}"

    def propose(self, request: ProposalRequest) -> Proposal:
        time.sleep(self.delay)
        return self.inner.propose(request)


def arm(name: str, delay: float, prefetch: int, args) -> list:
    repo = tiny_repo(f"bench-duty-{name}-")
    overrides = {
        "run.budget_seconds": args.budget, "evolve.calibrate": 0, "evolve.population": 4,
        "evolve.prefetch": prefetch, "evolve.max_experiments": args.experiments + 1,
    }  # fmt: skip
    config = load_config(repo, overrides)
    proposer = Sleepy(make_proposer("random"), delay) if delay else make_proposer("random")
    # One tag for every arm: the same seed, so the arms draw the same proposals.
    engine = Engine(repo, config, "bench", {proposer.name: (proposer, 1.0)}, say=lambda line: None)

    engine_started = time.monotonic()
    records = engine.run(git.Repo(repo).head.commit.hexsha)
    wall = time.monotonic() - engine_started - records[0].total_seconds  # the search phase
    search = records[1:]
    training = sum(r.training_seconds for r in search)
    return [
        name,
        delay,
        prefetch,
        len(search),
        training,
        wall,
        training / wall,
        engine.idle_seconds,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--experiments", type=int, default=6)
    args = parser.parse_args()
    rows = [
        arm("instant", 0.0, 2, args),
        arm("slow", args.budget, 2, args),
        arm("serial", args.budget, 0, args),
    ]
    reference = rows[0][6]
    for row in rows:
        row.append(100 * row[6] / reference)
    headers = ["arm", "proposer s", "prefetch", "experiments", "training s", "wall s",
               "duty cycle", "device idle s", "% of instant"]  # fmt: skip
    print(tabulate(rows, headers=headers, floatfmt=".2f"))


if __name__ == "__main__":
    main()
