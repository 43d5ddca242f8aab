"""The durable record of every experiment: `.autoresearch/ledger.jsonl`.

One JSON object per line, appended with a single `write` and an `fsync`, so a
kill at any instant loses no finished record: at worst the record being
written is a partial last line, which is reported and skipped on reading
(everything before it still loads). A write that fails (a full disk) is cut
back off, so it leaves no partial line at all. Records are never rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("keep", "discard", "crash", "timeout", "invalid")
TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")


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
    mfu_percent: float | None = None
    seed: int = 0
    device: str = ""
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
        hints = _field_types()
        values = {k: v for k, v in data.items() if k in hints}  # newer fields are ignored
        for name, value in values.items():
            # A wrong type would only fail later, in whatever report reads the field.
            if not _fits(value, hints[name]):
                raise TypeError(f"{name} is {value!r}")
        return cls(**values)


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Record)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type (an int fits a float, only a bool fits bool)."""
    if isinstance(hint, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict)  # its values are free-form (a plugin's usage, say)
    if isinstance(value, bool) or hint is bool:
        return isinstance(value, bool) and hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)  # str, int, NoneType


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.problems: list[str] = []  # unreadable lines found by the last `records()`

    def append(self, record: Record) -> None:
        """Add `record` durably; if the write fails (a full disk), the file is left as it was."""
        line = (json.dumps(dataclasses.asdict(record), sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _named(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
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
                os.close(fd)

    def records(self) -> list[Record]:
        self.problems = []
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(Record.from_dict(json.loads(line)))
                except (ValueError, TypeError) as e:
                    self.problems.append(
                        f"{self.path}:{number}: unreadable record skipped ({e}), the others"
                        " load: fix or delete that line to silence this"
                    )
        return out

    def next_id(self, prefix: str = "e", taken: Iterable[str] = ()) -> str:
        """The next free id of the form e0001, past every recorded (and `taken`) one."""
        ids = [r.id for r in self.records()] + list(taken)
        numbers = [
            int(i[len(prefix) :])
            for i in ids
            if i.startswith(prefix) and i[len(prefix) :].isdigit()
        ]
        return f"{prefix}{max(numbers, default=0) + 1:04d}"

    def export_tsv(self, path: Path) -> None:
        """`results.tsv` in the original project's five columns."""
        lines = ["\t".join(TSV_COLUMNS)]
        for r in self.records():
            bpb = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "0.000000"
            desc = " ".join(r.description.split())  # tabs and newlines would break the columns
            lines.append(f"{r.commit[:7]}\t{bpb}\t{r.memory_gb:.1f}\t{r.status}\t{desc}")
        with _named(path):
            path.write_text("\n".join(lines) + "\n")  # derived: rewritten after every record


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """Name `path` in the OSErrors of writes through a descriptor, which carry no file name."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise
