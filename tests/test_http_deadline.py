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
async def _serving(app=_echo, **protocol: object) -> AsyncIterator[int]:  # type: ignore[no-untyped-def]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    quick = type("QuickDeadline", (HeadersDeadline,), {"timeout_s": QUICK_S, **protocol})
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
    try:
        while chunk := conn.recv(4096):
            received += chunk
    except ConnectionResetError:  # closed with bytes of ours unread: a reset, closed all the same
        pass
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


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_past_max_waiting_the_connection_waiting_longest_is_closed(anyio_backend: str) -> None:
    """Security review: connections opened faster than their deadline expires ran the process out of file
    descriptors. With three allowed to wait, a fourth half-sent head closes the first; the others are served."""
    async with _serving(timeout_s=60.0, max_waiting=3) as port:
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        try:
            for conn in conns:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                await asyncio.sleep(0.05)  # accepted in this order
            assert await asyncio.to_thread(_read_until_closed, conns[0]) == b""  # long before its 60 s deadline
            for conn in conns[1:]:  # still open: their heads end and they are answered
                conn.sendall(b"1\r\nConnection: close\r\n\r\n")
                answer = await asyncio.to_thread(_read_until_closed, conn)
                assert answer.startswith(b"HTTP/1.1 200")
        finally:
            for conn in conns:
                conn.close()
    assert not HeadersDeadline._waiting  # every connection gone, none left counted


def test_the_open_files_limit_is_raised_towards_the_hard_one() -> None:
    """Each connection is a file; a soft limit of 1,024 (the usual default) is what a flood exhausts first."""
    import resource
    import subprocess
    import sys

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise")

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = "from skillorchestra.server.http_deadline import raise_open_files_limit as r; print(*r())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=low, check=True)
    now_soft, now_hard = map(int, done.stdout.split())
    expected = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    assert (now_soft, now_hard) == (expected, hard)


def test_a_flood_of_one_log_message_is_let_through_once_a_minute() -> None:
    """asyncio logs a traceback for every failed accept while out of file descriptors: 37 MB in 20 s."""
    import logging

    from skillorchestra.server.http_deadline import EveryMinuteAtMost

    now = [0.0]
    gate = EveryMinuteAtMost(clock=lambda: now[0])

    def passes(message: str) -> bool:
        return gate.filter(logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None))

    flood = "socket.accept() out of system resource\nsocket: <socket.socket fd=9>"
    assert passes(flood) and not passes(flood) and passes("Task was destroyed but it is pending!")
    now[0] = 59.0
    assert not passes(flood)
    now[0] = 60.5
    assert passes(flood) and not passes(flood)
