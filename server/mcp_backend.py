"""Call one tool of another MCP server as an agent (search, code execution... beside the LLMs of the pool).

Why per-call connections: an SDK ``Client`` must be entered and left in the same task, and a delegation is
one task, so each call connects, calls and disconnects. Over stdio that spawns the server each time (~1-2 s
here); point busy tool agents at a streamable HTTP ``url`` instead. The child process gets only the SDK's
allow-listed environment plus the variables named in ``env_vars``.

Secrets: a tool server may echo the key we passed it (in a result, an error, its own log). The values of
``env_vars`` and the environment's secrets (server/masking.py) are masked in the answer, the error message, our log
line, and the child's stderr, which is relayed line by line through a pipe instead of inherited.

Errors: spawn or transport failure -> ``connection``; the deadline (connecting included) or the SDK's request
timeout -> ``timeout``; a tool result with ``is_error`` -> ``task`` with the tool's message, unless the server does
not list the tool at all (``server_error``: a misconfigured agent, not a failed task); a JSON-RPC error
from the server (unknown method, bad parameters) -> ``server_error``. Cost: the agent's ``cost_per_call_usd``
when configured, else 0.0 with ``cost_source="no_token_cost"`` (a tool call spends no tokens).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from skillorchestra.handbook.inert_text import one_line
from skillorchestra.server.agent_config import McpAgentConnection
from skillorchestra.server.llm_backend import (
    BackendResult,
    CostSource,
    ErrorClass,
    failed_call,
    holding_slot,
    queue_full,
    slot_within,
    timeout_message,
)
from skillorchestra.server.masking import passed_secrets, remember_keys, scrub, secrets_to_mask

log = logging.getLogger(__name__)

_MESSAGE_LIMIT = 600
_REQUEST_TIMEOUT = -32001  # mcp_types.REQUEST_TIMEOUT
_CONNECTION_CLOSED = -32000  # mcp_types.CONNECTION_CLOSED
TAIL_WAIT_S = 0.5  # how long a failed call waits for a dead child's last stderr lines to be read
TAIL_CHARS = 300


def _child_env(conn: McpAgentConnection) -> dict[str, str]:
    return {name: os.environ[name] for name in conn.env_vars if name in os.environ}


def _http_client(token: str | None, refused: list[int]) -> httpx2.AsyncClient:
    """The HTTP client of a url agent: the bearer token, if any, on every request, the SDK's own client's timeouts
    (30 s, reads 300 s: a response stream stays open), and a note of each 401/403, whose status the SDK drops."""

    async def note(response: httpx2.Response) -> None:
        if response.status_code in (401, 403):
            refused.append(response.status_code)

    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"} if token else None,
        timeout=httpx2.Timeout(30.0, read=300.0),
        event_hooks={"response": [note]},
    )


def _target(conn: McpAgentConnection, relay: StderrRelay | None, http: httpx2.AsyncClient | None = None) -> Any:
    """What the SDK client connects to: a URL (streamable HTTP, through our `http` client: _http_client) or a
    stdio transport writing to `relay`."""
    if conn.url is not None:
        return conn.url if http is None else streamable_http_client(conn.url, http_client=http)
    if relay is None:
        raise ValueError(f"agent {conn.id}: a stdio tool server needs a stderr relay")
    params = StdioServerParameters(command=conn.command or "", args=list(conn.args), env=_child_env(conn), cwd=conn.cwd)
    return stdio_client(params, errlog=relay.writer)


class StderrRelay:
    """A pipe for a stdio child's stderr, copied line by line to ours with the secrets masked (a tool server
    logging its own failure would otherwise print the key we gave it), each line marked as the agent's: a child
    may echo a step's text, whose newline would otherwise start a line that reads as one of our records.
    It keeps the last line, so a server that dies says why to the model too (README QA: "Connection closed" alone,
    with "can't open file ..." only on our stderr). ``close()`` once the child is gone: the copying thread then
    ends at the pipe's end."""

    def __init__(self, agent_id: str, secrets: tuple[str, ...]) -> None:
        read_fd, write_fd = os.pipe()
        self.writer = os.fdopen(write_fd, "w", encoding="utf-8")
        reader = os.fdopen(read_fd, encoding="utf-8", errors="replace")
        self.last_line: str | None = None  # the child's last non-blank stderr line, masked
        prefix = f"[mcp agent {one_line(agent_id)} stderr] "
        self._thread = threading.Thread(
            target=self._copy, args=(reader, prefix, secrets), name="mcp-agent-stderr", daemon=True
        )
        self._thread.start()

    def _copy(self, reader: Any, prefix: str, secrets: tuple[str, ...]) -> None:
        with reader:
            for line in reader:
                shown = one_line(scrub(line.rstrip("\n"), secrets))
                if shown.strip():
                    self.last_line = shown
                try:
                    sys.stderr.write(prefix + shown + "\n")
                    sys.stderr.flush()
                except (OSError, ValueError):  # our stderr is closed: drain the pipe so the child never blocks
                    pass

    def close(self) -> None:
        self.writer.close()

    def last_words(self, wait_s: float = TAIL_WAIT_S) -> str | None:
        """The child's last stderr line (masked), once the pipe has ended or `wait_s` has passed: for a child
        that has exited, what it said before it did (a blocking wait: run it off the event loop)."""
        self.close()
        self._thread.join(wait_s)
        return None if self.last_line is None else self.last_line[:TAIL_CHARS]


def _leaves(exc: BaseException) -> list[BaseException]:
    """Task groups wrap failures in ExceptionGroups; the leaves say what happened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def classify_mcp_exception(exc: BaseException) -> ErrorClass:
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, TimeoutError) or (isinstance(leaf, MCPError) and leaf.code == _REQUEST_TIMEOUT):
            return "timeout"
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            return "connection" if leaf.code == _CONNECTION_CLOSED else "server_error"
    return "connection"  # spawn failures (OSError), refused/broken transports, closed streams


async def _lacks_tool(client: Client, name: str) -> bool:
    """Whether the server does not list the tool (asked only after an error result: many servers answer a call to
    an unknown tool with an ordinary tool error). If the listing itself fails, the error stays the task's."""
    cursor = None
    try:
        while True:
            listed = await client.list_tools(cursor=cursor)
            if any(tool.name == name for tool in listed.tools):
                return False
            cursor = listed.next_cursor
            if not cursor:
                return True
    except Exception:  # a server that cannot list its tools says nothing about this call
        log.debug("listing the tools of the server behind %s failed", name, exc_info=True)
        return False


def _text_of(result: CallToolResult) -> str:
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return ""


def _describe(exc: BaseException) -> str:
    leaf = _leaves(exc)[0]
    return f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__


def _configured_cost(conn: McpAgentConnection) -> tuple[float, CostSource]:
    if conn.cost_per_call_usd:  # a price of 0 is what `agents load` gives an unpriced tool: no token cost
        return conn.cost_per_call_usd, "agent_prices"
    return 0.0, "no_token_cost"


async def call_mcp_tool(conn: McpAgentConnection, text: str, *, timeout_s: float | None = None) -> BackendResult:
    """Call ``conn.tool`` with the step text in ``conn.text_argument``; raises only on cancellation."""
    timeout = min(timeout_s, conn.timeout_s) if timeout_s is not None else conn.timeout_s
    arguments: dict[str, Any] = {**conn.arguments, conn.text_argument: text}
    token = _bearer_token(conn)
    if (unusable := _unusable_token(conn, token)) is not None:
        return unusable
    remember_keys([token])  # masked in every log line from now on, whatever its variable's name (review)
    limiter, left = await slot_within(conn.id, conn.concurrency, timeout)
    if limiter is None:
        return queue_full(conn.id, conn.concurrency, timeout)
    # once per call: env_vars, the token and the environment's
    secrets = secrets_to_mask([*passed_secrets(conn.env_vars), *([token] if token else [])])
    exchange = _Exchange()
    start = time.perf_counter()
    try:
        with anyio.fail_after(left), holding_slot(limiter):
            exchange.relay = StderrRelay(conn.id, secrets) if conn.url is None else None
            async with contextlib.AsyncExitStack() as stack:
                client = await _connect(stack, conn, exchange, token, left)
                exchange.sent = True
                result = await client.call_tool(conn.tool, arguments)
                missing = result.is_error and await _lacks_tool(client, conn.tool)
    except Exception as exc:
        latency = time.perf_counter() - start
        return await _failed_tool_call(conn, exc, exchange, latency, timeout, left, secrets)
    finally:
        if exchange.relay is not None:
            exchange.relay.close()
    return _tool_result(conn, result, missing, time.perf_counter() - start, secrets)


@dataclass
class _Exchange:
    """What a tool call got to before it ended, as its failure is worded and priced."""

    relay: StderrRelay | None = None  # a stdio server's stderr, whose last line says why it died
    sent: bool = False  # whether tools/call went out: before it, no tool ran and nothing can be billed
    refused: list[int] = field(default_factory=list)  # HTTP 401/403 answers of a url server


def _bearer_token(conn: McpAgentConnection) -> str | None:
    """The url agent's bearer token from its bearer_token_env, stripped (a token read from a file may end in a
    newline); None when the agent names no variable."""
    return (os.environ.get(conn.bearer_token_env) or "").strip() if conn.bearer_token_env else None


def _unusable_token(conn: McpAgentConnection, token: str | None) -> BackendResult | None:
    """The failed call of an agent whose bearer_token_env is unset or holds no usable token, said without calling,
    as an LLM agent's missing key is; None when the token (or its absence) is fine. httpx refused a token with a
    newline in an error that printed the header whole (review)."""
    if not conn.bearer_token_env or (token and token.isprintable() and " " not in token):
        return None
    what = "is not set" if not token else "holds spaces or control characters inside its token"
    message = f"environment variable {conn.bearer_token_env} {what} (bearer_token_env of agent {conn.id})"
    log.warning("mcp agent %s failed (auth): %s", conn.id, message)
    return failed_call("auth", "MissingToken", message)


async def _connect(
    stack: contextlib.AsyncExitStack, conn: McpAgentConnection, exchange: _Exchange, token: str | None, left: float
) -> Client:
    """An initialized SDK client of the agent's server, entered on `stack` (a url server through our HTTP client,
    which notes its 401/403 answers in `exchange`), its requests timed out within the `left` seconds."""
    http = None
    if conn.url is not None:
        http = await stack.enter_async_context(_http_client(token, exchange.refused))
    return await stack.enter_async_context(
        Client(_target(conn, exchange.relay, http), read_timeout_seconds=max(left, 0.001))
    )


async def _failed_tool_call(
    conn: McpAgentConnection,
    exc: Exception,
    exchange: _Exchange,
    latency: float,
    timeout: float,
    left: float,
    secrets: tuple[str, ...],
) -> BackendResult:
    """A call that raised, classified and worded (with a stdio server's last stderr line when it died), its message
    scrubbed of secrets and logged, and priced by how far it got."""
    error_class, message, queued = _worded_failure(conn, exc, exchange.refused, latency, timeout, left)
    if exchange.relay is not None and error_class == "connection":  # the server died or never started: say why
        words = await anyio.to_thread.run_sync(exchange.relay.last_words)
        if words:
            message += f"; the server's stderr ended: {words}"
    message = scrub(message, secrets)
    log.warning("mcp agent %s failed (%s) after %.2fs: %s", conn.id, error_class, latency, message)
    # Without a configured price nothing was spent, nor when the call never went out (the server could not be
    # started or reached: no tool ran); once it went out, a configured per-call price may or may not apply.
    free = not conn.cost_per_call_usd or not exchange.sent  # 0: the price `agents load` gives an unpriced tool
    return BackendResult(
        latency_s=latency,
        error_class=error_class,
        error_type=queued or type(_leaves(exc)[0]).__name__,
        message=message[:_MESSAGE_LIMIT],
        cost_usd=0.0 if free else None,
        cost_source="no_token_cost" if free else "unknown",
    )


def _worded_failure(
    conn: McpAgentConnection, exc: Exception, refused: list[int], latency: float, timeout: float, left: float
) -> tuple[ErrorClass, str, str | None]:
    """The failure's error class, its message, and QUEUED_TIMEOUT when the agent's queue took most of a timed-out
    call's time (timeout_message). A url server's 401/403 is `auth`, however the SDK words it."""
    error_class = classify_mcp_exception(exc)
    message, queued = _describe(exc), None
    if error_class == "timeout":
        message, queued = timeout_message(timeout, left, latency, conn.concurrency)
    if refused and error_class != "timeout":  # the SDK words a 401 as "Server returned an error response" (QA)
        error_class = "auth"
        held = f"refused the token in {conn.bearer_token_env}" if conn.bearer_token_env else "wants a token"
        held += " or refused the request" if refused[0] == 403 else ""  # a 403 may be about the Origin too
        message = f"the server answered HTTP {refused[0]}: it {held} (bearer_token_env in agents.toml; {message})"
    return error_class, message, queued


def _tool_result(
    conn: McpAgentConnection, result: CallToolResult, missing: bool, latency: float, secrets: tuple[str, ...]
) -> BackendResult:
    """A completed tools/call as a backend result: the answer, the tool's own error (`task`), or a tool the server
    does not list (`server_error`: a configuration error, not the agent failing a task, so competence stays)."""
    cost, cost_source = _configured_cost(conn)
    answer = scrub(_text_of(result), secrets)
    if missing:  # a configuration error, not the agent failing a task: it must not lower its competence
        return BackendResult(
            latency_s=latency,
            error_class="server_error",
            error_type="UnknownTool",
            message=f"the MCP server has no tool {conn.tool!r} (fix `tool` in agents.toml): {answer}"[:_MESSAGE_LIMIT],
            cost_usd=0.0,  # nothing ran
            cost_source="no_token_cost",
        )
    if result.is_error:
        return BackendResult(
            latency_s=latency,
            error_class="task",
            error_type="ToolError",
            message=answer[:_MESSAGE_LIMIT],
            cost_usd=cost,
            cost_source=cost_source,
        )
    return BackendResult(answer=answer, latency_s=latency, cost_usd=cost, cost_source=cost_source)
