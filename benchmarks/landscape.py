"""Does the search return a better train.py? The real engine on a simulated landscape.

    python benchmarks/landscape.py [--sigmas 0.25,1,3] [--lengths 50,100,300]
        [--searches 200] [--arms greedy,today,new] [--arm NAME=KEY:VALUE,...]
        [--seed-share 0] [--workers 2] [--results FILE] [--table] [--figure PNG]

A `Landscape` (seeded) gives every train.py of the tiny baseline a true value, in
units (higher is better): a function of 8 of its constants (`f` below: a quadratic
bowl in log space around a hidden optimum, with interactions and a crash region
where the learning rate is too high), plus the effects of the structural edits the
source contains. There are 150 edits: 10% good (median gain 1 unit), 2% great (about
3), 45% mildly harmful, 33% neutral, 10% that crash. An edit is a visible statement
(`edit_017 = True`), so it changes the normalised source the engine hashes.

The runner (the engine's runner seam, no training) returns val_bpb = BASE_BPB - UNIT x
(true value + noise), the noise N(0, sigma): a share `--seed-share` of its variance is the
training seed's effect, the same for every source run with that seed (training on CPU is
deterministic given the seed, and the seed moves every variant alike), the rest fresh for
every run (seeded by the search and the experiment's id, so repeats of one source differ).
The proposer acts like an LLM: given the parent's train.py it moves 1-3 constants, or
applies an edit the parent does not have (good and great edits `--good-rate` times as
often as their share), and a crashed parent handed back is fixed (the culprit undone)
before its change.

Arms are evolve settings: `greedy` the original loop (population 1, no calibration),
`today` population 4 with a noise_k 2 bar over 2 calibration repeats, `new` the
engine's defaults (no overrides: whatever the engine does by default). Search i of
every arm searches the same landscape with the same seeds (paired). For each cell
(sigma x experiments x arm): the true gain of the champion the engine returns over
the baseline's true value (mean +- standard error), the false-promotion rate
(promotions whose true value was not above the champion they replaced), and the
overstatement (the champion's gain over the baseline as the engine measured it, by
their means, minus its true gain, in sigma); then paired differences of the gain
between arms.

Each search runs in a research repo of its own under /dev/shm, on a process pool;
`--results` keeps one JSON line per search, so an interrupted grid goes on where it
stopped and `--table` prints the tables of what is there.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from tabulate import tabulate

from autoresearch import population as pop
from autoresearch.config import Config, load_config
from autoresearch.constants import format_value, read_constants, rewrite_constants
from autoresearch.engine import Engine
from autoresearch.proposal import Proposal, ProposalRequest
from autoresearch.runner import Outcome
from autoresearch.slots import WHOLE_MACHINE, Slot
from autoresearch.workspace import (
    RUN_LOG,
    TRAIN_FILE,
    branch_sha,
    commit_candidate,
    init_repo,
    read_train,
    set_branch,
)

BASE_BPB = 2.0  # val_bpb of a source of true value 0
UNIT = 0.01  # val_bpb per unit of value
TAG = "sim"
PROPOSER = "landscape"
SHM = Path("/dev/shm")  # git and the ledger's fsyncs in memory, where there is such a folder

# The 8 constants of the tiny baseline that the landscape scores, and whether they are
# integers (moved in powers of two). Each one's range is the baseline value x e^(+-RANGE).
KNOBS = {
    "MATRIX_LR": False, "EMBEDDING_LR": False, "UNEMBEDDING_LR": False, "SCALAR_LR": False,
    "WARMDOWN_RATIO": False, "SOFTCAP": False, "DEVICE_BATCH_SIZE": True, "MODEL_DIM": True,
}  # fmt: skip
RANGE = 2.0  # log range either side of the baseline value
OPTIMUM_SPREAD = 0.6  # log distance of the hidden optimum from the baseline value (sd)
CURVATURE = (1.0, 4.0)  # units lost one e-fold away from the optimum, per constant
# Pairs whose log offsets interact (bigger batches want a higher LR, wider models a lower
# one, the embedding LR goes with the matrix LR), as a correlation in the quadratic form.
INTERACTIONS = {
    ("MATRIX_LR", "DEVICE_BATCH_SIZE"): -0.5, ("MATRIX_LR", "MODEL_DIM"): 0.4,
    ("MATRIX_LR", "EMBEDDING_LR"): 0.3,
}  # fmt: skip
# The run diverges when the matrix LR is this many e-folds over its optimum (corrected
# for the batch size), or the embedding LR this many.
CRASH_MATRIX_LR, CRASH_EMBEDDING_LR = 1.2, 1.5

# The structural edits: how many of each kind (10%, 2%, 45%, 33%, 10% of 150), and the
# distribution of their effect in units.
EDIT_KINDS = {  # kind: (how many, effect(rng))
    "good": (15, lambda rng: rng.lognormvariate(math.log(1.0), 0.5)),
    "great": (3, lambda rng: rng.lognormvariate(math.log(3.0), 0.25)),
    "harmful": (67, lambda rng: -rng.lognormvariate(math.log(0.5), 0.5)),
    "neutral": (50, lambda rng: rng.gauss(0.0, 0.05)),
    "crash": (15, lambda rng: 0.0),
}
GOOD_KINDS = ("good", "great")
EDIT_LINE = "edit_{:03d} = True  # structural edit {}\n"
EDIT_PATTERN = re.compile(r"^edit_(\d{3}) = True\b", re.MULTILINE)

# The proposer: how often it edits rather than tunes, and how far it moves a constant.
EDIT_SHARE = 0.5
STEP = 0.5  # sd of a constant's move, in e-folds

# Arms: evolve settings over the engine's defaults. `new` is the engine's defaults.
ARMS = {
    "greedy": {"population": 1, "calibrate": 0},
    # the defaults before judging on means: a bar of 2 sd, no re-measurement
    "today": {"population": 4, "noise_k": 2, "calibrate": 2, "remeasure": 0},
    "new": {},
}


@dataclass(frozen=True)
class Edit:
    number: int
    kind: str
    effect: float  # units; a crash edit's run fails instead


class Landscape:
    """True values of train.py sources: f(constants) + the edits' effects."""

    def __init__(self, baseline_source: str, seed: int) -> None:
        rng = random.Random(f"landscape-{seed}")
        base = read_constants(baseline_source)
        self.base = {name: float(base[name]) for name in KNOBS}
        self.optimum: dict[str, float] = {}
        while not self.optimum or self.crash(baseline_source):  # the baseline must run
            self.optimum = {
                n: v * math.exp(rng.gauss(0, OPTIMUM_SPREAD)) for n, v in self.base.items()
            }
        self.curvature = {name: rng.uniform(*CURVATURE) for name in KNOBS}
        kinds = [kind for kind, (count, _) in EDIT_KINDS.items() for _ in range(count)]
        rng.shuffle(kinds)
        self.edits = [Edit(i + 1, k, EDIT_KINDS[k][1](rng)) for i, k in enumerate(kinds)]

    def offsets(self, constants: dict) -> dict[str, float]:
        """Each knob's log distance from its optimum."""
        return {n: math.log(float(constants[n]) / self.optimum[n]) for n in KNOBS}

    def value(self, source: str) -> float:
        """The true value of `source`, in units (higher is better)."""
        z = self.offsets(read_constants(source))
        c = self.curvature
        bowl = sum(c[n] * z[n] ** 2 for n in KNOBS)
        bowl += sum(
            2 * rho * math.sqrt(c[a] * c[b]) * z[a] * z[b] for (a, b), rho in INTERACTIONS.items()
        )
        return -bowl + sum(self.edits[i - 1].effect for i in applied(source))

    def crash(self, source: str) -> str | None:
        """Why `source` crashes, or None."""
        z = self.offsets(read_constants(source))
        if z["MATRIX_LR"] - 0.5 * z["DEVICE_BATCH_SIZE"] > CRASH_MATRIX_LR:
            return "loss is nan: MATRIX_LR too high for this batch size"
        if z["EMBEDDING_LR"] > CRASH_EMBEDDING_LR:
            return "loss is nan: EMBEDDING_LR too high"
        broken = [i for i in applied(source) if self.edits[i - 1].kind == "crash"]
        return f"RuntimeError in structural edit {broken[0]}" if broken else None


def applied(source: str) -> list[int]:
    """The numbers of the edits in `source`."""
    return [int(m) for m in EDIT_PATTERN.findall(source)]


def knob_range(baseline: float) -> tuple[float, float]:
    return baseline * math.exp(-RANGE), baseline * math.exp(RANGE)


class LandscapeProposer:
    """An LLM-like proposer over the landscape; deterministic from `request.rng`."""

    name = PROPOSER

    def __init__(self, landscape: Landscape, good_rate: float = 2.0) -> None:
        self.landscape = landscape
        self.good_rate = good_rate

    def propose(self, request: ProposalRequest) -> Proposal:
        rng, source, said = request.rng, request.parent_source, []
        if request.crash_log is not None:
            source, fix = self.repair(source)
            said.append(fix)
        # What was already tried on this parent, as the history says: never proposed again.
        tried = {e.description.rsplit("; ", 1)[-1] for e in request.history
                 if e.parent == request.parent_id}  # fmt: skip
        present = set(applied(source))
        edits = [e for e in self.landscape.edits
                 if e.number not in present and f"edit {e.number}" not in tried]  # fmt: skip
        if edits and rng.random() < EDIT_SHARE:
            edit = rng.choices(edits, weights=self.weights(edits))[0]
            source = source.rstrip("\n") + "\n" + EDIT_LINE.format(edit.number, edit.number)
            said.append(f"edit {edit.number}")
        else:
            source, move = self.move(source, rng)
            said.append(move)
        return Proposal(source=source, description="; ".join(said))

    def weights(self, edits: list[Edit]) -> list[float]:
        """Good and great edits `good_rate` times as likely as their share of `edits`."""
        share = sum(e.kind in GOOD_KINDS for e in edits) / len(edits)
        if share in (0.0, 1.0) or self.good_rate * share >= 1:
            return [1.0] * len(edits)
        w = self.good_rate * (1 - share) / (1 - self.good_rate * share)
        return [w if e.kind in GOOD_KINDS else 1.0 for e in edits]

    def move(self, source: str, rng: random.Random) -> tuple[str, str]:
        """1-3 constants moved by a log-normal step, within their ranges."""
        constants = read_constants(source)
        names = rng.sample(sorted(KNOBS), rng.randint(1, 3))
        values = {}
        for name in names:
            low, high = knob_range(self.landscape.base[name])
            old = float(constants[name])
            new = min(high, max(low, old * math.exp(rng.gauss(0, STEP))))
            if KNOBS[name]:  # a power of two within the range, never the same one
                lowest, highest = math.ceil(math.log2(low)), math.floor(math.log2(high))
                power = min(highest, max(lowest, round(math.log2(new))))
                if 2**power == old:
                    step = 1 if new > old else -1
                    power = power + step if lowest <= power + step <= highest else power - step
                new = 2**power
            values[name] = new
        moved = ", ".join(f"{n} {constants[n]} -> {v:.4g}" for n, v in values.items())
        return rewrite_constants(source, values), moved

    def repair(self, source: str) -> tuple[str, str]:
        """A crashed source without its culprit: crashing edits removed, LRs halved until the
        run no longer diverges."""
        broken = {e.number for e in self.landscape.edits if e.kind == "crash"}
        lines = source.splitlines(keepends=True)
        source = "".join(
            line for line in lines if not any(int(n) in broken for n in EDIT_PATTERN.findall(line))
        )
        halved = []
        while self.landscape.crash(source):
            constants = read_constants(source)
            name = "EMBEDDING_LR" if "EMBEDDING_LR" in self.landscape.crash(source) else "MATRIX_LR"
            source = rewrite_constants(source, {name: float(constants[name]) / 2})
            halved.append(name)
        return source, "fix: " + (f"halve {', '.join(halved)}" if halved else "undo the crash")


class LandscapeRunner:
    """The engine's runner seam: true value + fresh noise, or a crash."""

    def __init__(self, landscape: Landscape, sigma: float, seed: int, seed_share: float) -> None:
        self.landscape, self.sigma, self.seed = landscape, sigma, seed
        self.seed_share = seed_share
        self.true: dict[str, float] = {}  # experiment id -> true value of what it ran

    def __call__(
        self,
        train_py: Path,
        config: Config,
        run_dir: Path,
        on_event=None,
        slot: Slot = WHOLE_MACHINE,
    ) -> Outcome:
        source = train_py.read_text(encoding="utf-8")
        run_dir.mkdir(parents=True, exist_ok=True)
        crash = self.landscape.crash(source)
        if crash:
            (run_dir / RUN_LOG).write_text(f"step 12 | loss nan\n{crash}\n", encoding="utf-8")
            return Outcome("crash", crash, device="cpu")
        self.true[run_dir.name] = value = self.landscape.value(source)
        shared = random.Random(f"seed-{self.seed}-{config.run.seed}").gauss(0, self.sigma)
        fresh = random.Random(f"noise-{self.seed}-{run_dir.name}").gauss(0, self.sigma)
        noise = math.sqrt(self.seed_share) * shared + math.sqrt(1 - self.seed_share) * fresh
        return Outcome(
            "keep", "scored on a simulated landscape", val_bpb=BASE_BPB - UNIT * (value + noise),
            device="cpu",
        )  # fmt: skip


# -- one search ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    arm: str
    overrides: dict
    sigma: float
    length: int
    search: int
    prefetch: int
    good_rate: float
    full_source: bool
    seed_share: float = 0.0

    @property
    def key(self) -> str:
        share = f"|share{self.seed_share:g}" if self.seed_share else ""
        return f"{self.arm}|{self.sigma:g}|{self.length}|{self.search}{share}"


_TEMPLATE: Path | None = None  # this worker's research repo of the tiny baseline, copied per search


def skeleton(source: str) -> str:
    """The constants of `source`, and the harness import and hand-over that validation asks
    for: what the landscape scores, at a fraction of the engine's cost of parsing and
    hashing the whole train.py for every proposal."""
    constants = "".join(f"{n} = {format_value(v)}\n" for n, v in read_constants(source).items())
    return (
        f'"""The tiny baseline\'s constants; nothing trains."""\n\n'
        f"from autoresearch import harness\n\n{constants}\nharness.handover(None)\n"
    )


def template(root: Path, full_source: bool) -> Path:
    """This worker's research repo of the tiny baseline in `root` (its train.py a skeleton
    of it unless `full_source`), made once and copied for every search."""
    global _TEMPLATE
    if _TEMPLATE is None:
        repo = init_repo(root / f"template-{os.getpid()}", "tiny")
        if not full_source:
            head = branch_sha(repo, "main")
            source = skeleton(read_train(repo, head))
            set_branch(repo, "main", commit_candidate(repo, head, source, "the skeleton"))
            (repo / TRAIN_FILE).write_text(source, encoding="utf-8")
        _TEMPLATE = repo
    return _TEMPLATE


def search(task: Task, root: Path) -> dict:
    """One search of one arm on landscape `task.search`, in a research repo in `root`;
    what it returned, measured."""
    t0, cpu0 = time.monotonic(), time.process_time()
    repo = root / f"search-{os.getpid()}-{task.search}"
    shutil.copytree(template(root, task.full_source), repo, symlinks=True)
    try:
        head = branch_sha(repo, "main")
        baseline = read_train(repo, head)
        landscape = Landscape(baseline, task.search)
        runner = LandscapeRunner(landscape, task.sigma, task.search, task.seed_share)
        proposer = LandscapeProposer(landscape, task.good_rate)
        overrides = {f"evolve.{k}": v for k, v in task.overrides.items()}
        overrides |= {
            "evolve.max_experiments": task.length, "evolve.prefetch": task.prefetch,
            "run.seed": task.search,
        }  # fmt: skip
        engine = Engine(
            repo, load_config(repo, overrides), TAG, {PROPOSER: (proposer, 1.0)},
            say=lambda line: None, runner=runner,
        )  # fmt: skip
        records = engine.run(base_commit=head)
        if engine.interrupted_by is not None:
            raise KeyboardInterrupt  # a search cut short is no result
        champion = engine.champion()
        assert champion is not None, "the baseline is always a champion"
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    source_of = {r.id: r.fingerprints.get("source") for r in records}
    means, first = pop.means(records), pop.baseline(records)
    measured = (means[source_of[first.id]].value - means[source_of[champion.id]].value) / UNIT
    true, base = runner.true[champion.id], landscape.value(baseline)
    promotions = false = 0
    current = None  # the champion so far
    for r in records:
        if not r.promoted:
            continue
        if current is not None and source_of[r.id] != source_of[current.id]:
            promotions += 1
            false += runner.true[r.id] <= runner.true[current.id]
        current = r
    return {
        "key": task.key, "arm": task.arm, "sigma": task.sigma, "seed_share": task.seed_share,
        "length": task.length, "search": task.search, "gain": true - base,
        "overstatement": (measured - (true - base)) / task.sigma,
        "promotions": promotions, "false_promotions": false,
        "experiments": sum(r.status != "invalid" for r in records), "records": len(records),
        "seconds": time.monotonic() - t0, "cpu": time.process_time() - cpu0,
    }  # fmt: skip


# -- the grid and its tables -----------------------------------------------------------------------


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return m, se


def tables(results: list[dict], arms: list[str]) -> str:
    cells: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in results:
        cell = (r["sigma"], r.get("seed_share", 0.0), r["length"])
        cells.setdefault(cell, {}).setdefault(r["arm"], {})[r["search"]] = r
    rows, pairs = [], []
    for (sigma, share, length), by_arm in sorted(cells.items()):
        for arm in [a for a in arms if a in by_arm]:
            done = list(by_arm[arm].values())
            gain, gain_se = mean_se([r["gain"] for r in done])
            over, over_se = mean_se([r["overstatement"] for r in done])
            promotions = sum(r["promotions"] for r in done)
            false = sum(r["false_promotions"] for r in done)
            rows.append([
                sigma, f"{share:.0%}", length, arm, len(done), f"{gain:.2f} ± {gain_se:.2f}",
                f"{false / promotions:.0%}" if promotions else "-",
                f"{promotions / len(done):.1f}", f"{over:+.2f} ± {over_se:.2f}",
                f"{1000 * sum(r['cpu'] for r in done) / sum(r['experiments'] for r in done):.0f}",
            ])  # fmt: skip
        for a, b in combinations([a for a in arms if a in by_arm], 2):
            both = sorted(set(by_arm[a]) & set(by_arm[b]))
            if len(both) < 2:
                continue
            diff, se = mean_se([by_arm[b][i]["gain"] - by_arm[a][i]["gain"] for i in both])
            pairs.append([sigma, f"{share:.0%}", length, f"{b} - {a}", len(both),
                          f"{diff:+.2f} ± {se:.2f}",
                          f"{diff / se:+.1f}" if se > 0 else "-"])  # fmt: skip
    headers = [
        "σ",
        "of it the seed's",
        "experiments",
        "arm",
        "searches",
        "true gain (units)",
        "false promotions",
        "promotions/search",
        "overstatement (σ)",
        "CPU ms/experiment",
    ]
    paired = ["σ", "of it the seed's", "experiments", "paired", "searches", "gain difference", "z"]
    return (
        tabulate(rows, headers=headers, disable_numparse=True)
        + "\n\n"
        + tabulate(pairs, headers=paired, disable_numparse=True)
    )


def figure(results: list[dict], arms: list[str], path: Path) -> None:
    """The true gain of the returned champion (mean ± 2 standard errors) of every arm, one
    panel per σ (and seed share), experiments along x."""
    from matplotlib.figure import Figure

    from autoresearch.plot import PALETTE

    panels = sorted({(r["sigma"], r.get("seed_share", 0.0)) for r in results})
    all_lengths = sorted({r["length"] for r in results})
    fig = Figure(figsize=(4 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (sigma, share) in zip(axes, panels, strict=True):
        for n, arm in enumerate(arms):
            cells: dict[int, list[float]] = {}
            for r in results:
                if (r["arm"], r["sigma"], r.get("seed_share", 0.0)) == (arm, sigma, share):
                    cells.setdefault(r["length"], []).append(r["gain"])
            lengths = sorted(length for length, gains in cells.items() if len(gains) > 1)
            stats = [mean_se(cells[length]) for length in lengths]
            ax.errorbar(
                [all_lengths.index(length) + 0.1 * (n - 1) for length in lengths],
                [m for m, _ in stats],
                yerr=[2 * se for _, se in stats], label=arm, color=PALETTE[n % len(PALETTE)],
                marker="o", capsize=3,
            )  # fmt: skip
        ax.set_xticks(range(len(all_lengths)), [str(length) for length in all_lengths])
        ax.set_xlim(-0.5, len(all_lengths) - 0.5)
        ax.set_title(f"σ = {sigma:g} units" + (f", {share:.0%} of it the seed's" if share else ""))
        ax.set_xlabel("experiments per search")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("true gain of the champion (units)")
    axes[0].legend()
    fig.savefig(path, dpi=110)


def parse_arm(text: str) -> tuple[str, dict]:
    """`name=key:value,...` -> (name, {key: value}); a value is a Python literal or a word."""
    name, _, settings = text.partition("=")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, sep, raw = item.partition(":")
        if not sep:
            raise SystemExit(f"--arm {text}: {item!r} is not key:value")
        try:
            overrides[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = raw.strip()
    return name.strip(), overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", default="0.25,1,3", help="noise sd, in units")
    parser.add_argument("--lengths", default="50,100,300", help="experiments per search")
    parser.add_argument(
        "--seed-share", type=float, default=0.0,
        help="share of the noise's variance that is the training seed's, common to all sources",
    )  # fmt: skip
    parser.add_argument("--searches", type=int, default=200, help="paired searches per cell")
    parser.add_argument("--first", type=int, default=0, help="the first search's seed")
    parser.add_argument("--arms", default="greedy,today,new", help="of " + ", ".join(ARMS))
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=KEY:VALUE,...",
        help="an extra arm of evolve settings, e.g. pop8=population:8",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--prefetch", type=int, default=0, help="evolve.prefetch of every arm")
    parser.add_argument(
        "--good-rate",
        type=float,
        default=2.0,
        help="how much likelier good edits are proposed than their share",
    )
    parser.add_argument(
        "--full-source",
        action="store_true",
        help="search the whole tiny train.py, not a skeleton of its constants",
    )
    parser.add_argument("--results", type=Path, help="JSON lines, one per search; resumed")
    parser.add_argument("--table", action="store_true", help="only print the tables of --results")
    parser.add_argument("--figure", type=Path, help="also draw the true gains into this PNG")
    args = parser.parse_args()
    arms = {name: ARMS[name] for name in filter(None, args.arms.split(","))}
    arms |= dict(parse_arm(a) for a in args.arm)
    results = []
    if args.results and args.results.exists():
        results = [json.loads(line) for line in args.results.read_text().splitlines() if line]
    if not args.table:
        done = {r["key"] for r in results}
        tasks = [
            Task(arm, overrides, float(sigma), int(length), i, args.prefetch, args.good_rate,
                 args.full_source, args.seed_share)
            for i in range(args.first, args.first + args.searches)  # every cell grows evenly
            for length in args.lengths.split(",")
            for sigma in args.sigmas.split(",")
            for arm, overrides in arms.items()
        ]  # fmt: skip
        tasks = [t for t in tasks if t.key not in done]
        out = open(args.results, "a") if args.results else None  # noqa: SIM115
        t0 = time.monotonic()
        shm = SHM if SHM.is_dir() else None
        with (
            tempfile.TemporaryDirectory(prefix="landscape-", dir=shm) as root,
            ProcessPoolExecutor(args.workers) as pool,
        ):
            futures = [pool.submit(search, t, Path(root)) for t in tasks]
            for n, future in enumerate(as_completed(futures), 1):
                if future.exception():  # the rest would run on before the error is shown
                    pool.shutdown(wait=False, cancel_futures=True)
                results.append(future.result())
                if out:
                    out.write(json.dumps(results[-1]) + "\n")
                    out.flush()
                if n % 20 == 0 or n == len(tasks):
                    print(f"{n}/{len(tasks)} searches, {time.monotonic() - t0:.0f} s", flush=True)
    print(tables(results, list(arms)))
    if args.figure:
        figure(results, list(arms), args.figure)


if __name__ == "__main__":
    main()
