"""The ledger: append-only, durable, tolerant of a torn last line, exportable."""

from __future__ import annotations

import errno
import os

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


def no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fails_at", ["write", "fsync"])
def test_a_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch, fails_at):
    """A full disk part-way through a record: cut back to the last whole record, then raise."""
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append(rec(1))
    before = path.read_bytes()
    real_write = os.write

    def short_then_full(fd, data):  # a write near a size limit: part of it, then an error
        return real_write(fd, bytes(data[:10])) if len(data) > 10 else no_space()

    with monkeypatch.context() as patch:
        if fails_at == "write":
            patch.setattr(os, "write", short_then_full)
        else:  # a full disk may show only here (delayed allocation)
            patch.setattr(os, "fsync", no_space)
        with pytest.raises(OSError) as info:
            ledger.append(rec(2))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before
    ledger.append(rec(3))
    assert [r.id for r in ledger.records()] == ["e0001", "e0003"] and ledger.problems == []


@pytest.mark.parametrize(
    "line",
    [
        "[1, 2]",
        '"e0001"',
        '{"id": "e0001"}',
        '{"id": "e0001", "status": "keep", "val_bpb": "low"}',
        '{"id": "e0001", "status": "keep", "num_steps": 1.5}',
        '{"id": "e0001", "status": "keep", "promoted": 1}',
        '{"id": "e0001", "status": "keep", "usage": []}',
    ],
)
def test_a_line_that_is_not_a_record_is_reported_with_its_number(tmp_path, line):
    path = tmp_path / "ledger.jsonl"
    path.write_text(f'{{"id": "e0001", "status": "keep", "val_bpb": 1, "parent": null}}\n{line}\n')
    ledger = Ledger(path)
    assert [r.val_bpb for r in ledger.records()] == [1.0]
    assert len(ledger.problems) == 1 and ledger.problems[0].startswith(f"{path}:2: unreadable")
