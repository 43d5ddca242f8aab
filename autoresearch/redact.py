"""Keep secrets out of files and messages that proposers write.

Prompts, replies, agent logs and error messages end up in the run folder and
on the terminal. A provider may echo the API key back in an error, and an
agent may print its environment, so every such text passes through `redact`
before it is written or raised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

SECRET_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
MIN_SECRET_LEN = 8  # shorter values ("1", "true") would redact ordinary words
MASK = "[redacted]"
# A text cut to its end (a log tail) or its start may begin with the end of a secret or end
# with its beginning. Such a piece is masked too when it is a third of the value or more and
# at least MIN_PIECE_LEN long: a shorter one tells little, and would mask ordinary text (a
# log line "1234 steps" where a variable such as SSH_AUTH_SOCK ends in "1234").
MIN_PIECE_LEN = 6


def secret_values(extra: Iterable[str] = ()) -> list[str]:
    """Values of environment variables whose names look secret, plus `extra`, longest first."""
    values = {v for k, v in os.environ.items() if SECRET_NAME_RE.search(k)}
    values.update(extra)
    return sorted((v for v in values if v and len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every secret value from the environment (and `extra`) masked."""
    return redactor(extra)(text)


def redactor(extra: Iterable[str] = ()) -> Callable[[str], str]:
    """`redact` with the secret values looked up once, for many texts in a row."""
    values = secret_values(extra)

    def masked(text: str) -> str:
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
            text = _mask_cut_pieces(text, value)
        return text

    return masked


def _mask_cut_pieces(text: str, value: str) -> str:
    """`text` with a piece of `value` left at either edge by a cut masked: its start if the
    text begins with the end of `value`, its end if the text ends with the start of it."""
    shortest = max(MIN_PIECE_LEN, len(value) // 3)
    if len(text) < shortest:
        return text
    if text[:shortest] in value:  # cheap: most texts share no piece with the value
        for n in range(min(len(value), len(text)) - 1, shortest - 1, -1):
            if value.endswith(text[:n]):
                text = MASK + text[n:]
                break
    if text[-shortest:] in value:
        for n in range(min(len(value), len(text)) - 1, shortest - 1, -1):
            if value.startswith(text[-n:]):
                text = text[:-n] + MASK
                break
    return text
