"""Does the engine's cost stay flat as the history grows?

    python benchmarks/scale.py [--sizes 100,1000,10000] [--experiments 20]

For each size N: a research repo with a synthetic history of N experiments of one
tag, each a real commit (train.py changed) with a result commit on its own branch
(written with `git fast-import`, then `git pack-refs --all`, as git does on its
own after a while) and a ledger record. The engine resumes that tag with the
scripted runner (every experiment takes no time) and a proposer that answers at
once, so what is measured is the engine's own work: resume start-up (from
`Engine(...)` to the first experiment) and bookkeeping per experiment (records,
results.tsv, commits, branches, status, the next proposal), in wall and CPU
seconds. Target: no growth with N beyond noise.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from autoresearch.config import load_config
from autoresearch.constants import rewrite_constants
from autoresearch.engine import Engine
from autoresearch.ledger import Ledger, Record
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


def synthetic_history(repo: Path, n: int) -> None:
    """`n` recorded experiments of TAG: the baseline (the committed train.py), then
    candidates that change one constant, each with its result commit and branch."""
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
        ledger.append(Record(
            id=f"e{i:04d}", status="discard", val_bpb=3.0 + i * 1e-6,
            commit=sha_of[f":{3 * i + 1}"],
            parent="e0001", proposer="scripted", tag=TAG, description="synthetic",
            fingerprints={"source": source_hash(variant)},
        ))  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--experiments", type=int, default=20)
    args = parser.parse_args()
    rows = [measure(int(n), args.experiments) for n in args.sizes.split(",")]
    headers = ["history", "resume start-up s", "bookkeeping s/experiment",
               "orchestrator CPU s (whole run)", "wall s"]  # fmt: skip
    print(tabulate(rows, headers=headers, floatfmt=".3f"))


if __name__ == "__main__":
    main()
