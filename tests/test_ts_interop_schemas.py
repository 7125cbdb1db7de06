"""Tool schemas read alike by the TypeScript SDK's client: it compiles every output schema at tools/list with ajv's
draft-07 class (Claude Desktop, Claude Code, Cursor and most IDE hosts embed it), while MCP 2025-11-25 and the
Python client read a schema without `$schema` as 2020-12. A keyword only one dialect has is ignored by the other
(a constraint silently unchecked) or, under ajv's strict mode, refuses the whole listing. .ci/ts-client runs the
real TypeScript client; these tests pin the schema shapes it found wanting."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator
from mcp import Client
from test_tool_surface import keywords

from skillorchestra.tools.schemas import portable_tuples

pytestmark = pytest.mark.anyio

# keywords 2020-12 has and draft-07 does not ($defs is inlined away; tests/test_tool_surface.py checks that)
ONLY_2020_12 = {
    "prefixItems",
    "dependentRequired",
    "dependentSchemas",
    "unevaluatedItems",
    "unevaluatedProperties",
    "minContains",
    "maxContains",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
}
PAIR = {"type": "array", "minItems": 2, "maxItems": 2, "prefixItems": [{"type": "number"}, {"type": "number"}]}


async def test_tool_schemas_use_no_keyword_one_dialect_lacks(mcp_client: Client) -> None:
    for tool in (await mcp_client.list_tools()).tools:
        for which, schema in (("input", tool.input_schema), ("output", tool.output_schema)):
            found = [(path, key) for path, key, _ in keywords(schema) if key in ONLY_2020_12]
            assert not found, (tool.name, which, found)
            # draft-07's tuple form `items: [...]` is no schema in 2020-12
            lists = [path for path, key, value in keywords(schema) if key == "items" and isinstance(value, list)]
            assert not lists, (tool.name, which, lists)


async def test_ci90_is_checked_as_two_numbers_under_both_dialects(mcp_client: Client) -> None:
    """route_step's candidates[].ci90 and consult_handbook's agents[].ci90: a draft-07 validator (the TS SDK's)
    must refuse what a 2020-12 one refuses; before the fix it took ["a", "b"] and [0.1, 0.2, 0.3]."""
    tools = {tool.name: tool for tool in (await mcp_client.list_tools()).tools}
    pairs = [
        tools["route_step"].output_schema["properties"]["candidates"]["items"]["properties"]["ci90"],
        tools["consult_handbook"].output_schema["properties"]["agents"]["items"]["properties"]["ci90"],
    ]
    for schema in pairs:
        for validator in (Draft7Validator(schema), Draft202012Validator(schema)):
            assert validator.is_valid([0.25, 0.75])
            assert not validator.is_valid(["a", "b"]), type(validator).__name__
            assert not validator.is_valid([0.1, 0.2, 0.3]), type(validator).__name__
            assert not validator.is_valid([0.1]), type(validator).__name__


async def test_a_real_route_result_passes_both_dialects(mcp_client: Client) -> None:
    for agent_id in ("cheap", "dear"):
        added = await mcp_client.call_tool("upsert_agent", {"agent_id": agent_id, "input_per_mtok": 1.0})
        assert not added.is_error, added.content
    tools = {tool.name: tool for tool in (await mcp_client.list_tools()).tools}
    for name, arguments in (
        ("route_step", {"text": "write a python function that reverses a string", "seed": 3}),
        ("consult_handbook", {"text": "write a python function that reverses a string"}),
    ):
        result = await mcp_client.call_tool(name, arguments)
        assert not result.is_error, result.content
        rows = result.structured_content["candidates" if name == "route_step" else "agents"]
        assert rows and all(len(row["ci90"]) == 2 for row in rows)
        schema = tools[name].output_schema
        for validator in (Draft7Validator(schema), Draft202012Validator(schema)):
            errors = [error.message for error in validator.iter_errors(result.structured_content)]
            assert not errors, (name, type(validator).__name__, errors)


def _verdicts(schema: dict[str, Any], instances: list[Any]) -> list[bool]:
    validator = Draft202012Validator(schema)
    return [validator.is_valid(instance) for instance in instances]


@pytest.mark.parametrize(
    "tuple_schema",
    [
        PAIR,
        {**PAIR, "items": False},  # closed explicitly: the same tuple
        {"type": "array", "minItems": 3, "maxItems": 3, "prefixItems": [{"type": "string", "maxLength": 2}] * 3},
    ],
)
def test_a_one_type_tuple_means_the_same_in_2020_12(tuple_schema: dict[str, Any]) -> None:
    instances: list[Any] = [[0.1, 0.2], [0.1], [0.1, 0.2, 0.3], ["a", "b"], ["ab", "cd", "ef"], ["abc", "d", "e"], []]
    portable = portable_tuples(tuple_schema)
    assert "prefixItems" not in portable and portable["items"] == tuple_schema["prefixItems"][0]
    assert _verdicts(portable, instances) == _verdicts(tuple_schema, instances)
    Draft7Validator.check_schema(portable)
    Draft202012Validator.check_schema(portable)


def test_mixed_open_tuples_names_and_data_are_left_alone() -> None:
    mixed = {"type": "array", "minItems": 2, "maxItems": 2, "prefixItems": [{"type": "string"}, {"type": "number"}]}
    open_ended = {"type": "array", "minItems": 2, "prefixItems": [{"type": "number"}, {"type": "number"}]}
    extra_allowed = {**PAIR, "maxItems": 3, "items": {"type": "string"}}
    for schema in (mixed, open_ended, extra_allowed):
        assert portable_tuples(schema) == schema
    named = {
        "type": "object",
        "properties": {"prefixItems": {"type": "string"}, "pair": PAIR},
        "default": {"pair": PAIR},  # data, not a schema
    }
    portable = portable_tuples(named)
    assert portable["properties"]["prefixItems"] == {"type": "string"}
    pair = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}
    assert portable["properties"]["pair"] == pair
    assert portable["default"] == {"pair": PAIR}
