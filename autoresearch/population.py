"""The population of an evolve run, derived from its ledger records.

Nothing here is stored: the champion, the population and lineages are
recomputed from the records, so a resumed run, `leaderboard` and the engine
always agree.

- The **champion** is the last promoted record (the research branch points at it).
- The **population** is the champion plus the best `size - 1` other distinct
  candidates with status `keep` (distinct: a different normalised source).
- The **baseline** is the first promoted record: the committed `train.py` the
  run started from. A baseline that crashed was never promoted; the one trained
  after it, on resume, is the baseline.
- The **noise** is the standard deviation of val_bpb over the baseline and its
  calibration repeats, and the **threshold** a promotion must beat is
  max(min_improvement, noise_k x noise).

The search's rules are pure functions of the records here too: how parents are
weighted (`parent_weights`), how a result is judged (`judge`), whether a crash
is handed back for a fix (`may_fix`). The engine only orchestrates them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from autoresearch.ledger import CRASHED_STATUSES, Record

BASELINE, CALIBRATE = "baseline", "calibrate"  # proposer names of the non-proposed runs


def tag_records(records: Iterable[Record], tag: str) -> list[Record]:
    return [r for r in records if r.tag == tag]


def champion(records: Iterable[Record]) -> Record | None:
    promoted = [r for r in records if r.promoted]
    return promoted[-1] if promoted else None


def baseline(records: Iterable[Record]) -> Record | None:
    """What one tag's deltas are measured against: its first promoted record, else (records
    of `autoresearch run`, never promoted) its first record with a score."""
    scored = [r for r in records if r.val_bpb is not None]
    promoted = [r for r in scored if r.promoted]
    return (promoted or scored or [None])[0]


def noise(records: Iterable[Record]) -> float | None:
    """Standard deviation of val_bpb over the baseline and its calibration repeats."""
    samples = [
        r.val_bpb for r in records
        if r.proposer in (BASELINE, CALIBRATE) and r.val_bpb is not None
    ]  # fmt: skip
    return statistics.stdev(samples) if len(samples) >= 2 else None


def threshold(records: Iterable[Record], min_improvement: float, noise_k: float) -> float:
    """How much a candidate must beat the champion by to be promoted."""
    return max(min_improvement, noise_k * (noise(records) or 0.0))


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
    """Best first; the champion is always a member (elitism)."""
    best = champion(records)
    members = [best] if best else []
    sources = {best.fingerprints.get("source")} if best else set()
    kept = sorted((r for r in records if r.status == "keep" and r.val_bpb is not None), key=_score)
    for record in kept:
        if len(members) >= size:
            break
        source = record.fingerprints.get("source")
        if record is not best and source not in sources:
            members.append(record)
            sources.add(source)
    return sorted(members, key=_score)


def parent_weights(
    records: list[Record], members: list[Record], in_flight: Iterable[str] = ()
) -> list[float]:
    """Selection weight of each member (best first): rank r of n weighs (n - r) / (1 + its
    children so far), children being recorded or in flight (`in_flight`: their parents' ids),
    so good parents are preferred and one with many children gives way to others."""
    children = Counter(r.parent for r in records) + Counter(in_flight)
    n = len(members)
    return [(n - rank) / (1 + children[m.id]) for rank, m in enumerate(members)]


def judge(
    records: list[Record],
    val_bpb: float,
    spec: str,
    population_size: int,
    threshold: float,
) -> tuple[str, bool]:
    """(status, promoted) of a candidate of proposer `spec` that scored `val_bpb`, against
    one tag's `records`: promoted when it beats the champion by more than `threshold`;
    kept when promoted or (population > 1) when it enters the population."""
    best = champion(records)
    if best is None:  # the baseline becomes the first champion
        return "keep", spec == BASELINE
    if spec == CALIBRATE:
        return "discard", False
    promoted = val_bpb < best.val_bpb - threshold
    if population_size == 1:
        return ("keep" if promoted else "discard"), promoted
    members = population(records, population_size)
    enters = len(members) < population_size or val_bpb < members[-1].val_bpb
    return ("keep" if enters or promoted else "discard"), promoted


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


def _score(record: Record) -> float:
    return record.val_bpb if record.val_bpb is not None else float("inf")
