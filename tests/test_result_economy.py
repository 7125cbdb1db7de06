"""What a tool result costs the model that reads it: compact text, estimates to four significant digits, and
delegate's routing summary without a second set of decision ids. The service itself keeps full precision."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from mcp import Client
from mcp_calls import call, loaded, priced_pair

from skillorchestra.handbook.results import four_significant
from skillorchestra.server.app import create_server

pytestmark = pytest.mark.anyio
STEP = "Write a Python function that returns the n-th Fibonacci number, then explain its complexity."
ECHOED = {"lambda_", "expires_at", "reward", "judged_reward"}  # what the caller sent, or a time: sent unrounded


def estimates(value: Any, key: str = "") -> list[tuple[str, float]]:
    """Every float of a result with the field it sits in (a list's items take the list's name)."""
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in estimates(v, k)]
    if isinstance(value, list):
        return [found for item in value for found in estimates(item, key)]
    return [(key, value)] if isinstance(value, float) else []


def assert_economical(result: Any) -> dict[str, Any]:
    structured = result.structured_content
    [text] = result.content
    assert text.text == json.dumps(structured, ensure_ascii=False, separators=(",", ":"))
    rounded = [(k, v) for k, v in estimates(structured) if k not in ECHOED]
    assert rounded, f"the result carries estimates: {structured}"
    assert all(v == four_significant(v) for _, v in rounded), [kv for kv in rounded if kv[1] != four_significant(kv[1])]
    return structured


async def test_route_consult_and_record_send_compact_json_with_four_significant_digits(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    settings = loaded(tmp_path, priced_pair(fake_openai.api_base))
    async with Client(create_server(settings)) as client:
        await call(client, "upsert_skill", {"skill_id": "code", "description": "write a Python function"})
        for reward in (0.87654321, 0.1234567, 1.0):  # evidence that makes the estimates long fractions
            routed = await call(client, "route_step", {"text": STEP, "lambda_": 0.123456789})
            outcome = await call(client, "record_outcome", {"decision_id": routed["decision_id"], "reward": reward})
        consult = assert_economical(await client.call_tool("consult_handbook", {"text": STEP}))
        routed = assert_economical(await client.call_tool("route_step", {"text": STEP, "lambda_": 0.123456789}))
        outcome = assert_economical(
            await client.call_tool("record_outcome", {"decision_id": routed["decision_id"], "reward": 0.87654321})
        )
    assert consult["agents"] and routed["lambda_"] == 0.123456789 and outcome["reward"] == 0.87654321
    # the stored decision keeps what the router computed; only the answer to the model is rounded
    with contextlib.closing(sqlite3.connect(settings.db_path)) as conn:
        [(stored,)] = conn.execute("SELECT candidates FROM decisions WHERE id = ?", (routed["decision_id"],))
    utilities = [c["utility"] for c in json.loads(stored)]
    assert [four_significant(u) for u in utilities] == [c["utility"] for c in routed["candidates"]]
    assert any(u != four_significant(u) for u in utilities)


async def test_delegate_summarises_its_routing_without_a_second_decision(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    settings = loaded(tmp_path, priced_pair(fake_openai.api_base))
    async with Client(create_server(settings)) as client:
        for agent_id in ("ghost-1", "ghost-2"):  # known to the handbook, without connection settings
            await call(client, "upsert_agent", {"agent_id": agent_id})
        ranked = [c["agent_id"] for c in (await call(client, "route_step", {"text": STEP}))["candidates"]]
        first, second = (agent_id for agent_id in ranked if not agent_id.startswith("ghost"))
        fake_openai.behaviours[f"{first}-model"] = "FAIL500"
        result = assert_economical(await client.call_tool("delegate", {"text": STEP}))
    routing = result["routing"]
    assert "decision_id" not in routing and "agent_id" not in routing  # the answer's ids are the result's own
    assert [t["agent_id"] for t in result["tried"]] == [first, second] and result["agent_id"] == second
    assert [c["agent_id"] for c in routing["candidates"]] == [first, second]
    [(reason, agents)] = routing["excluded"].items()  # one reason, said once for every agent it covers
    assert "no connection settings" in reason and sorted(agents) == ["ghost-1", "ghost-2"]
