"""`autoresearch evolve` as a user runs it: real subprocesses, SIGKILL, --resume."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import git
import pytest
from test_cli import cli, one_line_error
from test_engine import LEARNS, committed

from autoresearch.constants import rewrite_constants
from autoresearch.ledger import Ledger
from autoresearch.workspace import research_branch

EVOLVE = (
    "evolve",
    "--population",
    "2",
    "--proposer",
    "random",
    "--budget",
    "1",
    "--calibrate",
    "0",
)


def ledger(repo: Path) -> list[dict]:
    """Finished records (a torn last line from the kill is skipped by the reader)."""
    return [dataclasses.asdict(r) for r in Ledger(repo / ".autoresearch/ledger.jsonl").records()]


def processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is inside `folder`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(folder)):
                found.append(int(pid))
        except OSError:
            continue
    return found


def kill_and_resume_once(repo: Path, seed: int) -> None:
    """SIGKILL evolve at a random instant after its first record, then --resume to the end."""
    rng = random.Random(seed)
    cmd = [sys.executable, "-m", "autoresearch", *EVOLVE, "--tag", "k", "--max-experiments", "4"]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ledger(repo) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(rng.uniform(0, 6))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = ledger(repo)
    time.sleep(0.5)  # the kernel delivers the parent-death signals
    runs = repo / ".autoresearch/runs"
    assert processes_in(runs) == [], "a training or evaluation process outlived evolve"

    result = cli(
        "evolve", "--resume", "--tag", "k", "--budget", "1", "--max-experiments", "4", cwd=repo
    )
    assert result.returncode == 0, result.stderr
    after = ledger(repo)
    assert after[: len(before)] == before  # nothing finished was lost or rewritten
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids))  # no duplicate record
    trained = [r for r in after if r["status"] != "invalid"]
    assert len(trained) == 4
    best = [r for r in after if r["promoted"]][-1]
    repo_git = git.Repo(repo)
    assert repo_git.heads[research_branch("k")].commit.hexsha == best["commit"]
    assert not repo_git.is_dirty() and repo_git.active_branch.name == "main"
    assert not list(runs.glob("*/pgid")) and processes_in(runs) == []


def test_sigkill_at_a_random_instant_then_resume(research_repo):
    committed(research_repo, LEARNS)
    kill_and_resume_once(research_repo, seed=int(os.environ.get("AUTORESEARCH_TEST_SEED", "1")))


def test_evolve_runs_out_of_the_box_and_prints_a_line_per_experiment(research_repo):
    committed(research_repo, LEARNS)
    result = cli(*EVOLVE, "--max-experiments", "3", cwd=research_repo)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("e0")]
    assert len(lines) >= 3 and "baseline" in lines[0] and "promoted" in lines[0]
    assert "best: e0001" in result.stdout or "best: e0" in result.stdout


@pytest.mark.parametrize(
    ("args", "setup", "expected"),
    [
        (("evolve", "--population", "0"), None, "'evolve.population' must be positive"),
        (
            ("evolve", "--proposer", "optunaa"),
            None,
            "unknown proposer 'optunaa' (did you mean 'optuna'?)",
        ),
        (("evolve",), "dirty", "train.py has uncommitted changes"),
        (("evolve", "--resume"), None, "nothing to resume"),
        (("evolve", "--resume", "--tag", "nope"), "ran", "no evolve run tagged 'nope'"),
        (("evolve", "--tag", "x"), "ran", "tag 'x' exists"),
        (("evolve", "--tag", "bad tag"), None, "cannot name a git branch"),
    ],
)
def test_evolve_bad_input_gets_one_clear_line(research_repo, args, setup, expected):
    committed(research_repo, LEARNS)
    if setup == "dirty":
        (research_repo / "train.py").write_text(rewrite_constants(LEARNS, {"LR": 0.3}))
    elif setup == "ran":
        assert (
            cli(*EVOLVE, "--tag", "x", "--max-experiments", "1", cwd=research_repo).returncode == 0
        )
    assert expected in one_line_error(cli(*args, cwd=research_repo))


def test_first_ctrl_c_finishes_the_experiment_then_stops_with_a_leaderboard(research_repo):
    committed(research_repo, LEARNS)
    cmd = [sys.executable, "-m", "autoresearch", *EVOLVE, "--tag", "c"]
    proc = subprocess.Popen(
        cmd, cwd=research_repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not ledger(research_repo) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the next candidate is training now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "finishing the current experiment" in out and "stopping: stopped by Ctrl-C" in out
    assert "best: e0001" in out or "best: e0" in out
    assert "val_bpb" in out.split("stopping:")[1]  # the leaderboard after stopping
    records = ledger(research_repo)
    assert len(records) >= 2  # the experiment in progress was finished and recorded
    assert not list((research_repo / ".autoresearch/runs").glob("*/pgid"))
    assert processes_in(research_repo / ".autoresearch/runs") == []
