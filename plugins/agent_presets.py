"""Ready-made command lines for the popular coding agents: `agent:aider`, `agent:claude`,
`agent:codex`.

A preset knows how to hand an agent its task, which of the user's variables it needs
(an API key, a base URL: passed through when set, nothing else of the user's secrets),
how to keep it to editing train.py, and how to read what it spent from its output.
Each preset holds the agent to files, not shell commands: aider is told to suggest
none and answers "no" to every question it asks (run a command, edit a file not in the
chat); Claude Code gets only its Read, Edit and Write tools, and may read only in its
folder, edit only train.py and write only DESCRIPTION; Codex runs every command in its
workspace-write sandbox (the scratch folder, no network) and never asks for more.

The command lines were checked against aider 0.86, Claude Code 2.1 and Codex 0.171
(tests/test_agent_clients.py drives those real programs against a loopback server).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from autoresearch.proposal import Usage

TARGET = "train.py"
PROGRAM = "program.md"
PROMPT_FILE = "PROMPT.md"
DESCRIPTION_FILE = "DESCRIPTION"
MAX_ARG_PROMPT = 100_000  # Linux refuses one argument (or variable) over 128 KiB
POINTER = f"Your task is in the file {PROMPT_FILE} in this folder: read it and do what it says."
OPENAI_KEYS = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL")


@dataclass(frozen=True)
class Said:
    """What an agent reported of itself in its output: its spend and its last message."""

    usage: Usage = field(default_factory=Usage)
    message: str = ""


@dataclass(frozen=True)
class Preset:
    """A named agent: `build(prompt, model, args, environ)` is its argument list after the
    program, with the user's `args` before any positional argument; `env` the user's
    variables it gets when set; `fixed_env` settings of ours; `said` reads the agent's log."""

    name: str
    program: str
    install: str  # how to get the program, for the error when it is missing
    env: tuple[str, ...]
    build: Callable[[str, str | None, tuple[str, ...], Mapping[str, str]], list[str]]
    said: Callable[[str], Said]
    fixed_env: Mapping[str, str] = field(default_factory=dict)
    renamed_env: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # to: from, first set
    stdin: str = ""  # written to the agent's standard input, which is otherwise closed

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The preset's variables taken from `environ`, plus its fixed settings."""
        env = {k: environ[k] for k in self.env if k in environ}
        for name, sources in self.renamed_env.items():
            value = next((environ[s] for s in sources if s in environ), None)
            if value is not None:
                env[name] = value
        return {**env, **self.fixed_env}


def _inline(prompt: str) -> str:
    """The prompt as one argument, or a pointer to PROMPT.md when it is too long for one."""
    return prompt if len(prompt.encode()) <= MAX_ARG_PROMPT else POINTER


# -- aider -----------------------------------------------------------------------------------

AIDER_FLAGS = (
    "--read", PROGRAM,  # in the chat read-only, so a mention of it cannot make it editable
    "--no-suggest-shell-commands",
    "--no-detect-urls",  # no web pages fetched into the chat
    "--no-gitignore",  # no .gitignore with .aider* in it
    "--no-auto-commits", "--no-dirty-commits",  # no commit message asked of the model
    "--no-auto-lint", "--no-auto-test",
    "--no-check-update", "--no-show-release-notes", "--analytics-disable",
    "--no-pretty", "--no-fancy-input", "--no-show-model-warnings",
    "--map-tokens", "0",  # the repo map of a one-file repo is train.py itself
    "--edit-format", "diff",
)  # fmt: skip
# Without a terminal aider reads its questions' answers from stdin, and takes an empty one
# (end of file) for its default, "yes": to adding a file, editing one not in the chat,
# creating one, running a shell command. Every answer is "no" (--yes-always would say yes
# to all but the shell). Far more than one run asks, and far less than a pipe holds.
AIDER_ANSWERS = "n\n" * 10_000
AIDER_TOKENS = re.compile(r"^Tokens: ([\d.]+)(k?) sent,.*?([\d.]+)(k?) received\.", re.MULTILINE)
AIDER_COST = re.compile(r"Cost: \$[\d.]+ message, \$([\d.]+) session\.")


def _aider(
    prompt: str, model: str | None, args: tuple[str, ...], environ: Mapping[str, str]
) -> list[str]:
    model_args = ["--model", model] if model else []
    # DESCRIPTION is in the chat (aider creates it empty), so it may be written without asking.
    files = [TARGET, DESCRIPTION_FILE]
    return [*AIDER_FLAGS, *model_args, *args, "--message-file", PROMPT_FILE, *files]


def _aider_said(log: str) -> Said:
    """aider prints `Tokens: 2.1k sent, 45 received. Cost: $0.01 message, $0.02 session.`
    per reply (rounded to 0.1k above 1000)."""

    def count(number: str, k: str) -> int:
        return round(float(number) * (1000 if k else 1))

    sent = received = 0
    for m in AIDER_TOKENS.finditer(log):
        sent += count(m[1], m[2])
        received += count(m[3], m[4])
    costs = AIDER_COST.findall(log)
    return Said(Usage(sent, received, float(costs[-1]) if costs else 0.0))


# -- Claude Code -----------------------------------------------------------------------------

CLAUDE_FLAGS = (
    "--output-format", "json",  # one result object at the end: usage, cost, last message
    "--no-session-persistence",
    "--strict-mcp-config",  # no MCP servers from the user's configuration
    "--tools=Read,Edit,Write",  # the only tools there are: no Bash, no web
    # Reads inside the scratch folder only; Edit rules cover every tool that writes a file.
    f"--allowedTools=Read(./**),Edit({TARGET}),Edit({DESCRIPTION_FILE})",
    "--permission-mode", "dontAsk",  # anything not allowed above is refused, not asked
)  # fmt: skip


def _claude(
    prompt: str, model: str | None, args: tuple[str, ...], environ: Mapping[str, str]
) -> list[str]:
    model_args = ["--model", model] if model else []
    return ["-p", _inline(prompt), *CLAUDE_FLAGS, *model_args, *args]


def _claude_said(log: str) -> Said:
    for line in reversed(log.splitlines()):
        result = _json_object(line)
        if result.get("type") == "result":
            usage = result.get("usage") or {}
            prompt = sum(
                _int(usage.get(k))
                for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
            )
            cost = result.get("total_cost_usd")
            cost = float(cost) if isinstance(cost, (int, float)) else 0.0
            message = result.get("result")
            return Said(
                Usage(prompt, _int(usage.get("output_tokens")), cost),
                message if isinstance(message, str) else "",
            )
    return Said()


# -- Codex -----------------------------------------------------------------------------------

CODEX_FLAGS = (
    "--json",  # events as JSON lines: token counts and the last message
    "--skip-git-repo-check", "--ephemeral",
    "--sandbox", "workspace-write",  # commands may write the scratch folder only
    "-c", 'approval_policy="never"',  # and never ask to leave the sandbox
    "-c", "sandbox_workspace_write.network_access=false",
    "-c", "sandbox_workspace_write.exclude_slash_tmp=true",
    "-c", "sandbox_workspace_write.exclude_tmpdir_env_var=true",
    "-c", 'web_search="disabled"',
)  # fmt: skip


def _codex(
    prompt: str, model: str | None, args: tuple[str, ...], environ: Mapping[str, str]
) -> list[str]:
    base_url = environ.get("OPENAI_BASE_URL") or environ.get("OPENAI_API_BASE")
    # Codex reads its base URL from its configuration, not from the environment.
    url_args = ["-c", f"openai_base_url={json.dumps(base_url)}"] if base_url else []
    model_args = ["-m", model] if model else []
    return ["exec", *CODEX_FLAGS, *url_args, *model_args, *args, "--", _inline(prompt)]


def _codex_said(log: str) -> Said:
    prompt = completion = 0
    message = ""
    for line in log.splitlines():
        event = _json_object(line)
        if event.get("type") == "turn.completed":
            usage = event.get("usage") or {}
            prompt += _int(usage.get("input_tokens"))
            completion += _int(usage.get("output_tokens"))
        item = event.get("item") or {}
        if event.get("type") == "item.completed" and item.get("type") == "agent_message":
            message = item.get("text") if isinstance(item.get("text"), str) else message
    return Said(Usage(prompt, completion), message)


def _json_object(line: str) -> dict:
    line = line.strip()
    if not line.startswith("{"):
        return {}
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "aider", "aider", "pip install aider-chat", OPENAI_KEYS, _aider, _aider_said,
            stdin=AIDER_ANSWERS,
        ),
        Preset(
            "claude", "claude", "npm install -g @anthropic-ai/claude-code",
            ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"), _claude, _claude_said,
            fixed_env={"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
        ),
        Preset(
            "codex", "codex", "npm install -g @openai/codex", OPENAI_KEYS, _codex, _codex_said,
            # `codex exec` takes an API key from CODEX_API_KEY only.
            renamed_env={"CODEX_API_KEY": ("CODEX_API_KEY", "OPENAI_API_KEY")},
        ),
    )
}  # fmt: skip


def split_preset(value: str) -> tuple[Preset, str | None] | None:
    """`claude` or `claude:<model>` -> (the preset, the model); None when `value` names none."""
    name, _, model = value.partition(":")
    preset = PRESETS.get(name.strip())
    return None if preset is None else (preset, model.strip() or None)

