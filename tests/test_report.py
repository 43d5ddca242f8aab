"""Leaderboard rows, `show`, exports and run status, on real ledgers in real research repos.

The research repo is what an evolve run leaves behind, built by `helpers.make_research`.
"""

from __future__ import annotations

import dataclasses
import json

import git
import pytest
from helpers import CANDIDATES, MANUAL, TAG, Research, make_research

from autoresearch.errors import UserError
from autoresearch.ledger import Ledger, Record
from autoresearch.population import CALIBRATE, lineage
from autoresearch.report import (
    EMPTY_LEDGER,
    baseline,
    export,
    find_record,
    format_status,
    format_table,
    leaderboard_rows,
    load_records,
    read_parquet,
    select,
    show_text,
)
from autoresearch.status import EvolveStatus, RunStatus, run_status


@pytest.fixture(scope="module")
def research(tmp_path_factory) -> Research:
    """Shared by the tests of this module: they only read it."""
    return make_research(tmp_path_factory.mktemp("report"))


def ids(rows) -> list[str]:
    return [row["id"] for row in rows]


# --------------------------------------------------------------------------- leaderboard


def test_default_is_the_population_of_the_latest_tag_best_first(research):
    records = research.ledger.records()
    selection = select(records, population_size=2)
    rows = leaderboard_rows(records, selection.records)
    assert ids(rows) == ["c0005", "c0006"]  # champion + the best other distinct keep
    assert [row["rank"] for row in rows] == [1, 2]
    assert rows[0]["champion"] and not rows[1]["champion"]
    assert "population of 'mar5'" in selection.what


def test_population_size_changes_the_members(research):
    records = research.ledger.records()
    rows = leaderboard_rows(records, select(records, population_size=4).records)
    assert ids(rows) == ["c0005", "c0006", "c0007", "c0002"]


def test_all_orders_every_experiment_and_puts_failures_last(research):
    records = research.ledger.records()
    rows = leaderboard_rows(records, select(records, tag=TAG, everything=True).records)
    assert ids(rows) == ["c0005", "c0006", "c0007", "c0002", "c0003", "c0001", "c0004"]
    assert rows[-1]["rank"] is None and rows[-1]["val_bpb"] is None
    every_tag = select(records, everything=True).records
    assert {r.id for r in every_tag} == {r.id for r in records}


def test_deltas_are_against_the_first_promoted_record_of_the_tag(research):
    records = research.ledger.records()
    rows = {row["id"]: row for row in leaderboard_rows(records, records)}
    assert rows["c0005"]["delta"] == pytest.approx(1.40 - 1.50)
    assert rows["c0003"]["delta"] == pytest.approx(1.47 - 1.50)
    assert rows["c0001"]["delta"] == 0.0 and rows["c0001"]["baseline"] == "c0001"
    assert rows["c0004"]["delta"] is None
    # `autoresearch run` records measure against the first of them
    assert rows["e0002"]["delta"] == pytest.approx(1.52 - 1.55)
    assert rows["e0002"]["baseline"] == "e0001"


def test_lineage_depth_follows_parents_back_to_the_baseline(research):
    records = research.ledger.records()
    rows = {row["id"]: row for row in leaderboard_rows(records, records)}
    assert [rows[c]["lineage_depth"] for c in ("c0001", "c0002", "c0005", "c0006", "c0007")] == [
        0, 1, 2, 3, 3,
    ]  # fmt: skip
    chain = lineage(records, find_record(records, "c0006"))
    assert [r.id for r in chain] == ["c0006", "c0005", "c0002", "c0001"]


def test_status_filter_and_limit(research):
    records = research.ledger.records()
    crashed = select(records, statuses=["crash"]).records
    assert [r.id for r in crashed] == ["c0004"]
    kept = select(records, statuses=["keep", "discard"]).records
    assert ids(leaderboard_rows(records, kept, limit=3)) == ["c0005", "c0006", "c0007"]


def test_run_records_are_shown_when_there_is_no_evolve_tag(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for exp_id, bpb in (("e0001", 2.3), ("e0002", 2.1), ("e0003", 2.2)):
        ledger.append(Record(id=exp_id, status="keep", val_bpb=bpb, proposer="manual"))
    records = ledger.records()
    selection = select(records)
    assert ids(leaderboard_rows(records, selection.records)) == ["e0002", "e0003", "e0001"]
    assert baseline(records).id == "e0001"


def test_unknown_tag_suggests_the_closest(research):
    with pytest.raises(UserError, match=r"no experiments with tag 'mar4' \(did you mean 'mar5'"):
        select(research.ledger.records(), tag="mar4")


def test_table_formats(research):
    records = research.ledger.records()
    rows = leaderboard_rows(records, select(records, population_size=2).records)
    github = format_table(rows, "github").splitlines()
    assert github[0].startswith("|") and "candidate" in github[0] and "val_bpb" in github[0]
    assert set(github[1]) <= set("|-: ")
    assert "c0005*" in github[2] and "1.400000" in github[2] and "-0.100000" in github[2]
    with pytest.raises(UserError, match="did you mean 'github'"):
        format_table(rows, "githb")


def test_empty_ledger_is_one_clear_error(tmp_path):
    with pytest.raises(UserError) as e:
        load_records(Ledger(tmp_path / "ledger.jsonl"))
    assert str(e.value) == EMPTY_LEDGER


# --------------------------------------------------------------------------- show


def test_show_diff_is_exactly_git_diff_against_the_parent(research):
    records = research.ledger.records()
    record = find_record(records, "c0006")
    text = show_text(research.repo, research.state, records, record, color=False)
    expected = git.Repo(research.repo).git.diff(
        research.commits["c0005"], research.commits["c0006"], "--", "train.py"
    )
    assert expected and "+SCALAR_LR = 0.4  # edited by c0006" in expected
    section = text.split("diff c0005 -> c0006 (train.py):\n", 1)[1]
    assert section.split("\n\nlog tail", 1)[0] == expected
    assert "c0006" in text and "keep" in text and "-0.080000 vs baseline c0001" in text
    assert "lineage (3 back to the baseline)" in text
    assert "c0006 log line 29" in text and "c0006 log line 9\n" not in text  # the tail only


def test_show_colours_the_diff_only_when_asked(research):
    records = research.ledger.records()
    record = find_record(records, "c0002")
    plain = show_text(research.repo, research.state, records, record, color=False)
    coloured = show_text(research.repo, research.state, records, record, color=True)
    assert "\x1b[" not in plain and "\x1b[32m+MATRIX_LR" in coloured
    assert str(research.state / "runs" / "c0002" / "proposal" / "prompt_1.md") in plain
    assert str(research.state / "runs" / "c0002" / "proposal" / "reply_1.md") in plain


def test_show_falls_back_to_the_run_folders_when_the_commits_are_gone(research):
    records = [
        dataclasses.replace(r, commit="0" * 40) if r.id in ("c0005", "c0006") else r
        for r in research.ledger.records()
    ]
    text = show_text(research.repo, research.state, records, find_record(records, "c0006"), False)
    assert "+SCALAR_LR = 0.4  # edited by c0006" in text


def test_show_of_a_crash_has_its_reason(research):
    records = research.ledger.records()
    text = show_text(research.repo, research.state, records, find_record(records, "c0004"), False)
    assert "crash" in text and "reason: RuntimeError: boom" in text and "+DEPTH = 40" in text


def test_unknown_candidate_suggests_the_closest(research):
    with pytest.raises(UserError, match=r"no experiment 'c0066' \(did you mean 'c0006'\?\)"):
        find_record(research.ledger.records(), "c0066")
    assert find_record(research.ledger.records(), f"{TAG}/c0003").id == "c0003"


# --------------------------------------------------------------------------- export


def test_parquet_round_trips_every_field(research, tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "ledger.parquet"
    assert export(research.ledger, "parquet", path) == len(MANUAL) + len(CANDIDATES)
    original = research.ledger.records()
    assert read_parquet(path) == original
    table = pq.read_table(path)  # plain pyarrow, without our reader: every field is a column
    assert table.column_names == [f.name for f in dataclasses.fields(Record)]
    rows = table.to_pylist()
    assert rows[5]["val_bpb"] is None and rows[5]["status"] == "crash"
    assert json.loads(rows[3]["usage"]) == original[3].usage
    assert rows[2]["parent"] is None and rows[3]["parent"] == "c0001"


def test_jsonl_and_tsv_exports(research, tmp_path):
    export(research.ledger, "jsonl", tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [Record.from_dict(json.loads(line)) for line in lines] == research.ledger.records()
    export(research.ledger, "tsv", tmp_path / "results.tsv")
    rows = (tmp_path / "results.tsv").read_text().splitlines()
    assert rows[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert rows[1 + len(MANUAL) + 4] == (
        f"{research.commits['c0005'][:7]}\t1.400000\t1.4\tkeep\tWARMDOWN_RATIO = 0.6"
    )


def test_export_to_an_unwritable_path_is_a_user_error(research, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        export(research.ledger, "parquet", blocker / "ledger.parquet")


# --------------------------------------------------------------------------- status


def test_status_of_a_finished_run_shows_the_last_record(research, tmp_path):
    (tmp_path / "status.json").write_text(
        json.dumps({"pid": 999999, "tag": TAG, "experiments_done": 7, "phase": "idle"})
    )
    (tmp_path / "evolve.lock").write_text("")  # left behind, unlocked, by a finished run
    current = run_status(tmp_path)
    assert not current.running
    text = format_status(current, research.ledger.records(), now=10_000.0)
    assert text.startswith("no evolve run is going (the last one, tag 'mar5'")
    assert "last experiment: mar5/c0007 keep val_bpb 1.440000" in text
    assert "best of its tag: mar5/c0005" in text


def test_status_names_the_champion_even_below_a_lucky_calibration_repeat(research, tmp_path):
    records = research.ledger.records()
    at = next(i for i, r in enumerate(records) if r.id == "c0001") + 1
    repeat = Record(id="c0001r", status="keep", val_bpb=1.30, proposer=CALIBRATE, tag=TAG,
                    parent="c0001", description="calibration repeat", created=2100.0)  # fmt: skip
    records.insert(at, repeat)  # noise: the same train.py as the baseline, a lower score
    text = format_status(run_status(tmp_path), records, now=10_000.0)
    assert "best of its tag: mar5/c0005 keep val_bpb 1.400000" in text  # the starred row
    assert "c0001r" not in text


def test_status_without_any_run_or_record_is_the_empty_message(tmp_path):
    with pytest.raises(UserError, match="no experiments yet"):
        format_status(run_status(tmp_path), [])


def test_status_of_a_live_run(research):
    now = 50_000.0
    state = {
        "pid": 4242, "tag": TAG, "started": now - 3 * 3600,
        "phase": "training", "training": {"c0008": now - 75, "c0009": now - 15},
        "budget_seconds": 300.0,
        "experiments_done": 7, "best": {"id": "c0005", "val_bpb": 1.4}, "spend_usd": 1.234,
    }  # fmt: skip
    status = RunStatus(True, 4242, EvolveStatus(**state))
    text = format_status(status, research.ledger.records(), now=now)
    assert "evolve is running: tag 'mar5', pid 4242, for 3.0 h" in text
    assert "experiment c0008: training, 75 of 300 s (25%)" in text
    assert "experiment c0009: training, 15 of 300 s (5%)" in text  # another slot's
    assert "best so far: c0005 val_bpb 1.400000" in text and "spend so far: $1.23" in text


def test_show_of_a_run_record_diffs_against_the_previous_run(research):
    records = research.ledger.records()
    text = show_text(research.repo, research.state, records, find_record(records, "e0002"), False)
    assert "diff e0001 -> e0002 (train.py, against the previous `autoresearch run`):" in text
    assert "(identical train.py)" in text  # both ran the same commit
    first = show_text(research.repo, research.state, records, find_record(records, "e0001"), False)
    assert "diff " not in first and "lineage: no parent (a baseline)" in first


def test_status_reads_what_the_engine_writes(research):
    from autoresearch.config import load_config
    from autoresearch.engine import Engine, Running
    from autoresearch.slots import Slot
    from autoresearch.status import RunLock

    engine = Engine(research.repo, load_config(research.repo), TAG, {}, say=lambda line: None)
    with RunLock(research.state):
        engine._running["c0099"] = Running(None, Slot(), 1234.5)
        engine._write_status(phase="training")
        status = run_status(research.state)
        assert status.running and status.state.training == {"c0099": 1234.5}
    assert not run_status(research.state).running
