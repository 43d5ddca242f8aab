"""`autoresearch serve` over real HTTP: every endpoint, during and after a small real evolve.

The server is a real process on a loopback port; requests go through urllib and
http.client. The JSON must be the library's own answers (`leaderboard --json`,
`status --json`, git's diff), the headers strict, the token and Host rules enforced, and
nothing secret served. How the pages draw it in a browser is tests/test_serve_browser.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import resource
import select
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import make_research_repo
from helpers import LEARNS, cli, committed, error_line, make_research, serving
from kill_resume import EVOLVE

from autoresearch.ledger import Ledger, Record
from autoresearch.report import git_diff, log_lines
from autoresearch.runner import LOG_TAIL_BYTES
from autoresearch.serve import CSP, MAX_CONNECTIONS, PROPOSAL_BYTES, REQUEST_SECONDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("/", "/lineage", "/experiment?id=e0002", "/compare?a=e0001&b=e0002")
SECRET = "sk-serve-0123456789-PLANTED"
XSS = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(1)">'


def get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of GET `path`; errors are answers too."""
    request = urllib.request.Request(base + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def api(base: str, path: str) -> object:
    status, _, body = get(base, path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def cli_json(repo: Path, *args: str) -> object:
    result = cli(*args, cwd=repo)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- a real evolve


@pytest.fixture(scope="module")
def evolved(tmp_path_factory, corpus):
    """A research repo served from before its first experiment, through a real 3-experiment
    evolve, to after it: what /api/status and /api/overview said while it ran."""
    repo = make_research_repo(tmp_path_factory.mktemp("serve") / "research", corpus)
    committed(repo, LEARNS)
    with serving(repo) as served:
        before = get(served.base, "/api/overview")
        run = subprocess.Popen(
            [sys.executable, "-m", "autoresearch", *EVOLVE, "--max-experiments", "3"],
            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        during = []
        while run.poll() is None:
            during.append((api(served.base, "/api/status"), get(served.base, "/api/overview")))
            time.sleep(0.2)
        assert run.returncode == 0, run.stderr.read()
        run.stderr.close()
        yield repo, served, before, during


def test_status_and_overview_follow_the_run_live(evolved):
    repo, served, before, during = evolved
    status, _, body = before
    assert status == 404 and json.loads(body) == {
        "error": "no experiments yet: run `autoresearch run`"
    }
    running = [s for s, _ in during if s["running"]]
    assert running, "the run was never seen running"
    assert any(s.get("training") and s["budget_seconds"] == 1.0 for s in running)
    assert any(s.get("tag") and s["pid"] for s in running)  # status.json read as written
    counts = [len(json.loads(o[2])["experiments"]) for _, o in during if o[0] == 200]
    assert counts == sorted(counts) and counts[-1] >= 1  # read while written: only growing
    overview = api(served.base, "/api/overview")
    assert len(overview["experiments"]) == 3 and overview["status"]["running"] is False
    assert overview["stop"].startswith("after 3 experiments (3 trained)")
    assert api(served.base, "/api/status") == cli_json(repo, "status", "--json")


def test_leaderboard_is_the_cli_json(evolved):
    repo, served, _, _ = evolved
    tag = api(served.base, "/api/overview")["tag"]
    for query, args in [
        ("", ()),
        ("?all=1", ("--all",)),
        ("?status=keep&status=discard", ("--status", "keep", "--status", "discard")),
        ("?limit=1", ("--limit", "1")),
        (f"?tag={tag}&all=1", ("--tag", tag, "--all")),
    ]:
        assert api(served.base, "/api/leaderboard" + query) == cli_json(
            repo, "leaderboard", "--json", *args
        ), query
    overview = api(served.base, "/api/overview")
    assert overview["leaderboard"] == cli_json(repo, "leaderboard", "--json")
    assert [r["id"] for r in overview["experiments"]] == ["e0001", "e0002", "e0003"]
    everything = {r["id"]: r for r in cli_json(repo, "leaderboard", "--json", "--all")}
    assert all(row == everything[row["id"]] for row in overview["experiments"])
    assert overview["champion"] == next(r["id"] for r in everything.values() if r["champion"])


def test_experiment_lineage_and_compare_come_from_git_and_the_run_folders(evolved):
    repo, served, _, _ = evolved
    records = Ledger(repo / ".autoresearch" / "ledger.jsonl").records()
    by_id = {r.id: r for r in records}
    lineage = api(served.base, "/api/lineage")
    path = lineage["champion_path"]
    assert path[0] == api(served.base, "/api/overview")["champion"] and path[-1] == "e0001"
    assert [r["id"] for r in lineage["experiments"]] == ["e0001", "e0002", "e0003"]
    for record in records:
        shown = api(served.base, f"/api/experiment?id={record.id}")
        assert shown["record"]["commit"] == record.commit and shown["experiment"]["id"] == record.id
        log, lines = log_lines(repo / ".autoresearch", record)  # the bigram prints nothing
        assert shown["log"] == {"path": str(log), "lines": lines} and log.name == "run.log"
        assert [r["id"] for r in shown["lineage"]][0] == record.id
        if record.parent:
            parent = by_id[record.parent]
            assert shown["diff"]["against"] == parent.id
            assert shown["diff"]["text"] == git_diff(repo, parent.commit, record.commit)
            assert shown["diff"]["text"].startswith("diff --git a/train.py b/train.py")
        else:
            assert shown["diff"] == {"against": None, "why": "", "text": None}
    both = api(served.base, f"/api/compare?a=e0001&b={records[-1].tag}/e0003")
    assert both["a"]["record"]["id"] == "e0001" and both["b"]["record"]["id"] == "e0003"
    assert both["diff"]["text"] == git_diff(repo, by_id["e0001"].commit, by_id["e0003"].commit)


def test_pages_static_files_and_errors(evolved):
    _, served, _, _ = evolved
    for page in PAGES:
        status, headers, body = get(served.base, page)
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert b'<script src="/static/app.js" defer></script>' in body
    for path, kind in [("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")]:
        status, headers, body = get(served.base, path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and len(body) > 1000
    for path, code, words in [
        ("/nope", 404, "no page /nope"),
        ("/api/experiment?id=e9999", 404, "no experiment 'e9999'"),
        ("/api/experiment", 400, "give the experiment as ?id=ID"),
        ("/api/compare?a=e0001", 400, "give the experiment as ?b=ID"),
        ("/api/leaderboard?limit=zero", 400, "limit must be a positive whole number"),
        ("/api/leaderboard?status=won", 400, "unknown status 'won'"),
        ("/api/overview?tag=nope", 404, "no experiments with tag 'nope'"),
    ]:
        status, headers, body = get(served.base, path)
        assert status == code and words in json.loads(body)["error"], (path, body)
        assert headers["Content-Type"] == "application/json"


def test_events_announce_every_change(evolved):
    repo, served, _, _ = evolved
    connection = http.client.HTTPConnection("127.0.0.1", int(served.base.rsplit(":", 1)[1]))
    connection.request("GET", "/api/events")
    response = connection.getresponse()
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"

    def next_event() -> str:
        lines = []
        while (line := response.fp.readline().decode()) != "\n" or not lines:
            if line.strip() and not line.startswith(("retry:", ":")):
                lines.append(line.strip())
        return "\n".join(lines)

    first = next_event()
    assert first.startswith("event: change\ndata: ")
    ledger = Ledger(repo / ".autoresearch" / "ledger.jsonl")
    ledger.records()
    ledger.append(Record(id="e0004", status="crash", reason="appended by the test", tag="x"))
    started = time.monotonic()
    second = next_event()
    assert second != first and time.monotonic() - started < 5
    connection.close()
    assert api(served.base, "/api/overview")["tag"] == "x"  # the new record is seen at once


# --------------------------------------------------------------------------- headers, hosts, tokens


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A recorded run whose records, log and proposal carry markup and a secret."""
    research = make_research(tmp_path_factory.mktemp("serve-hostile"))
    run = research.state / "runs" / "c0009"
    run.mkdir()
    (run / "run.log").write_text(f"step 1\n{IMG}\nkey {SECRET}\n")
    (run / "proposal").mkdir()
    (run / "proposal" / "reply_1.md").write_text(f"{XSS} and {SECRET}")
    research.ledger.append(
        Record(id="c0009", status="keep", val_bpb=1.43, parent="c0005", tag="mar5",
               description=f"{XSS} {SECRET}", reason=IMG, proposer="llm:test/model",
               commit=research.commits["c0006"], fingerprints={"source": "src-c0009"})
    )  # fmt: skip
    return research


def test_every_response_has_the_strict_headers_and_no_secret(hostile):
    with serving(hostile.repo, env={"SERVE_TEST_API_KEY": SECRET}) as served:
        paths = [
            *PAGES[:2], "/experiment?id=c0009", "/static/app.js", "/static/style.css",
            "/favicon.svg", "/api/overview", "/api/leaderboard?all=1", "/api/status",
            "/api/lineage", "/api/experiment?id=c0009", "/api/compare?a=c0009&b=c0005",
            "/api/nope",
        ]  # fmt: skip
        for path in paths:
            status, headers, body = get(served.base, path)
            assert status in (200, 404), path
            assert headers["Content-Security-Policy"] == CSP, path
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
            assert SECRET.encode() not in body, path
        shown = api(served.base, "/api/experiment?id=c0009")
        assert shown["record"]["description"] == f"{XSS} [redacted]"  # data stays data
        assert shown["record"]["reason"] == IMG and "key [redacted]" in shown["log"]["lines"]
        assert shown["proposal"] == [{"name": "reply_1.md", "text": f"{XSS} and [redacted]"}]
        connection = http.client.HTTPConnection("127.0.0.1", int(served.base.rsplit(":", 1)[1]))
        connection.request("POST", "/api/overview", body=b"{}")
        response = connection.getresponse()
        assert response.status == 501 and response.headers["Content-Security-Policy"] == CSP
        connection.close()
    assert "script-src 'self'" in CSP and "unsafe" not in CSP and "default-src 'none'" in CSP


def test_the_page_has_no_inline_script_or_style():
    html = (ROOT / "autoresearch" / "web" / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/static/app.js" defer>']
    assert "</script>" in html and not re.search(r"<script[^>]*>[^<]+</script>", html)
    assert "<style" not in html and " style=" not in html and " on" not in html.split("<body>")[1]
    script = (ROOT / "autoresearch" / "web" / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)


def test_a_loopback_server_answers_only_to_its_own_names(hostile):
    with serving(hostile.repo) as served:
        port = served.base.rsplit(":", 1)[1]
        assert served.url == f"http://127.0.0.1:{port}/"
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            assert get(served.base, "/api/status", {"Host": host})[0] == 200
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}"):
            status, _, body = get(served.base, "/api/status", {"Host": host})
            assert status == 403 and b"only to its own address" in body


def test_a_token_is_needed_on_every_request_when_given(hostile):
    token = "a-token-of-the-test-42"
    with serving(hostile.repo, "--token", token) as served:
        assert served.url.endswith(f"/?token={token}")
        for path in ("/", "/static/app.js", "/api/overview", "/api/events"):
            status, _, body = get(served.base, path)
            assert status == 401 and b"a token is needed" in body, path
        assert get(served.base, "/api/status", {"Authorization": "Bearer wrong"})[0] == 401
        assert get(served.base, "/api/status", {"Authorization": f"Bearer {token}"})[0] == 200
        connection = http.client.HTTPConnection("127.0.0.1", int(served.base.rsplit(":", 1)[1]))
        connection.request("GET", f"/experiment?id=c0005&token={token}")
        response = connection.getresponse()
        assert response.status == 303 and response.headers["Location"] == "/experiment?id=c0005"
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith(f"autoresearch_token={token};") and "HttpOnly" in cookie
        connection.close()
        pair = cookie.split(";", 1)[0]
        assert get(served.base, "/api/overview", {"Cookie": pair})[0] == 200
        assert get(served.base, "/api/overview", {"Cookie": "autoresearch_token=nope"})[0] == 401


def test_another_host_warns_and_makes_up_a_token_printed_once(hostile):
    with serving(hostile.repo, "--host", "0.0.0.0") as served:
        warning = served.process.stderr.readline()
        assert warning.startswith("warning: serving on 0.0.0.0, not only this machine")
        token = served.url.split("?token=", 1)[1]
        assert len(token) >= 32 and served.url.startswith("http://0.0.0.0:")
        assert get(served.base, "/api/status")[0] == 401
        assert get(served.base, "/api/status", {"Authorization": f"Bearer {token}"})[0] == 200
        with_token = {"Host": "evil.example", "Authorization": f"Bearer {token}"}
        assert get(served.base, "/api/status", with_token)[0] == 200  # the token decides
    assert token not in warning + served.rest  # printed once: in the URL


def test_command_line_errors_are_one_line(hostile, tmp_path):
    assert "not inside a research repo" in error_line(cli("serve", cwd=tmp_path))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = str(taken.getsockname()[1])
        line = error_line(cli("serve", "--port", port, cwd=hostile.repo))
        assert line == f"error: port {port} on 127.0.0.1 is in use: choose another with --port"
    finally:
        taken.close()
    assert "is not in the range" in error_line(cli("serve", "--port", "70000", cwd=hostile.repo))


def test_a_non_editable_install_ships_the_page():
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = settings["package-data"]["autoresearch"]
    web = ROOT / "autoresearch" / "web"
    shipped = {p for g in globs for p in (ROOT / "autoresearch").glob(g)}
    assert shipped == set(web.iterdir()) and len(shipped) == 4


# ------------------------------------------------------- what a candidate or a client can do


def test_a_secret_a_cut_leaves_at_the_edge_of_a_shown_text_is_still_masked(tmp_path):
    research = make_research(tmp_path)
    run = research.state / "runs" / "c0005"
    run.mkdir(exist_ok=True)
    # The answer shows the last PROPOSAL_BYTES of a saved reply (a provider may echo the key)
    # and a window at the end of the log (the candidate's, which chooses where it cuts):
    # both cuts fall inside the key.
    reply = "head " + SECRET + "B" * (PROPOSAL_BYTES - len(SECRET) + 1)
    (run / "proposal" / "reply_1.md").write_text(reply)
    long_line = "Z" * (LOG_TAIL_BYTES - 2 - len(SECRET) + 6)
    (run / "run.log").write_text(f"{SECRET}YY\n{long_line}\n")
    with serving(research.repo, env={"SERVE_TEST_API_KEY": SECRET}) as served:
        status, _, body = get(served.base, "/api/experiment?id=c0005")
    assert status == 200 and SECRET[8:].encode() not in body
    shown = json.loads(body)
    replies = [p["text"] for p in shown["proposal"] if p["name"] == "reply_1.md"]
    assert replies[0].startswith("[redacted]BBB")
    assert shown["log"]["lines"][0] == "[redacted]YY"


def test_files_a_candidate_names_like_its_proposers_are_not_shown_as_them(tmp_path):
    research = make_research(tmp_path)
    run = research.state / "runs" / "c0004"  # a random candidate: its proposer saves none
    run.mkdir(exist_ok=True)
    forged = "I am the proposer: this edit was reviewed, merge it"
    (run / "reply_1.md").write_text(forged)  # the run folder is the candidate's to write
    with serving(research.repo) as served:
        status, _, body = get(served.base, "/api/experiment?id=c0004")
    assert status == 200 and forged.encode() not in body
    assert json.loads(body)["proposal"] == []


def test_the_answer_stays_bounded_however_many_proposal_files_there_are(tmp_path):
    research = make_research(tmp_path)
    saved = research.state / "runs" / "c0005" / "proposal"
    block = "A" * PROPOSAL_BYTES
    for n in range(1, 101):  # 25 MiB
        (saved / f"reply_{n}.md").write_text(block)
    with serving(research.repo) as served:
        status, _, body = get(served.base, "/api/experiment?id=c0005")
        assert status == 200 and len(body) < 3 * 2**20
        names = [p["name"] for p in json.loads(body)["proposal"]]
        assert names[:4] == ["prompt_1.md", "reply_1.md", "reply_2.md", "reply_3.md"]
        status, _, body = get(served.base, "/api/compare?a=c0005&b=c0005")
        assert status == 200 and len(body) < 6 * 2**20


def test_a_client_that_resets_its_connection_prints_nothing(tmp_path):
    research = make_research(tmp_path)
    with serving(research.repo) as served:
        port = int(served.base.rsplit(":", 1)[1])
        for _ in range(5):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset, before the answer is sent
        assert api(served.base, "/api/status") is not None  # still serving
    assert "Traceback" not in served.rest and "serve:" not in served.rest, served.rest[-2000:]


def test_another_loopback_address_answers_at_the_url_it_prints(tmp_path):
    research = make_research(tmp_path)
    with serving(research.repo, "--host", "127.0.0.2") as served:
        assert served.url.startswith("http://127.0.0.2:")
        status, _, body = get(served.url.rstrip("/"), "/api/status")
    assert status == 200, body


def _few_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_clients_that_never_finish_a_request_cannot_lock_out_one_that_does(tmp_path):
    research = make_research(tmp_path)
    token = "the-token-of-the-test-0123456789"
    auth = {"Authorization": f"Bearer {token}"}
    with serving(research.repo, "--host", "0.0.0.0", "--token", token,
                 preexec_fn=_few_files) as served:  # fmt: skip
        port = int(served.base.rsplit(":", 1)[1])
        held = []
        try:
            for _ in range(300):  # more than the server may have files open
                client = socket.create_connection(("127.0.0.1", port), timeout=5)
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished, no token
                held.append(client)
            started = time.monotonic()
            status, _, _ = get(served.base, "/api/status", auth)
            took = time.monotonic() - started
            closed = _closed(held)
        finally:
            for client in held:
                client.close()
    assert status == 200 and took < 10, (status, took)
    assert closed >= len(held) - MAX_CONNECTIONS  # the longest waiting were let go
    assert "Traceback" not in served.rest, served.rest[-2000:]


def _closed(clients: list[socket.socket]) -> int:
    """How many of `clients` the server has closed (readable at once, and at their end)."""
    readable, _, _ = select.select(clients, [], [], 2)
    closed = 0
    for client in readable:
        try:
            closed += client.recv(1) == b""
        except OSError:
            closed += 1
    return closed


@pytest.mark.slow  # waits REQUEST_SECONDS
def test_a_request_never_finished_is_dropped(tmp_path):
    research = make_research(tmp_path)
    with serving(research.repo) as served:
        port = int(served.base.rsplit(":", 1)[1])
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        client.settimeout(REQUEST_SECONDS + 30)
        try:
            assert client.recv(1) == b""  # closed by the server, no answer
        finally:
            client.close()
    assert REQUEST_SECONDS - 1 < time.monotonic() - started < REQUEST_SECONDS + 15


def test_clients_without_the_token_cannot_keep_connections_busy_with_unread_answers(tmp_path):
    research = make_research(tmp_path)
    token = "the-token-of-the-test-0123456789"
    auth = {"Authorization": f"Bearer {token}"}
    pipelined = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3000  # each answer would be a 401
    with serving(research.repo, "--host", "0.0.0.0", "--token", token) as served:
        port = int(served.base.rsplit(":", 1)[1])
        held = []
        try:
            for _ in range(MAX_CONNECTIONS):
                client = socket.socket()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # reads little
                client.connect(("127.0.0.1", port))
                client.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    client.send(pipelined)
                held.append(client)
            time.sleep(1)
            statuses = [get(served.base, "/api/status", auth)[0] for _ in range(3)]
        finally:
            for client in held:
                client.close()
    assert statuses == [200, 200, 200]


def test_a_non_ascii_secret_cut_inside_a_character_is_masked(tmp_path):
    research = make_research(tmp_path)
    secret = "Pässwörter-0123456789-geheim"
    # The log's window at its end starts at the second byte of "ä".
    line = secret.encode() + b" " + b"y" * (LOG_TAIL_BYTES - len(secret.encode())) + b"\n"
    (research.state / "runs" / "c0005" / "run.log").write_bytes(b"head\n" + line)
    with serving(research.repo, env={"MY_SERVICE_PASSWORD": secret}) as served:
        lines = api(served.base, "/api/experiment?id=c0005")["log"]["lines"]
    assert lines[0].startswith("[redacted] yyy"), lines[0][:40]


def test_open_starts_the_users_browser_at_the_url_or_says_it_could_not(tmp_path):
    research = make_research(tmp_path)
    browser, opened = tmp_path / "browser", tmp_path / "opened"
    browser.write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    browser.chmod(0o755)
    with serving(research.repo, "--open", env={"BROWSER": str(browser)}) as served:
        deadline = time.monotonic() + 20
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened.read_text().strip() == served.url
    with serving(research.repo, "--open", env={"BROWSER": "false"}) as served:
        assert "no browser could be opened here" in served.process.stderr.readline()
