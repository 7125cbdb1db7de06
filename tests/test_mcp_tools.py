"""Every tool of the core through the SDK's in-memory client, in both protocol eras."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from mcp import Client, MCPError

from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.app import create_server
from skillorchestra.server.settings import ServerSettings

pytestmark = pytest.mark.anyio

CORE_TOOLS = {
    "consult_handbook",
    "route_step",
    "record_outcome",
    "upsert_agent",
    "upsert_skill",
    "upsert_mode",
    "delete_agent",
    "delete_skill",
    "list_agents",
    "list_skills",
}


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    assert result.structured_content is not None
    return result.structured_content


async def error_text(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return result.content[0].text  # type: ignore[union-attr]


async def two_agent_handbook(client: Client) -> None:
    await call(client, "upsert_mode", {"mode_id": "answer", "insights": ["arithmetic repays a strong model"]})
    await call(client, "upsert_skill", {"skill_id": "math", "mode": "answer", "description": "arithmetic and algebra"})
    await call(
        client,
        "upsert_skill",
        {
            "skill_id": "math.equations",
            "mode": "answer",
            "parent_id": "math",
            "description": "solve linear equations for an unknown",
            "indicators": ["solve for x"],
        },
    )
    await call(client, "upsert_skill", {"skill_id": "code", "mode": "answer", "description": "write python functions"})
    await call(client, "upsert_agent", {"agent_id": "meta/llama-70b", "input_per_mtok": 0.9, "output_per_mtok": 0.9})
    await call(client, "upsert_agent", {"agent_id": "tiny", "input_per_mtok": 0.05, "output_per_mtok": 0.05})


async def test_tool_list_has_schemas_and_annotations(mcp_client: Client) -> None:
    tools = {tool.name: tool for tool in (await mcp_client.list_tools()).tools}
    assert CORE_TOOLS <= set(tools)
    for tool in tools.values():
        assert tool.output_schema is not None, tool.name
        assert tool.description
        assert tool.input_schema["additionalProperties"] is False, tool.name  # a misspelt argument is refused
        assert "$ref" not in json.dumps([tool.input_schema, tool.output_schema]), tool.name  # self-contained
    assert tools["consult_handbook"].annotations.read_only_hint is True
    assert tools["route_step"].annotations.read_only_hint is False
    assert tools["route_step"].annotations.destructive_hint is False
    assert tools["record_outcome"].annotations.idempotent_hint is True
    assert tools["delete_agent"].annotations.destructive_hint is True
    route_props = tools["route_step"].input_schema["properties"]
    assert {"text", "skills", "mode", "lambda_", "strategy", "allowed_agents", "max_cost_usd"} <= set(route_props)
    assert {"session_id", "budget_usd", "top_k"} <= set(route_props)
    assert tools["route_step"].input_schema["required"] == ["text"]


async def test_register_consult_route_record_moves_the_posterior(mcp_client: Client) -> None:
    await two_agent_handbook(mcp_client)
    consult = await call(mcp_client, "consult_handbook", {"text": "solve for x: 3x + 4 = 10"})
    assert consult["skills"][0]["skill_id"] == "math.equations"
    assert consult["insights"] == ["[answer] arithmetic repays a strong model"]
    assert {row["agent_id"] for row in consult["agents"]} == {"meta/llama-70b", "tiny"}

    decision = await call(
        mcp_client,
        "route_step",
        {"text": "solve for x: 3x + 4 = 10", "skills": [{"skill_id": "math.equations", "weight": 1.0}], "lambda_": 0},
    )
    assert decision["skills"] == [{"skill_id": "math.equations", "weight": 1.0}]
    assert decision["candidates"][0]["contributions"] == {"math.equations": pytest.approx(0.5)}
    chosen = decision["agent_id"]
    outcome = await call(mcp_client, "record_outcome", {"decision_id": decision["decision_id"], "success": True})
    [update] = outcome["updated"]
    assert update == {
        "skill_id": "math.equations",
        "alpha": 2.0,
        "beta": 1.0,
        "mean": pytest.approx(2 / 3, rel=1e-3),
        "competence": update["competence"],
    }
    after = await call(mcp_client, "consult_handbook", {"text": "solve for x: 3x + 4 = 10"})
    mean = {row["agent_id"]: row["mean"] for row in after["agents"] if row["skill_id"] == "math.equations"}
    other = next(a for a in mean if a != chosen)
    assert mean[chosen] > mean[other]
    assert update["competence"] == mean[chosen]  # what consult shows next, to the same four digits


async def test_record_outcome_is_idempotent_and_refuses_conflicts(mcp_client: Client) -> None:
    await two_agent_handbook(mcp_client)
    decision = await call(mcp_client, "route_step", {"text": "write python code for a parser"})
    first = await call(mcp_client, "record_outcome", {"decision_id": decision["decision_id"], "reward": 0.25})
    again = await call(mcp_client, "record_outcome", {"decision_id": decision["decision_id"], "reward": 0.25})
    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["updated"] == first["updated"]
    text = await error_text(mcp_client, "record_outcome", {"decision_id": decision["decision_id"], "reward": 0.75})
    assert "already reported" in text


async def test_infrastructure_errors_never_touch_competence(mcp_client: Client) -> None:
    await two_agent_handbook(mcp_client)
    decision = await call(
        mcp_client, "route_step", {"text": "solve for x", "skills": [{"skill_id": "math", "weight": 1}]}
    )
    outcome = await call(
        mcp_client,
        "record_outcome",
        {"decision_id": decision["decision_id"], "error_class": "timeout", "cost_usd": 0.002, "latency_s": 30},
    )
    assert outcome["updated"] == [] and outcome["reward"] is None
    text = await error_text(
        mcp_client, "record_outcome", {"decision_id": decision["decision_id"], "error_class": "timeout", "reward": 1}
    )
    assert "infrastructure" in text or "already reported" in text


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("route_step", {"text": "x", "lambda_": -0.5}, "lambda_"),
        ("route_step", {"text": "x", "skills": [{"skill_id": "math.equatoins", "weight": 1}]}, "math.equations"),
        ("route_step", {"text": "x", "skills": [{"skill_id": "math", "weight": 0}]}, "sum to a positive number"),
        ("route_step", {"text": "x" * 32_001}, "text"),
        ("route_step", {"text": "x", "allowed_agents": ["nobody"]}, "unknown agent"),
        ("route_step", {"text": "x", "mode": "nomode"}, "unknown mode"),
        ("record_outcome", {"decision_id": "missing", "success": True}, "unknown decision"),
        ("record_outcome", {"decision_id": "missing", "reward": 1.5}, "reward"),
        # what models typically get wrong, told how to put right (LLM-surface QA)
        ("record_outcome", {"decision_id": "missing", "reward": 7}, "reward=7: expected a fraction in [0, 1]: a grade"),
        ("route_step", {"text": "x", "skills": [{"skill_id": "*", "weight": 1}]}, "'*' is an agent's overall record"),
        ("route_step", {"text": "x", "skills": [{"skill_id": "answer", "weight": 1}]}, "'answer' is a mode (pass it"),
        ("upsert_skill", {"skill_id": "child", "parent_id": "nope"}, "unknown skill"),
        ("upsert_agent", {"agent_id": "a", "input_per_mtok": -1}, "input_per_mtok"),
        ("upsert_agent", {"agent_id": "tiny", "clear_prices": True, "output_per_mtok": 1.0}, "clear_prices"),
        ("delete_agent", {"agent_id": "tinny"}, "closest known: tiny"),
        ("list_skills", {"cursor": "garbage"}, "cursor"),
        ("consult_handbook", {"text": "   "}, "text"),
        ("record_outcome", {"decision_id": "missing", "success": True, "costusd": 0.1}, "costusd"),
        ("upsert_agent", {"agent_id": "new", "api_base": "http://elsewhere"}, "api_base"),
        ("route_step", {"text": "x", "lamda": 0.5}, "lamda: not an argument of route_step (did you mean lambda_?)"),
        # values of the wrong JSON type are refused, not coerced into data
        ("route_step", {"text": "x", "lambda_": "0.5"}, "lambda_"),
        ("route_step", {"text": "x", "lambda_": True}, "lambda_"),
        ("route_step", {"text": "x", "top_k": 2.5}, "top_k"),
        ("record_outcome", {"decision_id": "missing", "success": "yes"}, "success"),
        ("record_outcome", {"decision_id": "missing", "reward": True}, "reward"),
        ("upsert_agent", {"agent_id": "tiny", "enabled": "off"}, "enabled"),
        ("upsert_agent", {"agent_id": "tiny", "input_per_mtok": "3"}, "input_per_mtok"),
        ("route_step", {"text": "x", "skills": [{"skill_id": "math", "weight": True}]}, "weight"),
        ("route_step", {"text": "x", "skills": [{"skill_id": "math", "weight": "0.5"}]}, "weight"),
        # a huge price swamped c_ref (an infinite one, sent as raw JSON, is refused by the models: test_models.py)
        ("upsert_agent", {"agent_id": "big", "output_per_mtok": 1e300}, "output_per_mtok"),
        ("record_outcome", {"decision_id": "missing", "success": True, "cost_usd": 1e308}, "cost_usd"),
        ("record_outcome", {"decision_id": "missing", "success": True, "prompt_tokens": 10**20}, "prompt_tokens"),
        ("record_outcome", {"decision_id": "missing", "success": True, "latency_s": 1e12}, "latency_s"),
        # a seed beyond any float was an internal error (OverflowError), not the caller's
        ("route_step", {"text": "x", "strategy": "thompson", "seed": 10**400}, "seed"),
        ("delegate", {"text": "x", "seed": 2**32}, "seed"),
        # blank ids were a traceback; " x " means "x" for every tool alike
        ("upsert_agent", {"agent_id": "   "}, "agent_id"),
        ("upsert_agent", {"agent_id": "a", "modes": ["  "]}, "modes"),
        ("upsert_skill", {"skill_id": "s", "parent_id": " "}, "parent_id"),
        ("upsert_mode", {"mode_id": " "}, "mode_id"),
        ("upsert_mode", {"mode_id": "m", "insights": ["  "]}, "insights"),
        ("route_step", {"text": "x", "session_id": ""}, "session_id"),
        ("list_skills", {"cursor": "o\u00b2"}, "cursor"),
        ("list_agents", {"cursor": "o\u0663"}, "cursor"),
        ("list_agents", {"mode": "nomode"}, "unknown mode"),
        ("list_skills", {"mode": "nomode"}, "unknown mode"),
        # an empty id is refused by the schema, naming the argument
        ("route_step", {"text": "x", "mode": ""}, "mode"),
        ("consult_handbook", {"text": "x", "mode": " "}, "mode"),
        ("list_agents", {"mode": ""}, "mode"),
        ("delegate", {"text": "x", "agent_id": ""}, "agent_id"),
        ("learn_handbook", {"orchestrator": " "}, "orchestrator"),
    ],
)
async def test_bad_input_is_a_tool_error_naming_the_field_and_writes_nothing(
    mcp_client: Client, db_path: Any, tool: str, args: dict[str, Any], expected: str
) -> None:
    await two_agent_handbook(mcp_client)
    before = _snapshot(db_path)
    text = await error_text(mcp_client, tool, args)
    assert expected in text
    assert _snapshot(db_path) == before


def _snapshot(db_path: Any) -> tuple[Any, ...]:
    store = HandbookStore(db_path)
    try:
        return store.document().model_dump_json(), store.counts()
    finally:
        store.close()


async def test_an_upsert_changes_only_the_fields_it_names(mcp_client: Client, db_path: Any) -> None:
    await two_agent_handbook(mcp_client)
    await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "description": "small", "modes": ["answer"]})
    disabled = await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "enabled": False})
    assert disabled == {
        "id": "tiny",
        "description": "small",
        "modes": ["answer"],
        "input_per_mtok": 0.05,
        "output_per_mtok": 0.05,
        "enabled": False,
        "cost_per_call_usd": None,
    }
    priced = await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "cost_per_call_usd": 0.002})
    assert (priced["cost_per_call_usd"], priced["input_per_mtok"]) == (0.002, 0.05)
    cleared = await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "clear_prices": True})
    assert (cleared["cost_per_call_usd"], cleared["input_per_mtok"], cleared["output_per_mtok"]) == (None,) * 3
    await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "input_per_mtok": 0.05, "output_per_mtok": 0.05})
    skill = await call(mcp_client, "upsert_skill", {"skill_id": "math.equations", "description": "equations"})
    assert (skill["parent_id"], skill["mode"], skill["indicators"]) == ("math", "answer", ["solve for x"])
    top = await call(mcp_client, "upsert_skill", {"skill_id": "math.equations", "parent_id": ""})
    assert top["parent_id"] is None and top["description"] == "equations" and top["mode"] == "answer"
    mode = await call(mcp_client, "upsert_mode", {"mode_id": "answer", "description": "final answers"})
    assert mode["insights"] == ["arithmetic repays a strong model"]
    new = await call(mcp_client, "upsert_skill", {"skill_id": "poetry"})
    assert (new["mode"], new["parent_id"], new["description"]) == ("general", None, "")
    child = await call(mcp_client, "upsert_skill", {"skill_id": "math.fractions", "parent_id": "math"})
    assert (child["mode"], child["parent_id"]) == ("answer", "math")  # a new child takes its parent's mode
    cleared = await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "description": "", "modes": []})
    assert (cleared["description"], cleared["modes"], cleared["input_per_mtok"]) == ("", [], 0.05)
    before = _snapshot(db_path)
    assert "modes" in await error_text(mcp_client, "upsert_agent", {"agent_id": "tiny", "modes": ["nomode"]})
    assert _snapshot(db_path) == before
    again = await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "enabled": False})  # idempotent
    assert again == cleared and _snapshot(db_path)[0] == before[0]


async def test_concurrent_upserts_of_different_fields_all_land(mcp_client: Client) -> None:
    """Sync tools run on worker threads: each edit reads, merges and writes in one transaction, or one would undo
    the other."""
    import anyio

    agents = [f"a{i}" for i in range(20)]
    for agent in agents:
        await call(mcp_client, "upsert_agent", {"agent_id": agent})
    edits = [{"enabled": False}, {"input_per_mtok": 7.0}, {"description": "d"}]
    async with anyio.create_task_group() as group:
        for agent in agents:
            for edit in edits:
                group.start_soon(call, mcp_client, "upsert_agent", {"agent_id": agent, **edit})
    listed = (await call(mcp_client, "list_agents", {"limit": 50}))["items"]
    assert [(a["enabled"], a["input_per_mtok"], a["description"]) for a in listed] == [(False, 7.0, "d")] * 20


async def test_text_that_looks_like_json_is_kept_as_text(mcp_client: Client) -> None:
    """Only list and object arguments are decoded from a JSON string; a description stays what was written."""
    for text in ('["fast", "cheap"]', '{"tier": "fast"}', "null", "3"):
        agent = await call(mcp_client, "upsert_agent", {"agent_id": "a", "description": text})
        skill = await call(mcp_client, "upsert_skill", {"skill_id": "s", "description": text})
        assert agent["description"] == skill["description"] == text


async def test_whole_numbers_and_json_encoded_lists_are_still_accepted(mcp_client: Client) -> None:
    await two_agent_handbook(mcp_client)
    decision = await call(
        mcp_client,
        "route_step",
        {
            "text": "solve for x",
            "lambda_": 1,
            "top_k": 2.0,
            "allowed_agents": '["tiny"]',
            "skills": '[{"skill_id": "math", "weight": 1}]',
        },
    )
    assert decision["agent_id"] == "tiny" and len(decision["candidates"]) == 1


async def test_null_for_an_optional_argument_means_left_out(mcp_client: Client, db_path: Any) -> None:
    """Some clients send every optional argument, null where the user gave none (QA: route_step's lambda_=null and
    upsert_agent's clear_prices=null were refused); a required argument stays required."""
    await two_agent_handbook(mcp_client)
    for n in range(4):  # six agents: top_k's default (5) shows
        await call(
            mcp_client, "upsert_agent", {"agent_id": f"extra-{n}", "input_per_mtok": 1.0, "output_per_mtok": 1.0}
        )
    nulls = {"lambda_": None, "strategy": None, "top_k": None, "mode": None, "max_cost_usd": None, "seed": None}
    decision = await call(mcp_client, "route_step", {"text": "solve for x", **nulls})
    assert len(decision["candidates"]) == 5  # top_k's default
    assert decision["propensity"] == 1.0 and decision["explored"] is False  # mean (thompson would explore six)
    assert decision["candidates"][0]["utility"] == pytest.approx(await _utility_at_default_lambda(mcp_client))
    kept = await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "clear_prices": None, "enabled": None})
    assert kept["input_per_mtok"] == 0.05 and kept["enabled"] is True
    consulted = await call(
        mcp_client, "consult_handbook", {"text": "solve for x", "top_k": None, "agents_per_skill": None}
    )
    assert consulted["skills"]
    before = _snapshot(db_path)
    assert "text" in await error_text(mcp_client, "route_step", {"text": None})
    assert _snapshot(db_path) == before


async def _utility_at_default_lambda(client: Client) -> float:
    """The best candidate's utility with lambda_ left out: what a null lambda_ must give."""
    return (await call(client, "route_step", {"text": "solve for x"}))["candidates"][0]["utility"]


async def test_unknown_tool_is_a_protocol_error(mcp_client: Client) -> None:
    with pytest.raises(MCPError) as caught:
        await mcp_client.call_tool("no_such_tool", {})
    assert caught.value.error.code == -32602


async def test_a_cursor_on_a_list_that_has_one_page_is_invalid_params(mcp_client: Client) -> None:
    """No list here is paged (no nextCursor is sent), so a cursor is one the server never gave: the spec wants
    -32602, and the SDK answered the whole list (QA)."""
    assert (await mcp_client.list_tools()).next_cursor is None
    for listing in (mcp_client.list_tools, mcp_client.list_resources, mcp_client.list_prompts):
        with pytest.raises(MCPError) as caught:
            await listing(cursor="bogus")
        assert caught.value.error.code == -32602 and "invalid cursor" in caught.value.error.message


async def test_the_prompts_argument_is_described(mcp_client: Client) -> None:
    (prompt,) = (await mcp_client.list_prompts()).prompts
    goal, orchestrator = prompt.arguments or []
    assert goal.name == "goal" and goal.required and "task" in (goal.description or "")
    assert orchestrator.name == "orchestrator" and not orchestrator.required
    assert "depth" in (orchestrator.description or "")


async def test_a_prompt_without_its_required_argument_is_invalid_params_naming_it(mcp_client: Client) -> None:
    with pytest.raises(MCPError) as caught:
        await mcp_client.get_prompt("orchestrate", {})
    assert caught.value.error.code == -32602 and "goal" in caught.value.error.message


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("nope", {}, "Unknown prompt: nope"),
        ("orchestrate", {"goal": "g", "budget": "1"}, "takes no argument(s) budget"),
        ("orchestrate", {"goal": "g" * 32_001}, "goal longer than 32,000 characters"),
        ("orchestrate", {"goal": "  "}, "needs the argument(s): goal (non-empty text)"),  # QA: an empty Goal section
    ],
)
async def test_a_bad_prompt_request_is_invalid_params_saying_what_is_wrong(
    mcp_client: Client, name: str, arguments: dict[str, str], says: str
) -> None:
    with pytest.raises(MCPError) as caught:
        await mcp_client.get_prompt(name, arguments)
    assert caught.value.error.code == -32602 and says in caught.value.error.message


async def test_lists_paginate(mcp_client: Client) -> None:
    for i in range(7):
        await call(mcp_client, "upsert_skill", {"skill_id": f"s{i}", "description": f"skill {i}"})
    first = await call(mcp_client, "list_skills", {"limit": 3})
    assert [s["id"] for s in first["items"]] == ["s0", "s1", "s2"]
    second = await call(mcp_client, "list_skills", {"limit": 3, "cursor": first["next_cursor"]})
    third = await call(mcp_client, "list_skills", {"limit": 3, "cursor": second["next_cursor"]})
    assert [s["id"] for s in third["items"]] == ["s6"] and third["next_cursor"] is None
    for i in range(4):
        await call(mcp_client, "upsert_agent", {"agent_id": f"s{i}"})  # ids that are skills' ids too
    agents = await call(mcp_client, "list_agents", {"limit": 2})
    # QA: one list's cursor was taken by the other, which then skipped every item sorting before its id
    text = await error_text(mcp_client, "list_skills", {"limit": 3, "cursor": agents["next_cursor"]})
    assert "a next_cursor value returned by an earlier list_skills call" in text
    text = await error_text(mcp_client, "list_agents", {"limit": 3, "cursor": first["next_cursor"]})
    assert "a next_cursor value returned by an earlier list_agents call" in text


async def test_list_cursors_neither_skip_nor_repeat_when_items_change_between_pages(mcp_client: Client) -> None:
    for i in range(6):
        await call(mcp_client, "upsert_agent", {"agent_id": f"agent-{i}"})
    first = await call(mcp_client, "list_agents", {"limit": 3})
    assert [a["id"] for a in first["items"]] == ["agent-0", "agent-1", "agent-2"]
    await call(mcp_client, "upsert_agent", {"agent_id": "agent-00"})  # sorts into the page already served
    await call(mcp_client, "delete_agent", {"agent_id": "agent-1"})
    rest = await call(mcp_client, "list_agents", {"limit": 3, "cursor": first["next_cursor"]})
    assert [a["id"] for a in rest["items"]] == ["agent-3", "agent-4", "agent-5"] and rest["next_cursor"] is None
    spaced = await call(mcp_client, "upsert_agent", {"agent_id": " agent-9 "})
    assert spaced["id"] == "agent-9"
    assert (await call(mcp_client, "delete_agent", {"agent_id": " agent-9 "}))["id"] == "agent-9"


async def test_an_agents_prices_can_be_cleared(mcp_client: Client) -> None:
    """null leaves a price as it is, so clearing a wrong one takes its own argument; routing then charges c_ref."""
    await two_agent_handbook(mcp_client)
    kept = await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "description": "small", "input_per_mtok": None})
    assert (kept["input_per_mtok"], kept["output_per_mtok"]) == (0.05, 0.05)
    cleared = await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "clear_prices": True})
    assert (cleared["input_per_mtok"], cleared["output_per_mtok"], cleared["description"]) == (None, None, "small")
    routed = await call(mcp_client, "route_step", {"text": "solve for x", "lambda_": 0.0, "top_k": 2})
    costs = {c["agent_id"]: c["expected_cost_usd"] for c in routed["candidates"]}
    assert costs["tiny"] is None and costs["meta/llama-70b"] > 0  # unknown now, not $0.05 per million


async def test_delete_skill_and_agent(mcp_client: Client) -> None:
    await two_agent_handbook(mcp_client)
    text = await error_text(mcp_client, "delete_skill", {"skill_id": "math"})
    assert "math.equations" in text  # children first
    removed = await call(mcp_client, "delete_skill", {"skill_id": "math.equations"})
    assert removed == {"kind": "skill", "id": "math.equations", "competence_rows": 0, "cost_rows": 0}
    removed = await call(mcp_client, "delete_agent", {"agent_id": "tiny"})
    assert removed["id"] == "tiny"
    agents = await call(mcp_client, "list_agents", {})
    assert [a["id"] for a in agents["items"]] == ["meta/llama-70b"]


async def test_resources_and_prompt(mcp_client: Client) -> None:
    await two_agent_handbook(mcp_client)
    listed = {str(r.uri) for r in (await mcp_client.list_resources()).resources}
    assert {"handbook://skills", "handbook://agents", "handbook://stats"} <= listed
    templates = {t.uri_template for t in (await mcp_client.list_resource_templates()).resource_templates}
    assert {"handbook://skills/{skill_id}", "handbook://agents/{agent_id}"} <= templates
    routed = await call(mcp_client, "route_step", {"text": "x" * 800, "allowed_agents": ["meta/llama-70b"]})
    await call(mcp_client, "record_outcome", {"decision_id": routed["decision_id"], "success": True, "cost_usd": 0.01})
    agent = await mcp_client.read_resource("handbook://agents/meta%2Fllama-70b")
    card = json.loads(agent.contents[0].text)  # type: ignore[union-attr]
    assert card["id"] == "meta/llama-70b"
    demanded = {d["skill_id"] for d in routed["skills"]}
    lengths = [s["usual_step_tokens"] for s in card["skills"] if s["skill_id"] in demanded]
    assert lengths and all(n == pytest.approx(200.0) for n in lengths)  # 800 characters, the router's estimate
    await call(mcp_client, "upsert_agent", {"agent_id": "a%41b"})  # decoded once: a '%' in an id survives
    percent = await mcp_client.read_resource("handbook://agents/a%2541b")
    assert json.loads(percent.contents[0].text)["id"] == "a%41b"  # type: ignore[union-attr]
    padded = await mcp_client.read_resource("handbook://agents/%20a%2541b%0A")  # ids are stripped, as tools do
    assert json.loads(padded.contents[0].text)["id"] == "a%41b"  # type: ignore[union-attr]
    listed_skills = await mcp_client.read_resource("handbook://skills")
    listed = json.loads(listed_skills.contents[0].text)  # type: ignore[union-attr]
    listing = listed["skills"]
    assert listed["not_shown"] == 0 and "rest" not in listed
    assert all(set(entry) == {"id", "mode", "parent_id", "description"} for entry in listing)  # the rest: per skill
    # the agent's page lists the skills it has evidence on and counts the others
    assert {s["skill_id"] for s in card["skills"]} >= demanded and all(s["n"] > 0 for s in card["skills"])
    assert len(card["skills"]) + card["skills_without_evidence"] == len(listing) > len(card["skills"])
    skill = await mcp_client.read_resource("handbook://skills/math.equations")
    assert json.loads(skill.contents[0].text)["parent_id"] == "math"  # type: ignore[union-attr]
    stats = await mcp_client.read_resource("handbook://stats")
    assert "schema_version" in json.loads(stats.contents[0].text)  # type: ignore[union-attr]
    prompt = await mcp_client.get_prompt("orchestrate", {"goal": "plan a trip"})
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert "plan a trip" in text and "record_outcome" in text and "route_step" in text
    # delegate routes by itself: a loop that routed first and then delegated would make two decisions per step
    assert "never both for one step" in text and "route_step(" in text.split("delegate(", 1)[1]
    assert "orchestrator=" not in text  # told only to a model with a name for its learned depth
    named = await mcp_client.get_prompt("orchestrate", {"goal": "plan a trip", "orchestrator": " qwen2.5-3b "})
    text = named.messages[0].content.text  # type: ignore[union-attr]
    assert 'Pass orchestrator="qwen2.5-3b" to consult_handbook, route_step and delegate' in text


async def test_ids_shaped_like_paths_are_readable_as_resources(mcp_client: Client) -> None:
    """Ids are keys, not paths: the SDK's default policy refused a vLLM model path and a drive-letter shape (QA)."""
    for agent_id in ("/models/qwen2.5-7b", "x:tiny", "C:\\models\\q"):
        await call(mcp_client, "upsert_agent", {"agent_id": agent_id})
        page = await mcp_client.read_resource(f"handbook://agents/{quote(agent_id, safe='')}")
        assert json.loads(page.contents[0].text)["id"] == agent_id  # type: ignore[union-attr]
    await call(mcp_client, "upsert_mode", {"mode_id": "answer"})
    await call(mcp_client, "upsert_skill", {"skill_id": "/abs/skill", "mode": "answer", "description": "d"})
    page = await mcp_client.read_resource("handbook://skills/%2Fabs%2Fskill")
    assert json.loads(page.contents[0].text)["id"] == "/abs/skill"  # type: ignore[union-attr]
    with pytest.raises(MCPError, match="unknown agent '/not/there'"):  # not "Unknown resource"
        await mcp_client.read_resource("handbook://agents/%2Fnot%2Fthere")
    with pytest.raises(MCPError, match="unknown skill '/ABS/skill'; closest known: /abs/skill"):  # as tools hint
        await mcp_client.read_resource("handbook://skills/%2FABS%2Fskill")


async def test_budget_and_max_cost_exclude_agents(mcp_client: Client) -> None:
    await two_agent_handbook(mcp_client)
    step = {"text": "solve for x", "session_id": "s1", "allowed_agents": ["tiny"]}
    first = await call(mcp_client, "route_step", step)
    await call(mcp_client, "record_outcome", {"decision_id": first["decision_id"], "success": True, "cost_usd": 0.5})
    decision = await call(  # $0.0003 left: the other agent's $0.00023 fits, tiny's recorded $0.5 does not
        mcp_client,
        "route_step",
        {"text": "solve for x: 2x = 4", "session_id": "s1", "budget_usd": 0.5003, "max_cost_usd": 1.0},
    )
    assert decision["session_spend_usd"] == pytest.approx(0.5)
    excluded = {e["agent_id"]: e["reason"] for e in decision["excluded"]}
    assert first["agent_id"] in excluded and "budget" in excluded[first["agent_id"]]
    text = await error_text(mcp_client, "route_step", {"text": "x", "session_id": "s1", "budget_usd": 0.1})
    assert "no agent satisfies" in text


async def test_thompson_reports_propensity(mcp_client: Client) -> None:
    await two_agent_handbook(mcp_client)
    decision = await call(mcp_client, "route_step", {"text": "solve for x", "strategy": "thompson", "seed": 7})
    assert 0.0 < decision["propensity"] <= 1.0
    again = await call(mcp_client, "route_step", {"text": "solve for x", "strategy": "thompson", "seed": 7})
    assert again["agent_id"] == decision["agent_id"]


def test_inlined_definitions_keep_the_schema_and_leave_a_recursive_one_alone() -> None:
    from pydantic import BaseModel

    from skillorchestra.handbook.results import RouteDecision
    from skillorchestra.tools.schemas import inline_definitions

    schema = RouteDecision.model_json_schema()
    inlined = inline_definitions(schema)
    assert "$defs" not in inlined and inlined["properties"]["candidates"]["items"] == schema["$defs"]["Candidate"]

    class Tree(BaseModel):
        children: list[Tree]

    recursive = Tree.model_json_schema()
    assert inline_definitions(recursive) == recursive


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_handbook_file_locked_past_the_busy_timeout_is_a_tool_error_saying_so(is_async: bool) -> None:
    import sqlite3

    from mcp.server.mcpserver.exceptions import ToolError

    from skillorchestra.tools.common import reports_failures

    def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    async def locked_async() -> None:
        locked()

    def broken() -> None:
        raise sqlite3.OperationalError("no such table: agents")

    with pytest.raises(ToolError, match="the handbook file is busy"):
        await reports_failures(locked_async)() if is_async else reports_failures(locked)()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # a bug is not the caller's to fix
        reports_failures(broken)()


async def test_long_listings_stay_under_the_sse_clients_event_cap(mcp_client: Client) -> None:
    """QA: list_agents at its maximum limit, and handbook://agents, sent over 1 MiB (the text and the structured
    copy), which the SSE client refuses, closing the connection. Pages now stop at 256 KiB of JSON (never empty) and
    the listing resources cut descriptions to 200 characters."""
    from skillorchestra.handbook.paging import PAGE_BYTES_MAX

    for i in range(150):
        await call(mcp_client, "upsert_agent", {"agent_id": f"verbose-{i:03d}", "description": f"{i} " + "w" * 3990})
    seen: list[str] = []
    cursor = None
    while True:
        page = await call(mcp_client, "list_agents", {"limit": 200, **({"cursor": cursor} if cursor else {})})
        assert len(json.dumps(page["items"])) <= PAGE_BYTES_MAX + 4100 and page["items"]
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 150 and len(seen) > len(page["items"])  # every agent once, over pages
    listing = json.loads((await mcp_client.read_resource("handbook://agents")).contents[0].text)["agents"]  # type: ignore[union-attr]
    assert len(listing) == 150 and all(len(a["description"]) <= 200 for a in listing)
    assert listing[0]["description"].endswith("…")
    whole = json.loads((await mcp_client.read_resource("handbook://agents/verbose-000")).contents[0].text)  # type: ignore[union-attr]
    assert len(whole["description"]) == 3992


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_resources_of_a_large_handbook_stay_within_a_page_and_say_what_they_left_out(
    tmp_path: Path, anyio_backend: str
) -> None:
    """QA: at 12,000 skills handbook://skills was 1.6 MB (the SSE client refused it and closed the connection) and an
    agent with evidence on 1,500 skills had a 250 KB page. Rows stop at RESOURCE_BYTES_MAX; the page of an agent or
    a skill shows the rows with most evidence first; each says how many it left out and where they are."""
    from skillorchestra.handbook.models import Agent, Competence, HandbookDocument, Mode, Skill
    from skillorchestra.server.resources import RESOURCE_BYTES_MAX

    n_skills = 4000
    skills = [Skill(id=f"s{k:05d}", mode="answer", description=f"skill {k} " + "d" * 150) for k in range(n_skills)]
    competence = [Competence(agent_id="a", skill_id=s.id, alpha=1.0 + k, beta=2.0) for k, s in enumerate(skills)]
    competence.append(Competence(agent_id="b", skill_id="s00007", alpha=60.0, beta=42.0))  # more than a's 8 there
    document = HandbookDocument(
        modes=[Mode(id="answer")], skills=skills, agents=[Agent(id="a"), Agent(id="b")], competence=competence
    )
    store = HandbookStore(tmp_path / "big.db")
    store.create_version(document, source="import", summary="large")
    store.close()
    async with Client(create_server(ServerSettings(db_path=tmp_path / "big.db"))) as client:
        listed = json.loads((await client.read_resource("handbook://skills")).contents[0].text)  # type: ignore[union-attr]
        page = json.loads((await client.read_resource("handbook://agents/a")).contents[0].text)  # type: ignore[union-attr]
        skill = json.loads((await client.read_resource("handbook://skills/s00007")).contents[0].text)  # type: ignore[union-attr]
    compact = {"separators": (",", ":"), "ensure_ascii": False}  # as the resources write JSON
    assert len(json.dumps(listed["skills"], **compact).encode()) <= RESOURCE_BYTES_MAX  # type: ignore[arg-type]
    assert listed["not_shown"] > 0 and len(listed["skills"]) + listed["not_shown"] == n_skills
    assert "list_skills" in listed["rest"] and listed["skills"][0]["id"] == "s00000"
    shown = page["skills"]
    assert len(json.dumps(shown, **compact).encode()) <= RESOURCE_BYTES_MAX and page["skills_not_shown"] > 0  # type: ignore[arg-type]
    assert len(shown) + page["skills_not_shown"] == n_skills and page["skills_without_evidence"] == 0
    assert shown[0]["skill_id"] == f"s{n_skills - 1:05d}"  # the most evidence first
    assert [row["n"] for row in shown] == sorted((row["n"] for row in shown), reverse=True)
    assert "handbook://skills/" in page["rest"] and "rest" not in skill  # a page says where the rest is
    assert [row["agent_id"] for row in skill["agents"]] == ["b", "a"] and skill["agents_not_shown"] == 0
    assert skill["agents"][0]["n"] > skill["agents"][1]["n"]  # the agent with most evidence first, not by id


def test_a_page_counts_bytes_not_characters() -> None:
    """Review: CJK or emoji descriptions are 3-4 bytes a character, so a page capped by characters still passed
    the SSE client's 1 MiB."""
    from skillorchestra.handbook.models import Agent
    from skillorchestra.handbook.paging import PAGE_BYTES_MAX, key_page

    agents = [Agent(id=f"a{i:03d}", description="中" * 4000) for i in range(101)]
    page, cursor = key_page(agents, 100, "agents")
    assert cursor == "ka." + page[-1].id and 0 < len(page) < 100
    assert sum(len(a.model_dump_json().encode()) for a in page) <= PAGE_BYTES_MAX


def _a_thread_waits_for_the_files_lock() -> bool:
    """Whether a thread of this process (the server's worker) is waiting for the file's write lock."""
    import sys

    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_lock_for_write":
                return True
            frame = frame.f_back  # type: ignore[assignment]
    return False


def _the_server_saw_a_cancellation() -> bool:
    """Whether the server's dispatcher took a notifications/cancelled for a request still in flight (it sets the
    request's cancel_requested; the in-memory server runs in this process)."""
    import gc

    from mcp.shared.jsonrpc_dispatcher import _JSONRPCDispatchContext

    return any(isinstance(o, _JSONRPCDispatchContext) and o.cancel_requested.is_set() for o in gc.get_objects())


async def test_a_route_step_its_client_gave_up_on_holds_none_of_the_sessions_budget(
    mcp_client: Client, db_path: Path
) -> None:
    """Protocol QA: a cancelled route_step wrote its decision all the same, and the SDK dropped the answer, so the
    decision held the session's budget for a day (the next step was refused as over budget) though the client never
    got its decision_id. The decision is withdrawn."""
    import sqlite3
    import time

    import anyio

    await two_agent_handbook(mcp_client)
    probe = await call(mcp_client, "route_step", {"text": "solve for x", "allowed_agents": ["tiny"]})
    step = {"text": "solve for x", "session_id": "s9", "allowed_agents": ["tiny"]}
    step["budget_usd"] = 1.5 * probe["candidates"][0]["expected_cost_usd"]  # room for one step, not two
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the file: the decision's write waits
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(call, mcp_client, "route_step", step)
            with anyio.fail_after(30):
                while not _a_thread_waits_for_the_files_lock():
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()  # the client gives up while the server routes
            # In legacy mode the cancellation is a JSON-RPC notification the server takes later, and the route must
            # not finish before it arrives (CI: released at once, it could, and the SDK drops the notification of a
            # request it has answered). In-memory modern mode cancels the server's handler at once.
            if mcp_client.mode == "legacy":
                with anyio.CancelScope(shield=True), anyio.fail_after(30):
                    while not _the_server_saw_a_cancellation():
                        await anyio.sleep(0.01)
            holder.execute("ROLLBACK")  # then the file is free: the route writes its decision
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()

    def session_decisions() -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            return conn.execute("SELECT expires_at FROM decisions WHERE session_id = 's9'").fetchall()

    with anyio.fail_after(30):  # the route finishes its write once the lock is free, then is withdrawn
        while not (rows := session_decisions()) or rows[0][0] > time.time():
            await anyio.sleep(0.02)
    assert len(rows) == 1
    again = await call(mcp_client, "route_step", step)  # the budget is the session's again
    assert again["agent_id"] == "tiny" and again["session_spend_usd"] == pytest.approx(0.0)
