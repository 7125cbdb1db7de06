"""What every tool adapter shares: the app state, annotation constants and the error policy.

Error policy: a domain error (bad value, unknown id, conflict, expiry, nothing routable) becomes a ToolError,
whose message reaches the model unchanged so it can correct the call; anything else is a bug and reaches the
client only as the SDK's generic "Error executing tool" (the traceback goes to the server's log).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, get_args

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from skillorchestra.handbook.errors import HandbookError, InvalidInput, first_problem
from skillorchestra.handbook.models import Identifier
from skillorchestra.handbook.service import Handbook

# An id argument, stripped as the handbook strips it: "  " is refused as empty, " x " means "x" for every tool alike
Id = Identifier
OptionalId = Identifier | None

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)

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


def merged(model: type[M], current: M | None, **sent: Any) -> M:
    """`current` with the arguments the caller gave applied (None = left out, so kept); a new record starts from
    the model's defaults. An upsert that names one field must not reset the others (disabling an agent would
    otherwise forget its prices)."""
    base = current.model_dump() if current is not None else {}
    return from_arguments(model, **{**base, **{name: value for name, value in sent.items() if value is not None}})


def from_arguments(model: type[M], **arguments: Any) -> M:
    """A handbook model built from a tool's arguments; a value the argument types let through but the model
    refuses is the caller's error, named by field (a model built from stored data that fails is not)."""
    try:
        return model(**arguments)
    except ValidationError as exc:
        where, value, expected = first_problem(exc)
        raise InvalidInput(where or exc.title, value, expected) from None  # reports_failures makes it a ToolError


def inline_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every `$ref` to its own `$defs` replaced by the definition (none of ours is recursive).

    Clients differ in how they resolve references (some MCP hosts reject `$ref` in tool schemas), and the Python
    SDK client, which validates every structured result, spends ~0.3 ms of a ~0.7 ms validation of a route_step
    result on resolving them. A recursive schema is returned unchanged."""
    definitions = schema.get("$defs", {})

    def expand(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name in seen or name not in definitions:
                    raise RecursionError(name)
                siblings = {k: expand(v, seen) for k, v in node.items() if k != "$ref"}
                return {**expand(definitions[name], (*seen, name)), **siblings}
            return {k: expand(v, seen) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [expand(item, seen) for item in node]
        return node

    if not definitions:
        return schema
    try:
        return expand(schema, ())
    except RecursionError:
        return schema


def strict_arguments(server: MCPServer) -> None:
    """An argument a tool does not take is refused, naming it, instead of being dropped: a misspelt `cost_usd`
    would otherwise lose the cost while the call reports success. Clients see `additionalProperties: false`.
    A value of the wrong JSON type is refused too, rather than coerced (see _whole_floats_as_ints).

    The SDK builds each tool's argument model with pydantic's default (extra inputs ignored) and offers no
    option, so the models are tightened here, once, after registration (tests/test_mcp_tools.py proves it).
    Each strict model builds its validator on the tool's first call (defer_build), not at start-up: the list of
    tools only needs the schema, and building all of them delayed the first tools/list answer by a few ms."""
    for tool in server._tool_manager.list_tools():
        loose = tool.fn_metadata.arg_model
        namespace = {
            "model_config": ConfigDict(extra="forbid", defer_build=True, strict=True),
            "whole_numbers": model_validator(mode="before")(_whole_floats_as_ints),
        }
        tool.fn_metadata.arg_model = type(loose.__name__, (loose,), namespace)
        tool.parameters = {**tool.parameters, "additionalProperties": False}


def _whole_floats_as_ints(cls: type[BaseModel], data: Any) -> Any:
    """Strict arguments refuse what pydantic would coerce ("0.5" or true as a number, "yes" as a boolean: a
    client bug that would otherwise be recorded as data), but 5.0 is the integer 5 in JSON Schema and some
    clients send it so."""
    if not isinstance(data, dict):
        return data
    whole = {
        name: int(value)
        for name, value in data.items()
        if isinstance(value, float) and value.is_integer() and name in cls.model_fields and _takes_int(cls, name)
    }
    return {**data, **whole} if whole else data


def _takes_int(cls: type[BaseModel], name: str) -> bool:
    annotation = cls.model_fields[name].annotation
    return annotation is int or int in get_args(annotation)


def self_contained_schemas(server: MCPServer) -> None:
    """Every tool's input and output schema without `$ref` (see inline_definitions)."""
    for tool in server._tool_manager.list_tools():
        tool.parameters = inline_definitions(tool.parameters)
        if tool.fn_metadata.output_schema is not None:
            tool.fn_metadata.output_schema = inline_definitions(tool.fn_metadata.output_schema)
