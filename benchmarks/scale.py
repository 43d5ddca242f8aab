"""Does the engine's cost stay flat as the history grows, and does it keep N slots busy?

    python benchmarks/scale.py [--sizes 100,1000,10000] [--experiments 20]
    python benchmarks/scale.py --slots 1,4,16 [--seconds 10] [--per-slot 6]
    python benchmarks/scale.py --real [--budget 15] [--candidates 6]

For each size N: a research repo with a synthetic history of N experiments of one
tag, each a real commit (train.py changed) with a result commit on its own branch
(written with `git fast-import`, then `git pack-refs --all`, as git does on its
own after a while) and a ledger record. The engine resumes that tag with the
scripted runner (every experiment takes no time) and a proposer that answers at
once, so what is measured is the engine's own work: resume start-up (from
`Engine(...)` to the first experiment) and bookkeeping per experiment (records,
results.tsv, commits, branches, status, the next proposal), in wall and CPU
seconds. Target: no growth with N beyond noise.

`--slots`: a simulated night on 1, 4 and 16 slots. Experiments are sleeps of `--seconds`
(the scripted runner) and proposals sleeps of a fifth of that, prepared one per slot
ahead: what is measured is how busy the engine keeps the slots (the time they trained
over the time they could have, target at least 97%), experiments per hour against the
ideal, and the orchestrator's CPU per experiment (one thread judges, records and commits
every result, so this is what grows with the slots).

`--real`: the tiny baseline with real training on this machine, 1 slot against 2 slots
(each then has half the cores and as many threads), and 2 slots left unpinned with
torch's default threads, one after the other: candidates per hour, each candidate's
training speed and evaluation time.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tabulate import tabulate

from autoresearch.config import load_config
from autoresearch.constants import rewrite_constants
from autoresearch.engine import Engine
from autoresearch.ledger import Ledger, Record
from autoresearch.slots import Slot, machine_slots
from autoresearch.testing import ScriptedProposer, ScriptedRunner
from autoresearch.validation import source_hash
from autoresearch.workspace import (
    LEDGER_FILE,
    candidate_branch,
    candidate_message,
    init_repo,
    read_train,
    state_dir,
)

TAG = "big"


def synthetic_history(
    repo: Path, n: int, shape: Callable[[int, dict[str, Any]], Record] | None = None
) -> None:
    """`n` recorded experiments of TAG: the baseline (the committed train.py), then
    candidates that change one constant, each with its result commit and branch.
    `shape(i, fields)`: the record of candidate i from the fields it would have (all
    discarded children of the baseline, unless it says otherwise)."""
    base = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    source = read_train(repo, base)
    stream, records = [], []
    for i in range(2, n + 1):
        variant = rewrite_constants(source, {"MATRIX_LR": round(0.01 + i * 1e-6, 7)}).encode()
        branch = candidate_branch(TAG, f"e{i:04d}")
        message = candidate_message(f"e{i:04d}", "synthetic", "e0001", "scripted").encode()
        stream += [
            b"blob\n", f"mark :{3 * i}\n".encode(), f"data {len(variant)}\n".encode(), variant,
            f"\ncommit refs/heads/{branch}\nmark :{3 * i + 1}\n".encode(),
            b"committer bench <b@example.com> 1700000000 +0000\n",
            f"data {len(message)}\n".encode(), message, f"from {base}\n".encode(),
            f"M 100644 :{3 * i} train.py\n\n".encode(),
            f"commit refs/heads/{branch}\nmark :{3 * i + 2}\n".encode(),
            b"committer bench <b@example.com> 1700000000 +0000\n",
            b"data 7\nresult\n", f"from :{3 * i + 1}\n\n".encode(),
        ]  # fmt: skip
        records.append((i, variant.decode()))
    marks = repo / ".git" / "bench-marks"
    subprocess.run(
        ["git", "fast-import", "--quiet", f"--export-marks={marks}"],
        cwd=repo, input=b"".join(stream), check=True,
    )  # fmt: skip
    sha_of = dict(line.split() for line in marks.read_text().splitlines())
    subprocess.run(["git", "pack-refs", "--all"], cwd=repo, check=True)
    ledger = Ledger(state_dir(repo) / LEDGER_FILE)
    ledger.append(Record(
        id="e0001", status="keep", val_bpb=3.0, commit=base, proposer="baseline", tag=TAG,
        promoted=True, description="baseline", fingerprints={"source": source_hash(source)},
    ))  # fmt: skip
    for i, variant in records:
        fields = dict(
            id=f"e{i:04d}", status="discard", val_bpb=3.0 + i * 1e-6,
            commit=sha_of[f":{3 * i + 1}"],
            parent="e0001", proposer="scripted", tag=TAG, description="synthetic",
            fingerprints={"source": source_hash(variant)},
        )  # fmt: skip
        ledger.append(shape(i, fields) if shape else Record(**fields))


def measure(n: int, experiments: int) -> list:
    repo = init_repo(Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-")) / "research", "tiny")
    synthetic_history(repo, n)
    counter = iter(range(10**9))

    def fresh(request):  # a new constant each time: a distinct source, never a duplicate
        return request.parent_source + f"\nEXTRA_{next(counter)} = 1\n", "one more constant"

    proposer = ScriptedProposer([fresh] * (experiments + 8))
    runner = ScriptedRunner(lambda source: 3.1)
    overrides = {
        "evolve.max_experiments": n + experiments, "evolve.calibrate": 0, "evolve.population": 4,
    }  # fmt: skip
    t0, cpu0 = time.monotonic(), time.process_time()
    engine = Engine(
        repo, load_config(repo, overrides), TAG, {proposer.name: (proposer, 1.0)},
        say=lambda line: None, runner=runner,
    )  # fmt: skip
    engine.run(base_commit="")
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert len(runner.calls) == experiments, len(runner.calls)
    startup = runner.calls[0].started - t0
    per_experiment = (runner.calls[-1].ended - runner.calls[0].started) / (experiments - 1)
    return [n, startup, per_experiment, cpu, wall]


def simulated_night(slots: int, seconds: float, per_slot: int) -> list:
    """`slots` slots busy with sleeps of `seconds`; the search phase measured."""
    repo = init_repo(Path(tempfile.mkdtemp(prefix=f"bench-slots-{slots}-")) / "research", "tiny")
    base = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    counter = iter(range(10**9))

    def fresh(request):  # a proposer that takes a while, as an LLM does
        time.sleep(seconds / 5)
        return request.parent_source + f"\nEXTRA_{next(counter)} = 1\n", "one more constant"

    candidates = slots * per_slot
    proposer = ScriptedProposer([fresh] * (candidates + 2 * slots + 8))
    runner = ScriptedRunner(lambda source: 3.0 - 0.001 * source.count("EXTRA"), seconds=seconds)
    overrides = {
        "evolve.max_experiments": 1 + candidates, "evolve.calibrate": 0,
        "evolve.population": 4, "evolve.prefetch": slots,
    }  # fmt: skip
    engine = Engine(
        repo, load_config(repo, overrides), TAG, {proposer.name: (proposer, 1.0)},
        say=lambda line: None, runner=runner,
        slots=[Slot(i, label=f"slot {i}") for i in range(slots)],
    )  # fmt: skip
    cpu0 = time.process_time()
    engine.run(base_commit=base)
    cpu = time.process_time() - cpu0
    search = runner.calls[1:]  # the baseline trains alone, first
    assert len(search) == candidates, len(search)
    # A night is long: its steady state runs from when every slot has started to the last
    # start (after it, slots run out of work only because the run ends).
    starts = sorted(c.started for c in search)
    begin, end = starts[slots - 1], starts[-1]
    busy = sum(max(0.0, min(c.ended, end) - max(c.started, begin)) for c in search)
    done = sum(begin <= c.ended <= end for c in search)
    per_hour = 3600 / seconds  # of one slot, at these experiment lengths
    return [
        slots, candidates, f"{busy / (slots * (end - begin)):.1%}",
        f"{done / (end - begin) * 3600:.0f}", f"{slots * per_hour:.0f}",
        f"{cpu / len(runner.calls) * 1000:.0f}",
    ]  # fmt: skip


def real_slots(slots: int, budget: float, candidates: int, pinned: bool = True) -> list:
    """The tiny baseline, then `candidates` random proposals, on `slots` real slots;
    `pinned`: the slots' own cores and threads (else each run takes torch's default of
    threads, on any core)."""
    from autoresearch.engine import make_proposers
    from autoresearch.harness.prepare import prepare
    from autoresearch.plugins import load_data_sources

    load_data_sources()
    repo = init_repo(Path(tempfile.mkdtemp(prefix=f"bench-real-{slots}-")) / "research", "tiny")
    base = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    overrides = {
        "run.budget_seconds": budget, "run.slots": slots, "run.device": "cpu",
        "evolve.max_experiments": 1 + candidates, "evolve.calibrate": 0,
        "evolve.population": 4, "evolve.proposers": ["random"],
    }  # fmt: skip
    config = load_config(repo, overrides)
    prepare(config, log=lambda line: None)
    plan = machine_slots(slots, "cpu") if pinned else [Slot(i) for i in range(slots)]
    engine = Engine(
        repo, config, TAG, make_proposers(config, ("random",)), say=lambda line: None,
        slots=plan,
    )  # fmt: skip
    records = engine.run(base_commit=base)[1:]
    runs = sorted((r.created - r.total_seconds, r.created) for r in records)
    window = runs[-1][1] - runs[0][0]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return [
        f"{slots}" + ("" if pinned or slots == 1 else " unpinned"), len(records),
        f"{len(records) / window * 3600:.0f}",
        f"{mean([r.tokens / max(r.training_seconds, 1e-9) for r in records]):,.0f}",
        f"{mean([r.timings.get('evaluation', 0.0) for r in records]):.1f}",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--slots", help="a simulated night on these slot counts, e.g. 1,4,16")
    parser.add_argument("--seconds", type=float, default=10.0, help="one simulated experiment")
    parser.add_argument("--per-slot", type=int, default=6, help="simulated experiments per slot")
    parser.add_argument("--real", action="store_true", help="1 against 2 real slots here")
    parser.add_argument("--budget", type=float, default=15.0, help="--real: training seconds")
    parser.add_argument("--candidates", type=int, default=6, help="--real: candidates per arm")
    args = parser.parse_args()
    if args.slots:
        rows = [simulated_night(int(n), args.seconds, args.per_slot) for n in args.slots.split(",")]
        headers = ["slots", "experiments", "slot utilisation", "experiments/hour",
                   "ideal/hour", "orchestrator CPU ms/experiment"]  # fmt: skip
    elif args.real:
        arms = [(1, True), (2, True), (2, False)]
        rows = [real_slots(n, args.budget, args.candidates, pinned) for n, pinned in arms]
        headers = ["slots", "candidates", "candidates/hour", "training tok/s each",
                   "evaluation s each"]  # fmt: skip
    else:
        rows = [measure(int(n), args.experiments) for n in args.sizes.split(",")]
        headers = ["history", "resume start-up s", "bookkeeping s/experiment",
                   "orchestrator CPU s (whole run)", "wall s"]  # fmt: skip
    print(tabulate(rows, headers=headers, floatfmt=".3f"))


if __name__ == "__main__":
    main()
