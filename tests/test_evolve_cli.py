"""`autoresearch evolve` as a user runs it: real subprocesses, Ctrl-C, bad input.

SIGKILL and SIGINT at random instants followed by --resume are in test_faults.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from helpers import LEARNS, cli, committed, error_line
from kill_resume import EVOLVE, ledger, wait_gone

from autoresearch.constants import rewrite_constants


def test_evolve_runs_out_of_the_box_and_prints_a_line_per_experiment(research_repo):
    committed(research_repo, LEARNS)
    result = cli(*EVOLVE, "--max-experiments", "3", cwd=research_repo)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("e0")]
    assert len(lines) >= 3 and "baseline" in lines[0] and "promoted" in lines[0]
    assert "Reached 3 experiments: 3 experiments trained, the baseline," in result.stdout
    assert "Champion: e0" in result.stdout or "still the baseline e0001" in result.stdout
    assert "Next: " in result.stdout.splitlines()[-1]


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
    assert expected in error_line(cli(*args, cwd=research_repo))


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
    assert proc.returncode == 130, err  # 128 + SIGINT: stopped, not finished
    assert "finishing the current experiment" in out and "stopping: stopped by Ctrl-C" in out
    assert "val_bpb" in out.split("stopping:")[1]  # the leaderboard after stopping
    assert out.splitlines()[-1] == (
        "Next: continue where it stopped with `autoresearch evolve --resume --tag c`."
    )
    records = ledger(research_repo)
    assert len(records) >= 2  # the experiment in progress was finished and recorded
    assert not list((research_repo / ".autoresearch/runs").glob("*/pgid"))
    assert wait_gone(research_repo) == []
