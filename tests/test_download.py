"""The downloader against a real loopback HTTP server that misbehaves on purpose."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from autoresearch.errors import UserError
from autoresearch.harness.download import download, human_bytes, partial_path

FAST = {"backoff": 0.001, "timeout": 5.0}  # tests must not sleep through real backoffs


class FlakyServer:
    """Serves `files` with Range support; faults are configured per file name."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_503: Counter[str] = Counter()  # name -> how many more 503s to send
        self.truncate: Counter[str] = Counter()  # name -> how many more cut-off bodies
        self.ignore_range = False  # answer 200 with the full body even to a Range request
        self.delay = 0.0  # seconds to wait before answering
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.requests if n == name)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                range_header = self.headers.get("Range")
                with server.lock:
                    server.requests.append((name, range_header))
                    fail = server.fail_503[name] > 0
                    server.fail_503[name] -= fail
                    cut = server.truncate[name] > 0
                    server.truncate[name] -= cut
                time.sleep(server.delay)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                if fail:
                    self.send_error(503)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if cut:
                    # Promise the whole body, send a third of it, hang up.
                    self.wfile.write(payload[: len(payload) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        return Handler


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment must not intercept loopback requests."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> FlakyServer:
    srv = FlakyServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def payload(size: int, seed: int = 0) -> bytes:
    """Distinct, non-repeating bytes, so a misplaced resume cannot go unnoticed."""
    return bytes((i * 31 + seed * 7 + (i >> 8)) % 251 for i in range(size))


def test_downloads_several_files_in_parallel(server: FlakyServer, tmp_path: Path) -> None:
    files = {f"f{i}.bin": payload(50_000 + i, seed=i) for i in range(6)}
    server.files.update(files)
    lines: list[str] = []
    download([(f"{server.url}/{n}", tmp_path / n) for n in files], workers=3, log=lines.append,
             **FAST)
    for name, body in files.items():
        assert (tmp_path / name).read_bytes() == body
        assert not partial_path(tmp_path / name).exists()
    assert sum("downloaded" in line for line in lines) == 6  # one line per finished file


def test_retries_503_then_succeeds(server: FlakyServer, tmp_path: Path) -> None:
    server.files["a.bin"] = payload(10_000)
    server.fail_503["a.bin"] = 3
    lines: list[str] = []
    download([(f"{server.url}/a.bin", tmp_path / "a.bin")], retries=5, log=lines.append, **FAST)
    assert (tmp_path / "a.bin").read_bytes() == server.files["a.bin"]
    assert server.count("a.bin") == 4
    assert sum("503" in line for line in lines) == 3


def test_503_forever_gives_up_with_user_error(server: FlakyServer, tmp_path: Path) -> None:
    server.files["a.bin"] = payload(100)
    server.fail_503["a.bin"] = 100
    with pytest.raises(UserError) as info:
        download([(f"{server.url}/a.bin", tmp_path / "a.bin")], retries=2, **FAST)
    message = str(info.value)
    assert f"{server.url}/a.bin" in message and "503" in message
    assert "data.url" in message and "autoresearch prepare" in message
    assert server.count("a.bin") == 3
    assert not (tmp_path / "a.bin").exists()


def test_truncated_body_is_retried_and_resumed(server: FlakyServer, tmp_path: Path) -> None:
    body = payload(300_000)
    server.files["big.bin"] = body
    server.truncate["big.bin"] = 1
    download([(f"{server.url}/big.bin", tmp_path / "big.bin")], **FAST)
    assert (tmp_path / "big.bin").read_bytes() == body
    ranges = [r for n, r in server.requests if n == "big.bin"]
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(body) // 3}-"  # resumed, not restarted


def test_404_is_not_retried(server: FlakyServer, tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        download([(f"{server.url}/missing.bin", tmp_path / "missing.bin")], retries=5, **FAST)
    assert "404" in str(info.value) and f"{server.url}/missing.bin" in str(info.value)
    assert server.count("missing.bin") == 1
    assert not (tmp_path / "missing.bin").exists()
    assert not partial_path(tmp_path / "missing.bin").exists()


def test_resumes_existing_partial_with_range(server: FlakyServer, tmp_path: Path) -> None:
    body = payload(20_000)
    server.files["r.bin"] = body
    dest = tmp_path / "r.bin"
    partial_path(dest).write_bytes(body[:12_345])
    download([(f"{server.url}/r.bin", dest)], **FAST)
    assert dest.read_bytes() == body
    assert server.requests == [("r.bin", "bytes=12345-")]


def test_server_ignoring_range_restarts_from_zero(server: FlakyServer, tmp_path: Path) -> None:
    body = payload(20_000)
    server.files["r.bin"] = body
    server.ignore_range = True
    dest = tmp_path / "r.bin"
    partial_path(dest).write_bytes(b"stale bytes that must not survive")
    download([(f"{server.url}/r.bin", dest)], **FAST)
    assert dest.read_bytes() == body


def test_overlong_partial_restarts_after_416(server: FlakyServer, tmp_path: Path) -> None:
    body = payload(1_000)
    server.files["r.bin"] = body
    dest = tmp_path / "r.bin"
    partial_path(dest).write_bytes(payload(5_000, seed=9))
    download([(f"{server.url}/r.bin", dest)], **FAST)
    assert dest.read_bytes() == body


def test_existing_destination_is_skipped(server: FlakyServer, tmp_path: Path) -> None:
    (tmp_path / "done.bin").write_bytes(b"already here")
    lines: list[str] = []
    download([(f"{server.url}/done.bin", tmp_path / "done.bin")], log=lines.append, **FAST)
    assert server.requests == []
    assert (tmp_path / "done.bin").read_bytes() == b"already here"
    assert lines == ["1 of 1 files already downloaded"]


def test_validation_failure_leaves_no_file(server: FlakyServer, tmp_path: Path) -> None:
    server.files["v.bin"] = b"<html>not what we asked for</html>"
    seen: list[Path] = []

    def validate(path: Path) -> None:
        seen.append(path)
        assert path.name.endswith(".partial") and path.exists()
        raise ValueError("not a parquet file")

    with pytest.raises(UserError, match="not a parquet file"):
        download([(f"{server.url}/v.bin", tmp_path / "v.bin")], validate=validate, **FAST)
    assert len(seen) == 1
    assert not (tmp_path / "v.bin").exists() and not partial_path(tmp_path / "v.bin").exists()


def test_connection_refused_gives_user_error(tmp_path: Path) -> None:
    # A port that was free a moment ago: nothing listens there.
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()
    with pytest.raises(UserError, match="after 2 attempts"):
        download([(f"http://127.0.0.1:{port}/x", tmp_path / "x")], retries=1, **FAST)


def test_bad_url_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="invalid URL"):
        download([("not-a-url/x.bin", tmp_path / "x.bin")], **FAST)


def test_one_failure_stops_the_batch(server: FlakyServer, tmp_path: Path) -> None:
    names = [f"ok{i}.bin" for i in range(20)]
    server.files.update({name: payload(1_000) for name in names})
    server.delay = 0.05  # slow enough that cancelling the queue visibly matters
    jobs = [(f"{server.url}/missing.bin", tmp_path / "missing.bin")]
    jobs += [(f"{server.url}/{name}", tmp_path / name) for name in names]
    with pytest.raises(UserError, match="404"):
        download(jobs, workers=1, **FAST)
    assert sum(server.count(name) for name in names) <= 2  # queued jobs never started


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KB"
    assert human_bytes(3 * 2**20) == "3.0 MB"
    assert human_bytes(5 * 2**30) == "5.0 GB"
