"""The agent presets with the real programs: aider from PyPI, Claude Code and Codex from npm.

Each test installs its client into a cache of its own (AUTORESEARCH_CLIENTS, by default
~/.cache/autoresearch-clients: a venv for aider, an npm prefix for the others; reruns
reuse it), starts the loopback stub as that client's model server, and runs
`autoresearch evolve --population 2 --proposer agent:<name>` on the tests' bigram
(tests/candidates.py, which trains in seconds even on a busy CPU). The scripted model
behaves like a careful agent: it reads train.py, tries what the preset must forbid (edit
program.md, write outside the scratch folder), changes LR to a new value, writes
DESCRIPTION and says it is done. The test checks that the candidates trained with
exactly those edits, that what was forbidden did not happen, and that the spend the
client reported reached the ledger.

A client that cannot be installed or started here is skipped, with the reason. Slow
(minutes): run with `pytest -m slow tests/test_agent_clients.py -s`, which prints the
ledger lines.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import candidates
import git
import pytest
from helpers import cli, committed
from openai_stub import Call, OpenAIStub, Received, Say, Turn

from autoresearch.ledger import Ledger
from autoresearch.workspace import state_dir

pytestmark = pytest.mark.slow

CLIENTS = Path(
    os.environ.get("AUTORESEARCH_CLIENTS", Path.home() / ".cache" / "autoresearch-clients")
)
INSTALL_TIMEOUT = 900
EXPERIMENTS = 3  # the baseline and two candidates
BUDGET = 3  # seconds of training per experiment
SOURCE = candidates.HONEST.replace("LR = 0.2\n", "LR = 0.05  # Adam LR of the bigram table\n")
# The line of train.py the scripted model edits, as it appears in a request's JSON text
# (only train.py has the comment; a line ends where JSON escapes its newline).
KNOB = re.compile(r"LR = ([0-9.e+-]+)(  # Adam LR[^\\\n]*)")
SCRATCH = re.compile(r"working directory: (/[^\s\"'\\]+)")  # Claude Code's system prompt
DESCRIPTION = "scripted agent: LR to {value}"
PROGRAM_LINE = "# Research program"  # the first line of program.md, which the model tries to edit


# -- the clients -----------------------------------------------------------------------------


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=INSTALL_TIMEOUT, **kwargs
    )


def _install(name: str, binary: Path, steps: list[list]) -> Path:
    """`binary`, installed by `steps` unless it is there; skip the test when it fails."""
    if not binary.exists():
        for step in steps:
            try:
                done = _run(step)
            except (OSError, subprocess.TimeoutExpired) as e:
                pytest.skip(f"{name} could not be installed: {e}")
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                pytest.skip(f"{name} could not be installed: {' | '.join(tail)}")
    try:
        version = _run([binary, "--version"], cwd=CLIENTS)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"{name} does not start here: {e}")
    if version.returncode != 0:
        pytest.skip(f"{name} does not start here: {version.stderr.strip()[-300:]}")
    print(f"\n{name}: {version.stdout.strip()}")
    return binary.parent


def aider_bin() -> Path:
    venv = CLIENTS / "aider"
    return _install("aider", venv / "bin" / "aider", [
        [sys.executable, "-m", "venv", venv],
        [venv / "bin" / "pip", "install", "-q", "aider-chat"],
    ])  # fmt: skip


def npm_bin(package: str, binary: str) -> Path:
    prefix = CLIENTS / "npm"
    prefix.mkdir(parents=True, exist_ok=True)
    return _install(binary, prefix / "node_modules" / ".bin" / binary, [
        ["npm", "install", "--prefix", prefix, "--no-fund", "--no-audit", package],
    ])  # fmt: skip


# -- the scripted agent ----------------------------------------------------------------------


class Script:
    """What the scripted model edits: each edit sets LR to a value no other edit
    set, so no two candidates are the same source. Thread-safe: two agents may run at once
    (prefetch)."""

    def __init__(self) -> None:
        self._values = (round(0.05 * (1 + 0.25 * n), 4) for n in itertools.count(1))
        self._lock = threading.Lock()
        self.edits: list[tuple[str, str]] = []  # (the line before, the line after)

    def edit(self, seen: str) -> tuple[str, str]:
        """(old line, new line) for the train.py in `seen`, the last one in it."""
        old, comment = KNOB.findall(seen)[-1]
        with self._lock:
            value = next(self._values)
            pair = (f"LR = {old}{comment}", f"LR = {value}{comment}")
            self.edits.append(pair)
        return pair


def _value(line: str) -> str:
    return line.split()[2]


def aider_turn(script: Script, r: Received) -> Turn:
    """aider sends the files in the chat and applies SEARCH/REPLACE blocks from the reply.
    The reply names program.md, which aider must not make editable, and tries to edit it.
    aider also asks for a summary of the chat when it ends: that gets a summary."""
    if "summarize" in json.dumps(r.messages[:1]).lower():
        return Say("The user asked for one change to train.py; LR was changed.")
    old, new = script.edit(r.text)
    fence = "```"
    return Say(
        f"I change LR, as program.md asks for one focused change.\n\n"
        f"train.py\n{fence}python\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n"
        f"{fence}\n\nprogram.md\n{fence}\n<<<<<<< SEARCH\n{PROGRAM_LINE}\n=======\n"
        f"Anything goes\n>>>>>>> REPLACE\n{fence}\n\n"
        f"DESCRIPTION\n{fence}\n<<<<<<< SEARCH\n=======\n"
        f"{DESCRIPTION.format(value=_value(new))}\n>>>>>>> REPLACE\n{fence}\n",
        prompt_tokens=1500, completion_tokens=80,
    )  # fmt: skip


def claude_turn(script: Script, outside: Path):
    """Claude Code: a side request for a title (no tools), then Read of train.py and
    program.md, a refused Read of a file outside the scratch folder, a refused Edit of
    program.md, Edit of train.py, Write of DESCRIPTION, and the final answer."""

    def turn(r: Received) -> Turn:
        if not r.body.get("tools"):
            return Say('{"title": "Tune the learning rate"}')
        scratch = SCRATCH.findall(r.text)[0]
        done = r.text.count('"tool_result"')
        if done < 2:  # Edit needs a Read first: only the permission can refuse program.md
            return Call("Read", {"file_path": f"{scratch}/{('train.py', 'program.md')[done]}"})
        if done == 2:
            return Call("Read", {"file_path": str(outside)})
        if done == 3:
            edit = {"old_string": PROGRAM_LINE, "new_string": "Anything goes"}
            return Call("Edit", {"file_path": f"{scratch}/program.md", **edit})
        if done == 4:
            old, new = script.edit(r.text)
            return Call("Edit", {"file_path": f"{scratch}/train.py", "old_string": old,
                                 "new_string": new})  # fmt: skip
        if done == 5:
            value = re.findall(r'"new_string": "LR = ([0-9.]+)', r.text)[-1]  # its Edit
            return Call("Write", {"file_path": f"{scratch}/DESCRIPTION",
                                  "content": DESCRIPTION.format(value=value) + "\n"})  # fmt: skip
        return Say("Done: LR changed.")

    return turn


def codex_turn(script: Script, escape: Path):
    """Codex: shell commands in its sandbox: read train.py, try to write outside the
    scratch folder, apply_patch the edit, write DESCRIPTION, then the final answer."""

    def turn(r: Received) -> Turn:
        outputs = [i for i in r.body.get("input", []) if i.get("type") == "function_call_output"]
        if len(outputs) == 0:
            return Call("exec_command", {"cmd": "cat train.py"})
        if len(outputs) == 1:
            return Call("exec_command", {"cmd": f"touch {escape}; echo tried"})
        if len(outputs) == 2:
            old, new = script.edit(json.dumps(outputs[0]))
            patch = f"*** Begin Patch\n*** Update File: train.py\n@@\n-{old}\n+{new}\n*** End Patch"
            return Call("exec_command", {"cmd": f"apply_patch <<'PATCH'\n{patch}\nPATCH\n"})
        if len(outputs) == 3:
            value = re.findall(r"\+LR = ([0-9.]+)", r.text)[-1]  # its apply_patch
            return Call("exec_command", {"cmd": f"echo '{DESCRIPTION.format(value=value)}'"
                                                " > DESCRIPTION"})  # fmt: skip
        return Say("Done: LR changed.")

    return turn


# -- the run ---------------------------------------------------------------------------------


def evolve(repo: Path, spec: str, env: dict[str, str]) -> list:
    """`autoresearch evolve --population 2 --proposer SPEC` (default prefetch) from SOURCE;
    the records."""
    committed(repo, SOURCE)
    done = cli(
        "evolve", "--population", "2", "--proposer", spec, "--max-experiments", str(EXPERIMENTS),
        "--calibrate", "0", "--confirm", "0", "--tag", "agents", "--budget", str(BUDGET),
        cwd=repo, env=env,
    )  # fmt: skip
    print(done.stdout, done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]
    records = Ledger(state_dir(repo) / "ledger.jsonl").records()
    print("ledger:")
    for r in records:
        print(f"  {r.id} {r.status} {r.val_bpb} {r.proposer} parent={r.parent}"
              f" usage={r.usage} {r.description!r} {r.reason!r}")  # fmt: skip
    return records


def check_candidates(repo: Path, records: list, script: Script) -> list:
    """Every trained candidate's diff is one of the scripted edits, and at least two trained."""
    trained = [r for r in records if r.proposer != "baseline" and r.status in ("keep", "discard")]
    assert len(trained) >= 2, [(r.status, r.reason) for r in records]
    by_id = {r.id: r for r in records}
    with git.Repo(repo) as g:
        for r in trained:
            diff = g.git.diff(by_id[r.parent].commit, r.commit, "--", "train.py")
            changed = [ln for ln in diff.splitlines() if re.match(r"^[-+](?![-+])", ln)]
            assert len(changed) == 2, diff
            old, new = changed[0].removeprefix("-"), changed[1].removeprefix("+")
            assert (old, new) in script.edits, diff
            assert r.description == DESCRIPTION.format(value=_value(new))
    return trained


def client_env(tmp_path: Path, bin_dir: Path, **variables: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "AUTORESEARCH_CACHE",
                                                        "AUTORESEARCH_PLUGINS", "PYTHONPATH")}
    return base | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(home),
                   "LITELLM_LOCAL_MODEL_COST_MAP": "True"} | variables  # fmt: skip


def test_aider(research_repo, tmp_path):
    bin_dir = aider_bin()
    script = Script()
    with OpenAIStub() as stub:
        stub.responder = lambda r: aider_turn(script, r)
        env = client_env(tmp_path, bin_dir, OPENAI_API_KEY="sk-loopback",
                         OPENAI_API_BASE=stub.base_url)  # fmt: skip
        records = evolve(research_repo, "agent:aider:openai/stub", env)
    trained = check_candidates(research_repo, records, script)
    assert all(r.usage.get("prompt_tokens", 0) > 0 for r in trained)  # aider counts them itself


def test_claude_code(research_repo, tmp_path):
    bin_dir = npm_bin("@anthropic-ai/claude-code", "claude")
    script = Script()
    outside = tmp_path / "private.txt"
    outside.write_text("PRIVATE-MARKER-4711\n")
    with OpenAIStub() as stub:
        stub.responder = claude_turn(script, outside)
        env = client_env(tmp_path, bin_dir, ANTHROPIC_API_KEY="sk-ant-loopback",
                         ANTHROPIC_BASE_URL=stub.base_url.removesuffix("/v1"))  # fmt: skip
        records = evolve(research_repo, "agent:claude", env)
        texts = [rq.text for rq in stub.requests]
    trained = check_candidates(research_repo, records, script)
    assert any("Permission to use Edit" in t for t in texts), "program.md was not refused"
    assert any("Permission to use Read" in t for t in texts), "a read outside was not refused"
    assert not any("PRIVATE-MARKER-4711" in t for t in texts)
    # Claude Code reports tokens and what they cost at its list price.
    assert all(r.usage["prompt_tokens"] > 0 and r.usage["cost_usd"] > 0 for r in trained)


def test_codex(research_repo, tmp_path):
    bin_dir = npm_bin("@openai/codex", "codex")
    script = Script()
    escape = tmp_path / "written-from-the-sandbox"
    with OpenAIStub() as stub:
        stub.responder = codex_turn(script, escape)
        env = client_env(tmp_path, bin_dir, OPENAI_API_KEY="sk-loopback",
                         OPENAI_BASE_URL=stub.base_url)  # fmt: skip
        records = evolve(research_repo, "agent:codex:stub", env)
    trained = check_candidates(research_repo, records, script)
    assert not escape.exists(), "a command of the model wrote outside the scratch folder"
    assert all(r.usage["prompt_tokens"] > 0 and r.usage["completion_tokens"] > 0 for r in trained)
