"""The `agent` proposer: an external coding agent edits train.py in a scratch folder.

    [proposers.agent]
    preset = "claude"          # or aider, codex (agent_presets.py); `--proposer agent:claude`
    timeout = 1800

    [proposers.agent]
    command = ["my-agent", "--task-file", "PROMPT.md"]   # or any command of your own
    env = ["MY_AGENT_KEY"]

Each proposal gets a fresh temporary git repository (never the user's own
checkout) holding `train.py` (the parent), `program.md` and `PROMPT.md`,
committed once so agents that expect git find it. The prompt is also in the
environment variables `AUTORESEARCH_PROMPT` and `AUTORESEARCH_PROMPT_FILE`.
The command runs there in its own process group, with only PATH, HOME, LANG,
the variables the user names and those of its preset; on timeout the whole
group is killed. program.md is made read-only. The resulting train.py is the
proposal; a change to any other file (the agent thought it mattered, but only
train.py is carried over) rejects it. What the agent reports it spent (a
preset reads it from the agent's output) is the proposal's usage, also when
the proposal fails.

The command is an argument list and is never run through a shell, so
nothing in the prompt or the model's output can become shell syntax.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import fnmatch
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from autoresearch import hookimpl
from autoresearch.errors import UserError
from autoresearch.plugins import check_option_names
from autoresearch.proposal import Proposal, ProposalFailed, ProposalRequest, Usage
from autoresearch.redact import redact
from autoresearch.runner import die_with_parent
from autoresearch.workspace import git_command

from . import prompt
from .agent_presets import (
    DESCRIPTION_FILE,
    MAX_ARG_PROMPT,
    PRESETS,
    PROGRAM,
    PROMPT_FILE,
    TARGET,
    Preset,
    Said,
    split_preset,
)

NAME = "agent"
_LIVE_SCRATCH: set[Path] = set()  # scratch folders of proposals in flight
# Their agents' process groups: the group outlives its leader (the `codex` launcher that
# starts the real program is one), and evolve may end while a proposal is in flight.
_LIVE_GROUPS: set[int] = set()
DESCRIPTION = "a coding agent (aider, claude, codex, any command) editing train.py in a scratch dir"
LOG_FILE = "agent.log"
SCRATCH_GIT_CONFIG = {
    "user.name": "autoresearch",
    "user.email": "autoresearch@localhost",
    "commit.gpgsign": "false",
}
PROMPT_ENV = "AUTORESEARCH_PROMPT"
PROMPT_FILE_ENV = "AUTORESEARCH_PROMPT_FILE"
BASE_ENV = ("PATH", "HOME", "LANG")  # what any command needs to start; never API keys
READ_ONLY = 0o444  # program.md and PROMPT.md in the scratch folder
KILL_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL, for the agent to save its state
MAX_DESCRIPTION_CHARS = 200
# Files an agent or its tools leave behind that are not edits: bytecode, tool caches,
# aider's chat history. A path is ignored when it, or any folder above it, matches.
IGNORED = (
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
    ".DS_Store",
    ".aider*",
    ".gitignore",  # aider writes one to hide its files; only train.py is carried over anyway
    DESCRIPTION_FILE,
    PROMPT_FILE,
)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AgentError(ProposalFailed):
    """This proposal failed (the agent crashed, timed out, or touched other files), after
    spending what the agent reported (`usage`)."""


@dataclass(frozen=True)
class AgentOptions:
    """`[proposers.agent]` in autoresearch.toml."""

    command: tuple[str, ...] = ()  # the user's own command; with a preset, its program alone
    timeout: float = 1800.0  # seconds for one run of the agent
    env: tuple[str, ...] = ()  # names of variables passed through (API keys the agent needs)
    preset: Preset | None = None
    model: str | None = None  # the preset's model (`agent:claude:<model>`)
    args: tuple[str, ...] = ()  # more arguments for the preset's command
    workdir: str | None = None  # where scratch repos are made; the system temp dir by default
    ignore: tuple[str, ...] = ()  # extra glob patterns of leftovers that are not edits
    extra_instructions: str | None = None


OPTIONS = ("command", "preset", "program", "args", "timeout", "env", "workdir", "ignore",
           "extra_instructions")  # fmt: skip


def parse_options(options: dict[str, Any]) -> AgentOptions:
    """Validated options; a `UserError` names the bad key and what it should be."""
    # "model" is not offered, but `--proposer agent:<preset or command>` fills it.
    check_option_names("agent", {k: v for k, v in options.items() if k != "model"}, OPTIONS)
    preset, model, command = _preset_or_command(options)
    timeout = options.get("timeout", AgentOptions.timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise UserError(
            f"agent proposer option 'timeout' must be a positive number, got {timeout!r}"
        )
    env = _names("env", options.get("env", ()))
    for name in env:
        if not ENV_NAME_RE.match(name):
            raise UserError(f"agent proposer option 'env' has {name!r}, not a variable name")
    workdir = options.get("workdir")
    if workdir is not None and not isinstance(workdir, str):
        raise UserError(f"agent proposer option 'workdir' must be a path string, got {workdir!r}")
    extra = options.get("extra_instructions")
    if extra is not None and not isinstance(extra, str):
        raise UserError("agent proposer option 'extra_instructions' must be a string")
    ignore = _names("ignore", options.get("ignore", ()))
    args = _names("args", options.get("args", ()))
    if args and preset is None:
        raise UserError("agent proposer option 'args' extends a preset: put them in 'command'")
    return AgentOptions(
        command, float(timeout), env, workdir=workdir, ignore=ignore, extra_instructions=extra,
        preset=preset, model=model, args=args,
    )  # fmt: skip


def _preset_or_command(options: dict[str, Any]) -> tuple[Preset | None, str | None, tuple]:
    """(preset, its model, the command): `--proposer agent:<spec>` puts <spec> in "model";
    a spec that starts with a preset's name picks it, any other is a command. The
    `command` option wins over a command from the spec, and may not meet a preset."""
    spec = options.get("model")
    chosen = split_preset(spec) if isinstance(spec, str) else None
    if options.get("preset") is not None:
        if chosen is not None:
            raise UserError(
                f"two agent presets: 'preset' in [proposers.agent] and --proposer agent:{spec};"
                " keep one"
            )
        value = options["preset"]
        chosen = split_preset(value) if isinstance(value, str) else None
        if chosen is None:
            raise UserError(
                f"agent proposer option 'preset' must be one of {', '.join(PRESETS)}"
                f" (optionally with ':<model>'), got {value!r}"
            )
    if chosen is None:
        if options.get("program") is not None:
            raise UserError("agent proposer option 'program' goes with a preset: use 'command'")
        return None, None, _command(options.get("command") or spec)
    if options.get("command"):
        raise UserError(
            f"[proposers.agent] has a 'command' and the {chosen[0].name} preset is chosen:"
            " keep one (add arguments to a preset with 'args')"
        )
    program = options.get("program", chosen[0].program)
    return (*chosen, _command(program))


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            args = shlex.split(value)
        except ValueError as e:
            raise UserError(f"agent proposer option 'command' cannot be split: {e}") from None
    elif isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value):
        args = list(value)
    else:
        args = []
    if not args:
        raise UserError(
            'the agent proposer needs a command: set command = ["my-agent", "--flag"]'
            " in [proposers.agent] of autoresearch.toml"
        )
    head = args[0]
    # The command runs inside the scratch folder, so a relative program path would break.
    if "/" in head and not os.path.isabs(head):
        args[0] = os.path.abspath(head)
    return tuple(args)


def _names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UserError(f"agent proposer option '{key}' must be a list of strings, got {value!r}")
    return tuple(value)


class AgentProposer:
    """Runs a command per proposal; holds only immutable settings, so it is thread-safe."""

    name = NAME

    def __init__(self, options: AgentOptions, kill_grace: float = KILL_GRACE_SECONDS) -> None:
        self.options = options
        self._kill_grace = kill_grace

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> AgentProposer:
        return cls(parse_options(options))

    def check_ready(self) -> None:
        """Raise `UserError` when the command or a named variable is missing."""
        program, preset = self.options.command[0], self.options.preset
        if shutil.which(program) is None:
            how = (
                f"install it ({preset.install}), or set 'program' in [proposers.agent]"
                if preset
                else "install it, or fix 'command' in [proposers.agent]"
            )
            raise UserError(f"agent command {program!r} is not found or not executable: {how}")
        for name in self.options.env:
            if name not in os.environ:
                raise UserError(
                    f"{name} is not set: export it, or remove it from 'env' in [proposers.agent]"
                )

    def propose(self, request: ProposalRequest) -> Proposal:
        started = time.monotonic()
        text = prompt.agent_prompt(request, self.options.extra_instructions)
        workdir = self.options.workdir
        if workdir:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="autoresearch-agent-", dir=workdir))
        _LIVE_SCRATCH.add(scratch)
        said = Said()
        try:
            originals = _init_scratch(scratch, request, text)
            with _log_file(request.work_dir) as log_path:
                try:
                    self._run(scratch, text, log_path)
                finally:
                    said = self._said(log_path)
            source = _take_result(scratch, originals, IGNORED + self.options.ignore)
            description = _description(
                scratch / DESCRIPTION_FILE, said.message, request.parent_source, source
            )
        except AgentError as e:  # what the agent spent is recorded with the failure
            raise AgentError(str(e), _with_seconds(said.usage, started)) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            _LIVE_SCRATCH.discard(scratch)
        return Proposal(source, description, _with_seconds(said.usage, started))

    def argv(self, text: str) -> list[str]:
        """The command line for the prompt `text`: the user's command, or the preset's."""
        o = self.options
        if o.preset is None:
            return list(o.command)
        program, *rest = o.command
        return [program, *rest, *o.preset.build(text, o.model, o.args, os.environ)]

    def environment(self, scratch: Path, text: str) -> dict[str, str]:
        """What the agent's process gets: the basics, the named and the preset's variables,
        and the prompt."""
        o = self.options
        env = {k: os.environ[k] for k in (*BASE_ENV, *o.env) if k in os.environ}
        if o.preset is not None:
            env.update(o.preset.environment(os.environ))
        env[PROMPT_ENV] = (
            text
            if len(text) <= MAX_ARG_PROMPT
            else (text[:MAX_ARG_PROMPT] + f"\n[truncated: read {PROMPT_FILE_ENV}]")
        )
        env[PROMPT_FILE_ENV] = str(scratch / PROMPT_FILE)
        return env

    def _said(self, log_path: Path) -> Said:
        """What the agent reported in its log (a preset's agent), else nothing."""
        if self.options.preset is None:
            return Said()
        try:
            return self.options.preset.said(log_path.read_text(errors="replace"))
        except OSError:
            return Said()

    def _secrets(self) -> list[str]:
        names = [*self.options.env, *(self.options.preset.env if self.options.preset else ())]
        return [os.environ[k] for k in names if k in os.environ]

    def _run(self, scratch: Path, text: str, log_path: Path) -> None:
        o = self.options
        argv, env = self.argv(text), self.environment(scratch, text)
        answers = o.preset.stdin.encode() if o.preset else b""
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=scratch,
                    env=env,
                    stdin=subprocess.PIPE if answers else subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group
                    preexec_fn=die_with_parent,  # evolve may end while a proposal is in flight
                )
            except OSError as e:
                fix = "'program'" if o.preset else "'command'"
                raise UserError(
                    f"agent command {o.command[0]!r} could not start ({e.strerror or e}):"
                    f" fix {fix} in [proposers.agent]"
                ) from None
            _LIVE_GROUPS.add(proc.pid)
            if answers:  # less than a pipe holds: this never blocks
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(answers)
                proc.stdin.close()
            try:
                code = proc.wait(timeout=o.timeout)
            except subprocess.TimeoutExpired:
                _stop_group(proc, self._kill_grace)
                raise AgentError(
                    f"the agent command ran past its {o.timeout:g}s timeout and was stopped;"
                    " raise 'timeout' in [proposers.agent]"
                ) from None
            finally:
                _stop_group(proc, grace=0.0)  # background leftovers, and on any interruption
                _LIVE_GROUPS.discard(proc.pid)
                _redact_file(log_path, self._secrets())  # a timed-out agent's log too
        if code != 0:
            raise AgentError(f"the agent command exited with status {code}: {_last_line(log_path)}")


@atexit.register
def _end_live_proposals() -> None:
    """A proposal still in flight when evolve ends never reaches its `finally`."""
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for scratch in list(_LIVE_SCRATCH):
        shutil.rmtree(scratch, ignore_errors=True)


def create(options: dict[str, Any]) -> AgentProposer:
    """The factory registered under the name `agent`."""
    return AgentProposer.from_options(options)


@hookimpl
def register_proposers(register):
    register(NAME, create, DESCRIPTION)


# -- the scratch repository ------------------------------------------------------------------


def _init_scratch(scratch: Path, request: ProposalRequest, text: str) -> dict[str, str]:
    """Write the files, commit them once and make all but train.py read-only; return what
    was written, by path.

    Plain git in the scratch folder, not GitPython's index: that `chdir`s the whole
    process while it adds files, and this runs in a proposal thread while the
    engine starts training and evaluation processes."""
    originals = {TARGET: request.parent_source, PROGRAM: request.program, PROMPT_FILE: text}
    for name, content in originals.items():
        with open(scratch / name, "w", encoding="utf-8", newline="") as f:
            f.write(content)
    git_command(scratch, "init", "-q")
    for key, value in SCRATCH_GIT_CONFIG.items():  # commits must not need the user's identity
        git_command(scratch, "config", key, value)
    git_command(scratch, "add", "--", *originals)
    git_command(scratch, "commit", "-q", "-m", f"parent {request.parent_id}")
    for name in originals:
        if name != TARGET:  # a hint to the agent; whether it obeyed is checked afterwards
            os.chmod(scratch / name, READ_ONLY)
    return originals


def _take_result(scratch: Path, originals: dict[str, str], patterns: tuple[str, ...]) -> str:
    """The new train.py, after checking that no other file changed.

    The folder is compared with what was written into it, not through git, so an
    agent that commits, resets or even deletes `.git` is judged the same way.
    """
    others = []
    for root, dirs, files in os.walk(scratch):
        rel_root = Path(root).relative_to(scratch)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d != ".git"]
        dirs[:] = [d for d in dirs if not _ignorable((rel_root / d).as_posix(), patterns)]
        for name in files:
            rel = (rel_root / name).as_posix()
            if rel == TARGET or _ignorable(rel, patterns):
                continue
            if rel not in originals or _read(scratch / rel) != originals[rel]:
                others.append(rel)
    others += [
        rel
        for rel in originals
        if rel != TARGET and not (scratch / rel).exists() and not _ignorable(rel, patterns)
    ]
    if others:
        others.sort()
        more = f" and {len(others) - 10} more" if len(others) > 10 else ""
        raise AgentError(
            f"the agent changed files other than {TARGET}: {', '.join(others[:10])}{more};"
            f" only {TARGET} may change"
        )
    path = scratch / TARGET
    if path.is_symlink() or not path.is_file():
        raise AgentError(f"the agent deleted {TARGET} or replaced it with something not a file")
    source = _read(path)
    if source is None:
        raise AgentError(f"the agent left {TARGET} unreadable or not UTF-8 text")
    if source == originals[TARGET]:
        raise AgentError(f"the agent left {TARGET} unchanged")
    return source


def _read(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", newline="") as f:  # newline="": compare bytes as written
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _ignorable(path: str, patterns: tuple[str, ...]) -> bool:
    parts = PurePosixPath(path).parts
    return any(
        fnmatch.fnmatch(path, pat) or any(fnmatch.fnmatch(part, pat) for part in parts)
        for pat in patterns
    )


def _description(path: Path, message: str, parent: str, new: str) -> str:
    """The agent's own line from DESCRIPTION, else the first line of its last message,
    else 'agent edit' and a diffstat."""
    text = ""
    if path.is_file() and not path.is_symlink():
        text = path.read_text(encoding="utf-8", errors="replace")
    for said in (text, message):
        line = next((ln.strip() for ln in said.splitlines() if ln.strip()), "")
        if line:
            return redact(line)[:MAX_DESCRIPTION_CHARS]
    added = removed = 0
    for line in difflib.unified_diff(parent.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return f"agent edit: {TARGET} +{added} -{removed}"


def _with_seconds(usage: Usage, started: float) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.cost_usd,
                 time.monotonic() - started)  # fmt: skip


# -- the process -----------------------------------------------------------------------------


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group, give the leader `grace` seconds, then SIGKILL the group."""
    pgid = proc.pid  # start_new_session made the leader's pid the group id
    if grace > 0 and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def _log_file(work_dir: Path | None):
    """`work_dir/agent.log` when the candidate has a folder, else a temporary file."""
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        yield Path(work_dir) / LOG_FILE
        return
    fd, name = tempfile.mkstemp(prefix="autoresearch-agent-", suffix=".log")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _redact_file(path: Path, secrets: list[str]) -> None:
    """Agents may print their environment; keys must not stay in the run folder."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    cleaned = redact(text, secrets)
    if cleaned != text:
        path.write_text(cleaned, encoding="utf-8")


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no output)"
    return redact(lines[-1])[:300] if lines else "(no output)"
