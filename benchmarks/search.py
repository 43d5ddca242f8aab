"""Does the search work? evolve against greedy against random search, with the noise measured.

    python benchmarks/search.py [--seeds 2] [--experiments 16] [--tokens 200000] [--repeats 5]
    python benchmarks/search.py --report      # tables and figure again, from the saved results

On the tiny baseline on CPU, with the offline proposers, three arms side by side,
`--seeds` searches each (the seed draws the search's random numbers; training
always uses the same seed):

  evolve  `evolve --population 4`, optuna + random
  greedy  `evolve --population 1`, optuna + random: the original loop
  random  random search: the random proposer, every candidate a change of the
          baseline (`evolve.selection = "none"`): nothing is selected on results
  new     today's defaults (`auto` population and bar, 2 calibration repeats, the
          final re-measurement), optuna + random; `--arms greedy,new` runs two only

Each search trains `--experiments` candidates after its baseline under a token
budget (`run.budget_tokens`), so val_bpb does not depend on the machine's load;
experiments per hour do. The proposers change only the constants that leave the
cost of a token alone (SEARCHED), and no crash is handed back for a fix (the
offline proposers do not read logs), so every arm spends its experiments alike.

Noise, before the arms: the baseline `--repeats` times with a wall-clock budget
and with the token budget, alternately (under the same load), and under the token
budget with `--repeats - 1` other training seeds. After the arms, each promoted
candidate is trained once more with another seed (RERUN_SEED): a promotion holds
up when it still beats the champion it replaced.

Results go to `--out`: one ledger per arm, noise.jsonl, reruns.jsonl, meta.json,
summary.md (the tables) and search.png (best val_bpb so far against experiment
number, every search of every arm).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

# Set before torch starts anywhere (the runner passes these on): on a shared 2-core machine,
# training with 2 threads beside other work ran 3-5x slower than with 1.
THREADS = "1"
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = THREADS

import git  # noqa: E402 - after the thread settings
from common import tiny_repo  # noqa: E402
from tabulate import tabulate  # noqa: E402

from autoresearch.config import Config, load_config  # noqa: E402
from autoresearch.engine import Engine, make_proposers  # noqa: E402
from autoresearch.ledger import CRASHED_STATUSES, Ledger, Record  # noqa: E402
from autoresearch.plot import PALETTE  # noqa: E402
from autoresearch.runner import run_experiment  # noqa: E402
from autoresearch.validation import source_hash  # noqa: E402
from autoresearch.workspace import run_dir, state_dir  # noqa: E402

OUT = Path(__file__).parent / "results" / "search"
SEEDS, EXPERIMENTS, TOKENS, REPEATS = 2, 16, 200_000, 5  # the defaults: what was run
BUDGET_CAP_SECONDS = 300.0  # under a token budget only the cap: a runaway candidate hits it
TRAINING_SEED = 42  # every search trains with this seed
RERUN_SEED = 1234  # the training seed of the re-runs of promoted candidates
# Constants that leave the cost of a token alone. Sizes (DEPTH, MODEL_DIM, N_HEAD,
# MLP_RATIO) would make a bigger model free under a token budget and experiments slower;
# N_HEAD must also divide MODEL_DIM; COMPILE, NUM_THREADS and LOG_EVERY_SECONDS change
# only the speed. Zero-valued constants (WEIGHT_DECAY, WARMUP_RATIO, FINAL_LR_FRAC) have
# no scale, so neither proposer can move them.
SEARCHED = (
    "DEVICE_BATCH_SIZE", "EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR",
    "ADAM_BETA1", "ADAM_BETA2", "MUON_MOMENTUM", "MUON_MOMENTUM_START",
    "MUON_MOMENTUM_WARMUP_STEPS", "NS_STEPS", "WARMDOWN_RATIO", "SOFTCAP", "ROPE_BASE",
)  # fmt: skip
NOISE_FILE, RERUN_FILE, META_FILE = "noise.jsonl", "reruns.jsonl", "meta.json"
SUMMARY_FILE, FIGURE_FILE = "summary.md", "search.png"


@dataclass(frozen=True)
class Arm:
    population: int | str
    selection: str
    proposers: tuple[str, ...]
    color: str
    calibrate: int = 0  # its own noise repeats, within its experiments
    noise_k: float | str = 2.0  # the bar of the first three arms' runs


ARMS = {
    "evolve": Arm(4, "rank", ("optuna", "random"), PALETTE[0]),
    "greedy": Arm(1, "rank", ("optuna", "random"), PALETTE[1]),
    "random": Arm(1, "none", ("random",), PALETTE[2]),
    "new": Arm("auto", "rank", ("optuna", "random"), PALETTE[3], calibrate=2, noise_k="auto"),
}
DEFAULT_ARMS = "evolve,greedy,random"


def ledger_file(arm: str) -> str:
    return f"ledger-{arm}.jsonl"


def tag(seed: int) -> str:
    return f"s{seed}"


# -- running -----------------------------------------------------------------------------------


def say(label: str, line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {label}: {line}", flush=True)


def arm_config(repo: Path, arm: Arm, args: argparse.Namespace) -> Config:
    searched = {"include": list(SEARCHED)}
    return load_config(repo, {
        "run.budget_seconds": BUDGET_CAP_SECONDS, "run.budget_tokens": args.tokens,
        "run.seed": TRAINING_SEED,
        "evolve.population": arm.population, "evolve.selection": arm.selection,
        "evolve.proposers": list(arm.proposers), "evolve.calibrate": arm.calibrate,
        "evolve.noise_k": arm.noise_k,
        "evolve.fix_attempts": 0, "evolve.max_experiments": args.experiments + 1 + arm.calibrate,
        "proposers.optuna": searched, "proposers.random": searched,
    })  # fmt: skip


def search(name: str, repo: Path, seed: int, args: argparse.Namespace) -> None:
    """One search of one arm: a baseline and `args.experiments` candidates, tagged s<seed>."""
    config = arm_config(repo, ARMS[name], args)
    proposers = make_proposers(config, config.evolve.proposers)
    label = f"{name} {tag(seed)}"
    engine = Engine(repo, config, tag(seed), proposers, say=lambda line: say(label, line))
    engine.run(git.Repo(repo).head.commit.hexsha)


def train_once(source: str, config: Config, repo: Path, name: str, **fields: object) -> Record:
    """Train and score `source` outside any search, in a run folder of `repo` (the sandbox
    lets a candidate write there only); the record of it."""
    folder = run_dir(state_dir(repo), name)
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(source, encoding="utf-8")
    outcome = run_experiment(folder / "train.py", config, folder)
    fingerprints = outcome.fingerprints | {"source": source_hash(source)}
    return outcome.to_record(
        id=name, status=outcome.status, seed=config.run.seed,
        fingerprints=fingerprints, **fields,
    )  # fmt: skip


def measure_noise(repo: Path, args: argparse.Namespace, out: Path) -> None:
    """The baseline, repeated: wall-clock and token budgets alternately, then other seeds."""
    ledger, source = Ledger(out / NOISE_FILE), (repo / "train.py").read_text()
    token_budget = {"run.budget_seconds": BUDGET_CAP_SECONDS, "run.budget_tokens": args.tokens}
    wall_budget: dict[str, object] = {}
    plan = [("tokens", TRAINING_SEED), ("wall", TRAINING_SEED)] * args.repeats
    plan += [("seeds", seed) for seed in range(1, args.repeats)]
    for number, (kind, seed) in enumerate(plan, 1):
        budget = wall_budget if kind == "wall" else token_budget
        config = load_config(repo, budget | {"run.seed": seed})
        record = train_once(source, config, repo, f"noise{number:03d}", proposer=kind, tag="noise")
        ledger.append(record)
        say("noise", f"{kind} seed {seed}: {record.status} val_bpb {record.val_bpb}"
                     f" in {record.training_seconds:.1f} s")  # fmt: skip
        if not wall_budget:  # as long as the token budget took, on this machine, now
            wall_budget = {"run.budget_seconds": round(record.training_seconds, 1)}


def rerun_promotions(repos: dict[str, Path], args: argparse.Namespace, out: Path) -> None:
    """Each promoted candidate (and the baseline), once more with RERUN_SEED."""
    ledger = Ledger(out / RERUN_FILE)
    done: set[str] = set()
    for name, repo in repos.items():
        config = load_config(repo, {
            "run.budget_seconds": BUDGET_CAP_SECONDS, "run.budget_tokens": args.tokens,
            "run.seed": RERUN_SEED,
        })  # fmt: skip
        for record in Ledger(repo / ".autoresearch" / "ledger.jsonl").records():
            key = record.fingerprints.get("source", "")
            if not record.promoted or key in done:
                continue
            done.add(key)
            source = git.Repo(repo).commit(record.commit).tree["train.py"].data_stream.read()
            rerun = train_once(
                source.decode(), config, repo, f"rerun{len(done):03d}", proposer="rerun",
                tag=record.tag, parent=record.id, description=f"{name} {record.tag} {record.id}",
            )  # fmt: skip
            ledger.append(rerun)
            say("rerun", f"{name} {record.tag} {record.id}: {record.val_bpb:.4f} ->"
                         f" {rerun.val_bpb} with seed {RERUN_SEED}")  # fmt: skip


def run(args: argparse.Namespace, out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} holds results: move them away, or use --report")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    meta = {
        "date": datetime.date.today().isoformat(), "machine": machine(),
        "load_average_start": os.getloadavg(), "seeds": args.seeds,
        "experiments": args.experiments, "tokens": args.tokens, "repeats": args.repeats,
        "threads": THREADS, "searched": SEARCHED, "training_seed": TRAINING_SEED,
        "rerun_seed": RERUN_SEED,
    }  # fmt: skip
    repos = {name: tiny_repo(f"bench-search-{name}-") for name in args.arms.split(",")}
    measure_noise(next(iter(repos.values())), args, out)
    for seed in range(1, args.seeds + 1):  # arms interleaved: each sees the same kind of load
        for name, repo in repos.items():
            search(name, repo, seed, args)
    for name, repo in repos.items():
        shutil.copy(repo / ".autoresearch" / "ledger.jsonl", out / ledger_file(name))
    rerun_promotions(repos, args, out)
    meta |= {"load_average_end": os.getloadavg(), "hours": (time.time() - started) / 3600}
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def machine() -> str:
    import torch

    return (
        f"{os.cpu_count()}-core {platform.machine()}, {platform.system()}, torch"
        f" {torch.__version__}, Python {platform.python_version()}"
    )


# -- reporting ---------------------------------------------------------------------------------


@dataclass
class Search:
    """One search of one arm, read back from its ledger."""

    arm: str
    tag: str
    records: list[Record]

    @property
    def baseline(self) -> Record:
        return self.records[0]

    @property
    def trained(self) -> list[Record]:
        """The candidates that were trained (invalid proposals never reach the device)."""
        return [r for r in self.records[1:] if r.status != "invalid"]

    def best_so_far(self) -> list[float]:
        """Best val_bpb after the baseline and after each trained candidate."""
        best, curve = self.baseline.val_bpb, [self.baseline.val_bpb]
        for r in self.trained:
            best = min(best, r.val_bpb) if r.val_bpb is not None else best
            curve.append(best)
        return curve

    def experiments_per_hour(self) -> float:
        """Trained candidates per hour of the search, baseline excluded (ledger timestamps)."""
        seconds = self.records[-1].created - self.baseline.created
        return 3600 * len(self.trained) / seconds if seconds > 0 else 0.0

    def chain(self) -> list[Record]:
        """The baseline and each promoted candidate, in order: the champions."""
        return [r for r in self.records if r.promoted]


def load_searches(out: Path) -> list[Search]:
    searches = []
    for name in ARMS:
        if not (out / ledger_file(name)).exists():
            continue  # an arm not run
        records = Ledger(out / ledger_file(name)).records()
        for t in dict.fromkeys(r.tag for r in records):
            searches.append(Search(name, t, [r for r in records if r.tag == t]))
    return searches


def rerun_scores(out: Path) -> dict[str, float | None]:
    """Source fingerprint -> val_bpb of its re-run with RERUN_SEED."""
    return {r.fingerprints["source"]: r.val_bpb for r in Ledger(out / RERUN_FILE).records()}


def promotion_gains(s: Search, reruns: dict[str, float | None]) -> list[tuple[float, float]]:
    """For each promotion: how much it beat the champion it replaced, in the search and when
    both were re-run with RERUN_SEED (positive: better; a failed re-run counts as -inf)."""
    chain = s.chain()
    again = [reruns.get(r.fingerprints.get("source", "")) for r in chain]
    gains = []
    for i in range(1, len(chain)):
        old, new = again[i - 1], again[i]
        fresh = old - new if old is not None and new is not None else -math.inf
        gains.append((chain[i - 1].val_bpb - chain[i].val_bpb, fresh))
    return gains


def held_up(s: Search, reruns: dict[str, float | None]) -> tuple[int, int]:
    """(promotions that still beat the champion they replaced when re-run, promotions)."""
    gains = promotion_gains(s, reruns)
    return sum(fresh > 0 for _, fresh in gains), len(gains)


def search_rows(searches: list[Search], reruns: dict[str, float | None]) -> list[list]:
    rows = []
    for s in searches:
        trained = s.trained
        best = s.best_so_far()[-1]
        held, promotions = held_up(s, reruns)
        base_rerun = reruns.get(s.baseline.fingerprints.get("source", ""))
        final_rerun = reruns.get(s.chain()[-1].fingerprints.get("source", ""))
        fresh = final_rerun - base_rerun if None not in (final_rerun, base_rerun) else None
        rows.append([
            s.arm, s.tag, len(trained), best, best - s.baseline.val_bpb,
            sum(r.status == "keep" for r in trained) / len(trained),
            sum(r.status in CRASHED_STATUSES for r in trained) / len(trained),
            len(s.records) - 1 - len(trained), f"{held}/{promotions}", fresh,
            s.experiments_per_hour(),
        ])  # fmt: skip
    return rows


SEARCH_HEADERS = [
    "arm", "search", "experiments", "best val_bpb", "vs baseline", "keep rate", "crash rate",
    "invalid", "promotions held up", f"champion vs baseline, seed {RERUN_SEED}", "experiments/h",
]  # fmt: skip


def arm_rows(rows: list[list]) -> list[list]:
    """The mean of each arm's searches (columns 2-6, 9, 10 of `search_rows`)."""
    out = []
    for name in ARMS:
        mine = [r for r in rows if r[0] == name]
        if not mine:
            continue

        def mean(i: int, rows: list[list] = mine) -> float | None:
            values = [r[i] for r in rows if r[i] is not None]
            return statistics.mean(values) if values else None

        held = [tuple(map(int, r[8].split("/"))) for r in mine]
        held_total = f"{sum(h for h, _ in held)}/{sum(n for _, n in held)}"
        out.append([
            name, f"{len(mine)} searches", sum(r[2] for r in mine), mean(3), mean(4), mean(5),
            mean(6), sum(r[7] for r in mine), held_total, mean(9), mean(10),
        ])  # fmt: skip
    return out


def noise_rows(out: Path) -> list[list]:
    records = Ledger(out / NOISE_FILE).records()
    kind = {k: [r for r in records if r.proposer == k] for k in ("wall", "tokens", "seeds")}
    groups = {
        f"wall-clock budget, seed {TRAINING_SEED}": kind["wall"],
        f"token budget, seed {TRAINING_SEED}": kind["tokens"],
        "token budget, different seeds": kind["tokens"][:1] + kind["seeds"],
    }
    rows = []
    for name, group in groups.items():
        scores = [r.val_bpb for r in group if r.val_bpb is not None]
        seconds = [r.training_seconds for r in group]
        tokens = [r.tokens for r in group]
        rows.append([
            name, len(group), ", ".join(f"{v:.4f}" for v in scores), statistics.mean(scores),
            statistics.stdev(scores) if len(scores) > 1 else 0.0,
            f"{min(seconds):.1f}-{max(seconds):.1f}", f"{min(tokens):,}-{max(tokens):,}",
        ])  # fmt: skip
    return rows


NOISE_HEADERS = ["baseline", "runs", "val_bpb", "mean", "sd", "training s", "tokens"]


def figure(
    searches: list[Search],
    reruns: dict[str, float | None],
    noise: list[list],
    out: Path,
    tokens: int,
) -> None:
    """Left: best so far against experiment number, every search. Right: each promotion's
    gain in its search against its gain when re-run with another seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 6), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.7, 1]})
    draw_progress(left, searches, noise)
    draw_promotions(right, searches, reruns)
    fig.suptitle(
        f"Tiny baseline on CPU, {tokens:,} training tokens per experiment, offline proposers",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(out / FIGURE_FILE)


def draw_progress(ax, searches: list[Search], noise: list[list]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    baseline = searches[0].baseline.val_bpb
    seed_sd = noise[2][4]
    ax.axhspan(baseline - seed_sd, baseline + seed_sd, color="0.92", zorder=0)
    ax.axhline(baseline, color="0.5", linestyle=":", linewidth=1)
    styles = ("-", "--", "-.", ":")
    lowest = baseline
    for name, arm in ARMS.items():
        for number, s in enumerate(x for x in searches if x.arm == name):
            curve = s.best_so_far()
            lowest = min(lowest, curve[-1])
            ax.plot(range(len(curve)), curve, drawstyle="steps-post", color=arm.color,
                    linestyle=styles[number % len(styles)], linewidth=1.8, alpha=0.85)  # fmt: skip
            ax.plot(len(curve) - 1, curve[-1], "o", color=arm.color, markersize=5)
    margin = max(0.15 * (baseline - lowest), 0.005)
    ax.set_ylim(lowest - margin, baseline + 2 * margin)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=a.color, linewidth=2) for a in ARMS.values()]
    labels = [f"{name} ({', '.join(a.proposers)}, population {a.population}"
              f"{', no selection' if a.selection == 'none' else ''})"
              for name, a in ARMS.items()]  # fmt: skip
    seeds = max(sum(x.arm == name for x in searches) for name in ARMS)
    for number in range(min(seeds, len(styles))):
        handles.append(Line2D([], [], color="0.2", linestyle=styles[number], linewidth=1.5))
        labels.append(f"search {tag(number + 1)}")
    handles.append(Line2D([], [], color="0.85", linewidth=8))
    labels.append(f"baseline ± 1 sd over training seeds ({seed_sd:.3f})")
    ax.legend(handles, labels, loc="upper right", frameon=False, fontsize=9)
    ax.set_xlabel("experiment (0 = the baseline)")
    ax.set_ylabel("best val_bpb so far (lower is better)")
    ax.set_title("Best so far: each line is one search", fontsize=10)
    ax.grid(alpha=0.3)


def draw_promotions(ax, searches: list[Search], reruns: dict[str, float | None]) -> None:
    points = []
    for s in searches:
        for found, fresh in promotion_gains(s, reruns):
            ax.plot(found, fresh, "o", color=ARMS[s.arm].color, alpha=0.8)
            points.append((found, fresh))
    high = max([0.05] + [max(abs(a), abs(b)) for a, b in points if math.isfinite(b)]) * 1.1
    ax.plot([0, high], [0, high], color="0.5", linestyle=":", linewidth=1)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xlim(0, high)
    ax.set_ylim(-high / 2, high)
    ax.set_xlabel(f"gain over the replaced champion in the search (training seed {TRAINING_SEED})")
    ax.set_ylabel(f"gain when both are re-run (training seed {RERUN_SEED})")
    ax.set_title("Promotions: below 0 did not hold up; dotted: as found", fontsize=10)
    ax.grid(alpha=0.3)


def report(out: Path) -> None:
    meta = json.loads((out / META_FILE).read_text())
    searches = load_searches(out)
    reruns = rerun_scores(out)
    rows = search_rows(searches, reruns)
    noise = noise_rows(out)
    figure(searches, reruns, noise, out, meta["tokens"])
    fmt = {"tablefmt": "github", "floatfmt": ".4f"}
    text = "\n\n".join([
        f"{meta['date']}, {meta['machine']}; {meta['hours']:.2f} h; load average"
        f" {meta['load_average_start'][1]:.1f} at the start, {meta['load_average_end'][1]:.1f}"
        f" at the end (5 min)",
        tabulate(arm_rows(rows), SEARCH_HEADERS, **fmt),
        tabulate(rows, SEARCH_HEADERS, **fmt),
        tabulate(noise, NOISE_HEADERS, **fmt),
    ])  # fmt: skip
    (out / SUMMARY_FILE).write_text(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS, help="searches per arm")
    parser.add_argument("--experiments", type=int, default=EXPERIMENTS, help="per search")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="training tokens each")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="baseline runs per noise")
    parser.add_argument("--out", type=Path, default=OUT, help="where the results go")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"of {', '.join(ARMS)}")
    parser.add_argument("--report", action="store_true", help="only report the saved results")
    args = parser.parse_args()
    if not args.report:
        run(args, args.out)
    report(args.out)


if __name__ == "__main__":
    main()
