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
        return text

    return masked
