"""What clients see and send: every tool's schemas self-contained, its arguments taken strictly as sent, and a
mistaken argument refused in words the calling model can act on.

All are applied once, after the tools are registered (tools.register_tools), to every tool alike: the SDK builds
the schemas and argument models from the functions' signatures and offers no option for any of them.
"""

from __future__ import annotations

import difflib
import inspect
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from skillorchestra.handbook.errors import InvalidInput, expectation, field_path


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
    """Arguments are taken as sent, and a mistaken one is refused, naming it:
    - an argument a tool does not take (a misspelt `cost_usd` would otherwise lose the cost while the call reports
      success; clients see `additionalProperties: false`);
    - a value of the wrong JSON type ("0.5" or true as a number, "yes" as a boolean: a client bug that would
      otherwise be recorded as data), except a whole float for an integer, which JSON Schema counts as one;
    - a JSON-encoded string is decoded only for an argument that takes a list or an object (Claude Desktop sends
      lists so); the SDK decodes it for any argument not typed plain `str`, so a description of '["a"]' was refused
      and one of "null" became null.

    The SDK builds each tool's argument model with pydantic's defaults and offers no option, so the models are
    tightened here, after registration and after the schemas are inlined (tests/test_mcp_tools.py proves it).
    Each strict model is made on the tool's first call (_StrictArguments.tightened), not at start-up: the list of
    tools only needs the schema, and making all of them delayed the first tools/list answer (~0.5% of the start).
    A refusal is worded by `argument_problems` (tests/test_tool_errors.py)."""
    for tool in server._tool_manager.list_tools():
        properties = tool.parameters.get("properties", {})
        tool.fn_metadata = _StrictArguments(
            arg_model=tool.fn_metadata.arg_model,
            output_schema=tool.fn_metadata.output_schema,
            output_model=tool.fn_metadata.output_model,
            wrap_output=tool.fn_metadata.wrap_output,
            structured=_typed(properties, {"array", "object"}),
            integers=_typed(properties, {"integer"}),
            defaulted=_defaulted(tool.parameters),
            tool_name=tool.name,
            input_schema=tool.parameters,
        )
        tool.parameters = {**tool.parameters, "additionalProperties": False}


def _typed(properties: dict[str, Any], json_types: set[str]) -> frozenset[str]:
    """The arguments whose schema admits one of `json_types` (alone or in an anyOf, as optional ones are)."""

    def admits(schema: dict[str, Any]) -> bool:
        return schema.get("type") in json_types or any(admits(option) for option in schema.get("anyOf", []))

    return frozenset(name for name, schema in properties.items() if admits(schema))


def _defaulted(schema: dict[str, Any]) -> frozenset[str]:
    """The optional arguments whose schema does not admit null: a null sent for one of them means "left out" (its
    default), since some clients send every optional argument, null where the user gave none (QA: route_step's
    lambda_=null, upsert_agent's clear_prices=null were refused)."""
    required = set(schema.get("required", []))
    properties = schema.get("properties", {})
    return frozenset(name for name in properties if name not in required) - _typed(properties, {"null"})


def _whole_floats_as(integers: frozenset[str]) -> Callable[[type[BaseModel], Any], Any]:
    """A before-validator taking a whole float as the integer it is for the `integers` arguments (strict mode
    would refuse 5.0 for an int)."""

    def whole_numbers(cls: type[BaseModel], data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        whole = {
            name: int(value)
            for name, value in data.items()
            if name in integers and isinstance(value, float) and value.is_integer()
        }
        return {**data, **whole} if whole else data

    return whole_numbers


_TIGHTENING = threading.Lock()


class _StrictArguments(FuncMetadata):
    """FuncMetadata whose argument model is made strict on the tool's first call (`tightened`), whose JSON
    pre-parsing touches only the arguments that take a list or an object, and whose refusals read as
    `argument_problems` words them."""

    structured: frozenset[str] = frozenset()
    integers: frozenset[str] = frozenset()  # a whole float is taken for these
    defaulted: frozenset[str] = frozenset()
    tool_name: str = ""
    input_schema: dict[str, Any] = {}
    _strict: bool = PrivateAttr(default=False)

    def tightened(self) -> None:
        """Replace the SDK's argument model by a subclass that forbids unknown arguments and takes every value
        strictly (but a whole float for an integer); once, whichever call of the tool comes first."""
        with _TIGHTENING:
            if self._strict:
                return
            loose = self.arg_model
            namespace = {
                "model_config": ConfigDict(extra="forbid", strict=True),
                "whole_numbers": model_validator(mode="before")(_whole_floats_as(self.integers)),
            }
            self.arg_model = type(loose.__name__, (loose,), namespace)
            self._strict = True

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            name: _decoded(value) if name in self.structured else value
            for name, value in data.items()
            if not (value is None and name in self.defaulted)
        }

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        if not self._strict:
            self.tightened()
        try:
            return super().validate_arguments(arguments_to_validate)
        except ValidationError as exc:
            worded = _WordedValidationError.from_exception_data(exc.title, [])
            worded.text = argument_problems(exc, self.tool_name, self.input_schema)
            raise worded from exc


class _WordedValidationError(ValidationError):
    """A refusal of a tool's arguments in our words. The SDK's tool runner reports a ValidationError from argument
    validation as a ToolError reading "Error executing tool <name>: " + str(error) (any other exception there is
    a crash, its text withheld), so the rewording travels as the text of a ValidationError; pydantic's own error
    is its __cause__, for the server's log."""

    text: str

    def __str__(self) -> str:
        return self.text


def argument_problems(exc: ValidationError, tool: str, input_schema: dict[str, Any]) -> str:
    """Each problem of a tool's arguments on a line, for the model that must fix the call (pydantic's text names
    its own model, error-type tags and a documentation URL): an argument or field the tool does not take, with
    the closest name it does take and all of them; a required one left out; otherwise worded as the handbook's
    InvalidInput is (errors.first_problem: "field=value: expected what")."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        where = field_path(loc) or "arguments"
        owner = tool if len(loc) <= 1 else field_path(loc[:-1])
        if error["type"] == "extra_forbidden":
            names = _names_at(input_schema, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            kind = "an argument of" if len(loc) <= 1 else "a field of"
            takes = f"; it takes: {', '.join(names)}" if names else ""
            lines.append(f"{where}: not {kind} {owner}{hint}{takes}")
        elif error["type"] == "missing":
            kind = "argument of" if len(loc) <= 1 else "field of"
            lines.append(f"{where}: a required {kind} {owner}, not given")
        elif error["type"] in ("model_type", "dict_type", "model_attributes_type"):  # pydantic names its class
            fields = _names_at(input_schema, loc)
            shape = f"an object with {', '.join(fields)}" if fields else "an object"
            lines.append(str(InvalidInput(where, error.get("input"), shape)))
        else:
            lines.append(str(InvalidInput(where, error.get("input"), expectation(error))))
    return "\n".join(lines)


def _names_at(schema: dict[str, Any], path: Sequence[int | str]) -> list[str]:
    """The property names of the object at `path` in an (inlined) input schema: list indexes step into `items`,
    names into `properties`, through any `anyOf`; a part that is neither (pydantic's union tags) is skipped."""
    node = schema
    for part in path:
        node = _child(node, part)
    for option in (node, *node.get("anyOf", [])):
        if "properties" in option:
            return list(option["properties"])
    return []


def _child(node: dict[str, Any], part: int | str) -> dict[str, Any]:
    for option in (node, *node.get("anyOf", [])):
        if isinstance(part, int) and isinstance(option.get("items"), dict):
            return option["items"]
        if isinstance(part, str) and part in option.get("properties", {}):
            return option["properties"][part]
    return node  # a union tag: the same value, seen as one of its types


def _decoded(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return value
    return parsed if isinstance(parsed, list | dict) else value


# Keywords whose value maps names (of properties, definitions...) to schemas or lists: a name is never a keyword.
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependentRequired"})
# Keywords whose value is data (an instance, not a schema): left as it is.
_DATA = frozenset({"default", "const", "enum", "examples", "example"})


def lean_schema(schema: Any) -> Any:
    """The schema without what only costs the calling model tokens: pydantic's `title` keywords ("Agent Id" for
    agent_id: 278 of them, ~5k characters of every tools/list) and `"default": null` (an annotation: an argument
    left out of `required` is optional already, and null stays admitted by its anyOf). A property or definition
    NAMED title or default is kept, and so is data (a default, const, enum or example value).

    The `anyOf: [X, {"type": "null"}]` of an optional argument is kept as it is: `"type": [X, "null"]` is shorter,
    but Gemini's function declarations refuse a list of types (400 "Proto field is not repeating"), and dropping
    the null branch would stop admitting null, which the upserts take as "left out"."""
    return _each_schema(schema, _lean)


def _lean(node: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in node.items()
        if not ((key == "title" and isinstance(value, str)) or (key == "default" and value is None))
    }


def _each_schema(schema: Any, rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """`rewrite` applied to every schema object within `schema`, innermost first; never to a map of names (the
    keys of `properties`...) nor to data (a default, an enum...)."""
    if isinstance(schema, list):
        return [_each_schema(item, rewrite) for item in schema]
    if not isinstance(schema, dict):
        return schema
    walked: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _NAMED and isinstance(value, dict):
            walked[key] = {name: _each_schema(item, rewrite) for name, item in value.items()}
        elif key in _DATA:
            walked[key] = value
        else:
            walked[key] = _each_schema(value, rewrite)
    return rewrite(walked)


def portable_tuples(schema: Any) -> Any:
    """The schema with each fixed-length tuple of one item type (pydantic's `tuple[float, float]`: `prefixItems`
    [S, S], minItems = maxItems = 2) written as `items`: S with the same bounds, which means the same in every
    JSON Schema dialect.

    `prefixItems` exists only since 2020-12. The TypeScript SDK's client (Claude Desktop, Claude Code, Cursor and
    most IDE hosts embed it) compiles every output schema with ajv's draft-07 class at tools/list: with the SDK's
    `strict: false` it ignores the keyword (ci90 went unchecked), and an ajv in strict mode refuses the schema,
    so the whole listing fails (.ci/ts-client). A tuple of mixed item types, or an open one, is left as it is."""
    return _each_schema(schema, _portable_tuple)


def _portable_tuple(node: dict[str, Any]) -> dict[str, Any]:
    prefix = node.get("prefixItems")
    if (
        isinstance(prefix, list)
        and prefix
        and all(item == prefix[0] for item in prefix)
        and node.get("minItems") == node.get("maxItems") == len(prefix)
        and node.get("items", False) is False  # absent, or false: nothing beyond the prefix either way
    ):
        rest = {key: value for key, value in node.items() if key not in ("prefixItems", "items")}
        return {**rest, "items": prefix[0]}
    return node


def self_contained_schemas(server: MCPServer) -> None:
    """Every tool's input and output schema without `$ref` (see inline_definitions), lean (see lean_schema) and
    read alike in every JSON Schema dialect (see portable_tuples), and its description without the docstring's
    indentation (the SDK sends the docstring as written)."""
    for tool in server._tool_manager.list_tools():
        tool.parameters = _sent_schema(tool.parameters)
        if tool.fn_metadata.output_schema is not None:
            tool.fn_metadata.output_schema = _sent_schema(tool.fn_metadata.output_schema)
        if tool.description:
            tool.description = inspect.cleandoc(tool.description)


def _sent_schema(schema: dict[str, Any]) -> Any:
    """lean_schema then portable_tuples, in one walk (server start-up walks every tool's two schemas)."""
    return _each_schema(inline_definitions(schema), lambda node: _portable_tuple(_lean(node)))
