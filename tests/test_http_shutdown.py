"""SIGTERM to an HTTP server while a delegate call is in flight: the call is cancelled and recorded as cancelled,
as over stdio (tests/test_stdio.py), and the process exits.

QA: over streamable HTTP (2026-07-28 requests) uvicorn cancelled the call after its grace, then closed the handbook
and ended the process without waiting for the cancelled call to record itself: the decision stayed claimed until it
expired, and record_outcome refused it meanwhile ("being carried out by delegate").

The real `skillorchestra serve` runs as a subprocess; its agent is the fake OpenAI server, whose answer is held back
until the process has exited (no sleep bets on timing). The grace (server/http.GRACEFUL_SHUTDOWN_S, 5 s) is spent
by the streamable HTTP case; legacy-era clients and SSE see their streams closed at once by the SDK's SSE library.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from fake_openai import FakeOpenAI
from mcp import Client
from mcp.client.sse import sse_client
from mcp_calls import call, cheap_agent, db_rows, loaded, until_called

from skillorchestra.server.app import create_server
from skillorchestra.server.http import GRACEFUL_SHUTDOWN_S

SKILLORCHESTRA = str(Path(sys.executable).with_name("skillorchestra"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLORCHESTRA_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["SKILLORCHESTRA_MATCHER"] = "lexical"  # about the transport: MiniLM would only slow it
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(proc: subprocess.Popen[bytes], base: str, timeout_s: float = 60.0) -> bool:
    """True once /healthz answers; False if the server exited first (its port was taken meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    return False


def _serve(db: Path, transport: str, stderr: Path) -> tuple[subprocess.Popen[bytes], str]:
    for _ in range(3):  # a port found free can be taken by another test's server before ours binds it
        port = _free_port()
        args = [SKILLORCHESTRA, "serve", "--transport", transport, "--port", str(port), "--db", str(db)]
        with stderr.open("wb") as err:
            proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        base = f"http://127.0.0.1:{port}"
        if _healthy(proc, base):
            return proc, base
        proc.kill()
        proc.wait(timeout=10)
        if "Address already in use" not in stderr.read_text():
            break
    raise AssertionError(f"the server did not start: {stderr.read_text()}")


@pytest.mark.anyio
@pytest.mark.parametrize(("transport", "mode"), [("http", "auto"), ("http", "legacy"), ("sse", "legacy")])
async def test_sigterm_records_a_delegate_call_in_flight_as_cancelled(
    tmp_path: Path, fake_openai: FakeOpenAI, transport: str, mode: str
) -> None:
    release = fake_openai.hold("cheap-model")  # the agent answers only after the server has gone
    settings = loaded(tmp_path, cheap_agent(fake_openai.api_base))
    stderr = tmp_path / "stderr.txt"
    proc, base = _serve(settings.db_path, transport, stderr)
    try:

        async def delegate() -> None:
            target = f"{base}/mcp" if transport == "http" else sse_client(f"{base}/sse")
            try:
                async with Client(target, mode=mode) as client:
                    await client.call_tool("delegate", {"text": "hello", "agent_id": "cheap", "timeout_s": 100})
            except Exception:  # the server goes away mid-call: that is the point
                pass

        async with anyio.create_task_group() as group:
            group.start_soon(delegate)
            await until_called(fake_openai, "cheap-model")  # the agent is at work on the call
            proc.send_signal(signal.SIGTERM)
            status = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=GRACEFUL_SHUTDOWN_S + 60))
            group.cancel_scope.cancel()
    finally:
        release.set()
        proc.kill()
        proc.wait(timeout=10)
    log = stderr.read_text()
    assert status == -signal.SIGTERM, log  # uvicorn re-raises the signal once stopped
    if mode == "auto":  # the call outlived the grace: it was cancelled by uvicorn, not by a stream's end
        assert "timeout graceful shutdown exceeded" in log
        assert "Exception in ASGI application" not in log  # its end is one line, not a traceback
    rows = db_rows(settings.db_path, "SELECT id, call_error_class FROM decisions")
    assert [error for _, error in rows] == ["cancelled"], log  # as over stdio: called, cut off, no outcome
    assert db_rows(settings.db_path, "SELECT COUNT(*) FROM outcomes") == [(0,)]
    async with Client(create_server(settings)) as client:  # no longer claimed: the client may report it
        reported = await call(client, "record_outcome", {"decision_id": rows[0][0], "reward": 0.0})
    assert reported["decision_id"] == rows[0][0]
