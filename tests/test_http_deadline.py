"""The HTTP transports close a connection whose request headers do not arrive in time (QA: half-sent requests
held connections forever and a few hundred of them made the server stop answering); a request whose headers
arrived is served however slowly its body comes, and a kept-alive connection gets the same time for each head."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn

from skillorchestra.server.http_deadline import HeadersDeadline

QUICK_S = 0.3


async def _echo(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """A plain ASGI app: answers 200 with the request body's length once the whole body is in."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(str(size)))]})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def _refuse(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answers 401 without reading the body, as the bearer-token check does."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"no"})


@asynccontextmanager
async def _serving(app=_echo) -> AsyncIterator[int]:  # type: ignore[no-untyped-def]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    quick = type("QuickDeadline", (HeadersDeadline,), {"timeout_s": QUICK_S})
    server = uvicorn.Server(uvicorn.Config(app, http=quick, log_config=None, lifespan="off", timeout_keep_alive=30))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        await task


def _read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" alone: closed without an answer)."""
    conn.settimeout(10)
    received = b""
    while chunk := conn.recv(4096):
        received += chunk
    return received


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_request_head_that_never_completes_is_closed(anyio_backend: str) -> None:
    async with _serving() as port:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            assert await asyncio.to_thread(_read_until_closed, conn) == b""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_slow_body_after_a_whole_head_is_served_and_the_next_head_gets_its_own_deadline(
    anyio_backend: str,
) -> None:
    async with _serving() as port:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\nab")
            await asyncio.sleep(QUICK_S * 3)  # the head is in: the body may take its time
            conn.sendall(b"cd")
            conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # kept alive; this head never ends
            answer = await asyncio.to_thread(_read_until_closed, conn)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n4")  # one answer, then closed


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("then", [b"a", b"abcd" + b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
async def test_a_body_sent_after_an_early_answer_does_not_hold_the_connection(anyio_backend: str, then: bytes) -> None:
    """A refused token is answered before the body is read; a client trickling that body, or finishing it and then
    half-sending another request, held the connection forever (review)."""
    async with _serving(_refuse) as port:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\n")
            await asyncio.sleep(QUICK_S / 3)  # answered by now
            conn.sendall(then)
            answer = await asyncio.to_thread(_read_until_closed, conn)
    assert answer.startswith(b"HTTP/1.1 401") and answer.endswith(b"\r\n\r\nno")  # then closed
