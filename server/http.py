"""The HTTP transports: streamable HTTP at `/mcp` or legacy SSE at `/sse`, a `/healthz` probe, a static bearer token.

Why this module builds its own Starlette app instead of calling `MCPServer.run("streamable-http")`:
- `/healthz` must answer without a token while everything else needs one, so the token check wraps the whole
  app (the SDK's `custom_route`s are never authenticated, and its auth is OAuth resource-server auth, which a
  static shared secret is not: we answer 401 with a plain `WWW-Authenticate: Bearer`, no metadata URL, and
  OAuth's JSON error body, which hosts' clients know how to show).
- The SDK app is mounted, so the outer app's lifespan must enter `session_manager.run()` (streamable HTTP);
  it also enters the MCP server's lifespan once for all sessions. SSE enters that lifespan per connection.
- After SIGTERM uvicorn gives calls in flight GRACEFUL_SHUTDOWN_S, then cancels their request tasks without waiting
  for them, runs the lifespan's shutdown (the handbook closes) and ends the process (it re-raises the signal): a
  cancelled call had not recorded itself by then, and its decision stayed claimed until it expired. The lifespan
  now waits for the requests it serves to finish (`RequestsInFlight`) before anything closes.
- Host headers: the SDK's DNS-rebinding allowlist (loopback, any port) plus `--allowed-host` names; any other
  Host gets 421 from the SDK. A non-loopback bind without a token is refused before any socket opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.server.log_format import announce
from skillorchestra.server.settings import ServerSettings

log = logging.getLogger("skillorchestra.http")

HEALTH_PATH = "/healthz"
MCP_PATH = "/mcp"
SSE_PATH = "/sse"
SSE_MESSAGE_PATH = "/messages/"
GRACEFUL_SHUTDOWN_S = 5  # after SIGTERM, the most time calls in flight get before they are cancelled
CANCELLED_CLEANUP_S = 5.0  # then the most the cancelled calls get to record themselves before the handbook closes
# with and without a port: a client of a server on port 80 sends none (QA: `Host: 127.0.0.1` got 421)
LOOPBACK_ALLOWED_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
LOOPBACK_ALLOWED_ORIGINS = tuple(f"http://{host}" for host in LOOPBACK_ALLOWED_HOSTS)
WILDCARD_BINDS = ("0.0.0.0", "::", "")
MIN_TOKEN_CHARS = 16  # a non-loopback bind's token: long enough that guessing it over the network is hopeless


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def check_bind(settings: ServerSettings) -> None:
    """Refuse to expose an unauthenticated server beyond this machine (raised before the socket opens), or one
    guarded by a token short enough to guess: anyone who can reach the port may try tokens."""
    if is_loopback(settings.host):
        return
    if not settings.token:
        raise InvalidInput(
            "--host",
            settings.host,
            "a loopback address (127.0.0.1, localhost, ::1) unless SKILLORCHESTRA_TOKEN is set",
        )
    if len(settings.token) < MIN_TOKEN_CHARS:
        raise InvalidInput(  # the length only: the token itself never reaches a terminal or a log
            "SKILLORCHESTRA_TOKEN",
            f"{len(settings.token)} characters",
            f"at least {MIN_TOKEN_CHARS} characters to bind the non-loopback address {settings.host} (a random"
            " one: python -c 'import secrets; print(secrets.token_urlsafe(32))'), or a loopback --host",
        )


def _host_patterns(host: str) -> list[str]:
    """`name` accepts `name` and `name:<any port>`; `name:port` accepts exactly that (IPv6 goes in brackets)."""
    if host.count(":") > 1 and not host.startswith("["):
        host = f"[{host}]"
    if host.endswith("]") or ":" not in host:
        return [host, f"{host}:*"]
    return [host]


def transport_security(settings: ServerSettings) -> TransportSecuritySettings:
    """The SDK's loopback allowlist plus the configured host names (and a specific bind address)."""
    extra = list(settings.allowed_hosts)
    if settings.host not in WILDCARD_BINDS:  # 127.0.0.2 too: loopback, yet not in the SDK's list (QA: 421 always)
        extra.append(settings.host)
    hosts = list(LOOPBACK_ALLOWED_HOSTS)
    origins = list(LOOPBACK_ALLOWED_ORIGINS)
    for name in extra:
        for pattern in _host_patterns(name.strip().lower()):  # LowercaseHost lowers what clients send
            if pattern not in hosts:
                hosts.append(pattern)
                origins.extend([f"http://{pattern}", f"https://{pattern}"])
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class BearerTokenMiddleware:
    """Every HTTP request but the health probe (GET or HEAD /healthz) must carry `Authorization: Bearer <token>`
    (constant-time check). QA: a POST to /healthz had skipped the check by its path alone."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or _is_health_probe(scope):
            await self.app(scope, receive, send)
            return
        scheme, _, presented = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.token):
            await self.app(scope, receive, send)
            return
        await _unauthorized(presented=bool(scheme))(scope, receive, send)


UNAUTHORIZED_TEXT = "send Authorization: Bearer <SKILLORCHESTRA_TOKEN>, the token the server was started with"


def _unauthorized(presented: bool) -> Response:
    """RFC 6750's answer: an error code only when a token was presented, and the body as OAuth's JSON error, which
    is what a host's MCP client (the TypeScript SDK) shows: hosts that try OAuth discovery on a 401 had shown
    "Invalid OAuth error response: SyntaxError ..." around a plain-text body (interop QA)."""
    challenge = 'Bearer realm="skillorchestra"' + (', error="invalid_token"' if presented else "")
    return JSONResponse(  # the body's code is for OAuth-minded clients' parsers, which need one (the header has none)
        {"error": "invalid_token", "error_description": UNAUTHORIZED_TEXT},
        status_code=401,
        # closed after: a refused client's unread body must not hold the connection (server/http_deadline.py)
        headers={"WWW-Authenticate": challenge, "Connection": "close"},
    )


HEALTH_METHODS = ("GET", "HEAD")


def _is_health_probe(scope: Scope) -> bool:
    return scope["path"] == HEALTH_PATH and scope["method"] in HEALTH_METHODS


async def healthz(request: Request) -> Response:
    """`ok` to a probe; any other method on the path is 405 (it fell through to the MCP app's 404)."""
    if request.method not in HEALTH_METHODS:
        return PlainTextResponse(
            "405 Method Not Allowed\n", status_code=405, headers={"Allow": ", ".join(HEALTH_METHODS)}
        )
    return PlainTextResponse("ok")


def build_http_app(server: MCPServer, settings: ServerSettings) -> ASGIApp:
    """The ASGI app for `settings.transport` ("http" or "sse"); tests run it in-process too.

    In-process (no uvicorn) the lifespan does not run: for "http" enter `server.session_manager.run()` yourself.
    """
    security = transport_security(settings)
    if settings.transport == "http":
        _one_line_for_disconnects()
        requests = RequestsInFlight(
            RefusedQuietly(
                server.streamable_http_app(
                    streamable_http_path=MCP_PATH, transport_security=security, host=settings.host
                )
            )
        )
        session_manager = server.session_manager

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with session_manager.run():  # Mount does not forward lifespan events to the SDK app
                yield
                # a 2026-07-28 request runs its tool in its own request task, which uvicorn cancels without waiting
                await requests.finished(CANCELLED_CLEANUP_S)

        app = Starlette(routes=_routes(requests), lifespan=lifespan)
    elif settings.transport == "sse":  # the SSE transport enters the server's lifespan per connection
        requests = RequestsInFlight(
            RefusedQuietly(
                server.sse_app(
                    sse_path=SSE_PATH, message_path=SSE_MESSAGE_PATH, transport_security=security, host=settings.host
                )
            )
        )

        server_lifespan = server.settings.lifespan
        assert server_lifespan is not None, "create_server always gives the server its lifespan"

        @asynccontextmanager
        async def hold(_app: Starlette) -> AsyncIterator[None]:
            """Keep the one server state open between connections (learning jobs outlive their connection): the
            server's lifespan is reference-counted (server/app.py), so this holder keeps it from closing."""
            async with server_lifespan(server):
                yield
                await requests.finished(CANCELLED_CLEANUP_S)  # a connection's calls run in its request task

        app = Starlette(routes=_routes(requests), lifespan=hold)
    else:
        raise InvalidInput("--transport", settings.transport, "http or sse for an HTTP server")
    return LowercaseHost(BearerTokenMiddleware(app, settings.token))


class RequestsInFlight:
    """Counts the HTTP requests being served, so the lifespan's shutdown can wait for them.

    On SIGTERM uvicorn cancels the request tasks still running after GRACEFUL_SHUTDOWN_S and starts the lifespan's
    shutdown at once, without waiting for them: the handbook closed and the process ended before a cancelled
    delegate had recorded itself as cancelled (shielded, on a worker thread; QA: the decision stayed claimed, and
    record_outcome refused it, until it expired). Over stdio the same call is recorded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.running = 0
        self._idle: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.running -= 1
            if not self.running and self._idle is not None:
                self._idle.set()

    async def finished(self, timeout_s: float) -> None:
        """Until no request is being served, or `timeout_s` passed (a cleanup stuck on a busy file must not keep
        the process: it is logged)."""
        if self.running:
            log.info("waiting for %d stopped request(s) to record themselves", self.running)
        with anyio.move_on_after(timeout_s) as waited:
            while self.running:
                self._idle = anyio.Event()
                await self._idle.wait()
        if waited.cancelled_caught:
            log.warning("%d request(s) still running %.0f s after they were stopped", self.running, timeout_s)


class RefusedQuietly:
    """The SDK's SSE endpoint answers a request from a foreign Host or Origin (421, 403) and then raises ValueError,
    which uvicorn logged as an ERROR with a traceback per request (QA; streamable HTTP logs one warning). The answer
    has gone out by then: one warning line says it all.

    A client gone before its POST arrived whole is one warning line too (streamable HTTP: the SDK raises it out of a
    2026-07-28 request, in an exception group; soak QA: 128 tracebacks for 1,500 dropped connections).

    A response the SDK leaves unfinished when it returns (a stream the server's shutdown ended: uvicorn logged
    "ASGI callable returned without completing response" for each) is finished with an empty last body.

    When an SSE stream ends while its client is still connected (the server stops), the SDK then sends an empty
    Response as well: a second response on a request already answered, which uvicorn refused with an ERROR and a
    traceback (QA). It is dropped; so is the 500 the SDK sends after a streamable HTTP notification's 202 when the
    session closed meanwhile (soak QA: a legacy client cancelling calls, then closing)."""

    REFUSED = "Request validation failed"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = dropping = complete = False

        async def send_tracked(message: Message) -> None:
            nonlocal answered, dropping, complete
            if message["type"] == "http.response.start":
                dropping = answered
                answered = True
            if dropping and message["type"].startswith("http.response."):
                log.debug("dropped a second response to %s (its SSE stream had answered)", scope.get("path"))
                if not complete:  # the stream was cut mid-response: end it, as uvicorn expects
                    complete = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            complete = complete or (message["type"] == "http.response.body" and not message.get("more_body"))
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
            if answered and not complete:  # a stream the server's shutdown ended (soak QA: an ERROR line each)
                complete = True
                with contextlib.suppress(OSError, RuntimeError):  # the client may be gone
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ValueError as exc:
            if not answered or str(exc) != self.REFUSED:
                raise
            log.warning("refused a request to %s (its Host or Origin is not allowed)", scope.get("path"))
        except ClientDisconnect:  # a message POST cut off (review: as on streamable HTTP, one line, no traceback)
            log.warning("a client disconnected before its request arrived whole")
        except BaseExceptionGroup as group:
            if group.split(ClientDisconnect)[1] is not None:  # anything else in it is not the client's doing
                raise
            log.warning("a client disconnected before its request arrived whole")


class ExpectedInOneLine(logging.Filter):
    """A record whose exception is one of EXPECTED (an exception type and what to say of it) becomes one warning
    line: the event is expected, and its traceback (ERROR, tens of lines each) said nothing more."""

    EXPECTED: tuple[tuple[type[BaseException], str], ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        for kind, message in self.EXPECTED:
            if isinstance(exc, kind):
                record.msg, record.args = message, ()
                record.exc_info = record.exc_text = None
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                break
        return True


class DisconnectInOneLine(ExpectedInOneLine):
    """The SDK logs a client that disconnected before its POST body arrived whole as an ERROR with a traceback,
    one per dropped request (QA: 40 drops, 40 tracebacks): it is the client's doing. So is a notification POST
    racing its session's close (soak QA)."""

    EXPECTED = (
        (ClientDisconnect, "a client disconnected before its request arrived whole"),
        (anyio.ClosedResourceError, "a request arrived as its session closed (the client had ended it)"),
    )


class CancelledInOneLine(ExpectedInOneLine):
    """A request still running after GRACEFUL_SHUTDOWN_S is cancelled by uvicorn, which logs its end as an ERROR with
    a traceback of some 70 lines (it used to end with the process, unlogged): the stop was ours."""

    EXPECTED = ((asyncio.CancelledError, "a request stopped by the server's shutdown has ended"),)


def _one_line_for_disconnects() -> None:
    sdk_log = logging.getLogger("mcp.server.streamable_http")
    if not any(isinstance(f, DisconnectInOneLine) for f in sdk_log.filters):
        sdk_log.addFilter(DisconnectInOneLine())


class LowercaseHost:
    """Host and Origin name hosts case-insensitively (RFC 9110), the SDK's allowlist compares exactly: lower them
    so `--allowed-host mcp.example.com` accepts `Host: MCP.Example.com` from a proxy that keeps the case."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            lowered = [
                (name, value.lower() if name in (b"host", b"origin") else value) for name, value in scope["headers"]
            ]
            scope = {**scope, "headers": lowered}
        await self.app(scope, receive, send)


class HealthProbe:
    """/healthz as an ASGI app, which a Route hands every method (a function endpoint gets only those listed, and
    the rest fell through to the MCP app's 404: review)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (await healthz(Request(scope, receive)))(scope, receive, send)


def _routes(inner: ASGIApp) -> list[Route | Mount]:
    return [Route(HEALTH_PATH, HealthProbe()), Mount("/", app=inner)]


async def serve_http(server: MCPServer, settings: ServerSettings, sockets: list[socket.socket]) -> None:
    """Serve over HTTP with uvicorn on `sockets` (from bind_sockets); logs go to stderr through the root logger
    (the CLI configures it)."""
    import uvicorn  # only HTTP deployments pay for it

    from skillorchestra.server.http_deadline import EveryMinuteAtMost, HeadersDeadline, raise_open_files_limit

    raise_open_files_limit()
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, EveryMinuteAtMost) for f in asyncio_log.filters):  # once a process
        asyncio_log.addFilter(EveryMinuteAtMost())
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, CancelledInOneLine) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(CancelledInOneLine())
    app = build_http_app(server, settings)
    config = uvicorn.Config(
        app,
        http=HeadersDeadline,
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn's default config sends access logs to stdout
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",
        lifespan="on",
        # SIGTERM (docker stop: SIGKILL after 10 s) waited for every call in flight, a tool's up to its timeout, and
        # the call was then recorded as the agent's timeout: after the grace, the calls are cancelled and recorded so
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    path = MCP_PATH if settings.transport == "http" else SSE_PATH
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    auth = " (bearer token required)" if settings.token else ""
    port = sockets[0].getsockname()[1] if sockets else settings.port  # --port 0: the port the system chose
    url = f"http://{shown}:{port}{path}"
    announce(f"skillorchestra: serving {settings.transport} at {url}{auth}")
    await uvicorn.Server(config).serve(sockets=sockets)


def bind_sockets(settings: ServerSettings) -> list[socket.socket]:
    """The listening sockets, one per address the host resolves to (as asyncio binds a host name), bound before
    the server says it serves: a port in use is the user's error, named by its flag."""
    try:
        found = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
    except OSError as exc:
        raise InvalidInput("--host", settings.host, f"an address this machine can bind ({exc.strerror})") from None
    sockets: list[socket.socket] = []
    for family, kind, proto, address in dict.fromkeys((f, k, p, a) for f, k, p, _, a in found):
        sock = socket.socket(family, kind, proto)
        sockets.append(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # an IPv6 socket must not also claim the IPv4 port bound beside it
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if settings.port == 0 and len(sockets) > 1:  # one port for every address, the one the system chose
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
        except OSError as exc:
            for opened in sockets:
                opened.close()
            raise InvalidInput("--port", settings.port, f"a port free on {settings.host} ({exc.strerror})") from None
        sock.set_inheritable(True)
    return sockets
