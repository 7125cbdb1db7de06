"""The stdio transport, with an answer for every line a client sends.

The SDK's stdio reader drops a line it cannot parse as a JSON-RPC message without a word (logged at debug), so the
client waits for an answer until its own timeout. Two kinds of line met that end (QA):
- a request holding a lone surrogate escape (`"\\ud83d"` or `"\\ude80"`), which is what JavaScript's JSON.stringify
  writes for an emoji cut in half: valid JSON by the standard, refused by pydantic's parser. Such strings are read
  with the half character replaced by U+FFFD, and the request is served;
- a line that is not JSON, or JSON that is not one JSON-RPC message (a batch, which MCP removed): answered with
  the JSON-RPC error for it (-32700 parse error, -32600 invalid request, with the request's id when it has one),
  and a warning on stderr. A blank line is dropped, as the SDK drops it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError, jsonrpc_message_adapter
from pydantic import ValidationError

log = logging.getLogger("skillorchestra.stdio")

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # either half: JSON text holding one (QA)


async def serve_stdio(server: MCPServer, served: Callable[[], None] | None = None) -> None:
    """As MCPServer.run_stdio_async, with the lines the SDK would drop answered or repaired (`screen_lines`).
    `served` is called once the server has stopped and cleaned up (its lifespan closed), however it stopped: the
    transport's own exit then waits for the SDK's stdin reader, a thread only a closed stdin ends."""
    lowlevel = server._lowlevel_server
    try:
        async with stdio_server() as (read_stream, write_stream):
            screened_send, screened = create_context_streams[SessionMessage | Exception](0)  # as the SDK's own
            async with anyio.create_task_group() as group:
                group.start_soon(screen_lines, read_stream, screened_send, write_stream)
                try:
                    await lowlevel.run(screened, write_stream, lowlevel.create_initialization_options())
                finally:
                    if served is not None:
                        served()
                group.cancel_scope.cancel()
    except* BrokenPipeError:  # the host stopped reading: nothing more can reach it (QA: a 56-line traceback)
        log.warning("the client closed the server's stdout: the server stops")


async def screen_lines(source: Any, sink: Any, replies: Any) -> None:
    """Pass the SDK's parsed messages on; a line it failed to parse becomes the message it meant (lone surrogates
    replaced), a JSON-RPC error sent straight back, or nothing (a blank line). `source`, `sink` and `replies` are
    the SDK's kind of stream. No line can end the server: whatever goes wrong with one is answered as a parse error."""
    async with sink:
        async for item in source:
            if isinstance(item, ValidationError):
                try:
                    handled = answer_unparsed(item)
                except Exception:  # never expected; one line must not take the server down (review)
                    log.exception("a line on stdin could not be screened: answered with a parse error")
                    handled = _parse_error()
                if handled is None:
                    continue
                if isinstance(handled, JSONRPCError):
                    await replies.send(SessionMessage(handled))
                    continue
                item = handled
            await sink.send(item)


def answer_unparsed(error: ValidationError) -> SessionMessage | JSONRPCError | None:
    """The message a line meant, the JSON-RPC error that answers it, or None for a blank line (the SDK's own
    reader drops those; a client may write one between messages)."""
    errors = error.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        raw = first.get("input")
        if not isinstance(raw, str) or not raw.strip():
            return None
        if _SURROGATE_ESCAPE.search(raw) and (repaired := _without_lone_surrogates(raw)) is not None:
            return repaired
        log.warning("a line on stdin is not JSON: answered with a parse error (-32700)")
        return _parse_error()
    given = _whole_message(errors)
    if isinstance(given, list):
        why = "a batch (MCP takes one JSON-RPC message per line)"
    else:
        why = "not a JSON-RPC 2.0 request, notification or response"
    log.warning("a line on stdin is %s: answered with an invalid request error (-32600)", why)
    return JSONRPCError(
        jsonrpc="2.0", id=_request_id(given), error=ErrorData(code=INVALID_REQUEST, message=f"Invalid Request: {why}")
    )


def _parse_error() -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message="Parse error"))


def _without_lone_surrogates(raw: str) -> SessionMessage | JSONRPCError | None:
    """The message of a line refused for a lone surrogate escape, each replaced by U+FFFD; the answer to it when it
    is then JSON but no JSON-RPC message (a -32600 with its id: review); None when it is no JSON at all. Parsed again
    by the SDK's own parser, so its limits (nesting depth) still hold."""
    try:
        cleaned = json.dumps(_replaced(json.loads(raw)), ensure_ascii=False)
        return SessionMessage(jsonrpc_message_adapter.validate_json(cleaned, by_name=False))
    except ValidationError as error:  # before ValueError, which it is
        return None if error.errors(include_url=False)[0]["type"] == "json_invalid" else answer_unparsed(error)
    except (ValueError, RecursionError):
        return None


def _whole_message(errors: list[Any]) -> Any:
    """The line's value as parsed: the input of an error about the whole message (its type, or a field it lacks),
    not of one about a field's value (a method of 7)."""
    for found in errors:
        if len(found["loc"]) <= 1 or (found["type"] == "missing" and len(found["loc"]) == 2):
            return found.get("input")
    return None


def _request_id(message: Any) -> int | str | None:
    """The id of the request the answer is for: only a message with a method is one (a malformed response from
    the client carries the id of a request of the client's, which an answer would seem to settle; review). A
    method of the wrong type is still a request, answered by its id."""
    if not isinstance(message, dict) or "method" not in message:
        return None
    found = message.get("id")
    return found if isinstance(found, str) or (isinstance(found, int) and not isinstance(found, bool)) else None


def _replaced(value: Any) -> Any:
    """`value` with each lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replaced(item) for item in value]
    if isinstance(value, dict):
        return {_replaced(key): _replaced(item) for key, item in value.items()}
    return value
