"""Content fingerprints: what a result was measured with, so results compare honestly."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Iterable[Path]) -> str:
    """One digest over names and contents, independent of the order given."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(path.name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def harness_fingerprint() -> str:
    """The trusted code that trains, hands over and scores: any edit changes this."""
    return sha256_files(Path(__file__).parent.glob("*.py"))


def stat_state(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is written, replaced or touched: ctime cannot be set back."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_states(paths: Iterable[Path]) -> dict[str, tuple[int, ...] | None]:
    """`stat_state` of each path (None: it does not exist), by the path as given."""
    states: dict[str, tuple[int, ...] | None] = {}
    for path in paths:
        try:
            states[str(path)] = stat_state(Path(path).stat())
        except FileNotFoundError:
            states[str(path)] = None
    return states
