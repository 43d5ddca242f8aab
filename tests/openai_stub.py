"""A loopback OpenAI-compatible chat server whose replies a test scripts.

Tests that exercise an LLM client end to end (through litellm and the OpenAI
SDK, over real HTTP) start an `OpenAIStub`, queue the replies it should give
(`reply`, `error`, `slow`), point the client at `stub.base_url`, and then
inspect `stub.requests` to see exactly what reached the server. Nothing
leaves 127.0.0.1.

    with OpenAIStub() as stub:
        stub.reply("DESCRIPTION: ...")
        ... litellm.completion(model="openai/stub", api_base=stub.base_url, ...)
        assert len(stub.requests) == 1
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# litellm fetches its price list from the internet at import unless told not
# to; every test module that imports this stub gets the offline behaviour.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

HOST = "127.0.0.1"
UNSCRIPTED_STATUS = 500  # what the stub answers when a test forgot to queue a reply
POLL_SECONDS = 0.02  # how often serve_forever checks for shutdown: keeps teardown instant


@dataclass(frozen=True)
class Scripted:
    """One queued answer: an HTTP status, a JSON body, and a delay before sending it."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    """One request as the stub saw it."""

    path: str
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any]
    at: float  # time.monotonic() on arrival

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def last_user_message(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        return str(users[-1]["content"]) if users else ""


def chat_body(
    content: str, prompt_tokens: int = 100, completion_tokens: int = 50, model: str = "stub",
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A minimal but complete `chat.completion` response body."""
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_body(status: int, message: str) -> dict[str, Any]:
    """The error shape the OpenAI API uses, so clients map it to the right exception."""
    return {"error": {"message": message, "type": "stub_error", "param": None, "code": str(status)}}


class OpenAIStub:
    """`/v1/chat/completions` on a free loopback port, answering from a queue."""

    def __init__(self) -> None:
        self._queue: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # wakes handlers sleeping in a scripted delay
        self.requests: list[Received] = []
        self._server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, daemon=True
        )

    # -- scripting -------------------------------------------------------------------------

    def reply(self, content: str, prompt_tokens: int = 100, completion_tokens: int = 50,
              delay: float = 0.0, finish_reason: str = "stop") -> None:
        """Queue a successful chat reply whose assistant message is `content`."""
        body = chat_body(content, prompt_tokens, completion_tokens, finish_reason=finish_reason)
        self.script(Scripted(200, body, delay))

    def error(self, status: int, message: str = "scripted failure",
              headers: dict[str, str] | None = None) -> None:
        """Queue an HTTP error (e.g. 503, 429, 401)."""
        self.script(Scripted(status, error_body(status, message), headers=headers or {}))

    def slow(self, delay: float, content: str = "too late") -> None:
        """Queue a reply that only starts after `delay` seconds (a client timeout test)."""
        self.reply(content, delay=delay)

    def script(self, item: Scripted) -> None:
        with self._lock:
            self._queue.append(item)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def pending(self) -> int:
        """Scripted replies not yet consumed."""
        with self._lock:
            return len(self._queue)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAIStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving ---------------------------------------------------------------------------

    def _next(self, received: Received) -> Scripted:
        with self._lock:
            self.requests.append(received)
            if self._queue:
                return self._queue.popleft()
        return Scripted(UNSCRIPTED_STATUS, error_body(UNSCRIPTED_STATUS, "stub: no scripted reply"))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def do_POST(self) -> None:  # noqa: N802 - the http.server naming convention
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                # Header names are case-insensitive (newer clients send them in lower case):
                # keep them in lower case, and look them up that way.
                headers = {k.lower(): v for k, v in self.headers.items()}
                received = Received(self.path, headers, body, time.monotonic())
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(Scripted(404, error_body(404, f"stub: no route {self.path}")))
                    return
                item = stub._next(received)
                if item.status == 200 and "model" in item.body and "model" in body:
                    # Real servers name the model they ran; price lookups depend on it.
                    item = Scripted(item.status, {**item.body, "model": body["model"]},
                                    item.delay, item.headers)
                if item.delay and stub._stopping.wait(item.delay):
                    return  # the stub is shutting down; drop the connection
                self._send(item)

            def _send(self, item: Scripted) -> None:
                payload = json.dumps(item.body).encode()
                try:
                    self.send_response(item.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in item.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

        return Handler
