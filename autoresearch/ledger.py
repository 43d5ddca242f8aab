"""The durable record of every experiment: `.autoresearch/ledger.jsonl`.

One JSON object per line, appended with a single `write` and an `fsync`, so a
kill at any instant loses no finished record: at worst the record being
written is a partial last line, which is reported and skipped on reading
(everything before it still loads). Records are never rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
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
    def from_dict(cls, data: dict[str, Any]) -> Record:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # newer fields are ignored


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.problems: list[str] = []  # unreadable lines found by the last `records()`

    def append(self, record: Record) -> None:
        line = json.dumps(dataclasses.asdict(record), sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not self._ends_with_newline(fd):
                line = "\n" + line  # a torn last line from a kill must not swallow this record
            os.write(fd, line.encode())
            os.fsync(fd)
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
                    self.problems.append(f"{self.path}:{number}: unreadable record skipped ({e})")
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
        path.write_text("\n".join(lines) + "\n")

    @staticmethod
    def _ends_with_newline(fd: int) -> bool:
        return os.pread(fd, 1, os.fstat(fd).st_size - 1) == b"\n"
