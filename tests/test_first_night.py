"""A new user's first night: resume keeps its settings, the end says what happened, and the
rough edges a newcomer hits (real CLI subprocesses on real research repos)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import git
import pytest
from helpers import FROZEN, LEARNS, cli, committed, error_line, rec
from kill_resume import ledger

from autoresearch import tags
from autoresearch.errors import UserError
from autoresearch.population import Limit, limit_reached
from autoresearch.report import evolve_summary, format_table, leaderboard_rows
from autoresearch.workspace import STATE_DIR, state_dir

QUICK = ("evolve", "--population", "2", "--proposer", "random", "--calibrate", "0", "--budget", "1")


# --------------------------------------------------------------------------- the rules, pure


def test_a_resume_keeps_pinned_settings_and_refuses_other_ones():
    saved = {"run.budget_seconds": 60.0, "run.seed": 42, "evolve.max_experiments": 6,
             "evolve.proposers": ["optuna"]}  # fmt: skip
    # What autoresearch.toml said when the tag last ran, and what it says now.
    then = {"run.budget_seconds": 300.0, "run.seed": 42, "evolve.max_experiments": 0,
            "evolve.proposers": []}  # fmt: skip
    remembered = tags.TagState(saved, then)
    overrides, notes = tags.resume_overrides(remembered, then, {}, "nov21")
    assert overrides == saved  # nothing asked: everything as it started
    assert notes == []  # the toml was not edited: nothing to say

    edited = then | {"run.budget_seconds": 120.0, "evolve.proposers": ["random"]}
    overrides, notes = tags.resume_overrides(remembered, edited, {}, "nov21")
    assert overrides == saved
    assert notes == [
        "note: autoresearch.toml now says run.budget_seconds = 120.0; tag 'nov21' keeps 60.0,"
        " the value its results were measured with",
        "note: autoresearch.toml now says evolve.proposers = ['random']; tag 'nov21' keeps"
        " ['optuna'], as it started; --proposer changes it",
    ]
    raised, _ = tags.resume_overrides(remembered, then, {"evolve.max_experiments": 12}, "nov21")
    assert raised["run.budget_seconds"] == 60.0 and "evolve.max_experiments" not in raised
    same, _ = tags.resume_overrides(remembered, then, {"run.budget_seconds": 60}, "nov21")
    assert "run.budget_seconds" not in same  # asking for the same value is fine
    asked = {"run.budget_seconds": 30.0}
    with pytest.raises(UserError, match=r"with run.budget_seconds = 60.0, not 30.0.*--budget"):
        tags.resume_overrides(remembered, then, asked, "nov21")
    # Before its baseline was measured, nothing compares with it: the new budget, or the
    # toml's, is taken.
    unmeasured, _ = tags.resume_overrides(remembered, edited, asked, "nov21", measured=False)
    assert "run.budget_seconds" not in unmeasured and unmeasured["evolve.proposers"] == ["optuna"]


def test_limits_count_every_training_and_hours_over_sessions():
    records = [rec(1, None, "crash", proposer="baseline"), rec(2, 2.0, proposer="baseline"),
               rec(3, 2.1, proposer="calibrate"), rec(4, None, "invalid"), rec(5, 1.9)]  # fmt: skip
    # The failed baseline (the user's to fix) and the invalid proposal trained nothing that
    # counts; the repeat does.
    assert limit_reached(records, 0.0, max_experiments=3) == Limit(
        "reached 3 experiments", "--max-experiments 6"
    )
    assert limit_reached(records, 0.0, max_experiments=4) is None
    assert limit_reached(records, 7300.0, hours=2) == Limit("reached 2 hours", "--hours 4")
    assert limit_reached(records, 7100.0, hours=2) is None
    assert limit_reached(records[:2], 0.0, max_experiments=1).reason == "reached 1 experiment"


def test_the_summary_says_what_won_and_what_to_do_next():
    base = rec(1, 2.80, proposer="baseline", promoted=True, description="baseline")
    repeat = rec(2, 2.82, proposer="calibrate", source="s1")  # the baseline's mean: 2.81
    better = rec(3, 2.70, parent="e0001", promoted=True, description="LR 0.1 -> 0.2")
    worse = rec(4, 2.90, "discard", parent="e0003")
    resume = "autoresearch evolve --resume --tag t"
    text = evolve_summary([base, repeat, better, worse], threshold=0.03,
                          stop_reason="reached 4 experiments", resume=resume,
                          raise_with="--max-experiments 8")  # fmt: skip
    assert text.startswith("Reached 4 experiments: 4 experiments trained, the baseline, 1 noise")
    assert "2 candidates (1 keep, 1 discard)" in text
    assert (
        "Champion: e0003, 0.1100 better than the baseline e0001 (2.8100) as found"
        " (val_bpb 2.7000) (one run: not re-measured)" in text
    )
    assert "`autoresearch show e0003`" in text and "git merge autoresearch/t" in text
    assert text.endswith(f"(`{resume} --max-experiments 8`).")

    none = evolve_summary([base, repeat, worse], threshold=0.03, stop_reason="stopped by Ctrl-C",
                          resume=resume, interrupted=True)  # fmt: skip
    assert none.startswith("Stopped by Ctrl-C: ")
    assert "No candidate's mean beat the baseline's" in none
    assert "still the baseline e0001" in none
    assert none.endswith(f"Next: continue where it stopped with `{resume}`.")
    assert "in this session the device waited 0 s for proposals." in none
    slots = evolve_summary([base, repeat, worse], threshold=0.03, stop_reason="done",
                           resume=resume, idle_seconds=7.4, slots=4)  # fmt: skip
    assert "in this session the 4 slots waited 7 s (summed) for proposals." in slots
    again = rec(5, 2.76, "discard", proposer="repeat", parent="e0003", source="s3")
    remeasured = evolve_summary([base, repeat, better, worse, again], threshold=0.03,
                                stop_reason="done", resume=resume)  # fmt: skip
    assert "and 1 repeat of candidates" in remeasured
    assert "the final re-measurement guards the result" in evolve_summary(
        [base, repeat, better, worse, again], threshold=0.0, stop_reason="done", resume=resume
    )
    assert "nothing was re-measured: the champion may be one lucky run" in evolve_summary(
        [base, repeat, better, worse], threshold=0.0, stop_reason="done", resume=resume
    )
    assert "as found (val_bpb 2.7000), and 0.0800 re-measured over 2 runs (mean 2.7300)" in (
        remeasured
    )


def test_a_kept_candidate_worse_than_the_baseline_reads_as_worse():
    base = rec(1, 2.80, proposer="baseline", promoted=True)
    worse = rec(2, 2.90, parent="e0001")  # kept: it entered a population of 4
    better = rec(3, 2.70, parent="e0001")
    repeat = rec(4, 2.85, "discard", proposer="calibrate")  # noise, not a worse candidate
    everything = [base, worse, better, repeat]
    rows = leaderboard_rows(everything, everything)
    assert {r["id"]: r["worse_than_baseline"] for r in rows} == {
        "e0001": False, "e0002": True, "e0003": False, "e0004": False
    }  # fmt: skip
    table = format_table(rows)
    assert "+0.100000 worse" in next(ln for ln in table.splitlines() if "e0002" in ln)
    for other in ("e0003", "e0004"):
        assert "worse" not in next(ln for ln in table.splitlines() if other in ln)


# --------------------------------------------------------------------------- resume, for real


def test_resume_uses_the_settings_the_tag_started_with(research_repo):
    committed(research_repo, LEARNS)
    first = cli(*QUICK, "--tag", "r", "--max-experiments", "2", cwd=research_repo)
    assert first.returncode == 0, first.stderr
    assert "stops after 2 experiments (the baseline and 0 noise repeats included)" in first.stderr
    assert len(ledger(research_repo)) == 2

    # At its limit: one line, exit 0, nothing trained.
    done = cli("evolve", "--resume", "--tag", "r", cwd=research_repo)
    assert done.returncode == 0, done.stderr
    assert "tag 'r' already reached 2 experiments: nothing to do" in done.stdout
    assert len(ledger(research_repo)) == 2
    # What this command line asks for is still checked, though nothing will train.
    bad = cli("evolve", "--resume", "--tag", "r", "--proposer", "nosuch", cwd=research_repo)
    assert "unknown proposer 'nosuch'" in error_line(bad)

    # Another budget is refused in one line, and nothing is lost.
    line = error_line(cli("evolve", "--resume", "--tag", "r", "--budget", "5", cwd=research_repo))
    assert "tag 'r' was started with run.budget_seconds = 1.0, not 5.0" in line
    assert "start a new tag" in line

    # Raising the limit goes on with the remembered budget, proposer and population.
    more = cli("evolve", "--resume", "--tag", "r", "--max-experiments", "3", cwd=research_repo)
    assert more.returncode == 0, more.stderr
    assert "population 2, proposers random, 1 s per experiment" in more.stderr
    records = ledger(research_repo)
    assert len(records) == 3 and records[-1]["proposer"] == "random"
    saved = json.loads((research_repo / STATE_DIR / "tags" / "r.json").read_text())
    assert saved["settings"]["evolve.max_experiments"] == 3
    assert saved["elapsed_seconds"] > 0

    # A ledger that lost records is refused, not started over.
    ledger_file = research_repo / STATE_DIR / "ledger.jsonl"
    whole = ledger_file.read_text()
    ledger_file.write_text("".join(whole.splitlines(keepends=True)[:1]))
    line = error_line(cli("evolve", "--resume", "--tag", "r", cwd=research_repo))
    assert "the ledger holds 1 records of tag 'r', but 3 were recorded: restore" in line
    ledger_file.write_text(whole)

    # A tag from before tags remembered anything goes on with today's settings, and says so.
    (research_repo / STATE_DIR / "tags" / "r.json").unlink()
    old = cli("evolve", "--resume", "--tag", "r", "--max-experiments", "3", cwd=research_repo)
    assert old.returncode == 0 and "tag 'r' already reached 3 experiments" in old.stdout
    assert "note: tag 'r' does not remember its settings" in old.stderr


# --------------------------------------------------------------------------- rough edges


def test_evolve_refuses_a_committed_train_py_that_does_not_parse(research_repo):
    committed(research_repo, "def broken(:\n    pass\n")
    line = error_line(cli(*QUICK, cwd=research_repo))
    assert line == (
        "error: the committed train.py line 1: invalid syntax: fix it, commit it and run again"
    )
    assert ledger(research_repo) == []


def test_a_second_evolve_prints_only_the_refusal(research_repo):
    committed(research_repo, LEARNS)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from autoresearch.status import RunLock;"
         " from pathlib import Path\nwith RunLock(Path(sys.argv[1])):\n print('held', flush=True);"
         " time.sleep(60)", str(state_dir(research_repo))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli(*QUICK, cwd=research_repo)
    finally:
        holder.kill()
        holder.wait()
    assert error_line(result).startswith("error: another `autoresearch evolve` or `run`")
    assert "evolve " not in result.stderr.split("error:")[0]  # no banner of a new tag first


def test_evolve_output_reads_as_a_lineage_in_git_log(research_repo):
    committed(research_repo, FROZEN)
    result = cli(*QUICK, "--population", "1", "--tag", "g", "--max-experiments", "3",
                 cwd=research_repo)  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = ledger(research_repo)
    with git.Repo(research_repo) as r:
        log = r.git.log("--graph", "--all", "--oneline")
        for record in records[1:]:
            if record["status"] == "invalid":
                continue
            branch = r.heads[f"autoresearch/g-candidates/{record['id']}"].commit
            # The result commit: the score in its subject, the trained commit as its parent.
            assert branch.summary.startswith(f"{record['id']} ")
            assert branch.parents[0].hexsha == record["commit"]
            assert branch.tree == branch.parents[0].tree
            assert f"{record['id']}: " in branch.parents[0].summary
            if record["val_bpb"] is not None:
                assert f"{record['id']} val_bpb {record['val_bpb']:.4f}" in log
        champion = next(x for x in reversed(records) if x["promoted"])
        tip = r.heads["autoresearch/g"].commit
        assert champion["commit"] in (tip.hexsha, tip.parents[0].hexsha if tip.parents else "")
    assert "Champion" in result.stdout or "No candidate's mean beat" in result.stdout

    # A kill between a record and its result commit: the resume makes the commit.
    last = next(x for x in reversed(records) if x["status"] != "invalid" and x["parent"])
    with git.Repo(research_repo) as r:
        r.create_head(f"autoresearch/g-candidates/{last['id']}", last["commit"], force=True)
    more = cli("evolve", "--resume", "--tag", "g", "--max-experiments", "4", cwd=research_repo)
    assert more.returncode == 0, more.stderr
    with git.Repo(research_repo) as r:
        mended = r.heads[f"autoresearch/g-candidates/{last['id']}"].commit
        assert mended.parents[0].hexsha == last["commit"]
        assert mended.summary.startswith(f"{last['id']} ")


def no_torch_in_the_orchestrator(repo, args: tuple[str, ...]) -> None:
    """Run `autoresearch ARGS`, one experiment of the committed train.py, and check that the
    orchestrator never imported torch: it costs 2 s and 200 MB, and only the candidate and
    evaluator load it (the test repo names device = "cpu"; with "auto", a CUDA build of
    torch is asked)."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
        "from autoresearch.cli import main\nsys.argv = ['autoresearch', *sys.argv[1:]]\nmain()\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=repo,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(ledger(repo)) == 1 and ledger(repo)[0]["status"] == "keep"
    assert "torch imported: False" in result.stdout


def test_plot_and_export_leave_the_research_repo_clean(research_repo):
    """Plot and export write under .autoresearch/ only. The evolve before them is also the
    check that evolve's orchestrator never imports torch: one experiment trained for both."""
    committed(research_repo, LEARNS)
    no_torch_in_the_orchestrator(research_repo, (*QUICK, "--max-experiments", "1"))
    for args in (("plot",), ("export",), ("export", "--format", "jsonl"),
                 ("export", "--format", "parquet")):  # fmt: skip
        result = cli(*args, cwd=research_repo)
        assert result.returncode == 0, result.stderr
    with git.Repo(research_repo) as r:
        assert r.git.status("--porcelain") == ""
    state = research_repo / STATE_DIR
    assert (state / "progress.png").is_file()
    assert {p.name for p in (state / "exports").iterdir()} == {
        "results.tsv", "ledger.jsonl", "ledger.parquet"
    }  # fmt: skip
    line = error_line(cli("export", "--format", "jsonl", "-o", str(state / "ledger.jsonl"),
                          cwd=research_repo))  # fmt: skip
    assert "is the ledger itself" in line


def test_no_llm_key_is_said_before_litellm_or_torch_is_imported(research_repo):
    committed(research_repo, LEARNS)
    code = (
        "import sys\nfrom autoresearch.cli import main\n"
        "sys.argv = ['autoresearch', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('imported:', *sorted(m for m in ('litellm', 'torch') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    result = subprocess.run(
        [sys.executable, "-c", code, "evolve", "--proposer", "llm:openai/gpt-4o"],
        cwd=research_repo, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    expected = "error: OPENAI_API_KEY is not set: export it or pick another proposer"
    assert result.stderr.strip() == expected
    assert result.stdout.strip() == "imported:"


def test_no_torch_in_the_orchestrator(research_repo):
    """`run`'s; `evolve`'s is checked by the plot and export test, on the experiment it
    trains anyway."""
    committed(research_repo, LEARNS)
    no_torch_in_the_orchestrator(research_repo, ("run", "--budget", "1"))


def test_auto_device_is_told_without_torch_for_a_cpu_build():
    import importlib

    import torch

    context = importlib.import_module("autoresearch.harness.context")
    # The build's version file, read as text, says what importing torch would say.
    assert context._accelerator_possible() is bool(torch.version.cuda or torch.version.hip)
