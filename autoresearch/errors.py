"""Errors a user can act on.

Anything raised as a `UserError` reaches the terminal as one line (what is
wrong, what to do) and a non-zero exit code; only `--debug` shows a traceback.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable

# A write refused for lack of room: a full disk, a quota, or a file-size limit (ulimit -f).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class UserError(Exception):
    """A problem the user can fix; its message is the whole story."""

    exit_code = 2


class ConfigError(UserError):
    """`autoresearch.toml` or a command-line override is malformed."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close choice exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def os_error_message(e: OSError, retry: str = "run the command again") -> str:
    """One line for an error of the machine rather than of the input: what, where, what to do."""
    where = e.filename or "a file"  # writes through a descriptor carry no file name
    if e.errno in DISK_FULL:
        return f"disk full while writing {where}: free space, then {retry}"
    if e.errno in NO_PERMISSION:
        return f"no access to {where} ({e.strerror}): fix its permissions, then {retry}"
    return f"{e.strerror or e}: {where}; `autoresearch --debug ...` shows where it happened"
