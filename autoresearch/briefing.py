"""What proposers are told about the run, kept up to date as records arrive.

The engine adds every record once (`Book.add`); each request then takes a
`Briefing` (the best results, the recent failures, the last promotions with
their diffs, the results table, cut to fixed sizes) and a `HistoryView` of
every entry, both in time independent of how many records there are: nothing
is sorted, copied or formatted per request that grows with the history.
"""

from __future__ import annotations

import bisect
import difflib
import functools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import overload

from autoresearch.ledger import FAILED_STATUSES, Record
from autoresearch.population import BASELINE, REPEAT, REPEATS
from autoresearch.proposal import Briefing, HistoryEntry, Promotion, RunNumbers

MAX_BEST = 12  # best results in a briefing
MAX_FAILURES = 8  # recent failures in a briefing
MAX_PROMOTIONS = 3  # recent promotions in a briefing, each with its diff
MAX_DIFF_CHARS = 3000  # of each promotion's diff: one focused edit fits easily
MAX_TABLE_CHARS = 8000  # of the results table; past it, only the newest rows that fit
TABLE_COLUMNS = ("id", "parent", "status", "val_bpb", "delta", "description", "reason")
TABLE_TEXT_CHARS = 100  # of a description or a reason in the table
TRAIN_FILE = "train.py"  # the name the diffs show


class HistoryView(Sequence[HistoryEntry]):
    """The first `size` entries of a list that only grows, scored best first, then failures
    newest first: a snapshot made in constant time, ordered only when someone reads it."""

    def __init__(self, entries: list[HistoryEntry], size: int) -> None:
        self._entries, self._size = entries, size

    @functools.cached_property
    def _ordered(self) -> tuple[HistoryEntry, ...]:
        entries = self._entries[: self._size]
        scored = sorted((e for e in entries if e.val_bpb is not None), key=_bpb)
        return (*scored, *(e for e in reversed(entries) if e.val_bpb is None))

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(self._ordered)

    @overload
    def __getitem__(self, index: int) -> HistoryEntry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[HistoryEntry]: ...
    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._ordered[index]


class Book:
    """Everything proposers may read about one tag's records, added one record at a time.

    `diff(parent, record)` gives the unified diff of a promoted record's train.py from its
    parent's (the engine reads both from git): asked only for the promotions a briefing
    shows, once each, so a resumed run of 10,000 records does not read every one."""

    def __init__(self, diff: Callable[[Record, Record], str]) -> None:
        self._diff = diff
        self._records: dict[str, Record] = {}
        self._entries: list[HistoryEntry] = []  # in the order recorded; only grows
        self._scored: list[tuple[float, int, HistoryEntry]] = []  # by val_bpb, then order
        self._failures: deque[HistoryEntry] = deque(maxlen=MAX_FAILURES)
        self._promotions: deque[tuple[HistoryEntry, Record, Record]] = deque(maxlen=MAX_PROMOTIONS)
        self._diffs: dict[str, str] = {}  # promoted id -> its diff, for those in _promotions
        self._rows: list[str] = []  # the results table's rows, in the order recorded

    def add(self, record: Record) -> None:
        """Take in one new record of the tag (repeats only count as promotions)."""
        self._records[record.id] = record
        if record.promoted:
            self._promoted(record)
        if record.proposer in REPEATS:
            return  # a repeat tried nothing new: its run only refines a mean
        entry = history_entry(record, self._records.get(record.parent or ""))
        self._entries.append(entry)
        if entry.val_bpb is None:
            self._failures.append(entry)
        else:
            bisect.insort(self._scored, (entry.val_bpb, len(self._entries), entry))
        self._rows.append(table_row(entry))

    def history(self) -> HistoryView:
        return HistoryView(self._entries, len(self._entries))

    def briefing(self, noise: float | None, threshold: float | None) -> Briefing:
        table, rows = self._table()
        return Briefing(
            best=tuple(entry for _, _, entry in self._scored[:MAX_BEST]),
            failures=tuple(reversed(self._failures)),
            promotions=tuple(self._promotion(*p) for p in reversed(self._promotions)),
            table=table,
            table_rows=rows,
            noise=noise,
            threshold=threshold,
        )

    def _promoted(self, record: Record) -> None:
        if record.proposer == REPEAT:  # a promoted repeat stands for what it repeats
            record = self._records.get(record.parent or "", record)
        parent = self._records.get(record.parent or "")
        if record.proposer == BASELINE or parent is None or record.proposer in REPEATS:
            return  # the starting point, not a change
        self._promotions.append((history_entry(record, parent), parent, record))

    def _promotion(self, entry: HistoryEntry, parent: Record, record: Record) -> Promotion:
        if record.id not in self._diffs:
            shown = {r.id for _, _, r in self._promotions}
            self._diffs = {k: v for k, v in self._diffs.items() if k in shown}
            self._diffs[record.id] = cut(self._diff(parent, record), MAX_DIFF_CHARS)
        return Promotion(entry, self._diffs[record.id])

    def _table(self) -> tuple[str, int]:
        """The header and the newest rows within MAX_TABLE_CHARS, and how many rows there are:
        the cost is that of the rows shown, however many there are."""
        header = "\t".join(TABLE_COLUMNS)
        room, shown = MAX_TABLE_CHARS - len(header) - 1, []
        for row in reversed(self._rows):
            if len(row) + 1 > room:
                break
            shown.append(row)
            room -= len(row) + 1
        if not shown:
            return "", len(self._rows)
        return "\n".join([header, *reversed(shown)]), len(self._rows)


def history_entry(record: Record, parent: Record | None) -> HistoryEntry:
    """A record as proposers see it: its score, its change against its parent, and why."""
    delta = (
        record.val_bpb - parent.val_bpb
        if record.val_bpb is not None and parent and parent.val_bpb is not None
        else None
    )
    reason = record.reason if record.status in FAILED_STATUSES else ""
    return HistoryEntry(
        record.id, record.parent, record.status, record.val_bpb, delta, record.description,
        record.proposer, reason,
    )  # fmt: skip


def summarize(history: Sequence[HistoryEntry]) -> Briefing:
    """A briefing of a bare history (a request made by hand, without one): its best results
    and recent failures, in the order the history gives them."""
    scored = [h for h in history if h.status not in FAILED_STATUSES][:MAX_BEST]
    failed = [h for h in history if h.status in FAILED_STATUSES][:MAX_FAILURES]
    return Briefing(best=tuple(scored), failures=tuple(failed))


def run_numbers(record: Record, budget: str) -> RunNumbers:
    """What a record's run measured, with the budget (`RunSettings.describe_budget`)."""
    return RunNumbers(
        record.status, record.reason, record.val_bpb, budget, record.device,
        record.training_seconds, record.num_steps, record.tokens, record.memory_gb,
        record.final_loss,
    )  # fmt: skip


def table_row(entry: HistoryEntry) -> str:
    """One row of the results table: tab-separated, no tab or newline inside a field."""
    score = f"{entry.val_bpb:.4f}" if entry.val_bpb is not None else ""
    delta = f"{entry.delta:+.4f}" if entry.delta is not None else ""
    fields = (entry.id, entry.parent or "", entry.status, score, delta,
              _text(entry.description), _text(entry.reason))  # fmt: skip
    return "\t".join(fields)


def train_diff(old: str, new: str) -> str:
    """The unified diff of train.py from `old` to `new`, as `git diff` shows it."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        f"a/{TRAIN_FILE}", f"b/{TRAIN_FILE}",
    )  # fmt: skip
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def cut(text: str, limit: int) -> str:
    """`text` at most `limit` characters, saying so when cut (at a line end if one is near)."""
    if len(text) <= limit:
        return text
    note = "\n[... cut ...]\n"
    head = text[: limit - len(note)]
    if "\n" in head:
        head = head[: head.rindex("\n")]
    return head + note


def _text(value: str) -> str:
    text = " ".join(value.split())
    return text if len(text) <= TABLE_TEXT_CHARS else text[: TABLE_TEXT_CHARS - 1] + "…"


def _bpb(entry: HistoryEntry) -> float:
    return entry.val_bpb if entry.val_bpb is not None else float("inf")
