"""What several test files share: the command line in a subprocess and its error line, the
tests' train.py files and engine, a recorded evolve run in a real research repo, a running
`autoresearch serve`, and the baselines at a tiny size.

Test files import these from here (as they import tests/candidates.py, attacking.py and
kill_resume.py), never from one another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import candidates
import git

from autoresearch.constants import rewrite_constants
from autoresearch.ledger import Ledger, Record

# --------------------------------------------------------------------------- the command line


def cli(*args: str, cwd: Path, **popen: Any) -> subprocess.CompletedProcess:
    """`autoresearch ARGS` in `cwd`; `popen`: more for subprocess.run (env, preexec_fn)."""
    return subprocess.run(
        [sys.executable, "-m", "autoresearch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        **popen,
    )


def error_line(result: subprocess.CompletedProcess, after_progress: bool = False) -> str:
    """The one error line of a failed command; `after_progress`: progress lines may precede it.

    Bad input must give a non-zero exit and one line on stderr, never a traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert after_progress or len(lines) == 1, result.stderr
    return lines[-1]


# --------------------------------------------------------------------------- train.py and engine

# A bigram that does not learn (LR 0) is the baseline; LR 0.2 learns and is far better.
FROZEN = rewrite_constants(candidates.HONEST, {"LR": 0.0})
LEARNS = rewrite_constants(candidates.HONEST, {"LR": 0.2})


def committed(repo: Path, source: str) -> str:
    """Commit `source` as the research repo's train.py; its sha."""
    (repo / "train.py").write_text(source)
    with git.Repo(repo) as r:  # closed: no git process is left to look like a run's orphan
        r.index.add(["train.py", "autoresearch.toml"])
        return r.index.commit("baseline for the test").hexsha


def make_engine(
    repo: Path,
    proposer: Any,
    *,
    budget: float = 1.5,
    runner: Any = None,
    slots: list | None = None,
    **evolve: Any,
) -> Any:
    """An engine on tag "t" with `proposer` alone; what it says is kept in `engine.lines`.
    `runner`: the real one unless given (e.g. `autoresearch.testing.ScriptedRunner`);
    `slots`: the one slot of the whole machine unless given."""
    from autoresearch.config import load_config
    from autoresearch.engine import Engine
    from autoresearch.runner import run_experiment

    evolve = {"calibrate": 0, "prefetch": 1, "population": 1} | evolve
    config = load_config(
        repo, {"run.budget_seconds": budget} | {f"evolve.{k}": v for k, v in evolve.items()}
    )
    lines: list[str] = []
    engine = Engine(
        repo, config, "t", {proposer.name: (proposer, 1.0)}, say=lines.append,
        runner=runner or run_experiment, slots=slots,
    )  # fmt: skip
    engine.lines = lines
    return engine


def rec(i: int, bpb: float | None, status: str = "keep", source: str | None = None, **kw: Any):
    """Record e<i> of tag "t", with a source fingerprint of its own unless `source` is given."""
    return Record(
        id=f"e{i:04d}", status=status, val_bpb=bpb, tag="t",
        fingerprints={"source": source or f"s{i}"}, **kw,
    )  # fmt: skip


# --------------------------------------------------------------------------- a recorded run

TAG = "mar5"
AUTHOR = git.Actor("autoresearch tests", "tests@localhost")
# (id, parent, status, val_bpb, proposer, promoted, the edit to the parent's train.py)
CANDIDATES = (
    ("c0001", None, "keep", 1.50, "baseline", True, None),
    ("c0002", "c0001", "keep", 1.45, "llm:test/model", True, ("MATRIX_LR", "0.05")),
    ("c0003", "c0002", "discard", 1.47, "optuna", False, ("WEIGHT_DECAY", "0.3")),
    ("c0004", "c0002", "crash", None, "random", False, ("DEPTH", "40")),
    ("c0005", "c0002", "keep", 1.40, "llm:test/model", True, ("WARMDOWN_RATIO", "0.6")),
    ("c0006", "c0005", "keep", 1.42, "optuna", False, ("SCALAR_LR", "0.4")),
    ("c0007", "c0003", "keep", 1.44, "random", False, ("EMBEDDING_LR", "0.5")),
)
MANUAL = (("e0001", 1.55), ("e0002", 1.52))  # `autoresearch run` experiments before the evolve


@dataclasses.dataclass
class Research:
    repo: Path
    state: Path
    ledger: Ledger
    commits: dict[str, str]  # candidate id -> commit sha


def make_research(tmp_path: Path, population: int | None = 2, manual: bool = True) -> Research:
    """What an evolve run of tag TAG leaves behind: candidate commits of train.py on branches
    `autoresearch/<tag>/<id>` whose parent commit is the parent candidate's, their run
    folders, and ledger records written through the real `Ledger` API (after the MANUAL
    `autoresearch run` records, with `manual`)."""
    from autoresearch.workspace import init_repo, state_dir

    repo = init_repo(tmp_path / "research", "tiny")
    if population is not None:
        with open(repo / "autoresearch.toml", "a") as f:
            f.write(f"\n[evolve]\npopulation = {population}\n")
    state = state_dir(repo)
    ledger = Ledger(state / "ledger.jsonl")
    g = git.Repo(repo)
    base = g.head.commit.hexsha
    if manual:
        for i, (exp_id, bpb) in enumerate(MANUAL):
            ledger.append(
                Record(id=exp_id, status="keep", val_bpb=bpb, commit=base, proposer="manual",
                       description=f"manual run {i}", created=1000.0 + i)
            )  # fmt: skip
    commits: dict[str, str] = {}
    for n, (cid, parent, status, bpb, proposer, promoted, edit) in enumerate(CANDIDATES):
        run_dir = state / "runs" / cid
        run_dir.mkdir(parents=True)
        if parent is None:
            commits[cid] = base
        else:
            g.git.checkout("-q", "-b", f"autoresearch/{TAG}/{cid}", commits[parent])
            source = (repo / "train.py").read_text()
            name, value = edit
            lines = [
                f"{name} = {value}  # edited by {cid}" if line.startswith(f"{name} = ") else line
                for line in source.splitlines()
            ]
            assert lines != source.splitlines(), f"{name} is not a constant of the tiny baseline"
            (repo / "train.py").write_text("\n".join(lines) + "\n")
            g.index.add(["train.py"])
            commits[cid] = g.index.commit(f"{cid}: {name}", author=AUTHOR, committer=AUTHOR).hexsha
        (run_dir / "train.py").write_text(g.git.show(f"{commits[cid]}:train.py") + "\n")
        (run_dir / "run.log").write_text("".join(f"{cid} log line {i}\n" for i in range(30)))
        usage = {}
        if proposer.startswith("llm"):
            (run_dir / "proposal").mkdir()  # where the engine moves the proposer's files
            (run_dir / "proposal" / "prompt_1.md").write_text("the prompt")
            (run_dir / "proposal" / "reply_1.md").write_text("the reply")
            usage = {"prompt_tokens": 1200, "completion_tokens": 300, "cost_usd": 0.02 * (n + 1)}
        ledger.append(
            Record(
                id=cid, status=status, val_bpb=bpb, commit=commits[cid], parent=parent,
                proposer=proposer, promoted=promoted, tag=TAG, usage=usage,
                reason="RuntimeError: boom" if status == "crash" else "",
                description=f"{edit[0]} = {edit[1]}" if edit else "baseline",
                memory_gb=1.0 + n / 10, fingerprints={"source": f"src-{cid}", "harness": "h1"},
                timings={"train": 60.0, "eval": 3.5}, created=2000.0 + 400 * n,
            )
        )  # fmt: skip
    g.git.checkout("-q", "main")
    return Research(repo, state, ledger, commits)


# --------------------------------------------------------------------------- a live run, served

# `python -c HOLD_LOCK <state>/evolve.lock` holds the engine's run lock as a live run does,
# until its stdin is closed; it prints "locked" once it holds it.
HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
    """
)


@contextlib.contextmanager
def live_run(state: Path, status: dict[str, Any]) -> Iterator[int]:
    """A live run as `status` and the dashboard see one: a process holding the run lock, and
    `status` (with its pid) as status.json, which stays when the block ends and the lock is
    let go, as a finished run leaves it. Yields the pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state / "evolve.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        (state / "status.json").write_text(json.dumps({"pid": holder.pid, **status}))
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()


@dataclasses.dataclass
class Served:
    url: str  # http://127.0.0.1:PORT/, as printed (with ?token=... when it printed one)
    base: str  # http://127.0.0.1:PORT: where the tests connect, whatever --host was
    process: subprocess.Popen
    rest: str = ""  # what it printed after the URL, on stdout and stderr (once it stopped)


@contextlib.contextmanager
def serving(
    repo: Path, *args: str, env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Served]:
    """`autoresearch serve --port 0 ARGS` in `repo`, a real process, until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "serve", "--port", "0", *args],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, preexec_fn=preexec_fn,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert " at http://" in line, line + process.stderr.read()
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        served = Served(url, f"http://127.0.0.1:{port}", process)
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        with contextlib.suppress(NameError):
            served.rest = out + err


# --------------------------------------------------------------------------- tiny baselines

BASELINES = Path(__file__).resolve().parents[1] / "baselines"
VOCAB = 97
SEQ = 32

# Tiny sizes for each baseline; every model size in train.py derives from these.
SIZES = {
    "gpt": dict(DEPTH=4, ASPECT_RATIO=16, HEAD_DIM=16),  # dim 64, 4 heads, windows S S S L
    "tiny": dict(DEPTH=2, MODEL_DIM=32, N_HEAD=2),
}


def load_baseline(name: str, **overrides: Any) -> Any:
    """Import baselines/<name>/train.py as a fresh module, with constants overridden."""
    path = BASELINES / name / "train.py"
    spec = importlib.util.spec_from_file_location(f"baseline_{name}_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key, value in {**SIZES[name], **overrides}.items():
        assert hasattr(module, key), f"{name}: no constant {key}"
        setattr(module, key, value)
    return module


def build(name: str, seed: int = 0, **overrides: Any) -> tuple[Any, Any]:
    """(the baseline's module, its model for VOCAB and SEQ), seeded."""
    import torch  # only here: most tests that use this module never need it

    module = load_baseline(name, **overrides)
    torch.manual_seed(seed)
    return module, module.build_model(VOCAB, SEQ)
