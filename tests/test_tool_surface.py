"""What the tool surface costs the calling model and what it tells it: lean schemas (no pydantic `title`
keywords, no `"default": null`), descriptions written for the model, and instructions that name delegate.

Every tools/list is paid for in tokens on every request of a session: the size bound below is a regression guard
(measured 14,236 characters as summed here, down from 16,160 before the lean schemas; ~10% head room)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client
from mcp.server import MCPServer
from pydantic import BaseModel

from skillorchestra.server.app import INSTRUCTIONS
from skillorchestra.tools.schemas import lean_schema, self_contained_schemas, strict_arguments

pytestmark = pytest.mark.anyio

SURFACE_BOUND = 15_900  # sum over tools of len(name) + len(description) + len(json.dumps(inputSchema)); 15,700 before
# route_step and delegate took `orchestrator`, and strategy and seed say how they explore (session 19)
NAMED = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
DATA = {"default", "const", "enum", "examples"}


def keywords(schema: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, keyword, value) of every schema keyword: the names under `properties` and the like are not keywords,
    and data (a default, an enum) is not walked."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            yield from keywords(item, f"{path}[{i}]")
        return
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        yield path, key, value
        if key in NAMED and isinstance(value, dict):
            for name, sub in value.items():
                yield from keywords(sub, f"{path}.{key}.{name}")
        elif key not in DATA:
            yield from keywords(value, f"{path}.{key}")


async def test_no_schema_carries_a_title_keyword_or_a_null_default(mcp_client: Client) -> None:
    tools = (await mcp_client.list_tools()).tools
    assert len(tools) >= 13
    for tool in tools:
        for which, schema in (("input", tool.input_schema), ("output", tool.output_schema)):
            found = [(path, key) for path, key, value in keywords(schema) if key == "title"]
            assert not found, (tool.name, which, found)
            nulls = [path for path, key, value in keywords(schema) if key == "default" and value is None]
            assert not nulls, (tool.name, which, nulls)
    route = next(tool for tool in tools if tool.name == "route_step")
    for name in ("budget_usd", "session_id", "skills", "seed"):  # an optional argument still admits null
        assert {"type": "null"} in route.input_schema["properties"][name]["anyOf"], name


async def test_null_is_still_taken_for_an_optional_argument(mcp_client: Client) -> None:
    await mcp_client.call_tool("upsert_agent", {"agent_id": "a", "input_per_mtok": 2.0})
    result = await mcp_client.call_tool(
        "route_step", {"text": "x", "budget_usd": None, "session_id": None, "skills": None, "seed": None}
    )
    assert not result.is_error, result.content
    kept = await mcp_client.call_tool("upsert_agent", {"agent_id": "a", "input_per_mtok": None})
    assert kept.structured_content is not None and kept.structured_content["input_per_mtok"] == 2.0


class Titled(BaseModel):
    title: str
    default: int | None = None


def titled_server() -> MCPServer:
    """A server with one tool that takes and returns a field NAMED title, made lean as create_server's tools are."""
    server = MCPServer("titled")

    @server.tool(name="retitle")
    def retitle(title: str, item: Titled) -> Titled:
        """Give the item a new title."""
        return Titled(title=title, default=item.default)

    self_contained_schemas(server)
    strict_arguments(server)
    return server


async def test_a_property_named_title_survives() -> None:
    async with Client(titled_server()) as client:
        (tool,) = (await client.list_tools()).tools
        assert list(tool.input_schema["properties"]) == ["title", "item"]
        assert tool.input_schema["properties"]["title"] == {"type": "string"}  # its keyword `title` is gone
        item = tool.input_schema["properties"]["item"]
        assert set(item["properties"]) == {"title", "default"} and item["required"] == ["title"]
        assert "title" in tool.output_schema["properties"] and "title" not in tool.output_schema
        result = await client.call_tool("retitle", {"title": "new", "item": {"title": "old", "default": 3}})
        assert result.structured_content == {"title": "new", "default": 3}


def test_lean_schema_keeps_names_and_data() -> None:
    schema = {
        "title": "Model",
        "type": "object",
        "properties": {
            "title": {"title": "Title", "type": "string", "default": {"title": "kept", "default": None}},
            "kind": {"title": "Kind", "enum": [{"title": "x"}], "const": {"title": "y"}},
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None, "title": "N"},
        },
        "$defs": {"title": {"title": "Inner", "type": "string"}},
        "required": ["title"],
    }
    assert lean_schema(schema) == {
        "type": "object",
        "properties": {
            "title": {"type": "string", "default": {"title": "kept", "default": None}},
            "kind": {"enum": [{"title": "x"}], "const": {"title": "y"}},
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
        "$defs": {"title": {"type": "string"}},
        "required": ["title"],
    }


async def test_descriptions_are_written_for_the_model(mcp_client: Client) -> None:
    tools = {tool.name: tool for tool in (await mcp_client.list_tools()).tools}
    for name in ("route_step", "delegate"):
        props = tools[name].input_schema["properties"]
        item = props["skills"]["anyOf"][0]["items"]
        assert item["description"] == "{skill_id, weight}; weights are normalised to sum to 1"
        assert props["budget_usd"]["description"] != props["max_cost_usd"]["description"]
        assert "session" in props["budget_usd"]["description"] and "step" in props["max_cost_usd"]["description"]
        for argument in ("session_id", "allowed_agents", "strategy", "top_k", "lambda_"):
            assert props[argument].get("description"), (name, argument)
        assert "0.1" in props["lambda_"]["description"] and props["lambda_"]["maximum"] == 1000.0  # bounds unchanged
    assert "skills" in tools["consult_handbook"].input_schema["properties"]["top_k"]["description"]
    assert "candidates" in tools["route_step"].input_schema["properties"]["top_k"]["description"]
    delegate = tools["delegate"].input_schema["properties"]
    assert delegate["max_tokens"].get("description") and delegate["timeout_s"].get("description")
    assert "delegate" in tools["record_outcome"].input_schema["properties"]["cost_usd"]["description"]
    text = json.dumps([tool.model_dump(mode="json") for tool in tools.values()])
    for internal in ("strict_arguments", "schemas.", "coerced"):
        assert internal not in text, internal
    for tool in tools.values():  # the docstring's indentation is not sent
        assert "\n    " not in (tool.description or ""), tool.name


async def test_instructions_name_delegate(mcp_client: Client) -> None:
    assert mcp_client.instructions == INSTRUCTIONS
    for tool in ("delegate", "route_step", "record_outcome", "consult_handbook"):
        assert tool in INSTRUCTIONS, tool
    assert len(INSTRUCTIONS) <= 354  # every session pays for it


async def test_the_per_request_surface_stays_small(mcp_client: Client) -> None:
    tools = (await mcp_client.list_tools()).tools
    surface = sum(len(t.name) + len(t.description or "") + len(json.dumps(t.input_schema)) for t in tools)
    assert surface < SURFACE_BOUND, surface


async def test_bounds_are_json_schemas_minimum_and_maximum(mcp_client: Client) -> None:
    """QA: reward's bounds were published as pydantic's own 'ge'/'le' keys, which no JSON Schema client reads."""

    def keys(node: object) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for value in node.values() for k in keys(value)}
        return {k for value in node for k in keys(value)} if isinstance(node, list) else set()

    tools = {t.name: t for t in (await mcp_client.list_tools()).tools}
    for name, tool in tools.items():
        assert not keys(tool.input_schema) & {"ge", "le", "gt", "lt"}, name
    reward = tools["record_outcome"].input_schema["properties"]["reward"]["anyOf"][0]
    assert (reward["minimum"], reward["maximum"]) == (0.0, 1.0)


async def test_the_orchestrate_prompt_makes_consult_optional_and_delegate_direct(mcp_client: Client) -> None:
    prompt = await mcp_client.get_prompt("orchestrate", {"goal": "g"})
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert "Optional: consult_handbook(" in text
    assert "to have the server call an agent, call delegate directly" in text
    # drift QA: under the default "mean" a cold pool locked onto the first agent tried (the best never tried)
    rules = ("never both for one step", "error_class", 'reported_by="judge"', "once\n   per step", "thompson")
    for rule in rules:
        assert rule in text, rule
