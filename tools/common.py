"""What every tool adapter shares: the app state, annotation constants and the error policy.

Error policy: a domain error (bad value, unknown id, conflict, expiry, nothing routable) becomes a ToolError,
whose message reaches the model unchanged so it can correct the call; anything else is a bug and reaches the
client only as the SDK's generic "Error executing tool" (the traceback goes to the server's log).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from skillorchestra.handbook.errors import HandbookError
from skillorchestra.handbook.models import Identifier
from skillorchestra.handbook.service import Handbook

# An id argument, stripped as the handbook strips it: "  " is refused as empty, " x " means "x" for every tool alike
Id = Identifier
OptionalId = Identifier | None

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
    """What the server's lifespan yields to every tool: the handbook, and the delegation layer when configured."""

    handbook: Handbook
    extras: dict[str, Any] = field(default_factory=dict)

    def unavailable_agents(self) -> dict[str, str]:
        """Agents the router must skip now (for example an open circuit breaker), with the reason."""
        provider = self.extras.get("unavailable")
        return provider() if callable(provider) else {}


def app_state(ctx: Context) -> AppState:
    return ctx.request_context.lifespan_context


def reports_failures(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the handbook's anticipated errors into ToolError so the model reads what to fix."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except HandbookError as exc:
            raise ToolError(str(exc)) from exc

    return wrapper


def given(**arguments: Any) -> dict[str, Any]:
    """The arguments a call gave (None = left out): what an upsert changes, the other fields keep their values."""
    return {name: value for name, value in arguments.items() if value is not None}
