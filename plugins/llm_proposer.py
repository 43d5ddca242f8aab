"""The `llm` proposer: any litellm model proposes SEARCH/REPLACE edits to train.py.

    autoresearch evolve --proposer llm:anthropic/claude-sonnet-4-5
    autoresearch evolve --proposer llm:openai/qwen3-coder   # with api_base = a vLLM server

One proposal is a short conversation: the prompt (program.md, history, crash
log, parent source), the model's reply, and, when the reply cannot be used
(malformed, a block that does not match, another file, code that does not
compile), a follow-up carrying the exact error, up to `max_attempts` replies.

There is exactly one retry layer for transport failures: litellm's and the
OpenAI client's own retries are switched off (`num_retries=0`,
`max_retries=0`), and this module retries transient failures (429, 5xx,
timeouts, lost connections) `retries` times with exponential backoff. So a
slow or overloaded provider costs at most `(retries + 1) * timeout` seconds
per reply, never a product of hidden retry counts.

Errors: `UserError` when the configuration is wrong and retrying cannot help
(refused key, unknown model, rejected request); `LLMError` when this one
proposal failed (no usable reply, provider still failing after retries).
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from autoresearch import hookimpl
from autoresearch.errors import UserError
from autoresearch.plugins import check_option_names
from autoresearch.proposal import Proposal, ProposalFailed, ProposalRequest, Usage
from autoresearch.redact import redact

from . import prompt
from .edits import EditError, apply_reply, reply_form

NAME = "llm"
DESCRIPTION = "any litellm model (OpenAI, Anthropic, Gemini, Ollama, vLLM, ...) editing train.py"
FALLBACK_DESCRIPTION = "llm edit (the model gave no description)"
# Providers served from the user's own machine: no API key to check.
LOCAL_PROVIDERS = {"ollama", "ollama_chat", "lm_studio", "llamafile", "hosted_vllm", "vllm"}
# An OpenAI-compatible local server ignores the key, but the OpenAI client refuses to start
# without one; this placeholder is sent only when api_base is set and no key is configured.
PLACEHOLDER_KEY = "sk-no-key-required"
# The key each well-known provider needs, checked before litellm is imported (seconds): a
# missing key must be said at once. Other providers are asked of litellm.
PROVIDER_KEYS = {  # provider -> the variables that hold its key (any one will do)
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "mistral": ("MISTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "xai": ("XAI_API_KEY",),
}
TRANSIENT_STATUS = {408, 409, 425, 429}  # plus every 5xx
BACKOFF_SECONDS = 2.0  # first wait; doubles each retry
BACKOFF_MAX_SECONDS = 60.0
MAX_ERROR_CHARS = 300  # provider messages can be pages long
OPTION_TYPES = {
    "temperature": float,
    "timeout": float,
    "max_tokens": int,
    "max_attempts": int,
    "retries": int,
}  # every other option is a string
TYPE_WORDS = {float: "a number", int: "an integer", str: "a string"}


class LLMError(ProposalFailed):
    """This proposal failed (no usable reply, or the provider kept failing); the next may work.
    Its `usage` holds what the replies before the failure cost."""


@dataclass(frozen=True)
class LLMOptions:
    """`[proposers.llm]` in autoresearch.toml; `model` also comes from `--proposer llm:<model>`."""

    model: str = ""
    api_base: str | None = None  # a local or self-hosted OpenAI-compatible server
    api_key_env: str | None = None  # read the key from this variable instead of the provider's
    temperature: float = 0.7
    max_tokens: int = 8192
    timeout: float = 300.0  # seconds per request
    max_attempts: int = 3  # replies per proposal, counting re-asks after unusable output
    retries: int = 3  # extra tries per request on transient failures (429, 5xx, timeout)
    extra_instructions: str | None = None


def parse_options(options: dict[str, Any]) -> LLMOptions:
    """Validated options; a `UserError` names the bad key and what it should be."""
    check_option_names("llm", options, (f.name for f in fields(LLMOptions)))
    values: dict[str, Any] = {}
    for key, value in options.items():
        if value is not None:
            values[key] = _coerce(key, value)
    opts = LLMOptions(**values)
    if not opts.model.strip():
        raise UserError(
            "the llm proposer needs a model: use --proposer llm:<provider>/<model>,"
            " for example llm:openai/gpt-4o or llm:ollama/qwen2.5-coder"
        )
    for key in ("timeout", "max_tokens", "max_attempts"):
        if getattr(opts, key) <= 0:
            value = getattr(opts, key)
            raise UserError(f"llm proposer option '{key}' must be positive, got {value}")
    if opts.retries < 0:
        raise UserError(f"llm proposer option 'retries' must be 0 or more, got {opts.retries}")
    if not 0 <= opts.temperature <= 2:
        raise UserError(
            f"llm proposer option 'temperature' must be in [0, 2], got {opts.temperature}"
        )
    return opts


def _coerce(key: str, value: Any) -> Any:
    want = OPTION_TYPES.get(key, str)
    if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if want is str and isinstance(value, str):
        return value
    raise UserError(f"llm proposer option '{key}' must be {TYPE_WORDS[want]}, got {value!r}")


class LLMProposer:
    """Asks a chat model for edits; holds only immutable settings, so it is thread-safe."""

    def __init__(
        self,
        options: LLMOptions,
        backoff_seconds: float = BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options
        self.name = f"{NAME}:{options.model}"
        self._backoff = backoff_seconds
        self._sleep = sleep

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LLMProposer:
        return cls(parse_options(options))

    def check_ready(self) -> None:
        """Raise `UserError` naming the missing environment variable, before any training."""
        o = self.options
        if o.api_key_env:
            if not os.environ.get(o.api_key_env):
                raise UserError(f"{o.api_key_env} is not set: export it or pick another proposer")
            return
        if o.api_base:
            return  # a local server: it may need no key at all
        prefix = o.model.partition("/")[0]
        if prefix in PROVIDER_KEYS and "/" in o.model:
            names = PROVIDER_KEYS[prefix]
            if not any(os.environ.get(name) for name in names):
                missing = " or ".join(names)
                raise UserError(f"{missing} is not set: export it or pick another proposer")
            return
        if prefix in LOCAL_PROVIDERS:
            return
        litellm = _litellm()
        try:
            provider = litellm.get_llm_provider(o.model)[1]
        except Exception:
            raise UserError(
                f"unknown model {o.model!r} for the llm proposer: write <provider>/<model>,"
                " for example llm:openai/gpt-4o or llm:anthropic/claude-sonnet-4-5"
            ) from None
        if provider in LOCAL_PROVIDERS:
            return
        env = litellm.validate_environment(model=o.model)
        missing = list(env.get("missing_keys") or [])
        if env.get("keys_in_environment") or not missing:
            return
        if len(missing) == 1:
            raise UserError(f"{missing[0]} is not set: export it or pick another proposer")
        raise UserError(
            f"{o.model} needs {', '.join(missing)} in the environment and they are not set:"
            " export them or pick another proposer"
        )

    def propose(self, request: ProposalRequest) -> Proposal:
        litellm = _litellm()
        started = time.monotonic()
        messages = prompt.llm_messages(request, self.options.extra_instructions)
        new_from = 0  # messages not yet saved to a prompt file
        tokens_in = tokens_out = 0
        cost = 0.0
        error: EditError | None = None
        secrets = self._secrets()
        for attempt in range(1, self.options.max_attempts + 1):
            _save(
                request.work_dir,
                f"prompt_{attempt}.md",
                _render(messages[new_from:], attempt),
                secrets,
            )
            try:
                response = self._complete(litellm, messages)
            except LLMError as e:  # the replies before this one were paid for
                _save(request.work_dir, f"reply_{attempt}.md", f"(no reply: {e})\n", secrets)
                e.usage = Usage(tokens_in, tokens_out, cost, time.monotonic() - started)
                raise
            except Exception as e:
                _save(request.work_dir, f"reply_{attempt}.md", f"(no reply: {e})\n", secrets)
                raise
            reply, finish = _content(response)
            _save(request.work_dir, f"reply_{attempt}.md", reply, secrets)
            usage = getattr(response, "usage", None)
            tokens_in += int(getattr(usage, "prompt_tokens", 0) or 0)
            tokens_out += int(getattr(usage, "completion_tokens", 0) or 0)
            cost += _cost(litellm, response, self.options.model)
            try:
                source, description = apply_reply(request.parent_source, reply)
            except EditError as e:
                error, form = e, reply_form(reply)
                if finish == "length":
                    form = "blocks"
                    error = EditError(
                        f"{e}\n(Your reply was cut off at the token limit: use short"
                        " SEARCH/REPLACE blocks instead of repeating the whole file.)"
                    )
                new_from = len(messages) + 1  # the assistant turn is in the reply file
                messages = [
                    *messages,
                    {"role": "assistant", "content": reply},
                    prompt.retry_message(str(error), form),
                ]
                continue
            usage_total = Usage(tokens_in, tokens_out, cost, time.monotonic() - started)
            return Proposal(source, description or FALLBACK_DESCRIPTION, usage_total)
        first_line = str(error).splitlines()[0] if error else "no reply"
        raise LLMError(
            f"{self.options.model} gave no usable edit in {self.options.max_attempts}"
            f" attempts; last problem: {redact(first_line)[:MAX_ERROR_CHARS]}",
            Usage(tokens_in, tokens_out, cost, time.monotonic() - started),
        )

    # -- one request, with the only retry layer --------------------------------------------

    def _complete(self, litellm: Any, messages: list[dict]) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {
            "model": o.model,
            "messages": messages,
            "temperature": o.temperature,
            "max_tokens": o.max_tokens,
            "timeout": o.timeout,
            "num_retries": 0,  # litellm's own retry wrapper: off
            "max_retries": 0,  # the OpenAI / provider SDK client's retries: off
            "drop_params": True,  # models that reject e.g. temperature still answer
        }
        if o.api_base:
            kwargs["api_base"] = o.api_base
        key = self._api_key()
        if key:
            kwargs["api_key"] = key
        for attempt in range(o.retries + 1):
            try:
                return litellm.completion(**kwargs)
            except Exception as e:
                if not _is_transient(litellm, e):
                    raise _fatal(litellm, e, o) from None
                if attempt == o.retries:
                    tries = f"{o.retries + 1} {'try' if o.retries == 0 else 'tries'}"
                    raise LLMError(
                        f"{o.model}: {_what(litellm, e)}, after {tries} ({_short(e)});"
                        " try later, or raise 'timeout'/'retries' in [proposers.llm]"
                    ) from None
                self._sleep(self._delay(attempt, e))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, error: Exception) -> float:
        wait = self._backoff * 2**attempt * random.uniform(0.5, 1.0)  # jitter spreads workers
        retry_after = _retry_after(error)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, BACKOFF_MAX_SECONDS)

    def _api_key(self) -> str | None:
        o = self.options
        if o.api_key_env:
            key = os.environ.get(o.api_key_env)
            if not key:
                raise UserError(f"{o.api_key_env} is not set: export it or pick another proposer")
            return key
        if o.api_base and o.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            return PLACEHOLDER_KEY
        return None  # litellm reads the provider's usual variable

    def _secrets(self) -> list[str]:
        """The key named by api_key_env, whatever its name, on top of redact's own list."""
        env = self.options.api_key_env
        return [os.environ[env]] if env and os.environ.get(env) else []


def create(options: dict[str, Any]) -> LLMProposer:
    """The factory registered under the name `llm`."""
    return LLMProposer.from_options(options)


@hookimpl
def register_proposers(register):
    register(NAME, create, DESCRIPTION)


# -- litellm helpers ---------------------------------------------------------------------------


def _litellm() -> Any:
    """Import litellm on first use: it takes seconds and most commands never need it."""
    # Without this, importing litellm downloads its price list from GitHub; the copy bundled
    # with the installed version is good enough and keeps runs offline and predictable.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # otherwise it prints help banners to stdout
    return litellm


def _is_transient(litellm: Any, error: Exception) -> bool:
    if isinstance(error, (litellm.Timeout, litellm.APIConnectionError)):
        return True
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and (status in TRANSIENT_STATUS or status >= 500)


def _what(litellm: Any, error: Exception) -> str:
    if isinstance(error, litellm.Timeout):
        return "no reply within the timeout"
    if isinstance(error, litellm.APIConnectionError):
        return "could not connect"
    return f"HTTP {getattr(error, 'status_code', '?')}"


def _fatal(litellm: Any, error: Exception, o: LLMOptions) -> Exception:
    """One clear line for a failure that retrying cannot fix."""
    status = getattr(error, "status_code", None)
    where = f" at {o.api_base}" if o.api_base else ""
    if isinstance(error, litellm.ContextWindowExceededError):
        return LLMError(
            f"{o.model}: the prompt is longer than the model's context window"
            f" ({_short(error)}); use a model with a longer context"
        )
    if isinstance(error, litellm.AuthenticationError) or status == 401:
        hint = o.api_key_env or "the provider's API key variable"
        return UserError(f"{o.model}: the API key was refused (401){where}: check {hint}")
    if isinstance(error, litellm.PermissionDeniedError) or status == 403:
        return UserError(f"{o.model}: access denied (403){where}: check the key's permissions")
    if isinstance(error, litellm.NotFoundError) or status == 404:
        return UserError(
            f"{o.model}: model or endpoint not found (404){where}:"
            " check the model name and api_base"
        )
    if isinstance(status, int):
        return UserError(f"{o.model}: request rejected (HTTP {status}){where}: {_short(error)}")
    return LLMError(f"{o.model}: {type(error).__name__}: {_short(error)}")


def _short(error: Exception) -> str:
    """The provider's message without litellm's repeated class-name prefixes, one line."""
    text = " ".join(str(error).split())
    text = re.sub(r"^(litellm\.\w+:\s*)?(\w+:\s*)?(\w+Exception\s*-\s*)?", "", text)
    return redact(text)[:MAX_ERROR_CHARS] or type(error).__name__


def _retry_after(error: Exception) -> float | None:
    headers = getattr(error, "litellm_response_headers", None) or {}
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None  # an HTTP date or junk: fall back to our own backoff


def _content(response: Any) -> tuple[str, str | None]:
    """The reply's text, with lone surrogates (valid JSON escapes, not text) made visible:
    the text is saved, quoted back in a re-ask and maybe committed, all as UTF-8."""
    try:
        choice = response.choices[0]
        text = str(choice.message.content or "")
    except (AttributeError, IndexError):
        return "", None
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text, getattr(choice, "finish_reason", None)


def _cost(litellm: Any, response: Any, model: str) -> float:
    """USD for one response; 0.0 when litellm knows no price (local models, new names)."""
    try:
        value = float(litellm.completion_cost(completion_response=response, model=model) or 0.0)
    except Exception:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


# -- run folder --------------------------------------------------------------------------------


def _render(messages: list[dict], attempt: int) -> str:
    head = f"<!-- attempt {attempt}" + (
        ": follows the previous prompt and reply files -->" if attempt > 1 else " -->"
    )
    parts = [head] + [f"## {m['role']}\n\n{m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n"


def _save(work_dir: Path | None, name: str, text: str, secrets: list[str]) -> None:
    if work_dir is None:
        return
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / name).write_text(redact(text, secrets), encoding="utf-8")
