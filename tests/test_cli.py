"""The command line as a user meets it: real subprocesses, real git repos."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import git
import pytest
from helpers import cli, error_line


def test_help_is_fast(tmp_path):
    t0 = time.monotonic()
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and "init" in result.stdout and "run" in result.stdout
    assert time.monotonic() - t0 < 5  # generous on a loaded machine; benchmarks measure it
    assert (
        "torch"
        not in subprocess.run(
            [sys.executable, "-c", "import sys, autoresearch.cli; print(*sys.modules)"],
            capture_output=True,
            text=True,
        ).stdout.split()
    )


def test_init_makes_a_committed_research_repo(tmp_path):
    result = cli("init", "demo", "--baseline", "tiny", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    repo = git.Repo(tmp_path / "demo")
    assert not repo.is_dirty(untracked_files=True)
    assert sorted(repo.git.ls_files().split()) == [
        ".gitignore",
        "autoresearch.toml",
        "program.md",
        "train.py",
    ]
    assert ".autoresearch/" in (tmp_path / "demo/.gitignore").read_text()
    assert "harness.handover" in (tmp_path / "demo/train.py").read_text()
    assert len(list(repo.iter_commits())) == 1


def test_debug_shows_the_traceback(tmp_path):
    result = cli("--debug", "run", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_run_records_and_prints_the_summary_and_a_failed_run_exits_non_zero(research_repo):
    (research_repo / "train.py").write_text(__import__("candidates").HONEST)
    result = cli("run", "--budget", "2", "-m", "bigram", cwd=research_repo)
    assert result.returncode == 0, result.stderr
    summary = dict(
        line.split(":", 1)
        for line in result.stdout.splitlines()
        if ":" in line and not line.startswith("---")
    )
    assert summary["status"].strip() == "keep"
    assert 0 < float(summary["val_bpb"]) < 8
    assert set(summary) >= {
        "val_bpb",
        "training_seconds",
        "total_seconds",
        "peak_vram_mb",
        "mfu_percent",
        "total_tokens_M",
        "num_steps",
        "num_params_M",
        "depth",
    }
    tsv = (research_repo / ".autoresearch/results.tsv").read_text().splitlines()
    assert tsv[1].split("\t")[3:] == ["keep", "bigram"]
    assert float(tsv[1].split("\t")[1]) == pytest.approx(float(summary["val_bpb"]), abs=1e-6)
    # A second run, one that fails: it exits non-zero, is recorded under the next id, and
    # the first record is still there.
    (research_repo / "train.py").write_text("raise SystemExit('no luck')\n")
    result = cli("run", cwd=research_repo)
    assert result.returncode == 1
    assert "crash: exit code 1: no luck" in result.stderr
    records = [
        json.loads(ln)
        for ln in (research_repo / ".autoresearch/ledger.jsonl").read_text().splitlines()
    ]
    assert [(r["id"], r["status"]) for r in records] == [("e0001", "keep"), ("e0002", "crash")]


def test_run_is_refused_while_another_experiment_trains(research_repo):
    from autoresearch.status import RunLock
    from autoresearch.workspace import state_dir

    with RunLock(state_dir(research_repo)):
        line = error_line(cli("run", cwd=research_repo))
    assert "is training in this repo" in line
    assert not (research_repo / ".autoresearch/ledger.jsonl").exists()
