"""The HTTP transports end to end: the real `skillorchestra serve` console script on a loopback port, driven by
the official SDK client over streamable HTTP and SSE, with and without the bearer token.

Each spawn costs ~2 s (mostly `import mcp`), so servers are module-scoped and few; the host-allowlist and
token-middleware details are also checked in-process through `build_http_app`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from skillorchestra.server.app import create_server
from skillorchestra.server.http import UNAUTHORIZED_TEXT, build_http_app, check_bind, transport_security
from skillorchestra.server.settings import ServerSettings

TOKEN = "s3cret-token-for-tests"
EXPECTED_TOOLS = {"route_step", "record_outcome", "consult_handbook"}
STEP = "Write a Python function that parses ISO dates and add unit tests"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _script(name: str) -> str:
    """The console script installed next to this interpreter (the venv's bin/)."""
    return str(Path(sys.executable).parent / name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLORCHESTRA_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["SKILLORCHESTRA_MATCHER"] = "lexical"  # these tests are about transports; MiniLM would only slow them
    if token:
        env["SKILLORCHESTRA_TOKEN"] = token
    return env


@dataclass
class Running:
    base: str
    db: Path
    stderr: Path

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    @property
    def sse_url(self) -> str:
        return f"{self.base}/sse"


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, stderr: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {stderr.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise AssertionError(f"server not healthy after {timeout_s}s: {stderr.read_text()}")


def _serve(tmp: Path, transport: str, token: str | None) -> Iterator[Running]:
    db, stderr = tmp / "handbook.db", tmp / "stderr.txt"
    for attempt in range(3):  # a port found free can be taken by another test's server before ours binds it
        port = _free_port()
        args = [_script("skillorchestra"), "serve", "--transport", transport, "--port", str(port), "--db", str(db)]
        with stderr.open("wb") as err:
            proc = subprocess.Popen(args, env=_env(token), stdout=subprocess.DEVNULL, stderr=err)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, base, stderr)
            break
        except AssertionError:
            proc.kill()
            proc.wait(timeout=10)
            if attempt == 2 or "Address already in use" not in stderr.read_text():
                raise
    try:
        yield Running(base=base, db=db, stderr=stderr)
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _serve(tmp_path_factory.mktemp("http"), "http", None)


@pytest.fixture(scope="module")
def http_token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _serve(tmp_path_factory.mktemp("http_token"), "http", TOKEN)


@pytest.fixture(scope="module")
def sse_token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _serve(tmp_path_factory.mktemp("sse_token"), "sse", TOKEN)


def _http(token: str | None = None, **kwargs: object) -> httpx2.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0), **kwargs)  # type: ignore[arg-type]


async def _route_and_record(client: Client, reward: float = 1.0) -> str:
    routed = await client.call_tool("route_step", {"text": STEP})
    assert not routed.is_error, routed.content
    decision = routed.structured_content
    assert decision["agent_id"] and decision["decision_id"]
    recorded = await client.call_tool("record_outcome", {"decision_id": decision["decision_id"], "reward": reward})
    assert not recorded.is_error, recorded.content
    assert recorded.structured_content["agent_id"] == decision["agent_id"]
    assert recorded.structured_content["duplicate"] is False
    assert recorded.structured_content["updated"]
    return decision["decision_id"]


def _outcome_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])


def _evidence(db: Path) -> float:
    """Observations in the competence table: each outcome adds its skill weights (summing to 1) to alpha+beta."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return float(conn.execute("SELECT COALESCE(SUM(alpha + beta - 2), 0) FROM competence").fetchone()[0])


# -- streamable HTTP, no token ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_streamable_http_tools_route_and_record(http_server: Running, mode: str) -> None:
    before = _outcome_rows(http_server.db)
    async with Client(http_server.mcp_url, mode=mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert EXPECTED_TOOLS <= names
        decision_id = await _route_and_record(client)
    assert _outcome_rows(http_server.db) == before + 1
    with contextlib.closing(sqlite3.connect(http_server.db)) as conn:
        assert conn.execute("SELECT 1 FROM outcomes WHERE decision_id = ?", [decision_id]).fetchone()


@pytest.mark.anyio
async def test_health_and_unknown_host(http_server: Running) -> None:
    async with _http() as http:
        health = await http.get(f"{http_server.base}/healthz")
        assert (health.status_code, health.text) == (200, "ok")
        rebinding = await http.post(
            http_server.mcp_url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "evil.example:80"}
        )
        assert rebinding.status_code == 421
        allowed = await http.post(http_server.mcp_url, json=INITIALIZE, headers=MCP_HEADERS)
        assert allowed.status_code == 200


@pytest.mark.anyio
async def test_concurrent_clients_lose_no_update(http_server: Running) -> None:
    clients, calls_each = 8, 10
    outcomes_before, evidence_before = _outcome_rows(http_server.db), _evidence(http_server.db)
    recorded: list[str] = []

    async def worker(index: int) -> None:
        async with Client(http_server.mcp_url, mode="legacy" if index % 2 else "auto") as client:
            for call in range(calls_each):
                recorded.append(await _route_and_record(client, reward=(index + call) % 2))

    async with anyio.create_task_group() as tg:
        for index in range(clients):
            tg.start_soon(worker, index)

    total = clients * calls_each
    assert len(set(recorded)) == total
    assert _outcome_rows(http_server.db) - outcomes_before == total
    assert _evidence(http_server.db) - evidence_before == pytest.approx(total, abs=1e-6)
    async with Client(http_server.mcp_url) as client:
        stats = await client.read_resource("handbook://stats")
    assert json.loads(stats.contents[0].text)["counts"]["outcomes"] == _outcome_rows(http_server.db)


# -- streamable HTTP with SKILLORCHESTRA_TOKEN -------------------------------------------------------------


@pytest.mark.anyio
async def test_token_required_over_streamable_http(http_token_server: Running) -> None:
    url = http_token_server.mcp_url
    async with _http() as anonymous:
        missing = await anonymous.post(url, json=INITIALIZE, headers=MCP_HEADERS)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="skillorchestra"'  # RFC 6750: no token, no code
        assert missing.json() == {"error": "invalid_token", "error_description": UNAUTHORIZED_TEXT}  # as OAuth's
        assert "resource_metadata" not in missing.headers["www-authenticate"]  # a static token, not OAuth
        assert missing.headers["connection"] == "close"  # its unread body cannot hold the connection (review)
        health = await anonymous.get(f"{http_token_server.base}/healthz")
        assert (health.status_code, health.text) == (200, "ok")
        assert (await anonymous.head(f"{http_token_server.base}/healthz")).status_code == 200
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE"):  # QA: only the probe is exempt, not its path
            assert (await anonymous.request(method, f"{http_token_server.base}/healthz")).status_code == 401
    async with _http(TOKEN) as http:
        for method in ("POST", "PROPFIND"):  # review: a method outside a listed set had fallen through to 404
            answered = await http.request(method, f"{http_token_server.base}/healthz")
            assert (answered.status_code, answered.headers.get("allow")) == (405, "GET, HEAD")
    async with _http("wrong-" + TOKEN) as wrong:
        refused = await wrong.post(url, json=INITIALIZE, headers=MCP_HEADERS)
        assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert "SKILLORCHESTRA_TOKEN" in refused.json()["error_description"]
        assert (await wrong.get(f"{http_token_server.base}/sse")).status_code == 401
    for mode in ("auto", "legacy"):
        async with _http(TOKEN) as http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            assert EXPECTED_TOOLS <= {tool.name for tool in (await client.list_tools()).tools}
            await _route_and_record(client)
    assert _outcome_rows(http_token_server.db) == 2


@pytest.mark.anyio
async def test_sdk_client_without_token_cannot_connect(http_token_server: Running) -> None:
    # the SDK turns the 401 into an MCPError ("Server returned an error response") inside its task groups
    with pytest.RaisesGroup(MCPError, flatten_subgroups=True):
        async with _http() as http, Client(streamable_http_client(http_token_server.mcp_url, http_client=http)):
            pass


# -- SSE with SKILLORCHESTRA_TOKEN -------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sse_with_token(sse_token_server: Running, mode: str) -> None:
    before = _outcome_rows(sse_token_server.db)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with Client(sse_client(sse_token_server.sse_url, headers=headers), mode=mode) as client:
        assert EXPECTED_TOOLS <= {tool.name for tool in (await client.list_tools()).tools}
        await _route_and_record(client, reward=0.0)
    assert _outcome_rows(sse_token_server.db) == before + 1


@pytest.mark.anyio
async def test_sse_refuses_missing_token(sse_token_server: Running) -> None:
    async with _http() as http:
        assert (await http.get(sse_token_server.sse_url)).status_code == 401
        posted = await http.post(f"{sse_token_server.base}/messages/?session_id=0", json=INITIALIZE)
        assert posted.status_code == 401
        assert (await http.get(f"{sse_token_server.base}/healthz")).status_code == 200


# -- refusing an unauthenticated public bind ---------------------------------------------------------------


def test_public_bind_without_token_exits_2(tmp_path: Path) -> None:
    args = [_script("skillorchestra"), "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(args + ["--db", str(tmp_path / "h.db")], env=_env(None), capture_output=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--host" in lines[0], lines
    assert done.stdout == b""


def test_a_port_in_use_exits_2_naming_the_port_and_never_says_serving(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [_script("skillorchestra"), "serve", "--transport", "http", "--port", str(port)]
        done = subprocess.run(args + ["--db", str(tmp_path / "h.db")], env=_env(None), capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 2 and f"--port={port}" in err and "a port free on 127.0.0.1" in err, err
    assert "serving" not in err and "Traceback" not in err
    assert not (tmp_path / "h.db").exists()  # refused before the database is created


# -- in-process checks of the app builder (no port) ------------------------------------------------------


def test_port_0_announces_the_port_the_system_chose(tmp_path: Path) -> None:
    args = [_script("skillorchestra"), "serve", "--transport", "http", "--port", "0", "--db", str(tmp_path / "h.db")]
    proc = subprocess.Popen(args, env=_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first line it writes says where it serves
        assert line.startswith("skillorchestra: serving http at http://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        assert port != 0
        _wait_healthy(proc, f"http://127.0.0.1:{port}", tmp_path / "unused")
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_port_0_binds_every_address_of_the_host_to_one_port() -> None:
    """A host name with an IPv4 and an IPv6 address got two random ports, and only one was announced."""
    from types import SimpleNamespace

    from skillorchestra.server.http import bind_sockets

    sockets = bind_sockets(SimpleNamespace(host=None, port=0))  # type: ignore[arg-type]  # None: every family
    try:
        if len(sockets) < 2:
            pytest.skip("this machine binds one address family only")
        assert len({sock.getsockname()[1] for sock in sockets}) == 1
    finally:
        for sock in sockets:
            sock.close()


def test_a_token_from_a_secret_file_loses_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKILLORCHESTRA_TOKEN", TOKEN + "\n")
    assert ServerSettings.from_env().token == TOKEN  # a client sending TOKEN was refused with a 401
    # whitespace alone is refused (tests/test_untrusted_text.py): it served loopback without any token


def test_check_bind() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(ServerSettings(host=host, transport="http"))
    check_bind(ServerSettings(host="0.0.0.0", transport="http", token=TOKEN))
    with pytest.raises(Exception, match="--host"):
        check_bind(ServerSettings(host="0.0.0.0", transport="http"))
    with pytest.raises(Exception, match="--host"):
        check_bind(ServerSettings(host="example.com", transport="sse"))


def test_allowed_hosts_extend_the_loopback_allowlist() -> None:
    security = transport_security(
        ServerSettings(host="10.1.2.3", token=TOKEN, allowed_hosts=["mcp.internal", "gw.example:8443", "fe80::1"])
    )
    assert {"127.0.0.1:*", "localhost:*", "[::1]:*"} <= set(security.allowed_hosts)
    assert {"mcp.internal", "mcp.internal:*", "gw.example:8443", "10.1.2.3:*", "[fe80::1]:*"} <= set(
        security.allowed_hosts
    )
    assert "gw.example:*" not in security.allowed_hosts
    # a loopback address other than the SDK's three answers its own URL (QA: every request to 127.0.0.2 got 421)
    assert "127.0.0.2:*" in transport_security(ServerSettings(host="127.0.0.2")).allowed_hosts


@pytest.mark.anyio
async def test_in_process_app_allowed_host_and_token(tmp_path: Path) -> None:
    settings = ServerSettings(
        db_path=tmp_path / "h.db",
        transport="http",
        token=TOKEN,
        allowed_hosts=["mcp.internal"],
        seed_example=True,
        matcher="lexical",
    )
    server = create_server(settings)
    app = build_http_app(server, settings)
    transport = httpx2.ASGITransport(app=app)
    async with server.session_manager.run():
        async with _http(TOKEN, transport=transport) as http:
            for host, status in (
                ("mcp.internal:8765", 200),
                ("MCP.Internal:8765", 200),  # host names are case-insensitive; some proxies keep the client's case
                ("127.0.0.1:8765", 200),
                ("127.0.0.1", 200),  # QA: no port (a server on port 80) got 421
                ("localhost", 200),
                ("other.example:8765", 421),
                ("other.example", 421),
            ):
                response = await http.post("http://x/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Host": host})
                assert response.status_code == status, (host, response.text)
        async with _http("nope", transport=transport) as http:
            response = await http.post("http://127.0.0.1:8765/mcp", json=INITIALIZE, headers=MCP_HEADERS)
            assert response.status_code == 401
            assert (await http.get("http://127.0.0.1:8765/healthz")).text == "ok"
        async with (
            _http(TOKEN, transport=transport, base_url="http://127.0.0.1:8765") as http,
            Client(streamable_http_client("http://127.0.0.1:8765/mcp", http_client=http)) as client,
        ):
            await _route_and_record(client)


@pytest.mark.anyio
async def test_sse_connections_share_one_server_state(tmp_path: Path) -> None:
    """SSE enters the server's lifespan per connection: a learning job started on one connection must be visible
    from the next (a client that reconnects), and the server must not build a new state per connection."""
    from test_learn_tools import record_swap_traffic

    record_swap_traffic(tmp_path / "handbook.db")
    running = _serve(tmp_path, "sse", None)
    server = next(running)
    try:
        async with Client(sse_client(server.sse_url)) as first:
            started = await first.call_tool("learn_handbook", {"lambda_": 0.0, "seed": 0})
            assert not started.is_error, started.content
            job_id = started.structured_content["job_id"]  # type: ignore[index]
        async with Client(sse_client(server.sse_url)) as second:
            with anyio.fail_after(60):
                while True:
                    status = await second.call_tool("learn_status", {"job_id": job_id})
                    assert not status.is_error, status.content  # before: "unknown job_id" on a new connection
                    if status.structured_content["state"] != "running":  # type: ignore[index]
                        break
                    await anyio.sleep(0.1)
        assert status.structured_content["state"] == "done", status.content  # type: ignore[index]
    finally:
        running.close()


@pytest.mark.anyio
async def test_a_refused_sse_host_is_one_warning_not_an_error_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: each SSE request with a foreign Host got its 421 and left an ERROR traceback in the server's log (the
    SDK raises after answering); now one warning line, as streamable HTTP logs."""
    settings = ServerSettings(db_path=tmp_path / "h.db", transport="sse", seed_example=True, matcher="lexical")
    app = build_http_app(create_server(settings), settings)
    transport = httpx2.ASGITransport(app=app)
    with caplog.at_level(logging.WARNING):
        async with httpx2.AsyncClient(transport=transport) as http:
            response = await http.get("http://x/sse", headers={"Host": "evil.example:8765"})
    assert response.status_code == 421
    assert [r.levelname for r in caplog.records if "refused a request to /sse" in r.getMessage()] == ["WARNING"]


@pytest.mark.anyio
async def test_a_second_response_after_an_sse_stream_is_dropped_and_the_stream_ended() -> None:
    """QA: an SSE stream cut by the server's shutdown, then the SDK's closing empty Response, made uvicorn log an
    ERROR traceback ("Expected ASGI message 'http.response.body'"): the second response is dropped, and the cut
    stream ended as uvicorn expects."""
    from skillorchestra.server.http import RefusedQuietly

    async def sdk_sse(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"event: endpoint\n\n", "more_body": True})
        await send({"type": "http.response.start", "status": 200, "headers": []})  # the stream was cut here
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await RefusedQuietly(sdk_sse)({"type": "http", "path": "/sse"}, None, send)  # type: ignore[arg-type]
    assert [(m["type"], m.get("more_body")) for m in sent] == [
        ("http.response.start", None),
        ("http.response.body", True),
        ("http.response.body", False),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("era", [{}, {"MCP-Protocol-Version": "2026-07-28"}], ids=["legacy", "modern"])
async def test_a_client_gone_before_its_body_arrived_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, era: dict[str, str]
) -> None:
    """QA: every streamable HTTP client that dropped a POST halfway left an ERROR and a ClientDisconnect traceback
    (soak QA: a 2026-07-28 request's too, raised to uvicorn: 128 tracebacks, 8,194 log lines for 1,500 drops)."""
    settings = ServerSettings(db_path=tmp_path / "h.db", transport="http", seed_example=True, matcher="lexical")
    server = create_server(settings)
    app = build_http_app(server, settings)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (k.lower().encode(), v.encode()) for k, v in {**MCP_HEADERS, **era, "Host": "127.0.0.1:8765"}.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    parts = [{"type": "http.request", "body": b'{"jsonrpc": "2.0", ', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        pass

    with caplog.at_level(logging.WARNING):
        async with server.session_manager.run():
            await app(scope, receive, send)
    said = [
        (r.levelname, r.getMessage(), r.exc_info)
        for r in caplog.records
        if r.name.startswith(("mcp.", "skillorchestra.http"))
    ]
    assert said == [("WARNING", "a client disconnected before its request arrived whole", None)], said


@pytest.mark.anyio
async def test_a_response_left_unfinished_is_finished(caplog: pytest.LogCaptureFixture) -> None:
    """Soak QA: SIGTERM under load logged 8-14 "ASGI callable returned without completing response" ERROR lines: the
    SDK's streams, ended by the shutdown, return mid-response; the wrapper ends the response instead."""
    from skillorchestra.server.http import RefusedQuietly

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"event: message\n\n", "more_body": True})

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await RefusedQuietly(streaming)({"type": "http", "path": "/mcp"}, None, send)  # type: ignore[arg-type]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False} and len(sent) == 3


def test_a_request_racing_its_sessions_close_is_one_warning() -> None:
    """Soak QA: a legacy client that cancelled calls and then closed left, per race, the SDK's ERROR with a
    ClosedResourceError traceback (and a second response, now dropped by RefusedQuietly)."""
    from skillorchestra.server.http import DisconnectInOneLine

    try:
        raise anyio.ClosedResourceError
    except anyio.ClosedResourceError:
        record = logging.LogRecord("mcp.server.streamable_http", logging.ERROR, "x", 1, "Error handling POST", (), None)
        record.exc_info = sys.exc_info()
    assert DisconnectInOneLine().filter(record)
    assert (record.levelname, record.getMessage(), record.exc_info) == (
        "WARNING",
        "a request arrived as its session closed (the client had ended it)",
        None,
    )


@pytest.mark.anyio
async def test_an_sse_message_post_cut_off_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Review: the SSE transport's message POST, dropped halfway, still left a ClientDisconnect traceback."""
    from starlette.requests import ClientDisconnect

    from skillorchestra.server.http import RefusedQuietly

    async def sdk_messages(scope: Any, receive: Any, send: Any) -> None:
        raise ClientDisconnect()  # what the SDK's handler raises reading a body whose client left

    with caplog.at_level(logging.WARNING):
        await RefusedQuietly(sdk_messages)({"type": "http", "path": "/messages/"}, None, None)  # type: ignore[arg-type]
    said = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert said == [("WARNING", "a client disconnected before its request arrived whole", None)]


@pytest.mark.anyio
async def test_a_token_protected_server_is_a_tool_agent_with_bearer_token_env(
    http_token_server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: a tool agent could not send a token, so a protected MCP server (another skillorchestra among them) could
    not be one, and its 401 read as a server_error."""
    from skillorchestra.server.agent_config import McpAgentConnection
    from skillorchestra.server.mcp_backend import call_mcp_tool

    agent = McpAgentConnection(
        id="other-router",
        kind="mcp",
        url=http_token_server.mcp_url,
        tool="consult_handbook",
        bearer_token_env="SKILLORCHESTRA_TEST_BEARER",
    )
    monkeypatch.setenv("SKILLORCHESTRA_TEST_BEARER", TOKEN + "\n")  # read from a file: a newline ends it (review)
    answered = await call_mcp_tool(agent, STEP, timeout_s=30)
    assert answered.ok and '"skills"' in answered.answer and TOKEN not in answered.answer
    monkeypatch.setenv("SKILLORCHESTRA_TEST_BEARER", "wrong-" + TOKEN)
    refused = await call_mcp_tool(agent, STEP, timeout_s=30)
    assert refused.error_class == "auth", refused
    assert "the server answered HTTP 401: it refused the token in SKILLORCHESTRA_TEST_BEARER" in (refused.message or "")
    assert "wrong-" + TOKEN not in (refused.message or "")
    monkeypatch.setenv("SKILLORCHESTRA_TEST_BEARER", "two parts")
    spaced = await call_mcp_tool(agent, STEP, timeout_s=30)
    assert spaced.error_class == "auth" and "holds spaces or control characters" in (spaced.message or "")
    assert "two parts" not in (spaced.message or "")
    monkeypatch.delenv("SKILLORCHESTRA_TEST_BEARER")
    unset = await call_mcp_tool(agent, STEP, timeout_s=30)
    assert (unset.error_class, unset.error_type) == ("auth", "MissingToken")
    assert "SKILLORCHESTRA_TEST_BEARER is not set" in (unset.message or "")


@pytest.mark.anyio
async def test_sigterm_gives_calls_in_flight_a_grace_then_cancels_them(tmp_path: Path) -> None:
    """Review: on SIGTERM uvicorn waited for every call in flight, a tool's up to its timeout (docker stop kills
    after 10 s), and the call was then recorded as the agent's timeout, which it was not. After the grace the call
    is cancelled, recorded as cancelled as over stdio (tests/test_http_shutdown.py: it had stayed claimed until it
    expired), and the server exits."""
    db, stderr = tmp_path / "h.db", tmp_path / "stderr.txt"
    toml = tmp_path / "agents.toml"
    echo = Path(__file__).with_name("echo_mcp_server.py")
    toml.write_text(
        f'[agents.sleepy]\nkind = "mcp"\ncommand = "{sys.executable}"\nargs = ["{echo}"]\ntool = "slow"\n'
        "arguments = { seconds = 120 }\ntimeout_s = 60\n"
    )
    subprocess.run([_script("skillorchestra"), "agents", "load", str(toml), "--db", str(db)], check=True, timeout=60)
    port = _free_port()
    args = [_script("skillorchestra"), "serve", "--transport", "http", "--port", str(port), "--db", str(db)]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(args, env=_env(None), stdout=subprocess.DEVNULL, stderr=err)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base, stderr)

        async def delegate() -> None:
            try:
                async with Client(f"{base}/mcp") as client:
                    await client.call_tool("delegate", {"text": "wait", "agent_id": "sleepy", "timeout_s": 100})
            except Exception:  # the server goes away mid-call: that is the point
                pass

        async with anyio.create_task_group() as group:
            group.start_soon(delegate)
            with anyio.fail_after(60):  # until delegate has claimed its decision: the call is under way
                while True:
                    with contextlib.closing(sqlite3.connect(db)) as conn:
                        if conn.execute("SELECT COUNT(*) FROM decisions WHERE claimed_at IS NOT NULL").fetchone()[0]:
                            break
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # the tool agent's process started and the call reached it
            proc.terminate()
            await anyio.to_thread.run_sync(lambda: proc.wait(timeout=50))  # uvicorn re-raises SIGTERM once stopped
            group.cancel_scope.cancel()
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in stderr.read_text()
    with contextlib.closing(sqlite3.connect(db)) as conn:  # not waited out and blamed on the agent: cancelled
        assert conn.execute("SELECT call_error_class FROM decisions").fetchall() == [("cancelled",)]
