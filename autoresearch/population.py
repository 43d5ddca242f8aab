"""The population of an evolve run, derived from its ledger records.

Nothing here is stored: the champion, the population and lineages are
recomputed from the records, so a resumed run, `leaderboard` and the engine
always agree.

- The **champion** is the last promoted record (the research branch points at it).
- The **population** is the champion plus the best `size - 1` other distinct
  candidates with status `keep` (distinct: a different normalised source).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from autoresearch.ledger import Record


def tag_records(records: Iterable[Record], tag: str) -> list[Record]:
    return [r for r in records if r.tag == tag]


def champion(records: Iterable[Record]) -> Record | None:
    promoted = [r for r in records if r.promoted]
    return promoted[-1] if promoted else None


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
