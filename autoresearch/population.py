"""The population of an evolve run, derived from its ledger records.

Nothing here is stored: the champion, the population and lineages are
recomputed from the records, so a resumed run, `leaderboard` and the engine
always agree.

- A **score** is a seed-adjusted mean: every run of the same normalised source (its first
  run and its repeats, each with a seed of its own) counts toward one mean, and everything
  here ranks and compares means. The baseline's calibration repeats count toward the
  baseline's. Every source's n-th run trains with the same seed (run.seed + n), and the
  seed moves val_bpb much as an edit does, for every source alike, so a run is first
  adjusted by its seed's effect: how much the sources run at both that seed and the first
  seed scored higher at it, on average (`seed_effects`). A first run is thereby compared
  with the other sources' runs at the same seed (a paired comparison, as the original loop's
  fixed seed makes it), and a mean over several seeds is not biased by which seeds it has.
- The **champion** is the last promoted record (the research branch points at it); a
  promoted repeat stands for the candidate it repeats.
- The **population** is the champion plus the best `size - 1` other distinct
  candidates with status `keep` (distinct: a different normalised source), by mean.
- The **baseline** is the first promoted record: the committed `train.py` the
  run started from. A baseline that crashed was never promoted; the one trained
  after it, on resume, is the baseline.
- The **noise** σ is the pooled standard deviation of the adjusted runs of one source about
  their mean (the baseline and its calibration repeats, and every repeated candidate): what
  is left when seeds are paired. Until it has MIN_NOISE_FREEDOM degrees of freedom (two
  sources run at a second seed), it is that of the unadjusted runs, which also holds the
  seed's effect (an upper bound). The
  **bar** a mean of n runs must beat a mean of m runs by is
  max(min_improvement, noise_k x σ x sqrt(1/n + 1/m)): the standard error of the
  difference, so repeats lower it.
- The **simplicity rule**: at equal score within noise (means within one standard error
  of their difference), a candidate with fewer lines of code is preferred as a parent and
  may take the place of a population member.

The search's rules are pure functions of the records here too: how parents are
weighted (`parent_weights`), how a result is judged (`judge`), whether a crash
is handed back for a fix (`may_fix`), which population and bar `auto` means
(`strategy`), what a run's last experiments re-measure (`finalist_to_repeat`). The
engine only orchestrates them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from autoresearch.config import AUTO  # evolve.population / noise_k / remeasure: see `strategy`
from autoresearch.ledger import CRASHED_STATUSES, Record

# Proposer names of the runs nobody proposed: the baseline, its calibration repeats, and a
# repeat of a candidate (to confirm it, or in the run's final re-measurement).
BASELINE, CALIBRATE, REPEAT = "baseline", "calibrate", "repeat"
REPEATS = (CALIBRATE, REPEAT)  # a repeat's parent is the record it repeats

AUTO_POPULATION = 4  # what `auto` chooses when noise is large against the gains
# Noise under this many typical gains: one lineage (greedy) does as well or better. On the
# landscape benchmark a population of 4 found as much as one lineage at 1.7 typical gains
# and more at 5; below 2, one lineage at a seed-paired noise found more.
GREEDY_BELOW = 2.0
# A typical gain: this fraction of the baseline's val_bpb (kept edits in 5-minute GPU runs
# gain about 0.1-0.5%). Not the promotions' gains: a first run that won was chosen for its
# luck too, so its gain grows with the noise, and at high noise turned the search greedy.
TYPICAL_GAIN_FRACTION = 0.003
REMEASURE_FRACTION = 0.06  # `auto` remeasure: this share of the run re-measures its best
FINALISTS = 3  # how many of the best candidates the final re-measurement re-runs
FINISH_RUNS = 2 * FINALISTS  # what `--finish` re-runs after the first Ctrl-C
MIN_NOISE_FREEDOM = 2  # fewer degrees of freedom left by the seed effects: unadjusted noise


def tag_records(records: Iterable[Record], tag: str) -> list[Record]:
    return [r for r in records if r.tag == tag]


def source_of(record: Record) -> str:
    """What makes two runs the same candidate: the normalised source's hash (a record of
    `autoresearch run` without one stands alone)."""
    return record.fingerprints.get("source") or f"id:{record.id}"


@dataclass(frozen=True)
class Mean:
    value: float
    runs: int


Runs = dict[str, dict[int, list[float]]]  # source -> seed -> val_bpb of its runs at it


def _runs_by_source(records: Iterable[Record]) -> Runs:
    """The scored runs' val_bpb, grouped by source and seed (in the records' order: the first
    seed is the baseline's)."""
    runs: Runs = {}
    for r in records:
        if r.val_bpb is not None and r.status != "invalid":
            runs.setdefault(source_of(r), {}).setdefault(r.seed, []).append(r.val_bpb)
    return runs


def seed_effects(runs: Runs) -> dict[int, float]:
    """How much higher each seed scores than the first seed (the baseline's first run's):
    the mean over the sources run at both of their mean at it minus their mean at the first.
    The first seed, and a seed no source shares with it, have no effect."""
    if not runs:
        return {}
    first = next(iter(next(iter(runs.values()))))
    differences: dict[int, list[float]] = {}
    for by_seed in runs.values():
        if first not in by_seed:
            continue
        reference = statistics.fmean(by_seed[first])
        for seed, values in by_seed.items():
            if seed != first:
                differences.setdefault(seed, []).append(statistics.fmean(values) - reference)
    return {seed: statistics.fmean(d) for seed, d in differences.items()}


def _adjusted(runs: Runs, effects: dict[int, float]) -> dict[str, list[float]]:
    return {
        source: [v - effects.get(seed, 0.0) for seed, values in by_seed.items() for v in values]
        for source, by_seed in runs.items()
    }


def means(records: Iterable[Record]) -> dict[str, Mean]:
    """The seed-adjusted mean val_bpb of every source over its scored runs."""
    runs = _runs_by_source(records)
    adjusted = _adjusted(runs, seed_effects(runs))
    return {source: Mean(statistics.fmean(v), len(v)) for source, v in adjusted.items()}


def champion(records: Iterable[Record]) -> Record | None:
    """The last promoted record, or the candidate a promoted repeat repeats."""
    records = list(records)
    promoted = [r for r in records if r.promoted]
    if not promoted:
        return None
    last = promoted[-1]
    if last.proposer == REPEAT:
        return next((r for r in records if r.id == last.parent), last)
    return last


def is_candidate(record: Record) -> bool:
    """A scored run that is not a repeat of another."""
    return record.val_bpb is not None and record.proposer not in REPEATS


def baseline(records: Iterable[Record]) -> Record | None:
    """What one tag's deltas are measured against: its first promoted record, else (records
    of `autoresearch run`, never promoted) its first record with a score."""
    scored = [r for r in records if r.val_bpb is not None]
    promoted = [r for r in scored if r.promoted]
    return (promoted or scored or [None])[0]


def noise(records: Iterable[Record]) -> float | None:
    """σ: the pooled standard deviation of the seed-adjusted runs of each source about their
    mean, or of the unadjusted runs while the seed effects leave under MIN_NOISE_FREEDOM
    degrees of freedom; None before any repeat."""
    runs = _runs_by_source(records)
    effects = seed_effects(runs)
    adjusted = _pooled_sd(_adjusted(runs, effects), len(effects))
    return adjusted if adjusted is not None else _pooled_sd(_adjusted(runs, {}), 0)


def _pooled_sd(runs: dict[str, list[float]], estimated: int) -> float | None:
    """The pooled sd of runs about their sources' means, `estimated` more parameters fitted."""
    freedom = sum(len(v) - 1 for v in runs.values()) - estimated
    if freedom < (MIN_NOISE_FREEDOM if estimated else 1):
        return None
    squares = sum(sum((x - statistics.fmean(v)) ** 2 for x in v) for v in runs.values())
    return math.sqrt(squares / freedom)


def bar(sigma: float | None, runs: int, other_runs: int, min_improvement: float,
        noise_k: float) -> float:  # fmt: skip
    """How much a mean of `runs` runs must beat a mean of `other_runs` by: noise_k standard
    errors of their difference, and at least `min_improvement`."""
    se = (sigma or 0.0) * math.sqrt(1 / runs + 1 / other_runs)
    return max(min_improvement, noise_k * se)


def threshold(records: list[Record], min_improvement: float, noise_k: float) -> float:
    """How much a new candidate's first run must beat the champion's mean by to be promoted."""
    best = champion(records)
    runs = means(records)[source_of(best)].runs if best and best.val_bpb is not None else 1
    return bar(noise(records), 1, runs, min_improvement, noise_k)


def worse_than_baseline(record: Record, base: Record | None) -> bool:
    """A candidate (not the baseline or a repeat, which are noise) that scored worse than the
    baseline: with a population, `keep` means "in the population", not "better"."""
    return (
        record.proposer not in (BASELINE, CALIBRATE) and base is not None
        and record.val_bpb is not None and base.val_bpb is not None
        and record.val_bpb > base.val_bpb
    )  # fmt: skip


def trained(records: Iterable[Record]) -> int:
    """Experiments that count toward `max_experiments`, which bounds compute: everything but
    `invalid` (rejected before training) and a baseline that failed (the user's train.py or
    machine, fixed before the search starts). The calibration repeats count."""
    return sum(
        r.status != "invalid" and not (r.proposer == BASELINE and r.status != "keep")
        for r in records
    )


def has_spend(usage: dict[str, float]) -> bool:
    """Whether a recorded usage spent anything worth keeping: tokens or money."""
    return any(usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "cost_usd"))


def spent_usd(records: Iterable[Record]) -> float:
    return sum(float(r.usage.get("cost_usd", 0.0) or 0.0) for r in records)


@dataclass(frozen=True)
class Limit:
    """A stop limit that was reached: why, in words, and the option that raises it."""

    reason: str  # "reached 6 experiments"
    raise_with: str  # "--max-experiments 12": a concrete next value


def limit_reached(
    records: list[Record],
    elapsed_seconds: float,
    max_experiments: int = 0,
    hours: float = 0.0,
    max_cost_usd: float = 0.0,
    in_flight: int = 0,
) -> Limit | None:
    """Which stop limit `records` (one tag's) have reached, counting the `in_flight`
    experiments as done (one more may start only if it stays within); None while none."""
    if max_experiments and trained(records) + in_flight >= max_experiments:
        return Limit(
            f"reached {max_experiments} experiment{'s' * (max_experiments != 1)}",
            f"--max-experiments {2 * max_experiments}",
        )
    if hours and elapsed_seconds >= hours * 3600:
        return Limit(f"reached {hours:g} hours", f"--hours {2 * hours:g}")
    spent = spent_usd(records)
    if max_cost_usd and spent >= max_cost_usd:
        return Limit(
            f"spent ${spent:.2f} of ${max_cost_usd:.2f}", f"--max-cost-usd {2 * max_cost_usd:g}"
        )
    return None


def population(records: list[Record], size: int) -> list[Record]:
    """Best mean first; the champion is always a member (elitism). A candidate within noise
    of the worst member with fewer lines of code takes its place (the simplicity rule)."""
    table, sigma = means(records), noise(records)
    best = champion(records)
    members = [best] if best else []
    sources = {source_of(best)} if best else set()
    kept = sorted(
        (r for r in records if r.status == "keep" and is_candidate(r)),
        key=lambda r: table[source_of(r)].value,
    )
    others = []
    for record in kept:
        if source_of(record) not in sources:
            others.append(record)
            sources.add(source_of(record))
    members += others[: max(size - len(members), 0)]
    for record in others[len(members) - (1 if best else 0) :]:
        worst = max((m for m in members if m is not best), key=_scorer(table), default=None)
        if worst is None or not _simpler_tie(record, worst, table, sigma):
            continue
        members[members.index(worst)] = record
    return _ranked(members, table, sigma)


def _ranked(members: list[Record], table: dict[str, Mean], sigma: float | None) -> list[Record]:
    """Best mean first, except that of two neighbours equal within noise the one with fewer
    lines of code goes first."""
    ranked = sorted(members, key=_scorer(table))
    for i in range(len(ranked) - 1):
        if _simpler_tie(ranked[i + 1], ranked[i], table, sigma):
            ranked[i], ranked[i + 1] = ranked[i + 1], ranked[i]
    return ranked


def _simpler_tie(a: Record, b: Record, table: dict[str, Mean], sigma: float | None) -> bool:
    """Whether `a` has fewer lines of code than `b` at a score equal within one standard
    error of their difference (unknown line counts, 0, never tie)."""
    if not (a.code_lines and b.code_lines and a.code_lines < b.code_lines and sigma):
        return False
    ma, mb = table[source_of(a)], table[source_of(b)]
    return abs(ma.value - mb.value) <= sigma * math.sqrt(1 / ma.runs + 1 / mb.runs)


def _scorer(table: dict[str, Mean]) -> Callable[[Record], float]:
    return lambda r: table[source_of(r)].value


def parent_weights(
    records: list[Record], members: list[Record], in_flight: Iterable[str] = ()
) -> list[float]:
    """Selection weight of each member (best first): rank r of n weighs (n - r) / (1 + its
    children so far), children being recorded or in flight (`in_flight`: their parents' ids),
    so good parents are preferred and one with many children gives way to others."""
    children = Counter(r.parent for r in records if r.proposer not in REPEATS)
    children += Counter(in_flight)
    n = len(members)
    return [(n - rank) / (1 + children[m.id]) for rank, m in enumerate(members)]


@dataclass(frozen=True)
class Rules:
    """The judging settings in force (`auto` already resolved by `strategy`)."""

    population: int
    noise_k: float
    min_improvement: float = 0.0
    confirm: int = 0  # a promotion needs 1 + confirm runs that all keep the mean ahead


def judge(records: list[Record], record: Record, rules: Rules) -> tuple[str, bool]:
    """(status, promoted) of a scored `record` (its proposer, source and val_bpb set), against
    one tag's `records`: promoted when its mean beats the champion's by more than the bar and
    it has been run 1 + confirm times; kept when it beats the champion (awaiting confirmation)
    or, with a population, enters it. A repeat is kept only when it promotes."""
    best = champion(records)
    if best is None:  # the baseline becomes the first champion
        return "keep", record.proposer == BASELINE
    if record.proposer == CALIBRATE or source_of(record) == source_of(best):
        return "discard", False  # a repeat of the champion only refines its mean
    after = [*records, record]
    beats = _beats_champion(after, record, best, rules)
    promoted = beats and means(after)[source_of(record)].runs >= 1 + rules.confirm
    if record.proposer == REPEAT:
        return ("keep" if promoted else "discard"), promoted
    if rules.population == 1:
        return ("keep" if beats else "discard"), promoted
    kept = dataclasses.replace(record, status="keep")  # as a member would be
    enters = any(m is kept for m in population([*records, kept], rules.population))
    return ("keep" if enters or beats else "discard"), promoted


def needs_confirming(records: list[Record], record: Record, rules: Rules) -> bool:
    """Whether a just-recorded candidate (or repeat) leads the champion but has fewer than
    1 + confirm runs: then it is repeated before it can be promoted."""
    best = champion(records)
    if not rules.confirm or best is None or record.val_bpb is None or record.promoted:
        return False
    if record.proposer in (BASELINE, CALIBRATE) or source_of(record) == source_of(best):
        return False
    return _beats_champion(records, record, best, rules)


def _beats_champion(records: list[Record], record: Record, best: Record, rules: Rules) -> bool:
    table = means(records)
    mine, theirs = table[source_of(record)], table[source_of(best)]
    margin = bar(noise(records), mine.runs, theirs.runs, rules.min_improvement, rules.noise_k)
    return mine.value < theirs.value - margin


@dataclass(frozen=True)
class Strategy:
    population: int
    noise_k: float
    why: str  # one line, said when the choice is made or changes


def strategy(records: list[Record], population_setting: int | str,
             noise_k_setting: float | str) -> Strategy:  # fmt: skip
    """What `auto` population and noise_k mean now: with noise under GREEDY_BELOW typical
    gains (TYPICAL_GAIN_FRACTION of the baseline), one lineage and no bar; otherwise a
    population of AUTO_POPULATION and no bar (the final re-measurement, not a bar, guards
    the result). An explicit setting always wins."""
    sigma, base = noise(records), baseline(records)
    gain = TYPICAL_GAIN_FRACTION * (base.val_bpb if base and base.val_bpb else 0.0)
    if sigma is None or not gain:
        size, why = AUTO_POPULATION, "noise not measured yet"
    else:
        ratio = sigma / gain
        size = 1 if ratio < GREEDY_BELOW else AUTO_POPULATION
        how = "under" if size == 1 else "at least"
        why = (
            f"noise {sigma:.4f} is {ratio:.2f} typical gains ({gain:.4f},"
            f" {TYPICAL_GAIN_FRACTION:.1%} of the baseline), {how} {GREEDY_BELOW:g}"
        )
    population_size = size if population_setting == AUTO else int(population_setting)
    noise_k = 0.0 if noise_k_setting == AUTO else float(noise_k_setting)
    chosen = [
        f"population {population_size}" + (" (auto)" if population_setting == AUTO else ""),
        f"noise_k {noise_k:g}" + (" (auto)" if noise_k_setting == AUTO else ""),
    ]
    return Strategy(population_size, noise_k, f"{', '.join(chosen)}: {why}")


def remeasure_runs(max_experiments: int, fraction: float) -> int:
    """How many of `max_experiments` are kept to re-measure the best candidates at the end:
    `fraction` of them, none when that is under two."""
    runs = round(max_experiments * fraction)
    return runs if runs >= 2 else 0


def finalist_to_repeat(records: list[Record], in_flight: Iterable[str] = ()) -> Record | None:
    """The next run of the final re-measurement: of the FINALISTS best candidates by mean (the
    champion among them), the one with the fewest runs, recorded or in flight (`in_flight`:
    their sources), the champion first and then the better mean among equals."""
    table = means(records)
    best = champion(records)
    if best is None:
        return None
    seen, finalists = {source_of(best)}, [best]
    for r in sorted((r for r in records if is_candidate(r)), key=_scorer(table)):
        if len(finalists) >= FINALISTS:
            break
        if source_of(r) not in seen:
            seen.add(source_of(r))
            finalists.append(r)
    busy = Counter(in_flight)
    return min(
        finalists,
        key=lambda r: (table[source_of(r)].runs + busy[source_of(r)], r is not best,
                       table[source_of(r)].value),
    )  # fmt: skip


def may_fix(records: list[Record], crashed: Record, fix_attempts: int) -> bool:
    """Whether a crashed candidate is handed back (again): at most `fix_attempts` crashes in
    a row in its lineage, itself included."""
    failures = 0
    for r in lineage(records, crashed):
        if r.status not in CRASHED_STATUSES:
            break
        failures += 1
    return failures <= fix_attempts


def parent_finder(records: list[Record]) -> Callable[[Record], Record | None]:
    """`parent(record)`: the parent's record, looked up in its own tag first."""
    by_tag_id = {(r.tag, r.id): r for r in records}
    by_id = {r.id: r for r in records}

    def parent(record: Record) -> Record | None:
        if not record.parent:
            return None
        return by_tag_id.get((record.tag, record.parent)) or by_id.get(record.parent)

    return parent


def lineage(records: list[Record], record: Record) -> list[Record]:
    """`record` and its ancestors, back to the baseline (first element is `record`)."""
    parent = parent_finder(records)
    chain = [record]
    seen = {id(record)}
    while (up := parent(chain[-1])) is not None and id(up) not in seen:  # a cycle would hang
        chain.append(up)
        seen.add(id(up))
    return chain
