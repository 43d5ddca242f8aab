"""`autoresearch serve`: the research, live, in a browser. Read-only.

The pages (`web/index.html` and its script and style sheet, shipped in the package) fetch
JSON from `/api/...` and draw it; the server only reads, through the same functions as
`leaderboard`, `show` and `status` (autoresearch/report.py), so it is safe while `evolve`
writes. The standard library's ThreadingHTTPServer serves it: a handful of GET endpoints
and one event stream for a few local viewers need no framework, and no dependency means
nothing more to install or to trust (docs/report.md).

Everything shown comes from candidates and proposers and is untrusted: the pages set it
as text only, never as markup, and every response carries a strict Content-Security-Policy
(no inline script, scripts from this server only). Every string served passes through the
ledger's redaction (autoresearch/redact.py) first. Bound to a loopback address, requests
must name it in their Host header (so a web page cannot reach the server by rebinding its
own name to 127.0.0.1); bound to any other, every request needs the token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from autoresearch.config import load_config
from autoresearch.errors import UserError
from autoresearch.harness.untrusted import read_untrusted_text
from autoresearch.ledger import STATUSES, Ledger, LedgerTampered, Record
from autoresearch.plot import y_range
from autoresearch.population import (
    baseline,
    champion,
    lineage,
    means,
    noise,
    source_of,
    strategy,
    tag_records,
    threshold,
)
from autoresearch.redact import redactor
from autoresearch.report import (
    EMPTY_LEDGER,
    compared_with,
    diff_between,
    find_record,
    latest_tag,
    leaderboard_rows,
    log_lines,
    proposal_files,
    select,
    status_json,
    stop_condition,
)
from autoresearch.status import run_status
from autoresearch.workspace import LEDGER_FILE, STATUS_FILE

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
POLL_SECONDS = 1.0  # how often the event stream looks at the ledger and the status file
HEARTBEAT_SECONDS = 15.0  # a comment on an idle stream, so a closed tab ends its thread
MAX_STREAMS = 32  # open event streams at once; each holds a thread
# Open connections at once, each a thread and a file: over this, the one that has waited
# longest for its request is closed, so clients that never finish a request (slowloris)
# cannot lock out one that does; a request not read within REQUEST_SECONDS is dropped.
MAX_CONNECTIONS = 64
REQUEST_SECONDS = 20.0
PROPOSAL_BYTES = 256 * 1024  # of each prompt and reply shown (their ends)
PROPOSAL_TOTAL_BYTES = 2 * 1024 * 1024  # of them all, in one experiment's answer
TOKEN_BYTES = 24
TOKEN_COOKIE = "autoresearch_token"
PAGES = ("/", "/lineage", "/experiment", "/compare")  # all one page: the script draws each
STATIC = {  # path -> (file in autoresearch/web, content type)
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


# --------------------------------------------------------------------------- the data


class Research:
    """The research repo as the pages see it: every answer computed from the ledger, the
    status file and git through the library, and kept until the ledger changes."""

    def __init__(self, repo: Path, state: Path):
        self.repo, self.state = repo, state
        self.ledger = Ledger(state / LEDGER_FILE)
        self._lock = threading.RLock()
        self._depth = 0
        self._version_seen: tuple = ()
        self._records: list[Record] = []
        self._cache: dict[tuple, Any] = {}
        self._redact = redactor()

    # -- versions and the cache

    def ledger_version(self) -> tuple:
        """Changes whenever the ledger does (it is only ever appended, or replaced)."""
        return _stat_key(self.ledger.path)

    def version(self) -> str:
        """Changes whenever anything a page shows does: the ledger or the status file."""
        key = repr((self.ledger_version(), _stat_key(self.state / STATUS_FILE)))
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @contextlib.contextmanager
    def _version(self) -> Iterator[None]:
        """Everything computed inside one block sees one version of the ledger: the
        outermost block reads it again if it changed (and forgets every answer)."""
        with self._lock:  # reentrant: answers are computed from other cached answers
            self._depth += 1
            try:
                version = self.ledger_version()
                if self._depth == 1 and version != self._version_seen:
                    self._cache.clear()
                    self._records, self._version_seen = self.ledger.records(), version
                if not self._records:
                    raise UserError(EMPTY_LEDGER)
                yield
            finally:
                self._depth -= 1

    def _cached(self, key: tuple, compute: Callable[[], Any], redact: bool = True) -> Any:
        """`compute()` once per version of the ledger; its records are `self._records`.
        `redact`: pass the answer through `redacted` (False: it is made of redacted parts)."""
        with self._version():
            if key not in self._cache:
                answer = compute()
                self._cache[key] = self.redacted(answer) if redact else answer
            return self._cache[key]

    def _body(self, key: tuple, compute: Callable[[], Any], redact: bool = True) -> bytes:
        """The JSON body of a cached answer, encoded once per version of the ledger."""
        with self._version():
            answer = self._cached(key, compute, redact)
            return self._cached(("json", *key), lambda: _encode(answer), redact=False)

    def redacted(self, value: Any) -> Any:
        """`value` with every string in it (keys too) passed through the ledger's redaction."""
        mask = self._redact

        def walk(v: Any) -> Any:  # by exact type: JSON-able values, and fast on 10,000 rows
            kind = type(v)
            if kind is str:
                return mask(v)
            if kind is dict:
                return {(mask(k) if type(k) is str else k): walk(x) for k, x in v.items()}
            if kind is list or kind is tuple:
                return [walk(x) for x in v]
            return v

        return walk(value)

    # -- rows, in the schema of `leaderboard --json`

    def _tag_rows(self, tag: str) -> dict[str, dict[str, Any]]:
        """Every experiment of `tag` as a leaderboard row (ranked among them all), by id."""

        def compute() -> dict[str, dict[str, Any]]:
            tagged = tag_records(self._records, tag)
            return {row["id"]: row for row in leaderboard_rows(self._records, tagged)}

        return self._cached(("rows", tag), compute)

    def _row(self, record: Record) -> dict[str, Any]:
        return self._tag_rows(record.tag)[record.id]

    def _in_order(self, tag: str) -> list[dict[str, Any]]:
        """The rows of `tag` in ledger order: what the plot and the lineage draw."""
        rows = self._tag_rows(tag)
        return self._cached(
            ("ordered", tag),
            lambda: [rows[r.id] for r in tag_records(self._records, tag)],
            redact=False,
        )

    def _settings(self, tag: str) -> tuple[dict[str, Any], float]:
        """(the tag's dotted settings, seconds it has run): what it remembers, over the
        toml's."""
        from autoresearch import tags

        configured = tags.settings_of(load_config(self.repo))
        try:
            remembered = tags.load(self.state, tag) if tag else None
        except UserError:  # damaged: `evolve --resume` says so; here the toml will do
            remembered = None
        if remembered is None:
            return configured, 0.0
        return configured | remembered.settings, remembered.elapsed_seconds

    # -- the endpoints

    def leaderboard(
        self, tag: str | None, everything: bool, statuses: tuple[str, ...], limit: int | None
    ) -> bytes:
        """Exactly what `autoresearch leaderboard --json` prints for the same options."""

        def compute() -> list[dict[str, Any]]:
            chosen = select(
                self._records, tag=tag, everything=everything, statuses=statuses,
                population_size=load_config(self.repo).evolve.population,
            )  # fmt: skip
            return leaderboard_rows(self._records, chosen.records, limit)

        return self._body(("leaderboard", tag, everything, statuses, limit), compute)

    def status(self) -> dict[str, Any]:
        """Exactly what `autoresearch status --json` prints."""
        return self.redacted(status_json(run_status(self.state)))

    def overview(self, tag: str | None) -> bytes:
        """The run's status, its population, and every experiment of the tag for the plot:
        the part from the ledger encoded once per version, the status added each time."""
        status = self.status()
        with self._version():  # the part, its body and its records of one version
            part = self._cached(("overview", tag), lambda: self._overview(tag), redact=False)
            body = self._body(("overview", tag), lambda: part, redact=False)
            tagged = tag_records(self._records, part["tag"])
        settings, elapsed = self._settings(part["tag"])
        if status["running"] and status.get("tag") == part["tag"] and status.get("started"):
            elapsed += time.time() - status["started"]  # this session's time is not saved yet
        live = {"status": status, "stop": self.redacted(stop_condition(tagged, settings, elapsed)),
                "now": time.time()}  # fmt: skip
        return _encode(live)[:-1] + b", " + body[1:]  # one object: the live keys, then the part

    def _overview(self, tag: str | None) -> dict[str, Any]:
        population = load_config(self.repo).evolve.population
        chosen = select(self._records, tag=tag, population_size=population)
        tag = chosen.tag or ""
        tagged = tag_records(self._records, tag)
        settings, _ = self._settings(tag)
        best = champion(tagged)
        scores = [r.val_bpb for r in tagged if r.val_bpb is not None]
        rows = self._in_order(tag)
        base = baseline(tagged)
        # The plot's y range, outliers pinned, by the rule of `autoresearch plot`.
        low, high, top = y_range(scores, base.val_bpb) if base else (0.0, 1.0, 1.0)
        judged = None
        if best is not None and best.val_bpb is not None:
            rules = strategy(tagged, settings["evolve.population"], settings["evolve.noise_k"])
            judged = {
                "champion_mean": means(tagged)[source_of(best)].value,
                "sigma": noise(tagged),
                "threshold": threshold(tagged, settings["evolve.min_improvement"], rules.noise_k),
            }
        fresh = {
            "tag": tag,
            "tags": list(dict.fromkeys(r.tag for r in self._records)),
            "what": chosen.what,
            "leaderboard": leaderboard_rows(self._records, chosen.records),
        }
        return {
            **self.redacted(fresh),
            "experiments": rows,
            "champion": best.id if best else None,
            "noise": judged,
            "scale": {"low": low, "high": high, "top": top},
        }

    def lineage(self, tag: str | None) -> bytes:
        """The tag's experiments in ledger order (each row names its parent), and the path
        from the champion back to the baseline."""

        def compute() -> dict[str, Any]:
            chosen = latest_tag(self._records) if tag is None else tag
            select(self._records, tag=chosen, everything=True)  # an unknown tag: one line
            best = champion(tag_records(self._records, chosen))
            path = [r.id for r in lineage(self._records, best)] if best else []
            fresh = {
                "tag": chosen,
                "tags": list(dict.fromkeys(r.tag for r in self._records)),
                "champion_path": path,
            }
            return {**self.redacted(fresh), "experiments": self._in_order(chosen)}

        return self._body(("lineage", tag), compute, redact=False)

    def experiment(self, name: str) -> bytes:
        """Everything `autoresearch show` prints, as JSON."""
        return self._body(("experiment", name), lambda: self._experiment(name), redact=False)

    def _experiment(self, name: str) -> dict[str, Any]:
        record = find_record(self._records, name)
        chain = lineage(self._records, record)
        against, why = compared_with(self._records, chain)
        log_path, tail = log_lines(self.state, record)
        fresh = {
            "record": dataclasses.asdict(record),
            "diff": {
                "against": against.id if against else None,
                "why": why,
                "text": diff_between(self.repo, self.state, against, record) if against else None,
            },
            "log": {"path": str(log_path) if log_path else None, "lines": tail},
            "proposal": self._proposal(record),
        }
        rows = {"experiment": self._row(record), "lineage": [self._row(r) for r in chain]}
        return {**rows, **self.redacted(fresh)}  # the rows are redacted already

    def _proposal(self, record: Record) -> list[dict[str, str]]:
        """The proposer's saved prompts and replies, the end of each, within a total bound."""
        shown, room = [], PROPOSAL_TOTAL_BYTES
        for path in proposal_files(self.state, record):
            text = _read_text(path, min(PROPOSAL_BYTES, room))
            shown.append({"name": path.name, "text": text})
            room -= len(text.encode())
            if room <= 0:
                break
        return shown

    def compare(self, a: str, b: str) -> bytes:
        """Two experiments, and the diff of train.py from the first to the second."""

        def compute() -> dict[str, Any]:
            first, second = find_record(self._records, a), find_record(self._records, b)
            text = diff_between(self.repo, self.state, first, second)
            return {
                "a": self._experiment(a),
                "b": self._experiment(b),
                "diff": {"text": self.redacted(text)},
            }

        return self._body(("compare", a, b), compute, redact=False)


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


def _stat_key(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_text(path: Path, limit: int) -> str:
    try:
        return read_untrusted_text(path, limit)
    except OSError:  # a link or a FIFO in the run folder is not shown
        return ""


# --------------------------------------------------------------------------- the server


class Server(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream must not keep the process alive
    request_queue_size = MAX_CONNECTIONS  # connections the kernel holds until accepted (not 5)

    def __init__(self, research: Research, host: str, port: int, token: str | None):
        self.research, self.token = research, token
        self.stopping = threading.Event()
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        # Each open connection, with when it began to wait for a request (None: answering).
        self.connections: dict[socket.socket, float | None] = {}
        self.connections_lock = threading.RLock()  # process_request may shut one itself
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), Handler)

    def hosts(self) -> set[str]:
        """The Host headers a request to a loopback server may carry: its own names, and
        the address it is bound to (127.0.0.2 is loopback too)."""
        bound = self.server_address[0]
        names = {"127.0.0.1", "localhost", "[::1]", f"[{bound}]" if ":" in bound else bound}
        return {f"{name}:{self.server_address[1]}" for name in names}

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            if len(self.connections) >= MAX_CONNECTIONS:
                waiting = [(t, c) for c, t in self.connections.items() if t is not None]
                if not waiting:  # every one is being answered: this one waits its turn
                    self.shutdown_request(request)
                    return
                oldest = min(waiting, key=lambda pair: pair[0])[1]
                del self.connections[oldest]  # counted no more, even before its thread ends
                with contextlib.suppress(OSError):  # its thread sees the end and finishes
                    oldest.shutdown(socket.SHUT_RDWR)
            self.connections[request] = time.monotonic()
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.pop(request, None)
        super().shutdown_request(request)

    def waiting(self, connection: socket.socket, since: float | None) -> None:
        """Mark `connection` as waiting for a request since `since`, or being answered."""
        with self.connections_lock:
            if connection in self.connections:
                self.connections[connection] = since

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is not news; anything else is one line, no traceback."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            print(f"serve: a request failed: {type(error).__name__}: {error}", file=sys.stderr)

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "autoresearch"
    sys_version = ""
    timeout = REQUEST_SECONDS  # of every read and write on the connection

    def handle_one_request(self) -> None:
        self.server.waiting(self.connection, time.monotonic())
        super().handle_one_request()

    def parse_request(self) -> bool:
        """Read the headers; once they are in, the request is being answered (not evicted)."""
        parsed = super().parse_request()
        self.server.waiting(self.connection, None)
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a dashboard's requests are not news, and URLs may carry the token."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a method other than GET, a malformed request) as ours:
        JSON, with the same headers."""
        self.close_connection = True
        self._error(code, message or HTTPStatus(code).phrase)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if not self._allowed(url.path, query):
            return
        research = self.server.research
        try:
            if url.path in PAGES:
                self._send_file("index.html", "text/html; charset=utf-8")
            elif url.path in STATIC:
                self._send_file(*STATIC[url.path])
            elif url.path == "/api/events":
                self._events()
            elif url.path == "/api/status":
                self._json(research.status())
            elif url.path == "/api/overview":
                self._json(research.overview(_tag(query)))
            elif url.path == "/api/leaderboard":
                self._json(research.leaderboard(*_leaderboard_options(query)))
            elif url.path == "/api/lineage":
                self._json(research.lineage(_tag(query)))
            elif url.path == "/api/experiment":
                self._json(research.experiment(_required(query, "id")))
            elif url.path == "/api/compare":
                self._json(research.compare(_required(query, "a"), _required(query, "b")))
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no page {url.path}")
        except BadRequest as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except LedgerTampered as e:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))
        except UserError as e:  # an empty ledger, an unknown tag or experiment
            self._error(HTTPStatus.NOT_FOUND, str(e))

    # -- who may ask

    def _allowed(self, path: str, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        if token is None:
            if self.headers.get("Host", "") in self.server.hosts():
                return True
            self._error(HTTPStatus.FORBIDDEN, "this server answers only to its own address")
            return False
        given = query.get("token", [""])[-1]
        if given and hmac.compare_digest(given.encode(), token.encode()):
            # Once, from the printed URL: the cookie carries it from now on, out of the URL.
            rest = {k: v for k, v in query.items() if k != "token"}
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", path + ("?" + urlencode(rest, doseq=True) if rest else ""))
            self.send_header(
                "Set-Cookie", f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
            )
            self._end_headers(0)
            return False
        if any(hmac.compare_digest(t.encode(), token.encode()) for t in self._tokens()):
            return True
        self._error(
            HTTPStatus.UNAUTHORIZED,
            "a token is needed: open the URL `autoresearch serve` printed, with its ?token=",
        )
        return False

    def _tokens(self) -> Iterator[str]:
        """The tokens the request carries: in its Authorization header, or its cookie."""
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            yield value.strip()
        from http.cookies import CookieError, SimpleCookie

        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return
        if TOKEN_COOKIE in cookie:
            yield cookie[TOKEN_COOKIE].value

    # -- answers

    def _end_headers(self, length: int) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self._end_headers(len(body))
        self.wfile.write(body)

    def _json(self, value: Any) -> None:
        """Send `value`, or a body already encoded (bytes)."""
        body = value if isinstance(value, bytes) else _encode(value)
        self._send(HTTPStatus.OK, body, "application/json")

    def _error(self, status: int, message: str) -> None:
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            # One refusal per connection: a client without the right to ask cannot keep a
            # connection busy (pipelined requests it never reads the answers of).
            self.close_connection = True
        body = _encode({"error": self.server.research.redacted(message)})
        self._send(status, body, "application/json")

    def _send_file(self, name: str, content_type: str) -> None:
        body = resources.files("autoresearch").joinpath("web", name).read_bytes()
        self._send(HTTPStatus.OK, body, content_type)

    def _events(self) -> None:
        """Server-sent events: `change` whenever the ledger or the status file changes."""
        if not self.server.streams.acquire(blocking=False):
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "too many open pages: close some")
            return
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"retry: 2000\n\n")
            said, quiet_since = None, time.monotonic()
            while not self.server.stopping.is_set():
                version = self.server.research.version()
                if version != said:
                    self.wfile.write(f"event: change\ndata: {json.dumps(version)}\n\n".encode())
                    said, quiet_since = version, time.monotonic()
                elif time.monotonic() - quiet_since > HEARTBEAT_SECONDS:
                    self.wfile.write(b": still here\n\n")
                    quiet_since = time.monotonic()
                self.wfile.flush()
                self.server.stopping.wait(POLL_SECONDS)
        except (ConnectionError, TimeoutError):
            pass  # the page was closed, or stopped reading
        finally:
            self.server.streams.release()


class BadRequest(ValueError):
    """A query parameter the endpoint cannot use."""


def _tag(query: dict[str, list[str]]) -> str | None:
    return query["tag"][-1] if "tag" in query else None


def _required(query: dict[str, list[str]], name: str) -> str:
    value = query.get(name, [""])[-1]
    if not value:
        raise BadRequest(f"give the experiment as ?{name}=ID (or TAG/ID)")
    return value


def _leaderboard_options(
    query: dict[str, list[str]],
) -> tuple[str | None, bool, tuple[str, ...], int | None]:
    """`leaderboard`'s options from a query: ?tag=T&all=1&status=keep&status=crash&limit=N."""
    statuses = tuple(query.get("status", []))
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise BadRequest(f"unknown status {unknown[0]!r}: choose from {', '.join(STATUSES)}")
    limit = query.get("limit", [""])[-1]
    if limit and not (limit.isdigit() and int(limit) >= 1):
        raise BadRequest(f"limit must be a positive whole number, not {limit!r}")
    everything = query.get("all", ["0"])[-1] not in ("", "0", "false")
    return _tag(query), everything, statuses, int(limit) if limit else None


def make_server(repo: Path, state: Path, host: str, port: int, token: str | None) -> Server:
    """The server, bound and ready for `serve_forever`; one clear line if it cannot bind."""
    try:
        return Server(Research(repo, state), host, port, token)
    except OSError as e:
        import errno

        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use: choose another with --port"
            ) from None
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
