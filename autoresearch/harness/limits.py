"""Caps on what one experiment may use: memory, processes (and threads), disk.

    caps_for -> make_cgroups -> (the sandbox joins them) -> cap_reason -> remove_cgroups

Memory and processes are capped by a cgroup per run where this process may make one: cgroup
v2 under the nearest ancestor of its own cgroup that delegates the `memory` and `pids`
controllers and is writable, else cgroup v1's `memory` and `pids` hierarchies (as root on many
VMs). The kernel counts everything the candidate starts, and says afterwards whether a cap was
hit (an OOM kill, a refused fork). Where no cgroup can be had, the sandbox falls back to
rlimits, which count less well (see `SandboxSpec`). Disk is capped by the runner, which
measures the run folder about once a second while it supervises, and by a per-file size limit.

A run never fails because cgroups are missing: it then runs with the rlimits alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# Default caps, from what the machine has when the run starts. The rest of the memory is for
# the orchestrator and the evaluator (which holds the validation rows while the candidate
# trains); the rest of the disk for the ledger, the git history and later runs.
MEMORY_SHARE = 0.75  # of MemAvailable
DISK_SHARE = 0.5  # of the free space where the run folder is
# Processes and threads together: torch starts a thread per core in each process, and each
# data loader worker is a process with threads of its own. A fork bomb stops here.
MIN_PROCESSES = 4096
PROCESSES_PER_CPU = 64
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "autoresearch-"  # autoresearch-<runner pid>-<random>: a dead runner's is stale
REMOVE_SECONDS = 2.0  # a cgroup's last processes may take this long to leave after SIGKILL
DISK_POLL_SECONDS = 1.0  # a walk of the run folder: cheap for the few files a run writes
GiB = 2**30


@dataclass(frozen=True)
class Caps:
    memory_bytes: int  # 0: no cap (the system says nothing about its memory)
    max_processes: int
    disk_bytes: int


def caps_for(
    memory_gb: float, max_processes: int, disk_gb: float, run_dir: Path, share: float = 1.0
) -> Caps:
    """The caps of one run: the configured ones, or (0) defaults from what is free now,
    `share` of it where runs share the machine (slots)."""
    free_memory, free_disk = _mem_available(), shutil.disk_usage(run_dir).free
    memory = int(memory_gb * GiB) if memory_gb else int(MEMORY_SHARE * share * free_memory)
    processes = max_processes or max(MIN_PROCESSES, PROCESSES_PER_CPU * (os.cpu_count() or 1))
    disk = int(disk_gb * GiB) if disk_gb else int(DISK_SHARE * share * free_disk)
    return Caps(memory, processes, disk)


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # not Linux: no memory cap by default


# ---------------------------------------------------------------------------
# cgroups
# ---------------------------------------------------------------------------
def make_cgroups(caps: Caps) -> dict[str, str]:
    """Make this run's cgroups: {"memory": folder, "pids": folder} (v1: two folders, v2: one
    folder under both names), or {} where this process may not. Stale ones are removed."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        parent = _delegating_ancestor()
        folders = {"memory": parent, "pids": parent} if parent else {}
    else:
        folders = {c: _own_cgroup(CGROUP_ROOT / c, c) for c in ("memory", "pids")}
        folders = {c: p for c, p in folders.items() if p and os.access(p, os.W_OK)}
    name = f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    made: dict[str, str] = {}
    for controller, parent in folders.items():
        _remove_stale(parent)
        folder = parent / name
        try:
            if str(folder) not in made.values():
                folder.mkdir()
            _set_cap(folder, controller, caps)
        except OSError:
            continue  # not ours to make here: the rlimits will have to do for this one
        made[controller] = str(folder)
    return made


def _own_cgroup(mount: Path, controller: str) -> Path | None:
    """This process's cgroup in the v1 hierarchy of `controller`."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return mount / path.lstrip("/")
    return None


def _delegating_ancestor() -> Path | None:
    """The nearest v2 cgroup at or above ours that hands `memory` and `pids` to children we
    may make (a systemd user slice with Delegate=yes, or the root for root)."""
    own = next(
        (ln[3:] for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln[:3] == "0::"),
        None,
    )
    if own is None:
        return None
    folder = CGROUP_ROOT / own.lstrip("/")
    for candidate in (folder, *folder.parents):
        try:
            enabled = (candidate / "cgroup.subtree_control").read_text().split()
        except OSError:
            enabled = []
        if {"memory", "pids"} <= set(enabled) and os.access(candidate, os.W_OK):
            return candidate
        if candidate == CGROUP_ROOT:
            break
    return None


def _set_cap(folder: Path, controller: str, caps: Caps) -> None:
    v2 = (folder / "cgroup.controllers").exists()
    if controller == "pids":
        (folder / "pids.max").write_text(str(caps.max_processes))
    elif caps.memory_bytes and v2:
        (folder / "memory.max").write_text(str(caps.memory_bytes))
        with contextlib.suppress(OSError):  # no swap accounting: swap is not capped
            (folder / "memory.swap.max").write_text("0")
    elif caps.memory_bytes:
        (folder / "memory.limit_in_bytes").write_text(str(caps.memory_bytes))
        with contextlib.suppress(OSError):  # memory + swap, where swap is accounted
            (folder / "memory.memsw.limit_in_bytes").write_text(str(caps.memory_bytes))


def cgroup_events(cgroups: dict[str, str]) -> tuple[int, int]:
    """(OOM kills, refused forks) in this run's cgroups so far."""
    memory, pids = cgroups.get("memory"), cgroups.get("pids")
    oom_kills = refused = 0
    if memory:
        v2 = (Path(memory) / "cgroup.controllers").exists()
        oom_kills = _counter(Path(memory) / ("memory.events" if v2 else "memory.oom_control"),
                             "oom_kill")  # fmt: skip
    if pids:
        refused = _counter(Path(pids) / "pids.events", "max")
    return oom_kills, refused


def _counter(path: Path, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def remove_cgroups(cgroups: dict[str, str]) -> None:
    """Kill whatever is still in this run's cgroups and remove them."""
    for folder in dict.fromkeys(cgroups.values()):  # v2: one folder for both
        _remove(Path(folder))


def _remove(folder: Path) -> None:
    deadline = time.monotonic() + REMOVE_SECONDS
    while True:
        for pid in _members(folder):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # busy: its last processes are still exiting
            if time.monotonic() > deadline:
                return  # left for the next run's stale sweep
            time.sleep(0.02)


def _members(folder: Path) -> list[int]:
    try:
        return [int(pid) for pid in (folder / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _remove_stale(parent: Path) -> None:
    """Remove the cgroups of runners that are gone (a killed runner cannot remove its own)."""
    for folder in parent.glob(f"{CGROUP_PREFIX}*"):
        runner = folder.name[len(CGROUP_PREFIX) :].split("-")[0]
        if runner.isdigit() and not pid_alive(int(runner)):
            _remove(folder)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (someone else's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def join_cgroups(cgroups: dict[str, str]) -> list[str]:
    """Move this process into the cgroups (before it starts the candidate); the errors."""
    errors = []
    for folder in dict.fromkeys(cgroups.values()):
        try:
            (Path(folder) / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as e:
            errors.append(f"sandbox: cannot join the cgroup {folder}: {e.strerror}")
    return errors


# ---------------------------------------------------------------------------
# disk
# ---------------------------------------------------------------------------
def disk_usage(folder: Path) -> int:
    """Bytes on disk under `folder` (blocks, each hard-linked file once, links not followed)."""
    total, seen, stack = 0, set(), [str(folder)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    return total


def cap_reason(caps: Caps, oom_kills: int, refused_forks: int, disk_used: int) -> str:
    """Which cap a run hit, its value and what to do, in one line; "" if it hit none."""
    if oom_kills:
        return (
            f"out of memory: the run used more than its {_gib(caps.memory_bytes)} GB"
            " (run.memory_gb); use less memory or raise it"
        )
    if refused_forks:
        return (
            f"too many processes: the run tried to have more than {caps.max_processes}"
            " processes and threads (run.max_processes); start fewer or raise it"
        )
    if caps.disk_bytes and disk_used >= caps.disk_bytes:
        return (
            f"disk quota: the run folder grew past its {_gib(caps.disk_bytes)} GB"
            " (run.disk_gb); write less or raise it"
        )
    return ""


def _gib(n: int) -> str:
    return f"{n / GiB:.3g}"


class DiskWatch:
    """The size of a run folder against its cap, measured at most every DISK_POLL_SECONDS."""

    def __init__(self, folder: Path, cap: int):
        self.folder, self.cap = folder, cap
        self.used = 0
        self._next = 0.0

    def over(self) -> bool:
        if self.cap and time.monotonic() >= self._next:
            self.measure()
        return bool(self.cap) and self.used >= self.cap

    def measure(self) -> int:
        self.used = disk_usage(self.folder)
        self._next = time.monotonic() + DISK_POLL_SECONDS
        return self.used
