"""The durable record of every experiment: `.autoresearch/ledger.jsonl`.

One JSON object per line, appended with a single `write` and an `fsync`, so a
kill at any instant loses no finished record: at worst the record being
written is a partial last line, which is reported and skipped on reading
(everything before it still loads). A write that fails (a full disk) is cut
back off, so it leaves no partial line at all. Records are never rewritten.

Each line links to the record before it: `"chain": {"after": <its id>, "sha256": <the
sha256 of its line as written>}` ("" and "" for the first). Reading checks every link, so
an earlier record changed, removed, inserted or moved is refused with one line naming
it: nothing after it can be trusted. Unreadable lines (a torn write) are outside the
chain, so they stay a warning. Records without a link come from an older version: they
load, with a note, as long as no linked record comes before them. The chain only has
to be recomputed to hide a change: it finds edits by tools, by mistake, and by code that
does not know it is there, and the runs' file states and the sandbox keep candidates
from writing the ledger at all. Nothing links to the last record, so a change to it, or
its removal, shows only once another record follows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch.errors import UserError
from autoresearch.harness.fingerprint import stat_state

SCHEMA_VERSION = 1
# Every status a record can have, declared here only. `invalid`: rejected before training
# (syntax, a protected file, the contract broken, a duplicate) or caught cheating.
SCORED_STATUSES = ("keep", "discard")  # trained and scored: the record has a val_bpb
FAILED_STATUSES = ("crash", "timeout", "invalid")  # no score: the record's reason says why
CRASHED_STATUSES = ("crash", "timeout")  # trained and failed: a log to read, a fix to try
STATUSES = (*SCORED_STATUSES, *FAILED_STATUSES)
TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
CHAIN_FIELD = "chain"  # in each line, outside `Record`: a property of the file, not the run
ID_PREFIX = "e"  # experiment ids: e0001, e0002, ...
TAIL_BYTES = 2**16  # read back from the end to find the record a new one links to
# The ledger's state after this process's last append to it, by real path. With several
# slots the ledger is appended while other experiments run, and a run that finds it changed
# asks here whether the change was ours before it calls the change tampering.
_OWN_WRITES: dict[str, tuple[int, ...]] = {}


@dataclass(frozen=True)
class Record:
    id: str
    status: str
    reason: str = ""  # one line: why this status
    commit: str = ""  # the git commit of the train.py that ran
    parent: str | None = None  # the parent candidate's id
    val_bpb: float | None = None
    memory_gb: float = 0.0  # peak GPU memory; peak process memory on CPU
    training_seconds: float = 0.0
    total_seconds: float = 0.0
    tokens: int = 0
    num_steps: int = 0
    num_params: int = 0
    depth: int | None = None
    code_lines: int = 0  # lines of train.py that are neither blank nor comments (0: not counted)
    mfu_percent: float | None = None
    final_loss: float | None = None  # the last training loss train.py reported (its claim)
    seed: int = 0
    device: str = ""
    ran_on: str = ""  # where, with several slots: "slot 2 (GPU 2)", a Ray node; "" with one
    fingerprints: dict[str, str] = field(default_factory=dict)  # harness, data, tokenizer, source
    proposer: str = ""
    description: str = ""
    usage: dict[str, float] = field(default_factory=dict)  # tokens and USD a proposer spent
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase of the run
    tag: str = ""  # the evolve run this record belongs to ("" for `autoresearch run`)
    promoted: bool = False  # the research branch moved to this candidate
    created: float = field(default_factory=time.time)
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")

    @classmethod
    def from_dict(cls, data: Any) -> Record:
        """The record in a parsed JSON line; TypeError when it is not one (a damaged line)."""
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        hints, exact = _field_types(), _exact_types()
        values = {k: v for k, v in data.items() if k in hints}  # newer fields are ignored
        for name, value in values.items():
            # A wrong type would only fail later, in whatever report reads the field. The
            # exact JSON types a field takes answer at once (10,000 records load in a blink).
            if type(value) not in exact[name] and not fits_type(value, hints[name]):
                raise TypeError(f"{name} is {value!r}")
        return cls(**values)


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Record)


@functools.cache
def _exact_types() -> dict[str, frozenset[type]]:
    """For each field, the JSON value types that `fits_type` accepts for it."""
    samples = ("", 0, 0.0, False, None, {}, [])  # one value of each JSON type
    return {
        name: frozenset(type(v) for v in samples if fits_type(v, hint))
        for name, hint in _field_types().items()
    }


def fits_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type (an int fits a float, only a bool fits bool)."""
    if isinstance(hint, types.UnionType):
        return any(fits_type(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict)  # its values are free-form (a plugin's usage, say)
    if isinstance(value, bool) or hint is bool:
        return isinstance(value, bool) and hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)  # str, int, NoneType


class LedgerTampered(UserError):
    """An earlier record of the ledger is not the one that was written there."""


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.problems: list[str] = []  # unreadable lines found by the last `records()`
        self.notes: list[str] = []  # what else the last `records()` should say (old records)
        # The file's state after our last append or read: nobody else may write it in between.
        self._written: tuple[int, ...] | None = None

    def append(self, record: Record) -> None:
        """Add `record` durably; if the write fails (a full disk), the file is left as it was.
        `LedgerTampered` if the file changed since this object last read or appended it:
        while a run records, nobody else may write it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _named(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            st = os.fstat(fd)
            if self._written is not None and stat_state(st) != self._written:
                os.close(fd)
                raise LedgerTampered(
                    f"{self.path} was changed by something else since autoresearch last"
                    " wrote it, during this run: find what wrote it, check the ledger"
                    " (`autoresearch leaderboard`), then resume"
                )
            try:
                size = st.st_size
                fields = dataclasses.asdict(record) | {CHAIN_FIELD: _last_link(fd, size)}
                line = (json.dumps(fields, sort_keys=True) + "\n").encode()
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a torn last line from a kill must not swallow this one
                try:
                    rest = memoryview(line)
                    while rest:  # near a size limit a write is short, and the next one fails
                        rest = rest[os.write(fd, rest) :]
                    os.fsync(fd)  # a full disk may show only here (delayed allocation)
                except OSError:
                    # Half a record must never stay behind: cut the file back, then report.
                    # (Should even that fail, readers skip the torn line; nothing is lost.)
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                        os.fsync(fd)
                    raise
            finally:
                with contextlib.suppress(OSError):  # the file as we left it, even cut back
                    self._written = stat_state(os.fstat(fd))
                    _OWN_WRITES[os.path.realpath(self.path)] = self._written
                os.close(fd)

    def records(self) -> list[Record]:
        """Every readable record; `LedgerTampered` when the chain between them is broken."""
        self.problems, self.notes = [], []
        try:
            with open(self.path, "rb") as f:
                # As read: from here on, an append by this object checks that nobody else
                # wrote the file (a run's first record included).
                self._written = stat_state(os.fstat(f.fileno()))
                data = f.read()
        except FileNotFoundError:
            return []
        out: list[Record] = []
        numbers: list[int] = []  # the line of each record in `out`
        link = {"after": "", "sha256": ""}  # what the next record must carry
        unlinked = 0  # records from before the chain
        for number, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                data, record = _parse(raw)
            except (ValueError, TypeError) as e:
                self.problems.append(
                    f"{self.path}:{number}: unreadable record skipped ({e}), the others"
                    " load: fix or delete that line to silence this"
                )
                continue
            if CHAIN_FIELD in data or len(out) > unlinked:
                found = data.get(CHAIN_FIELD)
                if found != link:
                    previous = (numbers[-1], out[-1]) if out else None
                    raise LedgerTampered(self._broken(number, record, found, previous))
            else:
                unlinked += 1
            out.append(record)
            numbers.append(number)
            link = _link_to(record, raw)
        if unlinked:
            self.notes.append(
                f"{self.path}: {unlinked} of its records (lines {numbers[0]}-"
                f"{numbers[unlinked - 1]}) predate its hash chain: a change to them cannot be"
                " detected"
            )
        return out

    def _broken(
        self, number: int, record: Record, found: object, previous: tuple[int, Record] | None
    ) -> str:
        """The one line for the record at line `number`, whose link (`found`) does not match
        the record before it (`previous`: its line and record, None for the first)."""
        after = found.get("after") if isinstance(found, dict) else None
        if previous and after == previous[1].id:
            bad = previous[0]
            what = f"line {bad} ({after}) was changed after it was written"
        else:  # this record is out of place: from here on, nothing is where it was written
            bad = number
            what = f"line {number} ({record.id}) "
            if after is None:
                what += "has no link to the record before it, unlike the records before it"
            else:
                what += f"was written after {after or 'no record'}, " + (
                    f"not after {previous[1].id}" if previous else "but is the first record"
                )
            what += ": records were removed, inserted or moved there"
        return (
            f"{self.path} {what}; restore the ledger from a backup, or delete line {bad} and"
            " every line after it: the records from there on cannot be trusted"
        )

    def next_id(self, prefix: str = ID_PREFIX, taken: Iterable[str] = ()) -> str:
        """The next free id of the form e0001, past every recorded (and `taken`) one."""
        ids = [r.id for r in self.records()] + list(taken)
        return format_id(highest_number(ids, prefix) + 1, prefix)

    def record(self, record: Record, results: Path) -> None:
        """How every command records an experiment: the ledger line, then its row of
        `results` (results.tsv), appended: the cost of a record does not grow with history."""
        self.append(record)
        with _named(results):
            new = not results.exists() or results.stat().st_size == 0
            with open(results, "a", encoding="utf-8") as f:
                f.write(("\t".join(TSV_COLUMNS) + "\n" if new else "") + _tsv_row(record) + "\n")

    def export_tsv(self, path: Path) -> None:
        """`results.tsv` in the original project's five columns, rewritten from the ledger (a
        run mends it so when it starts: a kill between a record and its row loses the row)."""
        lines = ["\t".join(TSV_COLUMNS)] + [_tsv_row(r) for r in self.records()]
        with _named(path):
            path.write_text("\n".join(lines) + "\n")


def own_write(path: str | Path) -> tuple[int, ...] | None:
    """The state this process left the ledger at `path` in (`stat_state`); None: not ours."""
    return _OWN_WRITES.get(os.path.realpath(path))


def highest_number(ids: Iterable[str], prefix: str = ID_PREFIX) -> int:
    """The largest N of the ids of the form <prefix>N, 0 when there is none."""
    return max(
        (int(i[len(prefix) :]) for i in ids if i.startswith(prefix) and i[len(prefix) :].isdigit()),
        default=0,
    )


def format_id(number: int, prefix: str = ID_PREFIX) -> str:
    return f"{prefix}{number:04d}"


def _tsv_row(r: Record) -> str:
    bpb = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "0.000000"
    desc = " ".join(r.description.split())  # tabs and newlines would break the columns
    return f"{r.commit[:7]}\t{bpb}\t{r.memory_gb:.1f}\t{r.status}\t{desc}"


def _parse(raw: bytes) -> tuple[dict, Record]:
    """A ledger line's JSON object and its record; ValueError or TypeError when unreadable."""
    data = json.loads(raw.decode("utf-8", errors="replace"))
    return data, Record.from_dict(data)


def _link_to(record: Record, raw: bytes) -> dict[str, str]:
    """What the record after `record` (written as the line `raw`) carries in CHAIN_FIELD."""
    return {"after": record.id, "sha256": hashlib.sha256(raw).hexdigest()}


def _last_link(fd: int, size: int) -> dict[str, str]:
    """The link to the last readable record of the file open at `fd`, read from its end."""
    start, chunk = size, TAIL_BYTES
    while start > 0:
        start = max(0, start - chunk)
        lines = os.pread(fd, size - start, start).split(b"\n")
        for raw in reversed(lines if start == 0 else lines[1:]):  # the first may be cut
            try:
                return _link_to(_parse(raw)[1], raw)
            except (ValueError, TypeError):
                continue  # torn or damaged: outside the chain, as `records` reads it
        chunk *= 2  # no readable record in the tail: look further back
    return {"after": "", "sha256": ""}


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """Name `path` in the OSErrors of writes through a descriptor, which carry no file name."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise
