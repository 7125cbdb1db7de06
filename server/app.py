"""The MCP application: `create_server(settings)` builds it (tests use it too), `serve(settings)` runs it.

Design decisions:
- Errors: domain errors reach the model as ToolError text naming the field and what was expected; an unknown
  tool name is a protocol error (-32602), as both spec revisions want.
- Both protocol eras are served by the SDK: the 2025-11-25 handshake and sessionless 2026-07-28.
- The tool list is static, so `subscriptions=False` (listChanged: false).
- Start-up is a feature: nothing heavy is imported here; litellm loads on the first delegation only.
- stdout belongs to the protocol on stdio: logs go to stderr.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import MCPError
from mcp.server import MCPServer
from mcp.types import INVALID_PARAMS

from skillorchestra.handbook.embedding import locate_minilm_weights
from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.example import seed_example_if_new
from skillorchestra.handbook.inference import HandbookMatcher
from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.models import TEXT_MAX
from skillorchestra.handbook.semantic import SemanticMatcher
from skillorchestra.handbook.service import Handbook
from skillorchestra.handbook.sqlite_file import file_trouble
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.breaker import CircuitBreaker
from skillorchestra.server.completions import register_completions
from skillorchestra.server.delegation import Delegator
from skillorchestra.server.prompts import register_prompts
from skillorchestra.server.resources import register_resources
from skillorchestra.server.settings import ServerSettings
from skillorchestra.server.version import package_version
from skillorchestra.tools import register_tools
from skillorchestra.tools.common import AppState

log = logging.getLogger("skillorchestra")
JOB_STOP_WAIT_S = 2.0  # how long shutdown waits for a learning job to reach its next progress step

# Hosts that show instructions but not prompts leave the model only this: it must name delegate, the one way to have
# an agent called (no longer than before: every session pays for it).
INSTRUCTIONS = (
    "Skill-aware routing for a pool of agents. Per step: delegate when the server has backends (it routes, calls, "
    "falls back, records cost); route_step when you run the step yourself. Then record_outcome(decision_id) unless "
    "delegate's judge reported. consult_handbook is optional (to see or pick skills): both infer them. Prompt "
    "'orchestrate' has the loop."
)


def open_store(settings: ServerSettings) -> HandbookStore:
    """Create or migrate the database file, seeding the example handbook into a new one if asked."""
    store = HandbookStore(settings.db_path)
    if settings.seed_example:
        seed_example_if_new(store)
    return store


def open_handbook(settings: ServerSettings) -> Handbook:
    """The handbook over `open_store`'s file, with its skill matcher (chosen, not loaded)."""
    store = open_store(settings)
    matcher = HandbookMatcher(store, make_matcher(store, settings.matcher))
    return Handbook(store, settings.handbook_settings(), matcher=matcher)


def make_matcher(store: HandbookStore, choice: str) -> LexicalMatcher | SemanticMatcher:
    """auto: semantic when the MiniLM weights are installed (measured better, bench/matcher_quality.py), else
    lexical; the model itself loads on the first inference, never at start-up."""
    if choice == "lexical" or (choice == "auto" and locate_minilm_weights() is None):
        return LexicalMatcher(store)
    return SemanticMatcher(store)


def create_server(settings: ServerSettings, *, warm_up: bool = False) -> MCPServer:
    """The app; `warm_up` loads the skill matcher in the background once the first tools/list is answered (the
    served process does; tests that never route leave it off)."""
    running: list[AppState] = []  # the live state, for resources (they get no request context)
    holders = [0]

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[AppState]:
        """One state for the whole server, however many times the transport enters the lifespan.

        The SSE transport enters it once per connection: a state per connection meant a matcher (MiniLM, ~10 MB)
        that was never freed, and a circuit breaker and learning jobs that other connections could not see. The
        HTTP app holds one reference for its lifetime (server/http.py), so a job outlives the connection that
        started it; the state closes when the last holder leaves."""
        if not running:
            # settings validated the breaker's figures, so nothing after opening the handbook can fail and leak it
            breaker = CircuitBreaker(threshold=settings.breaker_threshold, cooldown_s=settings.breaker_cooldown_s)
            delegator = Delegator(open_handbook(settings), breaker=breaker, max_fallbacks=settings.max_fallbacks)
            handbook = delegator.handbook
            running.append(AppState(handbook=handbook, delegator=delegator))
        state = running[-1]
        holders[0] += 1
        try:
            yield state
        finally:
            holders[0] -= 1
            if holders[0] == 0:
                running.remove(state)
                with anyio.CancelScope(shield=True):  # a learning job stops before the file it writes is closed
                    await anyio.to_thread.run_sync(state.jobs.stop, JOB_STOP_WAIT_S)
                    # off the event loop: a job past its wait may hold the store's lock in a write (review)
                    await anyio.to_thread.run_sync(state.handbook.store.close)

    def current_handbook() -> Handbook:
        if not running:
            raise RuntimeError("the server is not running")
        return running[-1].handbook

    server: MCPServer = MCPServer(
        "skillorchestra",
        version=package_version(),
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        subscriptions=False,
        log_level=settings.log_level,
    )
    register_tools(server)
    register_resources(server, current_handbook)
    register_prompts(server)
    register_completions(server, current_handbook)
    server.middleware.append(_reject_invalid_requests(server))
    if warm_up:
        server.middleware.append(_warm_up_after_first_listing(lambda: running[-1] if running else None))
    return server


def _warm_up_after_first_listing(current_state: Callable[[], AppState | None]) -> Any:
    """Once the first tools/list is answered (or before the first other request, from a client that lists
    nothing: QA), load the skill matcher on a background thread.

    With MiniLM, the model and the skill vectors take 1-4 s, which the first route_step would otherwise wait for;
    loading them before the listing's answer would slow the host's start-up instead. Steps meanwhile take the
    lexical matcher and say so."""
    started = threading.Event()

    def start() -> None:
        state = current_state()
        if state is not None and not started.is_set():
            started.set()
            state.handbook.begin_warm_up()  # before the thread runs: the next step must already see it loading
            threading.Thread(
                target=_warm_up, args=(state.handbook,), name="skillorchestra-warm-up", daemon=True
            ).start()

    async def middleware(ctx: Any, call_next: Any) -> Any:
        if not started.is_set() and ctx.method in STEP_METHODS:
            start()
        result = await call_next(ctx)
        if ctx.method == "tools/list":
            start()
        return result

    return middleware


# requests that may infer a step's skills (tools, a prompt or resource read that the model acts on next)
STEP_METHODS = frozenset({"tools/call", "resources/read", "prompts/get"})


def _warm_up(handbook: Handbook) -> None:
    began = time.perf_counter()
    try:
        ready = handbook.warm_up()
    except Exception as exc:  # a warm-up must never take the server down: the first step will try again and say why
        trouble = file_trouble(exc)
        if isinstance(exc, sqlite3.ProgrammingError) and handbook.store.closed:
            log.debug("warm-up stopped: the handbook was closed")  # the server stopped meanwhile
        elif trouble is not None:  # the tools will say it to the model too: one line here, not a traceback
            log.warning("warm-up of the skill matcher failed: %s (%s)", trouble, handbook.store.path)
        else:
            log.warning("warm-up of the skill matcher failed", exc_info=True)
    else:
        log.info("skill matcher ready in %.2f s: %s", time.perf_counter() - began, ready)


UNPAGED_LISTS = frozenset({"tools/list", "resources/list", "resources/templates/list", "prompts/list"})


def _reject_invalid_requests(server: MCPServer) -> Any:
    """Requests the SDK would answer with a generic error, or not refuse, are invalid params (-32602) that say what
    is wrong: a cursor on a list this server never pages (the SDK answered the whole list, as if the cursor were
    valid; QA), an unknown tool name (not a tool result the model should retry), and a prompts/get of an unknown
    prompt, without a required argument (or with a blank one), with an argument the prompt does not take or with an
    over-long value (the SDK reports "Internal server error" and logs a traceback)."""

    tools: set[str] = set()
    prompts: dict[str, tuple[list[str], set[str]]] = {}  # name -> (required arguments, all arguments)

    async def middleware(ctx: Any, call_next: Any) -> Any:
        if ctx.method in UNPAGED_LISTS and isinstance(ctx.params, dict) and ctx.params.get("cursor") is not None:
            # every item comes on the first page (no nextCursor is ever sent): any cursor is one we never gave
            raise MCPError(code=INVALID_PARAMS, message=f"{ctx.method}: invalid cursor (this list has one page)")
        if ctx.method in ("tools/call", "prompts/get") and isinstance(ctx.params, dict):
            _check_name_and_arguments(ctx.method, ctx.params)
        if ctx.method == "tools/call" and isinstance(ctx.params, dict):
            if not tools:  # the tool list is static: read it once
                tools.update(tool.name for tool in await server.list_tools())
            name = ctx.params.get("name")
            if name not in tools:
                raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")
        if ctx.method == "prompts/get" and isinstance(ctx.params, dict):
            if not prompts:
                for prompt in await server.list_prompts():
                    arguments = prompt.arguments or []
                    prompts[prompt.name] = ([a.name for a in arguments if a.required], {a.name for a in arguments})
            _check_prompt_request(ctx.params, prompts)
        return await call_next(ctx)

    return middleware


def _check_name_and_arguments(method: str, params: dict[str, Any]) -> None:
    """A name that is not a string, or arguments that are not an object, are invalid params (QA: a list as the
    name answered "unhashable type: 'list'", error code 0, with a traceback in the log)."""
    if not isinstance(params.get("name"), str):
        raise MCPError(code=INVALID_PARAMS, message=f"{method}: name must be a string, the tool's or prompt's name")
    if params.get("arguments") is not None and not isinstance(params["arguments"], dict):
        raise MCPError(code=INVALID_PARAMS, message=f"{method}: arguments must be an object of name: value")


def _check_prompt_request(params: dict[str, Any], prompts: dict[str, tuple[list[str], set[str]]]) -> None:
    name = params.get("name")
    if name not in prompts:
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {name} (known: {', '.join(sorted(prompts))})")
    required, accepted = prompts[name]
    given = params.get("arguments") or {}
    problems = []
    missing = [a for a in required if not (isinstance(given.get(a), str) and given[a].strip())]  # blank: missing
    if missing:
        problems.append(f"needs the argument(s): {', '.join(missing)} (non-empty text)")
    extra = sorted(set(given) - accepted)
    if extra:
        problems.append(f"takes no argument(s) {', '.join(extra)} (it takes: {', '.join(sorted(accepted))})")
    long = sorted(k for k, v in given.items() if isinstance(v, str) and len(v) > TEXT_MAX)
    if long:
        problems.append(f"argument(s) {', '.join(long)} longer than {TEXT_MAX:,} characters")
    if problems:
        raise MCPError(code=INVALID_PARAMS, message=f"prompt {name} " + "; ".join(problems))


async def serve(settings: ServerSettings) -> None:
    """Check the configuration and the database before any transport opens, then serve."""
    sockets: list[socket.socket] = []
    if settings.transport != "stdio":
        from skillorchestra.server.http import bind_sockets, check_bind  # only HTTP deployments pay for its imports

        check_bind(settings)  # a refused bind creates no database file,
        sockets = bind_sockets(settings)  # nor does a port in use
    try:
        # creates and migrates the file before we answer anything (the matcher is the lifespan's: locating the
        # MiniLM weights reads package metadata, ~5 ms)
        store = open_store(settings)
        store.close()
        log.info("handbook %s", settings.db_path.absolute())  # which file, wherever the host started us (QA)
        if not store.writable:  # every write tool would fail: routing records its decisions
            raise InvalidInput("db", str(settings.db_path), "a handbook file this process can write (it is read-only)")
        server = create_server(settings, warm_up=True)
        if settings.transport == "stdio":
            await _serve_stdio_until_stopped(server)
            return
        from skillorchestra.server.http import serve_http

        await serve_http(server, settings, sockets)
    finally:
        for sock in sockets:
            sock.close()


STOP_GRACE_S = 5.0  # after SIGTERM or SIGINT, the most the cleanup may take before the process ends anyway


async def _serve_stdio_until_stopped(server: MCPServer) -> None:
    """Serve stdio until stdin closes, or until SIGTERM or SIGINT, which stop it as closing stdin does: calls in
    flight are cancelled and recorded as such, tool agents' processes are ended, then the process exits (QA: a
    signal had ended it at once, leaving a tool agent's process running and its call unrecorded). The exit is
    os._exit, after the cleanup: the SDK reads stdin on a thread no cancellation interrupts, which the
    interpreter's shutdown would wait for. A second signal, or a cleanup past STOP_GRACE_S, exits at once."""
    import asyncio

    import anyio
    import anyio.lowlevel

    from skillorchestra.server.stdio_transport import serve_stdio

    stopped: list[int] = []
    loop = asyncio.get_running_loop()
    async with anyio.create_task_group() as group:

        def stop(signum: int) -> None:
            if stopped:  # a second signal: the user means now
                os._exit(128 + signum)
            stopped.append(signum)
            os.write(2, f"{signal.Signals(signum).name}: the server stops\n".encode())
            watchdog = threading.Timer(STOP_GRACE_S, os._exit, args=(128 + signum,))
            watchdog.daemon = True
            watchdog.start()
            group.cancel_scope.cancel()

        def received(signum: int, frame: object) -> None:  # runs between bytecodes: hand it to the loop
            loop.call_soon_threadsafe(stop, signum)

        def served() -> None:  # cleaned up: what remains is the SDK's wait for its stdin thread
            if stopped:
                os._exit(128 + stopped[0])

        previous = {}  # signal.signal, not loop.add_signal_handler: Windows' loops have none (review)
        if threading.current_thread() is threading.main_thread():  # only there can a handler be set (an embedding)
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, received)
        try:
            # a signal that came during start-up, before these handlers, is delivered here (asyncio cancels the
            # main task), not after the SDK started its stdin thread, which would keep the process until stdin closed
            await anyio.lowlevel.checkpoint()
            await serve_stdio(server, served)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if stopped:
        os._exit(128 + stopped[0])
