"""Resumable, parallel HTTP downloads for the data sources.

Each job is a (url, destination) pair. A destination that exists is complete
(files only ever appear there by an atomic rename), so re-running resumes
where an interrupted run stopped. Bytes stream into `<dest>.partial`; a later
attempt continues it with an HTTP Range request, so a dropped connection
halfway through a 100 MB shard costs only the missing part.

Only the standard library is used (`urllib.request`), so downloading adds no
dependency and works the same on every platform.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from autoresearch.errors import UserError

SOCKET_TIMEOUT = 60.0  # seconds without a byte before a connection counts as dead
CHUNK_BYTES = 1 << 20  # read size; large enough to keep syscalls rare
MAX_DELAY = 60.0  # cap on one backoff sleep, whatever the attempt number
PARTIAL_SUFFIX = ".partial"
USER_AGENT = "autoresearch-prepare/0.1 (+urllib)"
# Statuses worth another try besides 5xx: request timeout and rate limiting.
RETRY_STATUSES = frozenset({408, 429})
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _quiet(_message: str) -> None:
    """The default `log`: say nothing."""


class _Retryable(Exception):
    """A failure another attempt may cure (server hiccup, dropped connection)."""


class _Fatal(Exception):
    """A failure no retry cures (404, bad URL, invalid content)."""


class _Aborted(Exception):
    """Another job failed, so this one stops early."""


def download(
    jobs: list[tuple[str, Path]],
    *,
    workers: int = 4,
    retries: int = 5,
    backoff: float = 1.0,
    validate: Callable[[Path], None] | None = None,
    log: Callable[[str], None] = _quiet,
    timeout: float = SOCKET_TIMEOUT,
) -> None:
    """Download every `(url, dest)` job that is not already complete.

    `retries` is the number of extra attempts after the first one; the wait
    before retry k is about `backoff * 2**(k-1)` seconds plus jitter.
    `validate(partial_path)` may raise to refuse a fully received file (it
    is then deleted, so the next run starts it afresh). Raises `UserError`
    on the first job that cannot be completed; the other jobs stop early.
    """
    pending = [(url, Path(dest)) for url, dest in jobs if not Path(dest).exists()]
    done = len(jobs) - len(pending)
    if done:
        log(f"{done} of {len(jobs)} files already downloaded")
    if not pending:
        return
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending)))) as pool:
        futures = [
            pool.submit(
                _download_one, url, dest,
                retries=retries, backoff=backoff, timeout=timeout,
                validate=validate, log=log, stop=stop,
            )
            for url, dest in pending
        ]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            # Let the running workers notice and return, and never start the rest.
            stop.set()
            for future in futures:
                future.cancel()
            raise


def partial_path(dest: Path) -> Path:
    """Where the bytes of `dest` collect until the download is complete."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def _download_one(
    url: str,
    dest: Path,
    *,
    retries: int,
    backoff: float,
    timeout: float,
    validate: Callable[[Path], None] | None,
    log: Callable[[str], None],
    stop: threading.Event,
) -> None:
    """Fetch one file with retries; raise `UserError` when it cannot be had."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest)
    attempts = retries + 1
    last_error = ""
    for attempt in range(1, attempts + 1):
        try:
            size = _attempt(url, partial, timeout, stop)
        except _Fatal as e:
            raise UserError(
                f"cannot download {url}: {e}; check the URL (data.url sets a mirror,"
                " which must hold the same file names) and re-run `autoresearch prepare`"
            ) from None
        except _Retryable as e:
            last_error = str(e)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            last_error = _describe(e)
        else:
            _finish(url, partial, dest, validate)
            log(f"downloaded {dest.name} ({human_bytes(size)})")
            return
        if attempt < attempts:
            delay = min(MAX_DELAY, backoff * 2 ** (attempt - 1)) + random.uniform(0, backoff)
            log(f"{dest.name}: {last_error}; retry {attempt}/{retries} in {delay:.1f}s")
            if stop.wait(delay):
                raise _Aborted(url)
    raise UserError(
        f"could not download {url} after {attempts} attempts (last error: {last_error});"
        " check the network, set data.url to a mirror, or re-run `autoresearch prepare`"
        " (it resumes where it stopped)"
    )


def _attempt(url: str, partial: Path, timeout: float, stop: threading.Event) -> int:
    """One request: append to (or restart) `partial`; return the complete size."""
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as e:  # not a URL at all, e.g. a typo in data.url
        raise _Fatal(f"invalid URL ({e})") from None
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            # The partial is already as long as (or longer than) the file: start over.
            partial.unlink(missing_ok=True)
            raise _Retryable("HTTP 416 on resume; restarting from zero") from None
        if e.code >= 500 or e.code in RETRY_STATUSES:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise _Fatal(f"HTTP {e.code} {e.reason}") from None
    except ValueError as e:  # unknown scheme such as "ftp:" or a bare host name
        raise _Fatal(f"invalid URL ({e})") from None

    with response:
        total: int | None = None
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                partial.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start}, not {offset}; restarting")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # the server ignored the Range: take the whole body
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else total
        received = offset
        with open(partial, mode) as out:
            while chunk := response.read(CHUNK_BYTES):
                if stop.is_set():
                    raise _Aborted(url)
                out.write(chunk)
                received += len(chunk)
    if expected is not None and received != expected:
        # Keep the partial: the next attempt asks only for the missing bytes.
        raise _Retryable(f"connection closed after {received} of {expected} bytes")
    return received


def _finish(url: str, partial: Path, dest: Path, validate: Callable[[Path], None] | None) -> None:
    """Validate the complete partial, then move it into place atomically."""
    if validate is not None:
        try:
            validate(partial)
        except Exception as e:
            partial.unlink(missing_ok=True)
            raise UserError(
                f"the file downloaded from {url} is not valid ({e}); if data.url points to"
                " a mirror, check that it serves the same files, then re-run"
                " `autoresearch prepare`"
            ) from None
    os.replace(partial, dest)


def _content_range(header: str) -> tuple[int, int | None]:
    """(first byte, total size or None) from a Content-Range header."""
    match = CONTENT_RANGE.match(header.strip())
    if not match:
        raise _Retryable(f"malformed Content-Range {header!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _describe(error: BaseException) -> str:
    """A short, readable form of a network exception."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason  # e.g. ConnectionRefusedError inside URLError
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KB' (powers of 1024)."""
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KB", "MB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} GB"
