"""The agent proposer with small Python scripts standing in for a coding agent."""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from pathlib import Path

import git
import pytest
from helpers import FROZEN, committed, make_engine

from autoresearch.default_plugins.agent_presets import MAX_ARG_PROMPT, POINTER, PRESETS
from autoresearch.default_plugins.agent_proposer import AgentError, AgentProposer, parse_options
from autoresearch.errors import UserError
from autoresearch.proposal import ProposalRequest

PARENT = "LR = 0.01\nDEPTH = 8\n\n\ndef main():\n    print(LR * DEPTH)\n"
PROGRAM = "Lower val_bpb.\n"
FAKE_SECRET = "sk-planted-secret-0123456789"  # in our environment, never named to the agent

# The agent scripts receive a path outside the scratch folder as argv[1] for their report.
EDIT_LR = """
import json, os, pathlib, sys
src = pathlib.Path("train.py").read_text()
pathlib.Path("train.py").write_text(src.replace("LR = 0.01", "LR = 0.02"))
pathlib.Path("DESCRIPTION").write_text("raise LR to 0.02\\nmore detail\\n")
prompt_file = os.environ["AUTORESEARCH_PROMPT_FILE"]
json.dump({
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "prompt_file_text": pathlib.Path(prompt_file).read_text(),
    "files": sorted(os.listdir(".")),
    "program_mode": os.stat("program.md").st_mode & 0o777,
}, open(sys.argv[1], "w"))
print("agent: edited train.py")
"""

EDIT_WITHOUT_DESCRIPTION = """
import pathlib
p = pathlib.Path("train.py")
p.write_text(p.read_text().replace("DEPTH = 8", "DEPTH = 4"))
"""

EDIT_PROGRAM_TOO = EDIT_WITHOUT_DESCRIPTION + """
pathlib.Path("program.md").write_text("Do whatever you like.\\n")
"""

ADD_HELPER = EDIT_WITHOUT_DESCRIPTION + """
pathlib.Path("helper.py").write_text("X = 1\\n")
"""

LEAVE_CACHES = EDIT_WITHOUT_DESCRIPTION + """
import py_compile
py_compile.compile("train.py", cfile="__pycache__/train.cpython-311.pyc")
pathlib.Path(".aider.chat.history.md").write_text("chat\\n")
pathlib.Path(".gitignore").write_text(".aider*\\n")  # what aider adds unless told not to
"""

COMMIT_LIKE_AIDER = EDIT_WITHOUT_DESCRIPTION + """
import subprocess
subprocess.run(["git", "commit", "-qam", "agent change"], check=True)
"""

DELETE_TRAIN = """
import os
os.remove("train.py")
"""

FAIL = """
print("thinking...")
print("fatal: model quota exceeded")
raise SystemExit(3)
"""

NO_CHANGE = "print('nothing to do')\n"

HANG = """
import pathlib, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stubborn agent: needs SIGKILL
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
pathlib.Path(sys.argv[1]).write_text(str(child.pid))
time.sleep(120)
"""

PRINT_KEY = EDIT_WITHOUT_DESCRIPTION + """
import os
print("my key is", os.environ["AGENT_API_KEY"])
"""


def agent(tmp_path: Path, script: str, **options) -> AgentProposer:
    path = tmp_path / "agent_script.py"
    path.write_text(script)
    report = tmp_path / "report.json"
    command = [sys.executable, str(path), str(report)]
    settings = {"command": command, "timeout": 30, "workdir": str(tmp_path / "scratch")}
    return AgentProposer(parse_options({**settings, **options}), kill_grace=0.5)


def request(tmp_path: Path) -> ProposalRequest:
    return ProposalRequest(
        parent_id="c0001", parent_source=PARENT, program=PROGRAM, rng=random.Random(0),
        work_dir=tmp_path / "run" / "c0002",
    )


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())


def test_agent_edit_is_taken(tmp_path):
    proposal = agent(tmp_path, EDIT_LR).propose(request(tmp_path))
    assert proposal.source == PARENT.replace("LR = 0.01", "LR = 0.02")
    assert proposal.description == "raise LR to 0.02"
    assert proposal.usage.seconds > 0
    seen = report(tmp_path)
    # It ran in a scratch repo (not our cwd), with the files and the prompt it needs.
    assert Path(seen["cwd"]).parent == tmp_path / "scratch"
    assert {"train.py", "program.md", "PROMPT.md", ".git"} <= set(seen["files"])
    assert seen["program_mode"] == 0o444  # read-only for the agent (and checked afterwards)
    assert "Lower val_bpb" in seen["env"]["AUTORESEARCH_PROMPT"]
    assert seen["prompt_file_text"] == seen["env"]["AUTORESEARCH_PROMPT"]
    assert "DESCRIPTION" in seen["prompt_file_text"]
    # The scratch folder is gone; the output is kept in the candidate's folder.
    assert list((tmp_path / "scratch").iterdir()) == []
    log = (tmp_path / "run" / "c0002" / "agent.log").read_text()
    assert "agent: edited train.py" in log


def test_description_falls_back_to_a_diffstat(tmp_path):
    proposal = agent(tmp_path, EDIT_WITHOUT_DESCRIPTION).propose(request(tmp_path))
    assert "DEPTH = 4" in proposal.source
    assert proposal.description == "agent edit: train.py +1 -1"


def test_editing_program_md_is_rejected(tmp_path):
    with pytest.raises(AgentError, match=r"other than train.py: program.md;"):
        agent(tmp_path, EDIT_PROGRAM_TOO).propose(request(tmp_path))


def test_new_files_are_rejected(tmp_path):
    with pytest.raises(AgentError, match=r"helper.py"):
        agent(tmp_path, ADD_HELPER).propose(request(tmp_path))


def test_extra_ignore_patterns_allow_named_leftovers(tmp_path):
    proposal = agent(tmp_path, ADD_HELPER, ignore=["helper.py"]).propose(request(tmp_path))
    assert "DEPTH = 4" in proposal.source


def test_caches_and_tool_state_are_ignored(tmp_path):
    proposal = agent(tmp_path, LEAVE_CACHES).propose(request(tmp_path))
    assert "DEPTH = 4" in proposal.source


def test_an_agent_that_commits_is_fine(tmp_path):
    proposal = agent(tmp_path, COMMIT_LIKE_AIDER).propose(request(tmp_path))
    assert "DEPTH = 4" in proposal.source


def test_deleting_train_py_is_rejected(tmp_path):
    with pytest.raises(AgentError, match="deleted train.py"):
        agent(tmp_path, DELETE_TRAIN).propose(request(tmp_path))


def test_unchanged_train_py_is_rejected(tmp_path):
    with pytest.raises(AgentError, match="unchanged"):
        agent(tmp_path, NO_CHANGE).propose(request(tmp_path))


def test_failing_command_reports_status_and_last_line(tmp_path):
    with pytest.raises(AgentError, match="status 3: fatal: model quota exceeded"):
        agent(tmp_path, FAIL).propose(request(tmp_path))


def _gone(pid: int) -> bool:
    """Dead or a zombie: a killed process may wait for a parent that never reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to inspect processes")
def test_hanging_agent_is_killed_with_its_children(tmp_path):
    proposer = agent(tmp_path, HANG, timeout=1.5)
    started = time.monotonic()
    with pytest.raises(AgentError, match="past its 1.5s timeout"):
        proposer.propose(request(tmp_path))
    assert time.monotonic() - started < 10
    child = int((tmp_path / "report.json").read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the agent's child process outlived it"


def test_only_named_variables_reach_the_agent(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_SECRET)
    monkeypatch.setenv("SOME_OTHER_VAR", "not for the agent")
    monkeypatch.setenv("ALLOWED_VAR", "hello agent")
    agent(tmp_path, EDIT_LR, env=["ALLOWED_VAR"]).propose(request(tmp_path))
    env = report(tmp_path)["env"]
    assert env["ALLOWED_VAR"] == "hello agent"
    assert "PATH" in env
    assert "OPENAI_API_KEY" not in env and "SOME_OTHER_VAR" not in env
    assert FAKE_SECRET not in json.dumps(env)


def test_a_named_secret_printed_by_the_agent_is_redacted_in_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_API_KEY", FAKE_SECRET)
    agent(tmp_path, PRINT_KEY, env=["AGENT_API_KEY"]).propose(request(tmp_path))
    log = (tmp_path / "run" / "c0002" / "agent.log").read_text()
    assert "my key is [redacted]" in log and FAKE_SECRET not in log


def test_a_secret_printed_before_a_timeout_is_redacted_too(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_API_KEY", FAKE_SECRET)
    script = 'import os, time\nprint("my key is", os.environ["AGENT_API_KEY"], flush=True)\n'
    proposer = agent(tmp_path, script + "time.sleep(60)\n", env=["AGENT_API_KEY"], timeout=1)
    with pytest.raises(AgentError, match="timeout"):
        proposer.propose(request(tmp_path))
    log = (tmp_path / "run" / "c0002" / "agent.log").read_text()
    assert "my key is [redacted]" in log and FAKE_SECRET not in log


def test_command_string_is_split_without_a_shell(tmp_path):
    script = tmp_path / "agent_script.py"
    script.write_text(EDIT_WITHOUT_DESCRIPTION)
    marker = tmp_path / "injected"
    # Were this run by a shell, the ';' would run touch.
    command = f"{sys.executable} {script} ; touch {marker}"
    options = parse_options({"command": command, "workdir": str(tmp_path / "scratch")})
    assert options.command[-3:] == (";", "touch", str(marker))
    AgentProposer(options).propose(request(tmp_path))
    assert not marker.exists()


def test_check_ready(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="'no-such-agent-xyz' is not found"):
        AgentProposer(parse_options({"command": "no-such-agent-xyz --go"})).check_ready()
    monkeypatch.delenv("MISSING_AGENT_KEY", raising=False)
    proposer = AgentProposer(parse_options({"command": [sys.executable],
                                            "env": ["MISSING_AGENT_KEY"]}))
    with pytest.raises(UserError, match="^MISSING_AGENT_KEY is not set"):
        proposer.check_ready()
    monkeypatch.setenv("MISSING_AGENT_KEY", "x")
    proposer.check_ready()


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, "needs a command"),
        ({"command": []}, "needs a command"),
        ({"command": "a", "timout": 5}, "did you mean 'timeout'"),
        ({"command": "a", "timeout": -1}, "positive number"),
        ({"command": "a", "env": "A B"}, "not a variable name"),
        ({"command": "a", "env": [1]}, "list of strings"),
        ({"command": "a 'unclosed"}, "cannot be split"),
    ],
)
def test_bad_options_are_user_errors(options, expected):
    with pytest.raises(UserError, match=expected):
        parse_options(options)


def test_registered_through_the_plugin_system():
    from autoresearch import plugins

    proposer = plugins.make_proposer("agent", {"command": "my-agent --yes", "timeout": 60},
                                     plugins.build_plugin_manager())
    assert isinstance(proposer, AgentProposer)
    assert proposer.options.command == ("my-agent", "--yes")
    assert proposer.options.timeout == 60.0


# -- the agent next to real training: no process-wide state may change under it ---------------

# Every os.chdir in this process, and every process started without an explicit cwd, while
# `_watching` is set: a chdir from a proposal thread (GitPython's index operations do one)
# lets a training or evaluation process started meanwhile inherit a scratch folder that is
# deleted a moment later. An audit hook sees each of them deterministically, however the
# threads interleave; it cannot be removed, so it does nothing outside that window.
_watching = threading.Event()
_seen: list[tuple[str, str, object]] = []


def _audit(event: str, args: tuple) -> None:
    if _watching.is_set():
        if event == "os.chdir":
            _seen.append(("chdir", threading.current_thread().name, args[0]))
        elif event == "subprocess.Popen" and args[2] is None:
            _seen.append(("Popen without cwd", threading.current_thread().name, args[1]))


sys.addaudithook(_audit)

# An agent that edits with git, as aider does: the n-th run sets LR to 0.1 * n and commits.
GIT_AGENT = """
import pathlib, re, subprocess, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
src = pathlib.Path("train.py").read_text()
pathlib.Path("train.py").write_text(re.sub(r"(?m)^LR = .*$", f"LR = {0.1 * n:.1f}", src))
pathlib.Path("DESCRIPTION").write_text(f"LR {0.1 * n:.1f}\\n")
subprocess.run(["git", "commit", "-qam", "agent edit"], check=True)
"""


def test_an_agent_beside_real_training_changes_no_folder_of_the_process(research_repo, tmp_path):
    base = committed(research_repo, FROZEN)
    script = tmp_path / "git_agent.py"
    script.write_text(GIT_AGENT)
    proposer = AgentProposer(parse_options({
        "command": [sys.executable, str(script), str(tmp_path / "runs")], "timeout": 60,
    }))  # fmt: skip
    # The proposals are made while the baseline trains (prefetch 2), one of them trains next.
    engine = make_engine(research_repo, proposer, budget=0.5, max_experiments=2, prefetch=2)
    _seen.clear()
    _watching.set()
    try:
        records = engine.run(base)
    finally:
        _watching.clear()
    assert _seen == []
    # The candidate trained and was scored, with the agent's edit as its diff.
    assert [r.status in ("keep", "discard") for r in records] == [True] * 2, records
    with git.Repo(research_repo) as repo:
        for r in records[1:]:
            diff = repo.git.diff(records[0].commit, r.commit, "--", "train.py")
            changed = [ln for ln in diff.splitlines() if re.match(r"^[-+](?![-+])", ln)]
            assert changed[0] == "-LR = 0.0" and re.fullmatch(r"\+LR = 0\.[12]", changed[1])


# -- presets: the command lines and environments of aider, Claude Code and Codex --------------
# (tests/test_agent_clients.py runs them with the real programs)

PRESET_ENV = {
    "OPENAI_API_KEY": "sk-openai-planted", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    "ANTHROPIC_API_KEY": "sk-ant-planted", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
    "GITHUB_TOKEN": "ghp-planted", "AWS_SECRET_ACCESS_KEY": "aws-planted",
}  # fmt: skip


def preset(spec: str, monkeypatch, **options) -> AgentProposer:
    for name, value in PRESET_ENV.items():
        monkeypatch.setenv(name, value)
    return AgentProposer(parse_options({"model": spec, **options}))


def test_claude_preset_command_and_environment(monkeypatch, tmp_path):
    proposer = preset("claude:claude-sonnet-4-5", monkeypatch)
    argv = proposer.argv("the task")
    assert argv[:3] == ["claude", "-p", "the task"]
    assert "--tools=Read,Edit,Write" in argv  # no Bash: no shell command at all
    assert "--allowedTools=Read(./**),Edit(train.py),Edit(DESCRIPTION)" in argv
    assert argv[argv.index("--permission-mode") + 1] == "dontAsk"
    assert argv[argv.index("--model") + 1] == "claude-sonnet-4-5"
    env = proposer.environment(tmp_path, "the task")
    assert env["ANTHROPIC_API_KEY"] == "sk-ant-planted" and "ANTHROPIC_BASE_URL" in env
    assert not {"OPENAI_API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY"} & set(env)


def test_codex_preset_sandbox_key_and_base_url(monkeypatch, tmp_path):
    proposer = preset("codex", monkeypatch)
    argv = proposer.argv("the task")
    assert argv[:2] == ["codex", "exec"] and argv[-2:] == ["--", "the task"]
    assert argv[argv.index("--sandbox") + 1] == "workspace-write"
    assert 'approval_policy="never"' in argv and "-m" not in argv
    assert 'openai_base_url="http://127.0.0.1:9/v1"' in argv  # codex reads no such variable
    env = proposer.environment(tmp_path, "the task")
    assert env["CODEX_API_KEY"] == env["OPENAI_API_KEY"] == "sk-openai-planted"
    assert not {"ANTHROPIC_API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY"} & set(env)


def test_aider_preset_reads_program_md_and_answers_no(monkeypatch, tmp_path):
    proposer = preset("aider:openai/gpt-4.1", monkeypatch)
    argv = proposer.argv("the task")
    assert argv[argv.index("--read") + 1] == "program.md"
    assert argv[-2:] == ["train.py", "DESCRIPTION"] and "program.md" not in argv[-4:]
    assert "--no-suggest-shell-commands" in argv and "--yes-always" not in argv
    assert "--no-gitignore" in argv and argv[argv.index("--model") + 1] == "openai/gpt-4.1"
    assert set(proposer.options.preset.stdin.split()) == {"n"}
    env = proposer.environment(tmp_path, "the task")
    assert (env["OPENAI_API_KEY"], env["OPENAI_BASE_URL"]) == ("sk-openai-planted",
                                                               "http://127.0.0.1:9/v1")
    assert not {"ANTHROPIC_API_KEY", "GITHUB_TOKEN"} & set(env)


def test_preset_from_the_config_with_program_and_args(monkeypatch):
    proposer = preset(None, monkeypatch, preset="claude", program="/opt/claude/bin/claude",
                      args=["--max-turns", "30"], env=["GITHUB_TOKEN"])  # fmt: skip
    argv = proposer.argv("the task")
    assert argv[0] == "/opt/claude/bin/claude" and argv[-2:] == ["--max-turns", "30"]
    assert proposer.environment(Path("/x"), "t")["GITHUB_TOKEN"] == "ghp-planted"  # asked for


def test_args_come_before_the_task(monkeypatch):
    argv = preset("codex", monkeypatch, args=["--profile", "night"]).argv("the task")
    assert argv[-4:] == ["--profile", "night", "--", "the task"]
    argv = preset("aider", monkeypatch, args=["--cache-prompts"]).argv("the task")
    assert argv[-5:] == ["--cache-prompts", "--message-file", "PROMPT.md", "train.py",
                         "DESCRIPTION"]  # fmt: skip


def test_a_prompt_too_long_for_one_argument_is_pointed_to(monkeypatch):
    argv = preset("codex", monkeypatch).argv("x" * (MAX_ARG_PROMPT + 1))
    assert argv[-1] == POINTER and "PROMPT.md" in POINTER


def test_a_command_that_is_no_preset_is_still_a_command():
    options = parse_options({"model": "aider-wrapper --fast"})
    assert options.preset is None and options.command == ("aider-wrapper", "--fast")


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"model": "claude", "command": "my-agent"}, "keep one"),
        ({"model": "claude", "preset": "codex"}, "two agent presets"),
        ({"preset": "cursor"}, "must be one of aider, claude, codex"),
        ({"command": "my-agent", "args": ["-v"]}, "'args' extends a preset"),
        ({"command": "my-agent", "program": "x"}, "'program' goes with a preset"),
    ],
)
def test_bad_preset_options_are_user_errors(options, expected):
    with pytest.raises(UserError, match=expected):
        parse_options(options)


def test_a_missing_preset_program_says_how_to_install_it(monkeypatch):
    proposer = AgentProposer(parse_options({"preset": "codex", "program": "no-such-codex-xyz"}))
    with pytest.raises(UserError, match=r"npm install -g @openai/codex"):
        proposer.check_ready()


# A stand-in for `claude` (not the client: tests/test_agent_clients.py runs that) which,
# like it, ends with a JSON result holding its spend, here after failing.
CLAUDE_RESULT_THEN_FAIL = """
import json
print(json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": True,
                  "result": "", "total_cost_usd": 0.42,
                  "usage": {"input_tokens": 1000, "cache_read_input_tokens": 200,
                            "output_tokens": 30}}))
raise SystemExit(1)
"""


def test_spend_a_preset_reports_is_kept_when_the_proposal_fails(monkeypatch, tmp_path):
    script = tmp_path / "claude"
    script.write_text(f"#!{sys.executable}\n{CLAUDE_RESULT_THEN_FAIL}")
    script.chmod(0o755)
    proposer = preset("claude", monkeypatch, program=str(script), workdir=str(tmp_path / "s"))
    with pytest.raises(AgentError, match="status 1") as failed:
        proposer.propose(request(tmp_path))
    usage = failed.value.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cost_usd) == (1200, 30, 0.42)
    assert usage.seconds > 0


# Lines as aider 0.86 and Codex 0.171 print them (tests/test_agent_clients.py sees them live).
AIDER_LOG = """Applied edit to train.py
Tokens: 7.5k sent, 119 received. Cost: $0.02 message, $0.02 session.
Tokens: 2.1k sent, 1.2k cache write, 45 received. Cost: $0.01 message, $0.03 session.
"""
CODEX_LOG = "\n".join(json.dumps(e) for e in [
    {"type": "turn.completed", "usage": {"input_tokens": 500, "cached_input_tokens": 0,
                                         "output_tokens": 250}},
    {"type": "item.completed", "item": {"type": "agent_message", "text": "Raised LR."}},
    {"type": "turn.completed", "usage": {"input_tokens": 100, "output_tokens": 5}},
]) + "\nnot json {"  # fmt: skip


def test_what_aider_and_codex_print_is_their_spend():
    aider = PRESETS["aider"].said(AIDER_LOG)
    assert (aider.usage.prompt_tokens, aider.usage.completion_tokens) == (9600, 164)
    assert aider.usage.cost_usd == 0.03 and aider.message == ""
    codex = PRESETS["codex"].said(CODEX_LOG)
    assert (codex.usage.prompt_tokens, codex.usage.completion_tokens) == (600, 255)
    assert codex.message == "Raised LR."
