"""`leaderboard`, `plot`, `show`, `export` and `status` through the real entry point.

The commands run in-process through `autoresearch.cli.main` (the console
script), so stdout, stderr and the exit code are what a user sees, one-line
errors included; a live run is a real process holding the engine's lock.
"""

from __future__ import annotations

import json
import subprocess
import sys

import git
import pytest
from helpers import CANDIDATES, MANUAL, TAG, error_line, live_run, make_research

from autoresearch.cli import main

ROW_KEYS = {
    "rank", "id", "tag", "status", "reason", "val_bpb", "mean", "runs", "delta", "baseline",
    "memory_gb",
    "proposer", "parent", "lineage_depth", "description", "commit", "promoted", "champion",
    "worse_than_baseline", "cost_usd", "training_seconds", "created",
}  # fmt: skip
EMPTY = "error: no experiments yet: run `autoresearch run`"


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    return make_research(tmp_path_factory.mktemp("cli-report"))


@pytest.fixture
def run(research, capsys, monkeypatch):
    """`run("leaderboard", "--json")` -> (exit code, stdout, stderr), in the research repo."""

    def invoke(*args: str, cwd=None):
        monkeypatch.chdir(cwd or research.repo)
        monkeypatch.setattr(sys, "argv", ["autoresearch", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def one_line_error(code: int, err: str) -> str:
    """`helpers.error_line` of an in-process run."""
    return error_line(subprocess.CompletedProcess(["autoresearch"], code, "", err))


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_shows_the_population_best_first(run):
    code, out, err = run("leaderboard")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["rank", "candidate", "val_bpb", "runs", "delta"]
    assert [line.split()[1] for line in lines[2:]] == ["c0005*", "c0006"]  # population 2
    assert "1.400000" in lines[2] and "-0.100000" in lines[2] and "llm:test/model" in lines[2]
    assert "population of 'mar5' (2 of 7 experiments" in err


def test_leaderboard_json_is_clean_and_follows_the_schema(run):
    code, out, err = run("leaderboard", "--json", "--all", "--tag", TAG)
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert [row["id"] for row in rows] == [
        "c0005", "c0006", "c0007", "c0002", "c0003", "c0001", "c0004"
    ]  # fmt: skip
    for row in rows:
        assert set(row) == ROW_KEYS
        assert isinstance(row["lineage_depth"], int) and isinstance(row["champion"], bool)
        assert isinstance(row["worse_than_baseline"], bool)
    best, crash = rows[0], rows[-1]
    assert best["rank"] == 1 and best["val_bpb"] == 1.4 and best["delta"] == -0.1
    assert best["baseline"] == "c0001" and best["parent"] == "c0002" and best["champion"]
    assert best["cost_usd"] == pytest.approx(0.1) and best["memory_gb"] == pytest.approx(1.4)
    assert crash["rank"] is None and crash["val_bpb"] is None and crash["delta"] is None
    assert crash["reason"] == "RuntimeError: boom"


def test_leaderboard_github_format_status_and_limit(run):
    code, out, _ = run("leaderboard", "--all", "--status", "keep", "--format", "github")
    assert code == 0
    lines = out.splitlines()
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert len(lines) == 2 + 5 + len(MANUAL)  # header, rule, every kept experiment of both tags
    assert [cell.strip() for cell in lines[2].split("|")[1:4]] == ["1", "mar5/c0005*", "1.400000"]
    assert [cell.strip() for cell in lines[-1].split("|")[1:3]] == ["7", "e0001"]  # tag ""
    code, out, _ = run("leaderboard", "--status", "keep", "--limit", "2", "--format", "github")
    assert [line.split("|")[2].strip() for line in out.splitlines()[2:]] == ["c0005*", "c0006"]


def test_leaderboard_of_run_records_and_every_tag(run):
    code, out, _ = run("leaderboard", "--json", "--tag", "")
    assert code == 0
    assert [row["id"] for row in json.loads(out)] == ["e0002", "e0001"]
    code, out, _ = run("leaderboard", "--json", "--all")
    assert len(json.loads(out)) == len(MANUAL) + len(CANDIDATES)


def test_leaderboard_bad_input_is_one_line(run):
    code, _, err = run("leaderboard", "--format", "githubb")
    assert "unknown table format 'githubb' (did you mean 'github'?)" in one_line_error(code, err)
    code, _, err = run("leaderboard", "--tag", "mar6")
    assert "did you mean 'mar5'" in one_line_error(code, err)


# --------------------------------------------------------------------------- show


def test_show_prints_the_exact_diff_against_the_parent(run, research):
    code, out, _ = run("show", "c0007")
    assert code == 0
    expected = git.Repo(research.repo).git.diff(
        research.commits["c0003"], research.commits["c0007"], "--", "train.py"
    )
    assert "\n" + expected + "\n" in out and "\x1b[" not in out  # no colour off a terminal
    assert "lineage (3 back to the baseline):" in out
    assert [line.split()[0] for line in out.split("lineage (3 back")[1].splitlines()[1:5]] == [
        "c0007", "c0003", "c0002", "c0001"
    ]  # fmt: skip


def test_show_masks_a_key_of_its_environment_that_the_candidate_printed(run, tmp_path, monkeypatch):
    key = "sk-live-0123456789abcdefXYZ"
    own = make_research(tmp_path)
    with (own.state / "runs" / "c0007" / "run.log").open("a") as log:
        log.write(f"found OPENAI_API_KEY={key} in .env\n")  # read from a file it could read
    monkeypatch.setenv("OPENAI_API_KEY", key)
    code, out, _ = run("show", "c0007", cwd=own.repo)
    assert code == 0 and key not in out and "found OPENAI_API_KEY=[redacted] in .env" in out


def test_show_unknown_candidate_suggests_the_closest(run):
    code, _, err = run("show", "c0017")
    line = one_line_error(code, err)
    assert line.startswith("error: no experiment 'c0017' (did you mean 'c0007'?)")


# --------------------------------------------------------------------------- plot


def test_plot_writes_a_png(run, tmp_path):
    path = tmp_path / "night.png"
    code, out, _ = run("plot", "-o", str(path))
    assert code == 0 and f"wrote {path} (7 experiments)" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_to_an_unwritable_path_is_one_line(run, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = run("plot", "-o", str(tmp_path / "file" / "progress.png"))
    assert "cannot write" in one_line_error(code, err)


# --------------------------------------------------------------------------- export


def test_export_formats(run, research, tmp_path):
    code, out, _ = run("export", "-o", "-")
    assert code == 0 and out.splitlines()[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert len(out.splitlines()) == 1 + len(MANUAL) + len(CANDIDATES)

    code, _, err = run("export", "--format", "parquet")
    default = research.repo / ".autoresearch" / "exports" / "ledger.parquet"  # git-ignored
    assert code == 0 and f"wrote 9 experiments to {default}" in err
    import pyarrow.parquet as pq

    table = pq.read_table(default)
    assert table.column("id").to_pylist() == [r.id for r in research.ledger.records()]

    code, out, _ = run("export", "--format", "jsonl", "-o", "-")
    assert [json.loads(line)["id"] for line in out.splitlines()] == table.column("id").to_pylist()

    code, _, err = run("export", "--format", "parquet", "-o", "-")
    assert "parquet is binary" in one_line_error(code, err)


# --------------------------------------------------------------------------- status


def test_status_tells_a_live_run_from_a_finished_one(run, research, tmp_path):
    import time

    now = time.time()
    status = {
        "tag": TAG, "started": now - 600,
        "phase": "training", "training": {"c0008": now - 30}, "budget_seconds": 300.0,
        "experiments_done": 7, "best": {"id": "c0005", "val_bpb": 1.4}, "spend_usd": 0.56,
    }  # fmt: skip
    with live_run(research.state, status) as pid:
        code, out, _ = run("status")
        assert code == 0
        assert out.startswith(f"evolve is running: tag 'mar5', pid {pid}, for 10 min")
        assert "experiment c0008: training, 30 of 300 s (10%)" in out
        assert "best so far: c0005 val_bpb 1.400000" in out and "spend so far: $0.56" in out
        code, out, _ = run("status", "--json")
        assert json.loads(out)["running"] is True and json.loads(out)["pid"] == pid
        code, out, _ = run("leaderboard", "--json")  # read-only: fine while the run goes on
        assert code == 0 and json.loads(out)[0]["id"] == "c0005"
    code, out, _ = run("status")
    assert code == 0 and out.startswith("no evolve run is going (the last one, tag 'mar5'")
    assert "last experiment: mar5/c0007 keep val_bpb 1.440000" in out
    (research.state / "status.json").unlink()
    (research.state / "evolve.lock").unlink()


# --------------------------------------------------------------------------- empty ledger


@pytest.mark.parametrize(
    "args", [("leaderboard",), ("plot",), ("show", "c0001"), ("export",), ("status",)]
)
def test_empty_ledger_is_one_line_everywhere(run, tmp_path, args):
    from autoresearch.workspace import init_repo

    repo = init_repo(tmp_path / "fresh", "tiny")
    code, out, err = run(*args, cwd=repo)
    assert one_line_error(code, err) == EMPTY and out == ""
    assert not (repo / "progress.png").exists() and not (repo / "results.tsv").exists()


def test_help_lists_the_commands_and_stays_light():
    code = "import sys, autoresearch.cli; print(*sys.modules)"
    modules = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not {"matplotlib", "pyarrow", "tabulate", "git"} & set(modules)
    from click.testing import CliRunner

    from autoresearch.cli import cli

    out = CliRunner().invoke(cli, ["--help"]).output
    for command in ("leaderboard", "plot", "show", "export", "status", "serve"):
        assert f"  {command} " in out


def test_the_documented_json_schema_is_the_real_one(run):
    import re
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "report.md").read_text(encoding="utf-8")
    table = docs.split("### JSON schema", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    assert len(documented) == len(set(documented)) and set(documented) == ROW_KEYS
    _, out, _ = run("leaderboard", "--json", "--all")
    assert all(list(row) == documented for row in json.loads(out))  # same keys, same order
