"""A deterministic OpenAI-compatible HTTP server for tests, so litellm is exercised over real HTTP.

Why not mock_response: litellm's mocks fix usage at 10/20 tokens and skip the HTTP, retry and timeout code
that breaks in production. This server answers ``POST /v1/chat/completions`` (plain and SSE streaming) and
``GET /v1/models`` on 127.0.0.1 with real ``usage``:

* prompt_tokens = len(all message text) // 4 + 1, completion_tokens = number of words of the answer;
* answer = ``answer[{model}]: {last user message}`` (``WRONG`` gives ``wrong[{model}]: 42``).

Faults come from magic words in the last user message, in the model name, or set per model with
``behaviours={"model": "FAIL500"}``: ``SLOW:<seconds>``, ``FAIL429``, ``FAIL500``, ``FAIL401`` (echoes the
bearer token in the error, as careless providers do, to test scrubbing), ``FAIL400`` (context length
exceeded), ``DROP`` (close without answering), ``WRONG``, ``JUDGE:<text>`` (a judge's reply ``{"score": <text>}``),
``NOUSAGE`` (no ``usage`` in the reply, nor a usage chunk when streaming), ``EMPTYCHOICES`` (``"choices": []``),
``NULLCONTENT`` (the message's content is null), ``HUGEUSAGE`` (a usage of 10**18 prompt tokens, as a broken
backend reports). ``error_message=`` replaces FAIL500's error text (a hostile
provider's, for the log tests).
Every request is recorded (with its headers, authorization included) so tests can count calls.
``responder=callable(body) -> str | None`` replaces the answer text (faults still apply first; None keeps
the default answer): a canned or computed reply, e.g. taxonomy JSON for the LLM learner.
``hold(model)`` keeps that model's answers back until the event it returns is set (or the server stops): a test
decides when a call ends instead of betting on a SLOW window against a loaded host's stalls.

Use: ``with FakeOpenAI() as srv: ... srv.api_base ...`` or, from a shell,
``python tests/fake_openai.py --port 18080 [--behaviour MODEL=DIRECTIVE ...]``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SLOW = re.compile(r"SLOW:(\d+(?:\.\d+)?)")
_JUDGE = re.compile(r"JUDGE:(\S+)")


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased (HTTP names are case-insensitive): headers["authorization"]
    body: dict[str, Any] = field(default_factory=dict)
    peer: tuple[str, int] | None = None  # the client's address: one per connection (keep-alive reuses it)

    @property
    def model(self) -> str | None:
        return self.body.get("model")


def _text_of(content: Any) -> str:
    """Message content may be a string or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out and hang up are expected here; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY: Nagle + delayed ACK would add ~40 ms per call
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._record(RecordedRequest("GET", self.path, _headers(self)))
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in owner.known_models()]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        owner = self.server.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        owner._record(RecordedRequest("POST", self.path, _headers(self), body, tuple(self.client_address)))
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        self._chat(body)

    def _chat(self, body: dict[str, Any]) -> None:
        owner = self.server.owner
        model = str(body.get("model", ""))
        messages = body.get("messages") or []
        last = _last_user(messages)
        directives = f"{owner.behaviours.get(model, '')} {model} {last}"
        slow = _SLOW.search(directives)
        if (slow and owner._stopping.wait(float(slow.group(1)))) or not owner._wait_if_held(model):
            self.close_connection = True  # shutting down: abandon the request, and the client sees it at once
            return
        if "DROP" in directives:
            self.close_connection = True
            return  # no status line at all: the client sees the connection closed
        if "FAIL429" in directives:
            self._send_json(429, _error("Rate limit reached, retry later", "rate_limit_exceeded"))
            return
        if "FAIL500" in directives:
            message = owner.error_message or "The server had an error processing your request"
            self._send_json(500, _error(message, "server_error"))
            return
        if "FAIL400" in directives:
            msg = "This model's maximum context length is 8 tokens; your messages resulted in 9 tokens."
            self._send_json(400, _error(msg, "context_length_exceeded"))
            return
        if "FAIL401" in directives:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            self._send_json(401, _error(f"Incorrect API key provided: {token}", "invalid_api_key"))
            return
        answer = f"wrong[{model}]: 42" if "WRONG" in directives else f"answer[{model}]: {last}"
        if judge := _JUDGE.search(directives):
            answer = f'{{"score": {judge.group(1)}}}'  # verbatim: JUDGE:oops gives a malformed reply
        if owner.responder is not None and (custom := owner.responder(body)) is not None:
            answer = custom
        prompt_tokens = len("".join(_text_of(m.get("content")) for m in messages)) // 4 + 1
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(answer.split()),
            "total_tokens": prompt_tokens + len(answer.split()),
        }
        if "HUGEUSAGE" in directives:
            usage = {**usage, "prompt_tokens": 10**18, "total_tokens": 10**18 + usage["completion_tokens"]}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(model, answer, usage if include_usage and "NOUSAGE" not in directives else None)
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            if "NULLCONTENT" in directives:
                choice["message"]["content"] = None
            reply: dict[str, Any] = {
                "id": f"chatcmpl-fake-{owner.request_count()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [] if "EMPTYCHOICES" in directives else [choice],
                "usage": usage,
            }
            if "NOUSAGE" in directives:
                del reply["usage"]
            self._send_json(200, reply)

    def _stream(self, model: str, answer: str, usage: dict[str, int] | None) -> None:
        """SSE, one word per chunk; the body ends when the connection closes (no length, no chunking)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        base = {"id": "chatcmpl-fake-stream", "object": "chat.completion.chunk", "created": int(time.time())}
        words = answer.split(" ")

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {**base, "model": model, "choices": [choice]}

        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": w if i == 0 else " " + w}, None) for i, w in enumerate(words)]
        events.append(chunk({}, "stop"))
        if usage is not None:
            events.append({**base, "model": model, "choices": [], "usage": usage})
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _headers(handler: BaseHTTPRequestHandler) -> dict[str, str]:
    return {name.lower(): value for name, value in handler.headers.items()}


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake_error", "param": None, "code": code}}


class FakeOpenAI:
    """The server object: start()/stop() or a context manager; records every request it received."""

    def __init__(
        self,
        port: int = 0,
        behaviours: dict[str, str] | None = None,
        responder: Callable[[dict[str, Any]], str | None] | None = None,
        error_message: str | None = None,
    ) -> None:
        self.behaviours: dict[str, str] = dict(behaviours or {})
        self.responder = responder
        self.error_message = error_message
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._held: dict[str, threading.Event] = {}
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeOpenAI is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What litellm's ``api_base`` wants."""
        return f"{self.url}/v1"

    def hold(self, model: str) -> threading.Event:
        """`model`'s answers wait until the returned event is set, or the server stops."""
        release = self._held[model] = threading.Event()
        return release

    def _wait_if_held(self, model: str) -> bool:
        """False when the server stopped while the answer was held back."""
        release = self._held.get(model)
        while release is not None and not release.wait(0.05):
            if self._stopping.is_set():
                return False
        return True

    def start(self) -> FakeOpenAI:
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", self._port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes SLOW requests so they do not outlive the server
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def chat_requests(self, model: str | None = None) -> list[RecordedRequest]:
        """Chat completion requests received so far, optionally only for one model name (as sent)."""
        with self._lock:
            reqs = [r for r in self.requests if r.method == "POST" and "chat/completions" in r.path]
        return [r for r in reqs if model is None or r.model == model]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def known_models(self) -> list[str]:
        with self._lock:
            seen = {r.model for r in self.requests if r.model}
        return sorted(seen | set(self.behaviours) | {"fake-model"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--behaviour", action="append", default=[], metavar="MODEL=DIRECTIVE")
    args = parser.parse_args(argv)
    behaviours = dict(b.split("=", 1) for b in args.behaviour)
    done = threading.Event()
    # before "ready": a caller may terminate us as soon as it reads that line, and must see a clean exit
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server = FakeOpenAI(args.port, behaviours).start()
    print(f"ready {server.api_base}", flush=True)
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
