"""Errors a user can act on.

Anything raised as a `UserError` reaches the terminal as one line (what is
wrong, what to do) and a non-zero exit code; only `--debug` shows a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix; its message is the whole story."""

    exit_code = 2


class ConfigError(UserError):
    """`autoresearch.toml` or a command-line override is malformed."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close choice exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
