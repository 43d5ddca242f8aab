"""A loopback LLM server whose replies a test scripts.

Tests that exercise an LLM client end to end (through litellm and the OpenAI
SDK, over real HTTP) start an `OpenAIStub`, queue the replies it should give
(`reply`, `error`, `slow`), point the client at `stub.base_url`, and then
inspect `stub.requests` to see exactly what reached the server. Nothing
leaves 127.0.0.1.

    with OpenAIStub() as stub:
        stub.reply("DESCRIPTION: ...")
        ... litellm.completion(model="openai/stub", api_base=stub.base_url, ...)
        assert len(stub.requests) == 1

Coding agents hold a conversation of several requests (read a file, edit it,
say they are done) and send side requests of their own, so for them a test
sets `stub.responder`: a function from each request to the next `Say` or
`Call` of the scripted agent. The stub answers it in the protocol of the path
asked: OpenAI chat completions (`/chat/completions`, streamed when the client
asks), the OpenAI Responses API (`/responses`, streamed, as Codex speaks it)
and Anthropic Messages (`/messages`, as Claude Code speaks it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
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

    @property
    def protocol(self) -> str:
        """`chat`, `responses` or `messages`: which API the client called."""
        return self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1].replace("completions", "chat")

    @property
    def text(self) -> str:
        """Everything the request carries (messages, tool results, instructions) as text,
        for a responder that looks for what the agent has seen so far."""
        return json.dumps(self.body, ensure_ascii=False)


@dataclass(frozen=True)
class Say:
    """A scripted agent's text answer, which ends its turn."""

    text: str
    prompt_tokens: int = 100
    completion_tokens: int = 50


@dataclass(frozen=True)
class Call:
    """A scripted agent's tool call: `name` with `arguments`."""

    name: str
    arguments: dict[str, Any]
    prompt_tokens: int = 100
    completion_tokens: int = 50


Turn = Say | Call


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
        # Set by agent tests: answers every request in place of the queue.
        self.responder: Callable[[Received], Turn] | None = None
        self.failures: list[str] = []  # what the responder raised
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
            if self.responder is not None:
                try:
                    return Scripted(200, render(self.responder(received), received))
                except Exception as e:  # a broken script: say so, rather than drop the line
                    self.failures.append(f"{type(e).__name__}: {e}")
                    return Scripted(500, error_body(500, f"stub: the responder failed: {e!r}"))
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
                if received.protocol == "count_tokens":  # Anthropic's, before long prompts
                    self._send(Scripted(200, {"input_tokens": len(raw) // 4}))
                    return
                if received.protocol not in PROTOCOLS:
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

            def do_GET(self) -> None:  # noqa: N802 - a WebSocket upgrade (Codex): use HTTP
                self._send(Scripted(404, error_body(404, "stub: no WebSocket here")))

            def do_HEAD(self) -> None:  # noqa: N802 - a connectivity check (Claude Code)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, item: Scripted) -> None:
                events = item.body.get(SSE_KEY)
                if events is not None:
                    payload = "".join(
                        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" if "type" in e
                        else f"data: {json.dumps(e)}\n\n"
                        for e in events
                    ).encode() + (b"data: [DONE]\n\n" if item.body.get("done") else b"")
                    kind = "text/event-stream"
                else:
                    payload, kind = json.dumps(item.body).encode(), "application/json"
                try:
                    self.send_response(item.status)
                    self.send_header("Content-Type", kind)
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


# -- the protocols of coding agents ----------------------------------------------------------

PROTOCOLS = ("chat", "responses", "messages")
SSE_KEY = "_sse"  # a rendered body holding server-sent events instead of one JSON object


def render(turn: Turn, received: Received) -> dict[str, Any]:
    """`turn` as the body the client of `received` expects (server-sent events when it
    streams)."""
    model = received.body.get("model", "stub")
    if received.protocol == "responses":
        return {SSE_KEY: _responses_events(turn)}
    if received.protocol == "messages":
        return _messages_body(turn, model, bool(received.body.get("stream")))
    if isinstance(turn, Call):
        raise ValueError("the chat-completions agents driven here (aider) edit in text")
    body = chat_body(turn.text, turn.prompt_tokens, turn.completion_tokens, model)
    if not received.body.get("stream"):
        return body
    delta = {k: v for k, v in body.items() if k not in ("choices", "usage")}
    delta["object"] = "chat.completion.chunk"
    chunks = [
        {**delta, "choices": [{"index": 0, "delta": {"role": "assistant", "content": turn.text},
                               "finish_reason": None}]},
        {**delta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]  # fmt: skip
    if (received.body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**delta, "choices": [], "usage": body["usage"]})
    return {SSE_KEY: chunks, "done": True}


def _responses_events(turn: Turn) -> list[dict[str, Any]]:
    if isinstance(turn, Call):
        item = {"type": "function_call", "id": "fc_stub", "call_id": f"call_{time.time_ns()}",
                "name": turn.name, "arguments": json.dumps(turn.arguments)}  # fmt: skip
    else:
        content = [{"type": "output_text", "text": turn.text, "annotations": []}]
        item = {"type": "message", "role": "assistant", "id": "msg_stub", "content": content}
    usage = {
        "input_tokens": turn.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": turn.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": turn.prompt_tokens + turn.completion_tokens,
    }  # fmt: skip
    return [
        {"type": "response.created", "response": {"id": "resp_stub"}},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {"id": "resp_stub", "usage": usage}},
    ]


def _messages_body(turn: Turn, model: str, stream: bool) -> dict[str, Any]:
    if isinstance(turn, Call):
        block = {"type": "tool_use", "id": f"toolu_{time.time_ns()}", "name": turn.name,
                 "input": turn.arguments}  # fmt: skip
        stop = "tool_use"
    else:
        block, stop = {"type": "text", "text": turn.text}, "end_turn"
    usage = {"input_tokens": turn.prompt_tokens, "output_tokens": turn.completion_tokens}
    message = {"id": "msg_stub", "type": "message", "role": "assistant", "model": model,
               "content": [block], "stop_reason": stop, "stop_sequence": None,
               "usage": usage}  # fmt: skip
    if not stream:
        return message
    if block["type"] == "text":
        start, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": turn.text}
    else:
        start = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(turn.arguments)}
    return {SSE_KEY: [
        {"type": "message_start",
         "message": {**message, "content": [], "stop_reason": None,
                     "usage": {**usage, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": start},
        {"type": "content_block_delta", "index": 0, "delta": delta},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
         "usage": {"output_tokens": turn.completion_tokens}},
        {"type": "message_stop"},
    ]}  # fmt: skip
