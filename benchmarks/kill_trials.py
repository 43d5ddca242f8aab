"""Does `evolve` survive SIGKILL and SIGINT at random instants? Twenty trials, one table.

    python benchmarks/kill_trials.py [--trials 20] [--seed 1] [--horizon 30] [--extra 2]

Each trial starts `autoresearch evolve` (population 2, the random proposer, 1 s
budget) in a fresh tiny research repo, sends SIGKILL (the evolve process alone)
or SIGINT (its process group, as Ctrl-C) at a seeded random instant, then runs
`evolve --resume` for `--extra` more trained experiments, and checks: records
lost or rewritten, duplicates, processes left over, stale state, the research
branch at the champion. Trials alternate SIGKILL and SIGINT. The trial and its
checks are tests/kill_resume.py, the same code tests/test_faults.py runs a
handful of in CI. Data goes to a fresh cache in a temporary folder. Exits 1 if
any trial found a problem, listing them after the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import write_corpus  # noqa: E402 - tests/ is on the path from here on
from kill_resume import ROW_HEADERS, kill_and_resume, make_trial_repo, plan_trials  # noqa: E402
from tabulate import tabulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--horizon", type=float, default=30.0, help="latest instant, seconds")
    parser.add_argument("--extra", type=int, default=2, help="experiments the resume adds")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    corpus = write_corpus(root / "corpus")
    trials = []
    started = time.monotonic()
    for plan in plan_trials(args.trials, args.seed, args.horizon):
        repo = make_trial_repo(root / f"trial-{plan.number:02d}", corpus)
        trials.append(kill_and_resume(repo, plan, extra=args.extra))
        verdict = "; ".join(trials[-1].problems()) or "ok"
        print(f"trial {plan.number}: {plan.signal} at {plan.instant} s: {verdict}", flush=True)

    print(tabulate([t.row() for t in trials], headers=ROW_HEADERS, floatfmt=".2f"))
    signals = {s: sum(t.plan.signal == s for t in trials) for s in ("SIGKILL", "SIGINT")}
    failed = [t for t in trials if t.problems()]
    print(
        f"{len(trials)} trials ({signals['SIGKILL']} SIGKILL, {signals['SIGINT']} SIGINT) at"
        f" instants 0.5-{args.horizon:.0f} s, {time.monotonic() - started:.0f} s:"
        f" {sum(t.lost for t in trials)} records lost,"
        f" {sum(t.duplicates for t in trials)} duplicates,"
        f" {sum(len(t.orphans) for t in trials)} orphan processes,"
        f" {sum(len(t.stale) for t in trials)} stale state,"
        f" research branch at the champion in {sum(t.branch_ok for t in trials)}/{len(trials)};"
        f" {len(trials) - len(failed)}/{len(trials)} trials without a problem"
    )
    for t in failed:
        print(f"trial {t.plan.number}: {'; '.join(t.problems())}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
