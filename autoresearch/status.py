"""A live run's two files in the state folder: the run lock it holds, the status it rewrites.

`evolve` and `run` hold the lock (`evolve.lock`: an flock, and the holder's pid as its
text) while they train; `evolve` rewrites `status.json` atomically as it goes. Both are
written and read here only: `autoresearch status` asks `run_status`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoresearch.atomic import write_text
from autoresearch.errors import UserError
from autoresearch.harness.limits import pid_alive
from autoresearch.ledger import fits_type
from autoresearch.workspace import LOCK_FILE, STATUS_FILE


class RunLock:
    """One experiment process (`evolve` or `run`) per research repo: experiments never share
    the device. An exclusive flock, released by the OS if the holder dies. Reentrant within
    a process, so the command line can take it before it prints anything and the engine
    still holds it when used on its own."""

    _held: dict[Path, list[int]] = {}  # path -> [fd, depth] of the locks this process holds

    def __init__(self, state: Path):
        self.path = (state / LOCK_FILE).resolve()

    def __enter__(self) -> RunLock:
        import fcntl

        if self.path in self._held:
            self._held[self.path][1] += 1
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(
                f"another `autoresearch evolve` or `run` (pid {holder}) is training in this repo:"
                " wait for it, or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._held[self.path] = [fd, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        held = self._held.get(self.path)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            os.ftruncate(held[0], 0)
            os.close(held[0])  # closing releases the flock


@dataclass(frozen=True)
class EvolveStatus:
    """What `evolve` is doing, as `status.json` holds it (one JSON object of these fields)."""

    pid: int | None = None
    tag: str | None = None
    started: float | None = None  # time.time() when this session started
    phase: str | None = None  # "training", "proposing" or "idle"
    training: dict[str, Any] = dataclasses.field(default_factory=dict)  # id -> time.time() started
    slots: int = 1  # experiments that may train at once
    budget_seconds: float | None = None
    experiments_done: int = 0  # records of the tag
    best: dict[str, Any] | None = None  # the champion: {"id": ..., "val_bpb": ...}
    spend_usd: float = 0.0


def write_status(state: Path, status: EvolveStatus) -> None:
    write_text(state / STATUS_FILE, json.dumps(dataclasses.asdict(status)) + "\n")


def read_status(state: Path) -> EvolveStatus | None:
    """The status file, None when there is none or it is no JSON object; a field of the
    wrong type (a damaged or older file) reads as its default."""
    try:
        data = json.loads((state / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    hints = typing.get_type_hints(EvolveStatus)
    return EvolveStatus(
        **{k: v for k, v in data.items() if k in hints and fits_type(v, hints[k])}
    )


@dataclass(frozen=True)
class RunStatus:
    running: bool
    pid: int | None
    state: EvolveStatus | None  # the engine's status.json, None when there is none


def run_status(state: Path) -> RunStatus:
    """Is `evolve` running here? The lock decides; the pid confirms."""
    info = read_status(state)
    lock = state / LOCK_FILE
    pid = info.pid if info else None
    if not lock.exists():
        return RunStatus(False, pid, info)
    try:
        text = lock.read_text().strip()
        pid = int(text) if text.isdigit() else pid
    except OSError:
        pass
    held = _lock_is_held(lock)
    if held is None:  # no flock on this platform: trust the pid
        held = pid is not None and pid_alive(pid)
    return RunStatus(held, pid, info)


def _lock_is_held(lock: Path) -> bool | None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        # Taking the lock for an instant is the only portable question to ask; a shared lock
        # is enough to collide with the engine's exclusive one.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)

