"""Bad input and a bad machine, as a user meets them: the real CLI in a subprocess.

Every case must end with a non-zero exit and one line on stderr saying what is
wrong and what to do (never a traceback), and must leave the ledger as it was.
The table's cases are listed, one line each, in docs/threat-model.md.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import pytest
import torch
from helpers import LEARNS, cli, committed, error_line
from kill_resume import ledger

from autoresearch.ledger import Ledger, Record
from autoresearch.workspace import LEDGER_FILE, STATE_DIR

Setup = Callable[[Path], dict[str, Any]]  # repo -> more for subprocess.run (cwd, env, ...)
SEEDED = Record(id="e0001", status="keep", val_bpb=2.5, description="recorded before")
PR_CAPBSET_DROP = 24  # prctl option (linux/prctl.h)
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # linux/capability.h
EVOLVE_ONCE = (  # one experiment: the baseline
    "evolve", "--max-experiments", "1", "--calibrate", "0", "--budget", "1", "--proposer", "random",
)  # fmt: skip


# --------------------------------------------------------------------------- setups


def edit(name: str, old: str, new: str) -> Setup:
    """Replace `old` by `new` in the repo's file `name`."""

    def setup(repo: Path) -> dict[str, Any]:
        text = (repo / name).read_text()
        assert old in text, f"{old!r} not in {name}"
        (repo / name).write_text(text.replace(old, new, 1))
        return {}

    return setup


def write_bytes(name: str, data: bytes) -> Setup:
    def setup(repo: Path) -> dict[str, Any]:
        (repo / name).write_bytes(data)
        return {}

    return setup


def remove(name: str) -> Setup:
    def setup(repo: Path) -> dict[str, Any]:
        (repo / name).unlink()
        return {}

    return setup


def elsewhere(make: Callable[[Path], None] = lambda folder: None) -> Setup:
    """Run in a folder outside the research repo, after `make(folder)`."""

    def setup(repo: Path) -> dict[str, Any]:
        folder = repo.parent / "elsewhere"
        folder.mkdir()
        make(folder)
        return {"cwd": folder}

    return setup


def not_empty(folder: Path) -> None:
    (folder / "target").mkdir()
    (folder / "target/file").write_text("x")


def unprepared_folder(repo: Path) -> dict[str, Any]:
    corpus = repo.parent / "unprepared"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text")
    return edit("autoresearch.toml", "path = ", f'path = "{corpus}" # was ')(repo)


def damaged(pattern: str, damage: Callable[[Path], None]) -> Setup:
    """Prepare the data into a cache of the test's own, then `damage` its file `pattern`."""

    def setup(repo: Path) -> dict[str, Any]:
        cache = repo.parent / "cache"  # the session's cache is shared: never damage that one
        env = os.environ | {"AUTORESEARCH_CACHE": str(cache)}
        assert cli("prepare", cwd=repo, env=env).returncode == 0
        damage(next(cache.glob(pattern)))
        return {"env": env}

    return setup


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 100)


def state_is_a_file(repo: Path) -> dict[str, Any]:
    shutil.rmtree(repo / STATE_DIR)
    (repo / STATE_DIR).write_text("")
    return {}


def no_git(repo: Path) -> dict[str, Any]:
    shutil.rmtree(repo / ".git")
    return {}


def chain(*setups: Setup) -> Setup:
    def setup(repo: Path) -> dict[str, Any]:
        popen: dict[str, Any] = {}
        for step in setups:
            popen |= step(repo)
        return popen

    return setup


def commit_train(source: str) -> Setup:
    def setup(repo: Path) -> dict[str, Any]:
        committed(repo, source)
        return {}

    return setup


def no_api_keys(repo: Path) -> dict[str, Any]:
    committed(repo, LEARNS)
    return {"env": {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}}


def evolved(repo: Path) -> dict[str, Any]:
    """A tag 'once' with its baseline measured at a 1 s budget."""
    committed(repo, LEARNS)
    assert cli(*EVOLVE_ONCE, "--tag", "once", cwd=repo).returncode == 0
    return {}


def drop_root_override() -> None:
    """In the child, as root: lose the capabilities that ignore file permissions (chmod holds)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unwritable_state(repo: Path) -> dict[str, Any]:
    if os.geteuid() == 0:
        try:
            subprocess.run(["true"], preexec_fn=drop_root_override, check=True)
        except (OSError, subprocess.SubprocessError):
            pytest.skip("root without CAP_SETPCAP: it writes through any chmod; nothing to test")
    (repo / STATE_DIR).chmod(0o555)
    return {"preexec_fn": drop_root_override}


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

# (arguments, setup, what the error line says); ids name the bad input.
CASES = [
    # autoresearch.toml
    pytest.param(("run",), edit("autoresearch.toml", "[run]", "[run"), "is not valid TOML",
                 id="toml-malformed"),
    pytest.param(("run",), write_bytes("autoresearch.toml", b"[run]\nseed = \xff\n"),
                 "is not valid TOML: 'utf-8' codec can't decode", id="toml-not-utf8"),
    pytest.param(("run",), edit("autoresearch.toml", "[eval]", "[evall]"),
                 "unknown section [evall] in autoresearch.toml (did you mean 'eval'?)",
                 id="toml-unknown-section"),
    pytest.param(("run",), edit("autoresearch.toml", "budget_seconds", "budget_secs"),
                 "unknown key 'run.budget_secs' in autoresearch.toml"
                 " (did you mean 'budget_seconds'?)",
                 id="toml-unknown-key"),
    pytest.param(("run",), edit("autoresearch.toml", "budget_seconds = 2", 'budget_seconds = "2"'),
                 "'run.budget_seconds' must be a number, got str '2'", id="toml-wrong-type"),
    pytest.param(("run",), edit("autoresearch.toml", 'device = "cpu"', "device = 3"),
                 "'run.device' must be a string, got int 3", id="toml-wrong-type-str"),
    pytest.param(("run",), edit("autoresearch.toml", "budget_seconds = 2", "budget_seconds = -5"),
                 "'run.budget_seconds' must be positive, got -5", id="toml-negative-budget"),
    pytest.param(("run",), edit("autoresearch.toml", "seed = 1", "seed = 1\nbudget_tokens = -1"),
                 "'run.budget_tokens' must be 0 (off) or more, got -1",
                 id="toml-negative-budget-tokens"),
    pytest.param(("run",), edit("autoresearch.toml", "budget_seconds = 2", "budget_seconds = nan"),
                 "'run.budget_seconds' must be a finite number, got nan", id="toml-nan-budget"),
    pytest.param(("prepare",), edit("autoresearch.toml", '"folder"', '"climbmixx"'),
                 "unknown data source 'climbmixx'", id="toml-unknown-source"),
    pytest.param(("run",), edit("autoresearch.toml", "path = ", 'path = "/no/such/dir" #'),
                 "data.path /no/such/dir is not a folder", id="toml-data-path-missing"),
    # command-line options
    pytest.param(("run", "--budget", "-3"), None, "'run.budget_seconds' must be positive",
                 id="opt-negative-budget"),
    pytest.param(("run", "--budget", "inf"), None, "must be a finite number, got inf",
                 id="opt-infinite-budget"),
    pytest.param(("run", "--budget", "abc"), None,
                 "Invalid value for '--budget': 'abc' is not a valid float", id="opt-not-a-number"),
    pytest.param(("run", "--budget-tokens", "-5"), None,
                 "'run.budget_tokens' must be 0 (off) or more, got -5",
                 id="opt-negative-budget-tokens"),
    pytest.param(("run", "--seed", "-1"), None, "'run.seed' must be from 0 to 4294967295, got -1",
                 id="opt-negative-seed"),
    pytest.param(("run", "--device", "tpu"), None,
                 "'tpu' is not one of 'auto', 'cuda', 'cpu', 'mps'", id="opt-unknown-device"),
    pytest.param(("run", "--device", "cuda"), None,
                 "'run.device' is 'cuda' but this machine has no cuda device",
                 id="opt-absent-device", marks=NO_CUDA),
    pytest.param(("evolve", "--hours", "nan"), None,
                 "'evolve.hours' must be a finite number, got nan", id="opt-nan-hours"),
    pytest.param(("evolve", "--max-experiments", "-1"), None,
                 "'evolve.max_experiments' must be 0 or more, got -1",
                 id="opt-negative-max-experiments"),
    pytest.param(("leaderboard", "--limit", "0"), None, "0 is not in the range x>=1",
                 id="opt-out-of-range"),
    pytest.param(("evolve", "--proposer", "optuna:foo"), None,
                 "the optuna proposer takes no model part: write --proposer optuna, not optuna:foo",
                 id="opt-proposer-model-part"),
    pytest.param(("evolve", "--proposer", "llm:openai/gpt-4o"), no_api_keys,
                 "OPENAI_API_KEY is not set", id="opt-proposer-no-key"),
    pytest.param(("frobnicate",), None, "No such command 'frobnicate'", id="opt-unknown-command"),
    pytest.param(("init", "x", "--baseline", "huge"), elsewhere(),
                 "'huge' is not one of 'gpt', 'tiny'", id="opt-unknown-baseline"),
    # the research repo
    pytest.param(("run",), elsewhere(), "not inside a research repo", id="repo-none-run"),
    pytest.param(("prepare",), elsewhere(), "not inside a research repo", id="repo-none-prepare"),
    pytest.param(("init", "target"), elsewhere(not_empty), "target is not empty",
                 id="repo-init-not-empty"),
    pytest.param(("init", "inner"), elsewhere(lambda folder: git.Repo.init(folder)),
                 "inside an existing git repo", id="repo-init-inside-git"),
    pytest.param(("run",), write_bytes("train.py", b"def broken(:\n"), "train.py line 1",
                 id="repo-train-syntax"),
    pytest.param(("run",), remove("train.py"), "train.py is missing: restore it with `git",
                 id="repo-train-missing"),
    pytest.param(("run",), chain(no_git, remove("train.py")), "train.py is missing: put one back",
                 id="repo-train-missing-no-git"),
    pytest.param(("evolve",), commit_train("x = (\n"), "the committed train.py line 1",
                 id="repo-evolve-committed-syntax"),
    pytest.param(("evolve", "--resume", "--tag", "once", "--budget", "5"), evolved,
                 "tag 'once' was started with run.budget_seconds = 1.0, not 5.0",
                 id="repo-resume-other-budget"),
    pytest.param(("evolve",), no_git, "has no git commit", id="repo-evolve-no-git"),
    pytest.param(("run",), unwritable_state, "cannot write to", id="repo-state-unwritable"),
    pytest.param(("run",), state_is_a_file, "is not a folder: move it away",
                 id="repo-state-not-a-folder"),
    # the prepared data
    pytest.param(("run",), unprepared_folder, "no prepared data for source 'folder'",
                 id="data-unprepared"),
    pytest.param(("run",), damaged("prepared/*/train.npy", truncate), "train.npy is corrupt",
                 id="data-tokens-truncated"),
    pytest.param(("run",), damaged("prepared/*/val.npy", garbage), "val.npy is corrupt",
                 id="data-tokens-garbage"),
    pytest.param(("run",), damaged("prepared/*/val.npy", Path.unlink), "val.npy is missing",
                 id="data-tokens-missing"),
    pytest.param(("run",), damaged("prepared/*/tokenizer.json", Path.unlink),
                 "tokenizer.json is missing", id="data-tokenizer-missing"),
    pytest.param(("run",), damaged("prepared/*/manifest.json", garbage), "manifest.json is corrupt",
                 id="data-manifest-garbage"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "setup", "expected"), CASES)
def test_bad_input_gets_one_clear_line(research_repo, args, setup, expected):
    Ledger(research_repo / STATE_DIR / LEDGER_FILE).append(SEEDED)
    popen = setup(research_repo) if setup else {}
    ledger = research_repo / STATE_DIR / LEDGER_FILE
    before = ledger.read_bytes() if ledger.is_file() else None
    try:
        line = error_line(cli(*args, **{"cwd": research_repo} | popen))
    finally:
        if (research_repo / STATE_DIR).is_dir():
            (research_repo / STATE_DIR).chmod(0o755)  # tmp_path is removed later
    assert expected in line
    assert (ledger.read_bytes() if ledger.is_file() else None) == before  # nothing lost


def test_a_crashed_baseline_can_be_fixed_and_resumed(research_repo):
    """Not bad input but its aftermath: the error said what to do, and doing it works."""
    broken = LEARNS.replace(
        "    harness.handover(model", "    raise SystemExit(3)\n    harness.handover(model"
    )
    assert broken != LEARNS
    committed(research_repo, broken)
    failed = cli(*EVOLVE_ONCE, "--tag", "b", cwd=research_repo)
    line = error_line(failed, after_progress=True)
    assert "the baseline failed (crash" in line and "autoresearch evolve --resume --tag b" in line

    committed(research_repo, LEARNS)  # the fix, committed as the error says
    # Exactly the command the error named: a failed baseline does not count toward the limit.
    fixed = cli("evolve", "--resume", "--tag", "b", cwd=research_repo)
    assert fixed.returncode == 0 and "Traceback" not in fixed.stderr, fixed.stderr
    assert "the champion is still the baseline e0002" in fixed.stdout
    again = cli("evolve", "--resume", "--tag", "b", cwd=research_repo)  # at its limit now
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert again.stdout.strip() == (
        "tag 'b' already reached 1 experiment: nothing to do; to go on, raise the limit"
        " (`autoresearch evolve --resume --tag b --max-experiments 2`)"
    )
    statuses = [(r["proposer"], r["status"]) for r in ledger(research_repo)]
    assert statuses[:2] == [("baseline", "crash"), ("baseline", "keep")]


def test_damaged_data_shard_is_named_by_prepare(research_repo):
    """prepare logs progress first, so its error is the last of several lines."""
    env = damaged("data/*/train_00000.parquet", truncate)(research_repo)["env"]
    # The shard changed, so prepare tokenizes again, and finds it unreadable.
    line = error_line(cli("prepare", cwd=research_repo, env=env), after_progress=True)
    assert "train_00000.parquet is damaged" in line and "run `autoresearch prepare` again" in line


def test_prepare_repairs_damaged_token_files(research_repo, monkeypatch):
    """The advice of the data cases works: `prepare` notices the damage and makes them again."""
    from autoresearch.config import load_config
    from autoresearch.harness.prepare import load_manifest

    env = damaged("prepared/*/train.npy", truncate)(research_repo)["env"]
    result = cli("prepare", cwd=research_repo, env=env)
    assert result.returncode == 0, result.stderr
    assert "damaged: token file" in result.stderr and "prepared already" not in result.stderr
    monkeypatch.setenv("AUTORESEARCH_CACHE", env["AUTORESEARCH_CACHE"])
    load_manifest(load_config(research_repo))  # checks the token files: raises if still damaged


# --------------------------------------------------------------------------- the ledger


@pytest.mark.parametrize(
    "bad_line",
    [
        '{"id": "e0002", "status": "ke',  # torn by a kill
        "\x00\x00\x00\x00",  # zeros after a power loss
        "[1, 2]",  # JSON, not an object
        '{"id": "e0002", "status": "keep", "val_bpb": "low"}',  # a field of the wrong type
        '{"id": "e0002", "status": "great"}',  # an unknown status
    ],
)
def test_damaged_ledger_line_is_reported_and_the_rest_loads(research_repo, bad_line):
    path = research_repo / STATE_DIR / LEDGER_FILE
    ledger = Ledger(path)
    ledger.append(SEEDED)
    with open(path, "a") as f:
        f.write(bad_line + "\n")
    Ledger(path).append(dataclasses.replace(SEEDED, id="e0003", val_bpb=2.0))  # the next run's
    before = path.read_bytes()

    result = cli("leaderboard", "--all", "--json", cwd=research_repo)
    assert result.returncode == 0, result.stderr
    assert [row["id"] for row in json.loads(result.stdout)] == ["e0003", "e0001"]
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and f"{LEDGER_FILE}:2: unreadable record skipped" in warnings[0]
    assert path.read_bytes() == before  # reported, never repaired or dropped


# --------------------------------------------------------------------------- git state


def test_evolve_from_a_detached_head_starts_from_that_commit(research_repo):
    """Not an error: evolve never moves HEAD, and its baseline is whatever is checked out."""
    sha = committed(research_repo, LEARNS)
    repo = git.Repo(research_repo)
    repo.git.checkout("--detach", sha)
    result = cli(*EVOLVE_ONCE, "--tag", "d", cwd=research_repo)
    assert result.returncode == 0, result.stderr
    assert repo.head.is_detached and repo.head.commit.hexsha == sha
    assert repo.heads["autoresearch/d"].commit.hexsha == sha
    assert [r.commit for r in Ledger(research_repo / STATE_DIR / LEDGER_FILE).records()] == [sha]


# --------------------------------------------------------------------------- a full disk

FILE_LIMIT = 4 * 2**20  # larger than any file a run writes (the hand-over's weights: ~1 MB)


def file_size_limit() -> None:
    """In the child: files cannot grow past FILE_LIMIT, as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # such a write then fails with EFBIG, not a kill
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)  # the soft one: children may set theirs
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, hard))


def fill_ledger(path: Path, room: int) -> list[Record]:
    """Records until the ledger is `room` bytes short of FILE_LIMIT: the next one cannot fit."""

    def line(record: Record) -> str:  # ASCII: as many bytes as characters
        return json.dumps(dataclasses.asdict(record), sort_keys=True) + "\n"

    records, text = [], ""
    while True:
        record = dataclasses.replace(SEEDED, id=f"e{len(records) + 1:04d}", description="")
        left = FILE_LIMIT - room - len(text)
        if 2 * len(line(record)) > left:  # the last one is padded to end exactly there
            record = dataclasses.replace(record, description="x" * (left - len(line(record))))
        text += line(record)
        records.append(record)
        if len(text) == FILE_LIMIT - room:
            path.write_text(text)
            return records


@pytest.mark.parametrize(
    ("args", "retry"),
    [
        # The ledger's write is evolve's, which stays in CI; run's advice is checked with -m slow.
        pytest.param(("run", "--budget", "1"), "run the command again", marks=pytest.mark.slow),
        ((*EVOLVE_ONCE, "--tag", "full"), "`autoresearch evolve --resume --tag full`"),
    ],
    ids=["run", "evolve"],
)
def test_full_disk_stops_cleanly_and_keeps_the_ledger(research_repo, args, retry):
    committed(research_repo, LEARNS)
    path = research_repo / STATE_DIR / LEDGER_FILE
    path.parent.mkdir(exist_ok=True)
    records = fill_ledger(path, room=20)  # the next record is written in part, then fails
    before = path.read_bytes()

    result = cli(*args, cwd=research_repo, preexec_fn=file_size_limit)
    line = error_line(result, after_progress=True)
    assert line == f"error: disk full while writing {path}: free space, then {retry}"
    assert path.read_bytes() == before  # the part written was cut off again
    ledger = Ledger(path)
    assert ledger.records() == records and ledger.problems == []

    if args[0] == "evolve":  # the advice works once there is room again (no limit)
        result = cli(*args, "--resume", cwd=research_repo)
        assert result.returncode == 0, result.stderr
        after = Ledger(path).records()
        assert after[:-1] == records and (after[-1].proposer, after[-1].tag) == ("baseline", "full")
