"""Orchestrator faults: stop `autoresearch evolve` at an instant, resume it, check what survived.

    for plan in plan_trials(3, seed=1):
        trial = kill_and_resume(make_trial_repo(folder, corpus), plan)
        assert not trial.problems(), trial.problems()

Shared by tests/test_faults.py (a handful of trials in CI) and
benchmarks/kill_trials.py (the full twenty, as a table). One trial:

1. `evolve` starts in a fresh repo with no experiment limit, so the signal
   always lands while it works (on the baseline, a candidate, a proposal, a
   commit or a ledger append: wherever the instant falls);
2. at the instant it gets SIGKILL (the evolve process alone, as the kernel's
   OOM killer or `kill -9` would: its children must die by themselves) or
   SIGINT (its whole process group, as Ctrl-C in a terminal: the experiment
   in progress is finished, then it stops);
3. `evolve --resume` runs until `extra` more experiments are trained;
4. the checks: no finished record lost or rewritten, no duplicate, no process
   of the run left after the stop or after the resume, no stale state (a
   `pgid` file, a candidate branch without a record, a git lock file, a second
   worktree, a held run lock), the research branch at the champion, the
   user's checkout untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gc
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import git

from autoresearch.ledger import Ledger, Record
from autoresearch.population import champion, trained
from autoresearch.runner import die_with_parent
from autoresearch.workspace import LOCK_FILE, branch_sha, candidate_branch, research_branch

# Small and fast: two candidates alive, the offline random proposer, 1 s of training each.
EVOLVE = ("evolve", "--population", "2", "--proposer", "random", "--budget", "1",
          "--calibrate", "0")  # fmt: skip
TAG = "k"
SIGNALS = ("SIGKILL", "SIGINT")  # trials alternate between them
HORIZON_SECONDS = 15.0  # instants fall in (0.5 s, this]: the baseline and the first candidates
STOP_SECONDS = 180.0  # after SIGINT, evolve finishes the experiment in progress within this
RESUME_SECONDS = 300.0
GONE_SECONDS = 10.0  # processes of a stopped run must be gone within this
# How evolve may end: SIGKILL leaves no choice; after SIGINT it stops cleanly (0), or says
# "interrupted" (130) when the signal came before its handler, or dies of it during imports.
EXPECTED_EXIT = {"SIGKILL": (-signal.SIGKILL,), "SIGINT": (0, 130, -signal.SIGINT)}


def ledger(repo: Path) -> list[dict]:
    """Finished records (a torn last line from a kill is skipped by the reader)."""
    return [dataclasses.asdict(r) for r in Ledger(repo / ".autoresearch/ledger.jsonl").records()]


def processes_of(folder: Path) -> list[int]:
    """Live processes that belong to `folder`: their working directory, command line or
    environment names it.

    Found this way rather than from pid files: a candidate inside the sandbox's PID namespace
    does not know its pid outside, and a daemon may chdir to / and leave its process group,
    but it keeps the environment the runner gave it (the run folder's context.json).
    """
    needle = str(folder).encode()
    return [
        int(pid)
        for pid in filter(str.isdigit, os.listdir("/proc"))
        if int(pid) != os.getpid()
        and not _is_zombie(Path("/proc", pid))
        and needle in _description(Path("/proc", pid))
    ]


def _description(proc: Path) -> bytes:
    """A process's working directory, command line and environment, as far as readable."""
    parts = []
    with contextlib.suppress(OSError):  # gone meanwhile, or another user's process
        parts.append(os.readlink(proc / "cwd").encode())
    for name in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            parts.append((proc / name).read_bytes())
    return b"\0".join(parts)


def _is_zombie(proc: Path) -> bool:
    """A zombie has exited (only its exit status is left for its parent): it is no orphan."""
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone


def describe(pids: list[int]) -> list[str]:
    """`pid (parent ppid): command line` of each process, to say in a failure what was left."""
    described = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            cmdline, ppid = b"(gone)", "?"
        described.append(f"{pid} (parent {ppid}): {cmdline.decode(errors='replace')[:120]}")
    return described


def wait_gone(folder: Path, seconds: float = GONE_SECONDS) -> list[int]:
    """The processes of `folder` still alive after waiting up to `seconds` for them to end."""
    # This process's own git readers (GitPython repos left to the cyclic garbage collector,
    # as init_repo's) run in the repo too: collected, they end, and are no run's orphans.
    gc.collect()
    deadline = time.monotonic() + seconds
    while (left := processes_of(folder)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill_all(pids: list[int]) -> None:
    """Clean up after a failed check, so one failure does not leave processes behind."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def make_trial_repo(folder: Path, corpus: Path) -> Path:
    """A prepared research repo whose committed train.py is the tests' learning bigram."""
    from conftest import make_research_repo
    from helpers import LEARNS, committed

    repo = make_research_repo(folder, corpus)
    committed(repo, LEARNS)
    return repo


@dataclass(frozen=True)
class Plan:
    number: int
    signal: str  # a name in SIGNALS
    instant: float  # seconds after evolve started (or after `when_training` experiments train)
    when_training: int = 0  # >0: count the instant from when status.json shows this many training


def plan_trials(trials: int, seed: int, horizon: float = HORIZON_SECONDS) -> list[Plan]:
    """`trials` seeded random instants, alternating SIGKILL and SIGINT."""
    rng = random.Random(seed)
    return [
        Plan(i + 1, SIGNALS[i % len(SIGNALS)], round(rng.uniform(0.5, horizon), 2))
        for i in range(trials)
    ]


@dataclass
class Trial:
    plan: Plan
    exit_code: int | None = None  # of the signalled evolve (None: it was still running)
    resumed: bool = True  # False: stopped before the tag existed, so started afresh
    before: list[dict] = field(default_factory=list)  # finished records after the stop
    after: list[dict] = field(default_factory=list)  # ... and after the resume
    orphans: list[str] = field(default_factory=list)  # after the stop, then after the resume
    stale: list[str] = field(default_factory=list)
    branch_ok: bool = False
    target: int = 0  # trained experiments the resume was to reach
    errors: list[str] = field(default_factory=list)  # what went wrong with evolve itself
    training_at_signal: list[str] = field(default_factory=list)  # per status.json, then

    @property
    def lost(self) -> int:
        return sum(r not in self.after for r in self.before)  # a rewritten record is lost too

    @property
    def duplicates(self) -> int:
        """Ids recorded twice, and commits trained twice (under two ids)."""
        ids = [r["id"] for r in self.after]
        commits = [r["commit"] for r in self.after if r["status"] != "invalid"]
        return len(ids) - len(set(ids)) + len(commits) - len(set(commits))

    def problems(self) -> list[str]:
        """Everything this trial shows wrong; empty when the run survived the signal."""
        found = list(self.errors)
        trained = sum(r["status"] != "invalid" for r in self.after)
        checks = [
            (self.lost, f"{self.lost} finished records lost or rewritten"),
            (self.duplicates, f"{self.duplicates} duplicate records"),
            (self.orphans, f"processes outlived the run: {self.orphans}"),
            (self.stale, f"stale state: {', '.join(self.stale)}"),
            (not self.branch_ok, "the research branch is not at the champion"),
            (trained < self.target, f"the resumed run trained {trained} of {self.target}"),
        ]  # fmt: skip
        return found + [message for failed, message in checks if failed]

    def row(self) -> list:
        p = self.plan
        return [
            p.number, p.signal, p.instant, self.exit_code, "yes" if self.resumed else "fresh",
            len(self.before), len(self.after), self.lost, self.duplicates, len(self.orphans),
            len(self.stale), "yes" if self.branch_ok else "NO",
        ]  # fmt: skip


ROW_HEADERS = ["trial", "signal", "instant s", "exit", "resumed", "records before",
               "records after", "lost", "duplicates", "orphans", "stale", "branch ok"]  # fmt: skip


def kill_and_resume(
    repo: Path, plan: Plan, extra: int = 1, options: tuple = (), gone: float = GONE_SECONDS
) -> Trial:
    """Signal `evolve` at `plan.instant`, resume it for `extra` more trained experiments;
    `options`: more of evolve's options (`--slots 2`), for both; `gone`: the seconds its
    processes have to end after each."""
    trial = Trial(plan)
    log = repo.parent / f"evolve-{plan.number}.log"  # outside the repo: stderr, for diagnosis
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearch", *EVOLVE, *options, "--tag", TAG],
            cwd=repo, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,  # a process group of its own, as a terminal's foreground job
            preexec_fn=die_with_parent,  # an interrupted test or benchmark leaves no evolve
        )  # fmt: skip
    try:
        trial.exit_code = _signal_at(proc, plan, repo, trial)
    finally:
        if proc.poll() is None:
            proc.kill()
            trial.errors.append(f"evolve did not stop {STOP_SECONDS:.0f} s after {plan.signal}")
        proc.wait()
    if trial.exit_code not in (None, *EXPECTED_EXIT[plan.signal]):
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        trial.errors.append(f"evolve exited {trial.exit_code} ({plan.signal}): {tail}")
    trial.before = ledger(repo)
    left = wait_gone(repo, gone)
    trial.orphans = describe(left)
    kill_all(left)

    trial.resumed = any(r["tag"] == TAG for r in trial.before) or bool(
        branch_sha(repo, research_branch(TAG))
    )
    trial.target = trained([Record.from_dict(r) for r in trial.before]) + extra
    resume = ("--resume",) if trial.resumed else ()
    result = subprocess.run(
        [sys.executable, "-m", "autoresearch", *EVOLVE, *options, "--tag", TAG, *resume,
         "--max-experiments", str(trial.target)],
        cwd=repo, capture_output=True, text=True, timeout=RESUME_SECONDS,
    )  # fmt: skip
    if result.returncode != 0:
        trial.errors.append(f"the resume failed ({result.returncode}): {result.stderr[-500:]}")
    trial.after = ledger(repo)
    left = wait_gone(repo, gone)
    trial.orphans += describe(left)
    kill_all(left)
    trial.stale = stale_state(repo, trial.after)
    best = champion(Ledger(repo / ".autoresearch/ledger.jsonl").records())
    trial.branch_ok = best is not None and branch_trains(repo, research_branch(TAG), best.commit)
    return trial


def branch_trains(repo: Path, branch: str, commit: str) -> bool:
    """Whether `branch` is `commit`, or its result commit: the same tree, `commit` its parent."""
    with git.Repo(repo) as r:
        if branch not in r.heads:
            return False
        tip = r.heads[branch].commit
        return tip.hexsha == commit or (
            [p.hexsha for p in tip.parents] == [commit] and tip.tree == tip.parents[0].tree
        )


def _signal_at(proc: subprocess.Popen, plan: Plan, repo: Path, trial: Trial) -> int | None:
    """Send the plan's signal at its instant; the exit code evolve ended with, if it did."""
    started = time.monotonic()
    while plan.when_training and len(_training(repo)) < plan.when_training:
        if proc.poll() is not None or time.monotonic() - started > STOP_SECONDS:
            return proc.poll()
        time.sleep(0.02)
    started = time.monotonic()
    while time.monotonic() - started < plan.instant:
        if proc.poll() is not None:  # ended by itself (it has no limit): not an expected exit
            return proc.returncode
        time.sleep(0.02)
    trial.training_at_signal = sorted(_training(repo))
    if plan.signal == "SIGKILL":
        proc.kill()
    else:
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        return proc.wait(timeout=STOP_SECONDS)
    return None


def _training(repo: Path) -> dict:
    """The experiments status.json says are training now."""
    try:
        return json.loads((repo / ".autoresearch/status.json").read_text()).get("training", {})
    except (OSError, ValueError):
        return {}


def stale_state(repo: Path, records: list[dict]) -> list[str]:
    """What a finished run must not leave behind, each as a short description."""
    state = repo / ".autoresearch"
    stale = [f"pgid file {p.parent.name}" for p in state.glob("runs/*/pgid")]
    recorded = {r["id"] for r in records}
    prefix = candidate_branch(TAG, "")
    commits = {r["id"]: r["commit"] for r in records if r["tag"] == TAG}
    with git.Repo(repo) as r:
        stale += [
            f"unrecorded branch {h.name}"
            for h in r.heads
            if h.name.startswith(prefix) and h.name[len(prefix) :] not in recorded
        ]
        # A kill between a record and its result commit is mended by the resume.
        stale += [
            f"branch {h.name} has no result commit"
            for h in r.heads
            if h.name.startswith(prefix) and h.commit.hexsha == commits.get(h.name[len(prefix) :])
        ]
        if r.is_dirty() or r.active_branch.name != "main":
            stale.append("the user's checkout was changed")
        worktrees = r.git.worktree("list", "--porcelain").count("worktree ")
    stale += [f"git lock {p.relative_to(repo)}" for p in (repo / ".git").rglob("*.lock")]
    if worktrees != 1:
        stale.append(f"{worktrees - 1} extra git worktrees")
    with open(state / LOCK_FILE, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: a new evolve could start
        except BlockingIOError:
            stale.append("the run lock is held")
    return stale
