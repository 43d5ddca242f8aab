"""The supervisor between the runner and a candidate's `train.py`.

    runner --spawns--> sandbox (this module) --forks--> python -m ...guard train.py

The runner starts this process; it applies resource limits (no core dumps, a
cap on any one file), optionally moves the candidate into its own Linux
namespaces, starts the candidate, copies its output into a bounded `run.log`,
and when the candidate ends (or the runner says stop) makes sure that nothing
it started is left running. It has no threads: after entering a new PID
namespace a process may not start any.

Isolation (Linux with unprivileged user namespaces, probed once):

* a PID namespace whose first process is the candidate: when it dies the
  kernel kills everything it started, even daemons that left its process
  group, and with a /proc of its own it cannot see or signal any process
  outside, nor read another process's environment;
* a mount namespace where every mount is read-only but the run folder (and a
  user's explicit compile caches), the validation tokens and raw data are
  hidden, and /dev/shm is a small tmpfs of the run's own;
* optionally (`run.network = false`) a network namespace with no interfaces.

Caps on memory and processes come from cgroups the runner made (`harness.limits`),
which this process joins before anything else; where there are none, rlimits stand
in. Every process of the run is the kernel's first choice when memory runs out.

Without it, a child subreaper still catches daemons that double-fork out of
the process group, and the audit hook of `harness.guard` still refuses the
validation data and writes to protected files from Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoresearch.harness.limits import join_cgroups

FILE_SIZE_LIMIT = 64 * 2**30  # no single file may grow past this: a runaway writer, not a model
LOG_HEAD_BYTES = 4 * 2**20  # run.log keeps the first and the last few MiB of the output
LOG_TAIL_BYTES = 4 * 2**20
SWEEP_ROUNDS = 50  # a daemon may fork while we kill: sweep until nothing is left
SWEEP_PAUSE = 0.02
POLL_SECONDS = 0.05  # how often the supervisor looks at the candidate while copying its output
DRAIN_SECONDS = 2.0  # after the candidate is gone, output still in the pipe is copied this long
OOM_FIRST = "1000"  # oom_score_adj: the run dies before the orchestrator when memory runs out
SHM = "/dev/shm"  # torch's data loader workers and multiprocessing need a writable one
SHM_BYTES = 2**30  # its size without caps; with them the smaller of the memory and disk caps

# Linux constants (sched.h, sys/mount.h, linux/prctl.h)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# statvfs f_flag bit -> mount flag: a remount in a user namespace must keep the locked ones.
KEPT_FLAGS = {2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
              4096: MS_RELATIME}  # fmt: skip
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
# Run by the probe's candidate: it is init of its PID namespace, cannot write the read-only
# folder and cannot unmount it.
PROBE_CHECK = (
    "import ctypes, os, sys; d = sys.argv[1]; sys.exit(0 if os.getpid() == 1"
    " and not os.access(d, os.W_OK) and ctypes.CDLL(None).umount2(d.encode(), 0) != 0 else 1)"
)
LAST_CAPABILITY = 63  # more than any kernel defines; dropping an unknown one fails harmlessly


@dataclass
class SandboxSpec:
    argv: list[str]  # the candidate's command
    cwd: str
    env: dict[str, str]
    log: str  # run.log
    isolate: bool = False  # the namespaces above (the runner has probed that they work)
    network: bool = True  # False: a network namespace without interfaces
    # Files and folders the candidate must not read; of one that holds a writable folder (the
    # state folder around its run folder), all but that folder.
    hidden: list[str] = field(default_factory=list)
    # The user's files that commonly hold keys (which its environment lacks on purpose):
    # hidden like `hidden` where the kernel allows it (a refusal goes to the sandbox log).
    keys: list[str] = field(default_factory=list)
    readonly: list[str] = field(default_factory=list)  # folders it must not change
    writable: list[str] = field(default_factory=list)  # folders inside those that stay writable
    # The caps of harness.limits. Where no cgroup caps memory, RLIMIT_AS stands in on CPU runs
    # (CUDA reserves far more address space than it uses); where none caps processes,
    # RLIMIT_NPROC, which counts every process of the user, so it is raised by those it has.
    cgroups: dict[str, str] = field(default_factory=dict)  # controller -> folder to join
    memory_bytes: int = 0
    max_processes: int = 0
    disk_bytes: int = 0  # also the largest file it may write
    cpu_only: bool = False
    # Its slot's cores ([]: any): the runner starts this process on them, and watches that
    # nothing of the run leaves them.
    cpus: list[int] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> SandboxSpec:
        return cls(**json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------
# The supervisor
# ---------------------------------------------------------------------------
def main(spec_path: str) -> int:
    spec = SandboxSpec.load(spec_path)
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the candidate come to us, not to init
    for error in join_cgroups(spec.cgroups):
        print(error, file=sys.stderr)  # runs on, with the rlimits below
    with contextlib.suppress(OSError):  # inherited by the candidate and all it starts
        Path("/proc/self/oom_score_adj").write_text(OOM_FIRST)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _lower_limit(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT)
    if spec.cpu_only and spec.memory_bytes and "memory" not in spec.cgroups:
        _lower_limit(resource.RLIMIT_AS, spec.memory_bytes)
    log = BoundedLog(Path(spec.log))  # opened before the mounts: ours, wherever it is
    if spec.isolate:
        enter_namespaces(spec)  # from here on this process may not start threads
        if os.path.isdir(SHM):
            size = min((c for c in (spec.memory_bytes, spec.disk_bytes) if c), default=SHM_BYTES)
            _mount("tmpfs", SHM, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
        remount_everything_readonly([*spec.writable, SHM])
    if spec.max_processes and "pids" not in spec.cgroups:  # in its user namespace, if isolated
        _lower_limit(resource.RLIMIT_NPROC, _user_tasks() + spec.max_processes)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the candidate: pid 1 of its namespace when isolated
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if spec.isolate:
                mount_own_proc()
                drop_capabilities()
            if spec.disk_bytes:  # one file past the disk cap fails at once, not at the next poll
                _lower_limit(resource.RLIMIT_FSIZE, spec.disk_bytes)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            os.chdir(spec.cwd)
            os.execve(spec.argv[0], spec.argv, spec.env)
        finally:
            os._exit(127)
    os.close(write_end)
    stop = lambda signum, frame: _kill(pid)  # noqa: E731 - the runner's stop: no grace needed
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = None
    drain_until = float("inf")
    with log:
        while time.monotonic() < drain_until:
            if select.select([read_end], [], [], POLL_SECONDS)[0]:
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    break  # every writer is gone
                log.write(chunk)
            if status is None:
                done, wait_status = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = wait_status
                    sweep()  # its leftovers hold the pipe open: kill them, then drain
                    drain_until = time.monotonic() + DRAIN_SECONDS
    if status is None:  # it closed its output but runs on: wait (the runner may stop it)
        status = os.waitpid(pid, 0)[1]
    sweep()
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _lower_limit(which: int, value: int) -> None:
    """Lower the soft rlimit `which` to `value`; a user's own lower limit stays."""
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    if soft == resource.RLIM_INFINITY or value < soft:
        resource.setrlimit(which, (value, hard))


def _user_tasks() -> int:
    """Processes and threads of this user now: what RLIMIT_NPROC counts besides the run's."""
    uid, count = str(os.getuid()), 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines() if ":" in ln)
            if fields["Uid"].split()[0] == uid:
                count += int(fields["Threads"])
    return count


class BoundedLog:
    """The candidate's output in a file that keeps the first and the last few MiB of a flood."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")  # noqa: SIM115 - closed by __exit__
        self._written = 0
        self._tail = bytearray()
        self._dropped = 0

    def write(self, chunk: bytes) -> None:
        if self._written < LOG_HEAD_BYTES:
            head = chunk[: LOG_HEAD_BYTES - self._written]
            self._file.write(head)
            self._file.flush()  # a live log: tail -f and `autoresearch status` read it
            self._written += len(head)
            chunk = chunk[len(head) :]
        self._tail += chunk
        if len(self._tail) > LOG_TAIL_BYTES:
            self._dropped += len(self._tail) - LOG_TAIL_BYTES
            del self._tail[: len(self._tail) - LOG_TAIL_BYTES]

    def __enter__(self) -> BoundedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dropped:
            note = f"\n[autoresearch: {self._dropped:,} bytes of output left out here]\n"
            self._file.write(note.encode())
        self._file.write(self._tail)
        self._file.close()


def sweep() -> None:
    """Kill and reap every process left below us (daemons the candidate left behind)."""
    for _ in range(SWEEP_ROUNDS):
        children = _children()
        if not children:
            return
        for pid in children:
            _kill(pid)
        while True:  # reap whatever has died; zombies would otherwise count as children
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        time.sleep(SWEEP_PAUSE)


def _children() -> list[int]:
    me = os.getpid()
    try:
        text = Path(f"/proc/{me}/task/{me}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:  # no /proc (macOS): the process group kill by the runner is all there is
        return []


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# Namespaces
# ---------------------------------------------------------------------------
def enter_namespaces(spec: SandboxSpec) -> None:
    """Move this process into new namespaces (its next child becomes the PID namespace's init)."""
    _unshare(CLONE_NEWPID | (0 if spec.network else CLONE_NEWNET))
    for path in spec.writable:  # first, so the read-only binds below carry them along
        _mount(path, path, None, MS_BIND | MS_REC)
    for path in spec.readonly:
        _mount(path, path, None, MS_BIND | MS_REC)
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags(path))
    for path in spec.hidden:
        inside = [w for w in spec.writable if _within(w, path)]
        if inside:
            _veil(path, inside)
        else:
            _hide(path)
    for path in spec.keys:
        try:
            _hide(path)
        except OSError as e:  # best effort: a home on a file system that refuses the mount
            print(f"{e}: left visible", file=sys.stderr)


def _hide(path: str) -> None:
    """Show `path` as an empty folder or an empty file."""
    if os.path.isdir(path):
        _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    elif os.path.exists(path):
        _mount("/dev/null", path, None, MS_BIND)


def _veil(folder: str, keep: list[str]) -> None:
    """Hide `folder` but the folders `keep` inside it: the state folder of the research repo
    with its run folders (the runs next to this one, with their hand-overs, and the models
    of every earlier run) shows only this run's own folder."""
    handles = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in keep]  # before they go
    _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for path, handle in zip(keep, handles, strict=True):
        os.makedirs(path, exist_ok=True)  # in the empty tmpfs, to bind the kept folder onto
        _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
        os.close(handle)
    # read-only like every other mount once `remount_everything_readonly` has run


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _unshare(flags: int) -> None:
    """New user and mount namespaces (and those in `flags`), with private mounts."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc().unshare(CLONE_NEWUSER | CLONE_NEWNS | flags), "unshare")
    # The same ids inside as outside, so the process is no root there: after exec (or
    # drop_capabilities) it holds no capabilities and cannot undo the mounts made here.
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do here leaks out


def remount_everything_readonly(writable: list[str]) -> None:
    """Make every mount of this mount namespace read-only, except the `writable` folders.

    Called after `enter_namespaces`: the writable folders are bound onto themselves first, so
    they are mounts of their own that the read-only remounts below leave alone. A mount the
    kernel will not remount (a locked or special one) stays as it is: with the capabilities
    dropped before `exec`, the candidate still cannot write what its user may not.
    """
    keep = [os.path.realpath(path) for path in writable]
    for path in keep:
        _mount(path, path, None, MS_BIND | MS_REC)
    for target in _mount_points():
        if any(target == path or target.startswith(path.rstrip("/") + "/") for path in keep):
            continue
        with contextlib.suppress(OSError):
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags(target))


def _mount_points() -> list[str]:
    """Every mount point of this mount namespace, parents before children."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
    unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)  # noqa: E731
    return sorted({unescape(line.split()[4]) for line in lines}, key=lambda p: p.count("/"))


def mount_own_proc() -> None:
    """Show the candidate a /proc of its own PID namespace: no other process, no environment
    of the orchestrator or of a proposer's agent to read. Best effort: some containers refuse."""
    if _libc().unshare(CLONE_NEWNS) == 0:  # a mount namespace of its own, not the supervisor's
        _libc().mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def drop_capabilities() -> None:
    """Give up, for good, the capabilities that creating the namespaces granted.

    Without this a candidate run by root (as in many containers) would be root inside its
    namespaces too, and could unmount what hides the validation data.
    """
    for cap in range(LAST_CAPABILITY + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    prctl(PR_SET_NO_NEW_PRIVS, 1)


@functools.cache
def isolation_works() -> bool:
    """Whether this system lets an unprivileged process build the namespaces (probed once)."""
    if not sys.platform.startswith("linux"):
        return False
    probe = [sys.executable, "-m", "autoresearch.harness.sandbox", "--probe"]
    try:
        return subprocess.run(probe, cwd="/", capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _probe() -> int:
    """Build the namespaces around a read-only folder, exec a check there: 0 if all held."""
    here = str(Path(__file__).parent)
    enter_namespaces(SandboxSpec([], "/", {}, "", isolate=True, network=False, readonly=[here]))
    pid = os.fork()
    if pid == 0:
        try:
            drop_capabilities()
            os.execv(sys.executable, [sys.executable, "-c", PROBE_CHECK, here])
        finally:
            os._exit(127)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _kept_flags(path: str) -> int:
    have = os.statvfs(path).f_flag
    return sum(flag for bit, flag in KEPT_FLAGS.items() if have & bit)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc().mount(enc(source), enc(target), enc(fstype), flags, enc(data or None)), target)


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"sandbox: {what}: {os.strerror(errno)}")


def prctl(option: int, value: int) -> None:
    """prctl(2) on Linux; elsewhere nothing (those protections are Linux's)."""
    if sys.platform.startswith("linux"):
        _libc().prctl(option, value, 0, 0, 0)


def confine_in_place() -> None:
    """Confine this very process (it does not exec): for the evaluator, which runs a graph.

    Its own user, mount and network namespaces, every mount read-only, and no capabilities
    left, not even those it holds now (an exec would have dropped them). No PID namespace:
    after that a process may not start threads, and torch needs them. Call it before any
    thread starts: a process with threads cannot enter a user namespace.
    """
    _unshare(CLONE_NEWNET)
    remount_everything_readonly([])
    drop_capabilities()
    # capset(2), version 3: an empty effective, permitted and inheritable set, for good.
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    _check(_libc().capset(header, (ctypes.c_uint32 * 6)()), "capset")


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        sys.exit(_probe())
    sys.exit(main(sys.argv[1]))
