"""Attacks on the orchestrator's git: config that makes the next git command the
orchestrator runs start a program, outside the sandbox and with the user's environment.

A candidate's HOME is a private folder of its run, but without namespaces it can still
write the user's real ~/.gitconfig by its path, and the research repo's .git/config, hooks
and .gitattributes through a program (the audit hook sees only Python's own writes). Each
attack plants a payload that leaves a marker file wherever git runs it; the orchestrator's
git commands (the workspace functions the engine and the CLI call) must never run it, and
a run that changed one of those files must end `invalid` and stop the search.
"""

from __future__ import annotations

from pathlib import Path

import candidates
import git
import pytest
from attacking import TOKENS, attack, in_repo, needs_isolation

from autoresearch import workspace
from autoresearch.config import load_config
from autoresearch.default_plugins.agent_proposer import _init_scratch
from autoresearch.engine import Engine
from autoresearch.errors import UserError
from autoresearch.ledger import Ledger
from autoresearch.report import git_diff
from autoresearch.testing import ScriptedProposer, make_request

HOOKS = ("pre-commit", "commit-msg", "post-commit", "reference-transaction", "pre-auto-gc")


@pytest.fixture
def payload(tmp_path) -> Path:
    """A program that appends to `marker` (next to it) each time something runs it."""
    script = tmp_path / "payload.sh"
    script.write_text(f'#!/bin/sh\necho "$0 $*" >> {tmp_path / "marker"}\n')
    script.chmod(0o755)
    return script


@pytest.fixture
def hooks_dir(tmp_path, payload) -> Path:
    """A folder with the payload under every hook name git or GitPython runs for us."""
    folder = tmp_path / "hooks"
    folder.mkdir()
    for name in HOOKS:
        (folder / name).write_bytes(payload.read_bytes())
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """The orchestrator's (and so a candidate's) HOME: an empty folder of the test's."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return folder


def marker_of(payload: Path) -> Path:
    return payload.parent / "marker"


def orchestrator_git(repo: Path) -> None:
    """What the engine and the CLI do with git, through the workspace's functions (every
    git process of the orchestrator starts in them): init, the state of HEAD, candidate
    and result commits, branches, a diff for `show`, a plain git ref update."""
    workspace.init_repo(repo.parent / "another", "tiny")
    (repo / "train.py").touch()  # an index refresh must look at it again
    head = workspace.current_commit(repo).sha
    source = workspace.read_train(repo, head)
    sha = workspace.commit_candidate(repo, head, source + "# next\n", "c0001 next")
    workspace.set_branch(repo, "autoresearch/probe-candidates/c0001", sha)
    workspace.commit_result(repo, sha, "c0001 result")
    assert workspace.branches(repo, "autoresearch/probe-candidates")
    assert workspace.commit_message(repo, sha) == "c0001 next"
    assert "+# next" in git_diff(repo, head, sha)  # a real diff, not an external program's
    workspace.git_command(repo, "update-ref", "refs/heads/autoresearch/probe", sha)


def native(*argv: str) -> str:
    """A line of candidate code that runs a program (each argument a Python expression):
    native code, which the audit hook never sees."""
    return f"    __import__('subprocess').run([{', '.join(argv)}], check=True)\n"


def in_home(path: str) -> str:
    return f"__import__('os').path.expanduser({path!r})"


# --- 1. the user's config, written by a candidate (or anything else) -------------------


USER_CONFIGS = pytest.mark.parametrize(
    "name, text",
    [
        (".gitconfig", "[core]\n\tfsmonitor = {payload}\n"),  # git status runs it
        (".config/git/config", "[core]\n\thooksPath = {hooks}\n"),  # GitPython's commit too
        (".gitconfig", "[diff]\n\texternal = {payload}\n"),  # git diff runs it
    ],
)


def write_user_config(home: Path, name: str, text: str, payload: Path, hooks: Path) -> None:
    path = home / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.format(payload=payload, hooks=hooks))


@USER_CONFIGS
def test_1_user_config_runs_nothing(research_repo, home, payload, hooks_dir, name, text):
    write_user_config(home, name, text, payload, hooks_dir)
    orchestrator_git(research_repo)
    assert not marker_of(payload).exists(), marker_of(payload).read_text()


@USER_CONFIGS
def test_1_user_config_runs_nothing_in_the_agents_scratch_repo(
    tmp_path, home, payload, hooks_dir, name, text
):
    """The agent proposer commits the parent in a scratch repo before its agent starts."""
    write_user_config(home, name, text, payload, hooks_dir)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _init_scratch(scratch, make_request("x = 1\n", program="be brief"), "the prompt")
    assert workspace.git_command(scratch, "log", "--format=%s").strip() == "parent c0000"
    assert not marker_of(payload).exists(), marker_of(payload).read_text()


@pytest.mark.parametrize(
    "code",
    [  # git config --global: native, so the audit hook never sees it
        lambda payload, home: native(
            "'git'", "'config'", "'--global'", "'core.fsmonitor'", repr(str(payload))
        ),
        lambda payload, home: (  # a plain Python write: HOME is not the research repo
            f"    import os\n    os.makedirs({in_home('~/.config/git')}, exist_ok=True)\n"
            f"    open({in_home('~/.config/git/config')}, 'w')"
            f".write('[diff]\\n\\texternal = {payload}\\n')\n"
        ),
    ],
    ids=["git-config-global", "xdg-config"],
)
def test_1_candidate_writing_its_home_config_changes_nothing(research_repo, home, payload, code):
    """A candidate's HOME is a private folder of its run: `~` is not the user's home."""
    out = attack(research_repo, candidates.honest_with(at_start=code(payload, home)))
    assert out.status == "keep", out.reason
    assert not any(home.iterdir())  # the user's home is as it was: empty
    orchestrator_git(research_repo)
    assert not marker_of(payload).exists(), marker_of(payload).read_text()


def test_1_candidate_writing_the_users_real_config_is_caught(research_repo, home, payload):
    """Without namespaces, the real home by its absolute path (a candidate can guess it)."""
    code = native(
        "'git'", "'config'", "'--file'", repr(str(home / ".gitconfig")), "'core.fsmonitor'",
        repr(str(payload)),
    )  # fmt: skip
    out = attack(research_repo, candidates.honest_with(at_start=code))
    assert out.status == "invalid" and out.fatal, out.reason  # the user's own git would run it
    assert str(home) in out.reason, out.reason
    orchestrator_git(research_repo)
    assert not marker_of(payload).exists(), marker_of(payload).read_text()


@needs_isolation
def test_1_user_config_written_under_isolation_is_caught_or_refused(research_repo, home, payload):
    """HOME may be writable in the sandbox: the write is refused there, or the run is
    `invalid`; either way nothing runs."""
    text = f"[core]\\n\\tfsmonitor = {payload}\\n"
    code = (
        f"    try:\n        open({in_home('~/.gitconfig')}, 'w').write('{text}')\n"
        "    except OSError:\n        pass\n"
    )
    out = attack(research_repo, candidates.honest_with(at_start=code), isolation="on")
    if (home / ".gitconfig").exists():
        assert out.status == "invalid" and out.fatal, out.reason
    else:
        assert out.status == "keep", out.reason
    orchestrator_git(research_repo)
    assert not marker_of(payload).exists(), marker_of(payload).read_text()


# --- 2. the research repo's own git files, written without namespaces -----------------


def config_set(key: str, value: Path) -> str:
    return native(
        "'git'", "'config'", "'--file'", f"str({in_repo('.git/config')})", repr(key),
        repr(str(value)),
    )  # fmt: skip


REPO_ATTACKS = {
    "fsmonitor": lambda payload, hooks: config_set("core.fsmonitor", payload),
    "hooks-path": lambda payload, hooks: config_set("core.hooksPath", hooks),
    "hook-files": lambda payload, hooks: "".join(
        native("'cp'", repr(str(hooks / name)), f"str({in_repo('.git/hooks/' + name)})")
        for name in ("post-commit", "reference-transaction")
    ),
    "attributes-drivers": lambda payload, hooks: (
        "    open('attrs', 'w').write('* filter=x diff=x\\n')\n"
        + native("'cp'", "'attrs'", f"str({in_repo('.gitattributes')})")
        + config_set("filter.x.clean", payload)
        + config_set("diff.x.textconv", payload)
    ),
}


@pytest.mark.parametrize("name", REPO_ATTACKS)
def test_2_repo_git_files_changed_in_a_run_are_caught(research_repo, payload, hooks_dir, name):
    source = candidates.honest_with(at_start=REPO_ATTACKS[name](payload, hooks_dir))
    out = attack(research_repo, source)
    assert out.status == "invalid" and out.fatal, out.reason
    assert "changed protected files" in out.reason, out.reason
    orchestrator_git(research_repo)  # and even so, what they name never runs
    assert not marker_of(payload).exists(), marker_of(payload).read_text()


@pytest.mark.slow
def test_2_evolve_stops_at_a_repo_config_attack(research_repo, payload, hooks_dir):
    """A real search: the attack is recorded `invalid`, the search stops, and the commands
    that follow (the result commit, then the CLI's next look at HEAD) run no payload."""
    repo = research_repo
    (repo / "train.py").write_text(candidates.HONEST)
    index = git.Repo(repo).index
    index.add(["train.py"])
    base_sha = index.commit("baseline").hexsha
    code = REPO_ATTACKS["fsmonitor"](payload, hooks_dir) + REPO_ATTACKS["hooks-path"](
        payload, hooks_dir
    )
    proposer = ScriptedProposer([(candidates.honest_with(at_start=code), "attack")])
    settings = {"run.budget_tokens": TOKENS, "run.budget_seconds": 30, "run.isolation": "off"}
    evolve = {"evolve.calibrate": 0, "evolve.prefetch": 0, "evolve.population": 1}
    evolve |= {"evolve.fix_attempts": 0, "evolve.max_experiments": 3}
    config = load_config(repo, settings | evolve)
    engine = Engine(repo, config, "atk", {proposer.name: (proposer, 1.0)}, say=lambda line: None)
    with pytest.raises(UserError, match=r"changed protected files.*\.git/config"):
        engine.run(base_sha)
    last = Ledger(repo / ".autoresearch" / "ledger.jsonl").records()[-1]
    assert (last.description, last.status) == ("attack", "invalid")
    assert workspace.branch_sha(repo, "autoresearch/atk") == base_sha  # not promoted
    orchestrator_git(repo)
    assert not marker_of(payload).exists(), marker_of(payload).read_text()
