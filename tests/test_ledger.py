"""The ledger: append-only, durable, tolerant of a torn last line, exportable, and
hash-chained, so that an earlier record changed after it was written is refused."""

from __future__ import annotations

import dataclasses
import errno
import json
import os

import pytest
from helpers import cli, error_line

from autoresearch.ledger import Ledger, LedgerTampered, Record, format_id, highest_number
from autoresearch.workspace import LEDGER_FILE, STATE_DIR, init_repo


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
    ledger = Ledger(path)  # the next run's
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


def test_recording_appends_the_rows_that_an_export_would_write(tmp_path):
    """Each record adds its row to results.tsv; the file stays what a full export writes."""
    ledger, results = Ledger(tmp_path / "ledger.jsonl"), tmp_path / "results.tsv"
    for i, status in enumerate(["keep", "crash", "discard"], 1):
        ledger.record(Record(id=f"e{i:04d}", status=status, description=f"n{i}"), results)
        assert len(results.read_text().splitlines()) == 1 + i  # the header, then one per record
    appended = results.read_text()
    ledger.export_tsv(tmp_path / "exported.tsv")
    assert appended == (tmp_path / "exported.tsv").read_text()


def test_ids_count_past_the_highest_recorded_and_taken():
    assert highest_number(["e0002", "e0010", "manual", "e12x"]) == 10
    assert format_id(highest_number([]) + 1) == "e0001"


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


# --- the hash chain: an earlier record changed, removed, inserted or moved is refused ------

CHAINED = [rec(i, tag="t") for i in range(1, 5)]  # e0001..e0004, val_bpb 2.0..5.0
TAMPERED = {  # how the four lines are changed -> the start of the one line that says so
    "changed": (
        lambda lines: [
            lines[0],
            lines[1].replace(b'"val_bpb": 3.0', b'"val_bpb": 0.17'),
            *lines[2:],
        ],
        "line 2 (e0002) was changed after it was written",
    ),
    "removed": (
        lambda lines: [lines[0], *lines[2:]],
        "line 2 (e0003) was written after e0002, not after e0001",
    ),
    "inserted": (
        lambda lines: [*lines[:2], json.dumps(dataclasses.asdict(rec(9))).encode(), *lines[2:]],
        "line 3 (e0009) has no link to the record before it",
    ),
    "reordered": (
        lambda lines: [lines[0], lines[2], lines[1], lines[3]],
        "line 2 (e0003) was written after e0002, not after e0001",
    ),
    "first removed": (lambda lines: lines[1:], "line 1 (e0002) was written after e0001, but is"),
}


def chained_ledger(path, records=CHAINED):
    ledger = Ledger(path)
    for record in records:
        ledger.append(record)
    return ledger


def tamper(path, change) -> None:
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"\n".join(change(lines)) + b"\n")


def test_an_untouched_ledger_loads_with_every_record_linked(tmp_path):
    ledger = chained_ledger(tmp_path / "ledger.jsonl")
    assert ledger.records() == CHAINED and ledger.problems == [] and ledger.notes == []
    lines = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert lines[0]["chain"] == {"after": "", "sha256": ""}
    assert [line["chain"]["after"] for line in lines[1:]] == ["e0001", "e0002", "e0003"]


@pytest.mark.parametrize("how", TAMPERED)
def test_a_tampered_earlier_record_is_refused_with_one_line(tmp_path, how):
    path = tmp_path / "ledger.jsonl"
    ledger = chained_ledger(path)
    change, says = TAMPERED[how]
    tamper(path, change)
    with pytest.raises(LedgerTampered) as info:
        ledger.records()
    message = str(info.value)
    assert message.startswith(f"{path} {says}") and "\n" not in message, message
    assert "restore the ledger from a backup" in message and "cannot be trusted" in message


@pytest.mark.parametrize("how", TAMPERED)
def test_leaderboard_and_resume_refuse_a_tampered_ledger(tmp_path, how):
    """Through the real CLI: one error line naming the record, a non-zero exit, nothing run."""
    repo = init_repo(tmp_path / "research", "tiny")
    path = repo / STATE_DIR / LEDGER_FILE
    chained_ledger(path)
    change, says = TAMPERED[how]
    tamper(path, change)
    before = path.read_bytes()
    for args in (("leaderboard", "--all"), ("evolve", "--resume", "--tag", "t")):
        result = cli(*args, cwd=repo)
        assert error_line(result).startswith(f"error: {path} {says}"), result.stderr
        assert result.returncode == LedgerTampered.exit_code
    assert path.read_bytes() == before  # reported, never repaired


def test_a_record_after_a_torn_line_is_still_linked(tmp_path):
    """A kill mid-write leaves a torn line: outside the chain, a warning, never tampering."""
    path = tmp_path / "ledger.jsonl"
    ledger = chained_ledger(path, CHAINED[:2])
    with open(path, "ab") as f:
        f.write(b'{"id": "e0003", "status": "ke')  # torn: the last line, no newline
    ledger = Ledger(path)  # the next run's
    assert ledger.records() == CHAINED[:2] and len(ledger.problems) == 1
    ledger.append(CHAINED[3])
    assert ledger.records() == [*CHAINED[:2], CHAINED[3]] and ":3: unreadable" in ledger.problems[0]


def test_records_from_before_the_chain_load_with_a_note(tmp_path):
    """An older version's ledger: its records load, the chain starts at the first new one,
    which links to the last old one; an old record after a linked one is refused."""
    path = tmp_path / "ledger.jsonl"
    old = [json.dumps(dataclasses.asdict(r), sort_keys=True) for r in CHAINED[:2]]
    path.write_text("\n".join(old) + "\n")
    ledger = chained_ledger(path, CHAINED[2:])
    assert ledger.records() == CHAINED and ledger.problems == []
    assert ledger.notes == [
        f"{path}: 2 of its records (lines 1-2) predate its hash chain: a change to them cannot"
        " be detected"
    ]
    tamper(path, lambda lines: [lines[0].replace(b'"val_bpb": 2.0', b'"val_bpb": 0.1'), *lines[1:]])
    assert ledger.records()[0].val_bpb == 0.1  # the first old record: nothing links to it
    tamper(path, lambda lines: [lines[0], lines[1].replace(b"3.0", b"0.1"), *lines[2:]])
    with pytest.raises(LedgerTampered, match="line 2 \\(e0002\\) was changed"):
        ledger.records()  # the last old one is linked to
    path.write_text("\n".join(old) + "\n")
    chained_ledger(path, CHAINED[2:])
    with open(path, "a") as f:
        f.write(json.dumps(dataclasses.asdict(rec(5))) + "\n")
    with pytest.raises(LedgerTampered, match="line 5 \\(e0005\\) has no link"):
        ledger.records()


def test_a_write_by_anything_else_between_two_records_of_a_run_is_refused(tmp_path):
    """With slots, the ledger grows while candidates run: a change by anyone else between
    two appends is caught at the next one, and what this process wrote is known as its own."""
    from autoresearch.harness.fingerprint import file_states
    from autoresearch.ledger import own_write

    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append(Record(id="e0001", status="keep", val_bpb=2.0))
    assert own_write(ledger.path) == file_states([ledger.path])[str(ledger.path)]
    ledger.append(Record(id="e0002", status="keep", val_bpb=1.9))  # its own: fine
    with open(ledger.path, "a") as f:  # a forged record, appended by something else
        f.write(json.dumps(dataclasses.asdict(Record(id="e0003", status="keep"))) + "\n")
    assert own_write(ledger.path) != file_states([ledger.path])[str(ledger.path)]
    with pytest.raises(LedgerTampered, match="changed by something else since autoresearch"):
        ledger.append(Record(id="e0004", status="keep", val_bpb=1.8))
    assert b"e0004" not in ledger.path.read_bytes()  # nothing recorded after the forgery
