"""What every tool adapter shares: the app state, annotation constants and the error policy.

Error policy: a domain error (bad value, unknown id, conflict, expiry, nothing routable) becomes a ToolError,
whose message reaches the model unchanged so it can correct the call; anything else is a bug and reaches the
client only as the SDK's generic "Error executing tool" (the traceback goes to the server's log).

A result's text block is its structured content as compact JSON: hosts that show the model only the text pay for
every character, and the SDK's own rendering indents it (42% more).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel

from skillorchestra.handbook.errors import HandbookError
from skillorchestra.handbook.inert_text import one_line
from skillorchestra.handbook.models import Identifier
from skillorchestra.handbook.service import Handbook
from skillorchestra.server.jobs import JobRegistry

if TYPE_CHECKING:
    from skillorchestra.server.delegation import Delegator
from skillorchestra.handbook.sqlite_file import BUSY_TIMEOUT_S, file_trouble

log = logging.getLogger("skillorchestra")

# An id argument, stripped as the handbook strips it: "  " is refused as empty, " x " means "x" for every tool alike.
# Not NewId: an argument may name an entity an older file holds under an id the rules for new ids refuse, and it
# must stay reachable (to delete it, say); a new id is refused where every edit goes (HandbookStore.apply).
Id = Identifier
OptionalId = Id | None

P = ParamSpec("P")
R = TypeVar("R")

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)


def writes(*, destructive: bool, idempotent: bool, open_world: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=False,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )


@dataclass
class AppState:
    """What the server's lifespan yields to every tool, one per server (server/app.py): the handbook, the
    delegation layer over it, and the learning jobs every connection sees."""

    handbook: Handbook
    delegator: Delegator
    jobs: JobRegistry = field(default_factory=JobRegistry)

    def unavailable_agents(self) -> dict[str, str]:
        """Agents the router must skip now (for example an open circuit breaker), with the reason."""
        return self.delegator.unavailable()


def app_state(ctx: Context) -> AppState:
    return cast("AppState", ctx.request_context.lifespan_context)


BUSY = (
    "the handbook file is busy: another process has held its write lock longer than the busy timeout "
    f"({BUSY_TIMEOUT_S:g} s; a long import or learn?); nothing was written, try again"
)


def tool_error(exc: Exception, path: object = None) -> ToolError | None:
    """The ToolError the model reads for an anticipated failure (None for a bug, which the SDK reports without
    its text): the handbook's own errors, a file locked by another process for longer than SQLite waits, and a
    file that failed itself (full disk, I/O error, read-only, damaged), which the person running the server must
    hear of."""
    if isinstance(exc, HandbookError):  # inert: it may quote a backend's error text, and hosts print it
        return ToolError(one_line(str(exc)))
    if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(("database is locked", "database is busy")):
        return ToolError(BUSY)
    trouble = file_trouble(exc)
    if trouble is None:
        return None
    # for the person running the server, naming the file (QA: one of several servers' files): the model alone would
    # know otherwise
    log.warning("%s%s", trouble, f" ({path})" if path is not None else "")
    return ToolError(trouble)


def reports_failures(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn anticipated errors into ToolError (see tool_error) so the model reads what to fix; sync or async."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awaiting(*args: P.args, **kwargs: P.kwargs) -> Any:
            with _as_tool_errors(kwargs.get("ctx")):
                return compact_result(await fn(*args, **kwargs))

        return awaiting  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _as_tool_errors(kwargs.get("ctx")):
            return compact_result(fn(*args, **kwargs))

    return wrapper


def compact_result(result: Any) -> Any:
    """A result model as the SDK would send it (structured content in JSON mode), with a compact text block."""
    if not isinstance(result, BaseModel):
        return result
    structured = result.model_dump(mode="json", by_alias=True)
    text = json.dumps(structured, ensure_ascii=False, separators=(",", ":"))
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def _handbook_path(ctx: object) -> object:
    """The served handbook's file, for the operator's log line; None where the call carries no context."""
    try:
        return app_state(ctx).handbook.store.path  # type: ignore[arg-type]
    except Exception:  # a tool called without a server context (a unit test): the line names no file
        return None


@contextlib.contextmanager
def _as_tool_errors(ctx: object = None) -> Iterator[None]:
    try:
        yield
    except (HandbookError, sqlite3.DatabaseError) as exc:
        error = tool_error(exc, _handbook_path(ctx) if ctx is not None else None)
        if error is None:
            raise  # a bug stays a bug: the SDK reports it without its text
        raise error from exc


def given(**arguments: Any) -> dict[str, Any]:
    """The arguments a call gave (None = left out): what an upsert changes, the other fields keep their values."""
    return {name: value for name, value in arguments.items() if value is not None}
