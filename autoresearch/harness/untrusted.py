"""Reading files that a candidate wrote, or could have replaced.

The orchestrator and the evaluator read a few files of a run folder after the candidate
is gone: its `run.log`, its hand-over notes, the hand-over graph. Any of them may have
been swapped for a symbolic link (to `/proc/self/environ` of the reader, to the hidden
validation tokens), a FIFO (which blocks its reader for ever) or a device such as
`/dev/zero` (which never ends). So these files are opened without following a link,
only as regular files, and read to a bound.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

UTF8_CONTINUATION = bytes(range(0x80, 0xC0))  # the bytes after the first of a character


def read_untrusted(path: Path, limit: int) -> bytes:
    """The last `limit` bytes (at most) of the regular file `path`; OSError for anything
    else: a missing file, a symbolic link, a FIFO, a device, a folder."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        check_regular(path, st.st_mode)
        size = st.st_size
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        chunks, left = [], min(size, limit)
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_untrusted_text(path: Path, limit: int) -> str:
    """`read_untrusted` as UTF-8 text (see `decode_cut`)."""
    return decode_cut(read_untrusted(path, limit))


def decode_cut(data: bytes) -> str:
    """The end of a file as UTF-8 text, without the character its cut may have split at the
    start (decoded, it would be U+FFFD, and a secret starting there would not be known)."""
    return (data[:3].lstrip(UTF8_CONTINUATION) + data[3:]).decode("utf-8", "replace")


def check_regular(path: Path, mode: int | None = None) -> None:
    """Raise OSError unless `path` (not followed if a link) is a regular file."""
    mode = os.lstat(path).st_mode if mode is None else mode
    if not stat.S_ISREG(mode):
        raise OSError(f"{Path(path).name} is not a regular file")
