"""The ledger: append-only, durable, tolerant of a torn last line, exportable."""

from __future__ import annotations

import pytest

from autoresearch.ledger import Ledger, Record


def rec(i, **kw):
    return Record(
        id=f"e{i:04d}", status=kw.pop("status", "keep"), val_bpb=kw.pop("val_bpb", 1.0 + i), **kw
    )


def test_append_and_read_back(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for i in range(1, 4):
        ledger.append(rec(i, commit="abcdef1234", description=f"try {i}"))
    records = ledger.records()
    assert [r.id for r in records] == ["e0001", "e0002", "e0003"]
    assert records[1].description == "try 2" and records[1].val_bpb == 3.0
    assert ledger.next_id() == "e0004"


def test_torn_last_line_is_reported_and_the_next_record_survives(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append(rec(1))
    with open(path, "a") as f:
        f.write('{"id": "e0002", "status": "ke')  # a kill in the middle of a write
    ledger.append(rec(3))
    records = ledger.records()
    assert [r.id for r in records] == ["e0001", "e0003"]
    assert len(ledger.problems) == 1 and ":2:" in ledger.problems[0]


def test_unknown_fields_from_a_newer_version_are_ignored(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"id": "e0001", "status": "crash", "future_field": 1}\n')
    assert Ledger(path).records()[0].status == "crash"


def test_status_is_checked():
    with pytest.raises(ValueError):
        Record(id="e0001", status="great")


def test_results_tsv_has_the_original_five_columns(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append(rec(1, commit="a1b2c3d4e5f6", memory_gb=44.04, description="baseline"))
    ledger.append(
        Record(id="e0002", status="crash", commit="ffffffff", description="tabs\tand\nnewlines")
    )
    ledger.export_tsv(tmp_path / "results.tsv")
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert lines[1] == "a1b2c3d\t2.000000\t44.0\tkeep\tbaseline"
    assert lines[2] == "fffffff\t0.000000\t0.0\tcrash\ttabs and newlines"
