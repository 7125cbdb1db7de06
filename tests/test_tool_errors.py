"""What a model reads when a tool call is wrong, through the real server and SDK client: every tool words a bad
argument alike (the field, what was expected, for an unknown argument the names the tool takes and the closest
one), ids no resource could name are refused, a mistyped mode is not created, an upsert that changes nothing
writes nothing, and expiry times read as UTC times."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from mcp import Client
from mcp_calls import call, loaded, priced_pair
from mcp_calls import refused as tool_error

from skillorchestra.server.app import create_server

pytestmark = pytest.mark.anyio

PAST = 1_000_000_000.0  # 2001-09-09T01:46:40Z
LATER = 1_795_436_949.0  # the epoch seconds of the QA report's expired decision


async def refused(client: Client, tool: str, args: dict[str, Any]) -> str:
    """The text of a refusal, which must be a tool result (is_error), never a protocol error."""
    text = await tool_error(client, tool, args)
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), text
    return text.removeprefix(prefix)


def file_state(db: Path) -> dict[str, list[Any]]:
    """Every row of every table, read through a connection of its own (the server keeps one open)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:  # `with conn` alone commits, never closes
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def small_handbook(client: Client) -> None:
    await call(client, "upsert_mode", {"mode_id": "answer"})
    await call(client, "upsert_mode", {"mode_id": "code"})
    await call(client, "upsert_skill", {"skill_id": "math", "mode": "answer", "description": "arithmetic"})
    await call(client, "upsert_agent", {"agent_id": "tiny", "modes": ["answer"], "input_per_mtok": 0.05})
    await call(client, "upsert_agent", {"agent_id": "big", "input_per_mtok": 3.0, "output_per_mtok": 9.0})


# -- argument errors: one wording for every tool ----------------------------------------------------------


async def test_every_tool_names_an_argument_it_does_not_take_and_the_ones_it_does(
    mcp_client: Client, db_path: Path
) -> None:
    await small_handbook(mcp_client)
    tools = (await mcp_client.list_tools()).tools
    assert len(tools) >= 10
    before = file_state(db_path)
    for tool in tools:
        names = list(tool.input_schema["properties"])
        text = await refused(mcp_client, tool.name, {"zz_unknown": 1})
        lines = text.split("\n")
        assert f"zz_unknown: not an argument of {tool.name}; it takes: {', '.join(names)}" in lines, text
        required = tool.input_schema.get("required", [])
        for name in required:  # every required argument left out is named too, one problem a line
            assert f"{name}: a required argument of {tool.name}, not given" in lines, text
        assert len(lines) == 1 + len(required), text
        for noise in ("validation error", "pydantic", "[type=", "Arguments", "input_value"):
            assert noise not in text, (tool.name, text)
    assert file_state(db_path) == before


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        (
            "route_step",
            {"text": "x", "lambda": 0.5},
            "lambda: not an argument of route_step (did you mean lambda_?); it takes: text, skills, mode, lambda_, ",
        ),
        (
            "record_outcome",
            {"decision_id": "d", "success": True, "cost": 0.01},
            "cost: not an argument of record_outcome (did you mean cost_usd?); it takes: decision_id, ",
        ),
        (
            "upsert_agent",
            {"agent_id": "a", "mode": ["answer"]},
            "mode: not an argument of upsert_agent (did you mean modes?); it takes: agent_id, ",
        ),
        (  # a field of a nested object: named by its path, with the fields that object takes
            "route_step",
            {"text": "x", "skills": [{"skill_id": "math", "weight": 1, "wieght": 1}]},
            "skills[0].wieght: not a field of skills[0] (did you mean weight?); it takes: skill_id, weight",
        ),
    ],
)
async def test_a_misspelt_argument_is_answered_with_the_name_meant(
    mcp_client: Client, tool: str, args: dict[str, Any], expected: str
) -> None:
    text = await refused(mcp_client, tool, args)
    assert text.startswith(expected), text


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("route_step", {"text": "x", "lambda_": "0.5"}, "lambda_='0.5': expected a valid number"),
        ("route_step", {"text": "x", "strategy": "best"}, "strategy='best': expected 'mean' or 'thompson'"),
        ("route_step", {"text": "x", "top_k": 2.5}, "top_k=2.5: expected a valid integer"),
        ("upsert_agent", {"agent_id": "a", "modes": ["  "]}, "modes[0]='  ': expected at least 1 character"),
        ("upsert_agent", {"agent_id": "a", "enabled": "off"}, "enabled='off': expected a valid boolean"),
        ("route_step", {"text": "x", "skills": [{"skill_id": "m", "weight": "1"}]}, "skills[0].weight='1': expected"),
        ("route_step", {"text": "x", "skills": [{"skill_id": "m"}]}, "skills[0].weight: a required field of skills[0]"),
        ("record_outcome", {"success": True}, "decision_id: a required argument of record_outcome, not given"),
        # fuzz QA: pydantic's "a valid string, unable to parse raw data as a unicode string" and "after validation"
        ("consult_handbook", {"text": "x", "mode": "a\udc00b"}, "mode='a\\udc00b': expected text of valid Unicode"),
        ("upsert_skill", {"skill_id": "s", "indicators": ["x"] * 51}, "indicators=['x', "),
        ("upsert_skill", {"skill_id": "s", "indicators": ["x"] * 51}, "expected at most 50 items, not 51"),
        # pydantic named its model class ("instance of StrictDemand")
        (
            "route_step",
            {"text": "x", "skills": [["m", 1]]},
            "skills[0]=['m', 1]: expected an object with skill_id, weight",
        ),
    ],
)
async def test_a_bad_value_reads_as_the_handbooks_own_errors_do(
    mcp_client: Client, tool: str, args: dict[str, Any], expected: str
) -> None:
    """ "field=value: expected what" (handbook/errors.first_problem), not pydantic's dump."""
    text = await refused(mcp_client, tool, args)
    assert (text.startswith(expected) or expected.startswith("expected") and expected in text) and "\n" not in text


# -- ids a resource URI cannot name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "field"),
    [
        ("upsert_agent", {"agent_id": ".."}, "agent_id='..'"),
        ("upsert_agent", {"agent_id": " . "}, "agent_id='.'"),  # stripped, as every id argument is
        ("upsert_skill", {"skill_id": "."}, "skill_id='.'"),
        ("upsert_mode", {"mode_id": ".."}, "mode_id='..'"),
    ],
)
async def test_dot_ids_are_refused_naming_the_field_and_why(
    mcp_client: Client, db_path: Path, tool: str, args: dict[str, Any], field: str
) -> None:
    await small_handbook(mcp_client)
    before = file_state(db_path)
    text = await refused(mcp_client, tool, args)
    assert text.startswith(f"{field}: expected an id other than '.' or '..'") and "resource URI" in text, text
    assert file_state(db_path) == before


async def test_ids_that_only_contain_dots_are_still_taken_and_readable(mcp_client: Client) -> None:
    for agent_id in ("a..b", "...", ".x"):
        assert (await call(mcp_client, "upsert_agent", {"agent_id": agent_id}))["id"] == agent_id
    read = await mcp_client.read_resource("handbook://agents/a..b")
    assert '"a..b"' in read.contents[0].text  # type: ignore[union-attr]


# -- a skill's mode -----------------------------------------------------------------------------------------


async def test_a_skill_given_an_unknown_mode_is_refused_as_an_agent_is_and_nothing_is_written(
    mcp_client: Client, db_path: Path
) -> None:
    await small_handbook(mcp_client)
    before = file_state(db_path)
    text = await refused(mcp_client, "upsert_skill", {"skill_id": "qa-s", "mode": "answr"})
    assert text == (
        "mode='answr': expected modes the handbook has (answer, code); closest known: answer;"
        " add a new mode with upsert_mode first"
    )
    moved = await refused(mcp_client, "upsert_skill", {"skill_id": "math", "mode": "cod"})  # an existing skill
    assert moved.startswith("mode='cod': expected modes the handbook has") and "closest known: code" in moved
    agent = await refused(mcp_client, "upsert_agent", {"agent_id": "qa-a", "modes": ["answr"]})
    assert agent.startswith("modes=['answr']: expected modes the handbook has (answer, code); closest known: answer")
    assert file_state(db_path) == before
    # a known mode is taken, a new skill without one takes its parent's
    assert (await call(mcp_client, "upsert_skill", {"skill_id": "py", "mode": "code"}))["mode"] == "code"
    child = await call(mcp_client, "upsert_skill", {"skill_id": "py.async", "parent_id": "py"})
    assert child["mode"] == "code"


@pytest.mark.parametrize("given", [{}, {"mode": "general"}])
async def test_a_new_skill_without_a_mode_takes_the_default_one_even_before_it_exists(
    mcp_client: Client, db_path: Path, given: dict[str, str]
) -> None:
    skill = await call(mcp_client, "upsert_skill", {"skill_id": "poetry", **given})
    assert (skill["mode"], skill["parent_id"]) == ("general", None)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT id FROM modes").fetchall() == [("general",)]


# -- an upsert that changes nothing ------------------------------------------------------------------------


async def test_an_upsert_that_changes_nothing_writes_nothing(mcp_client: Client, db_path: Path) -> None:
    """No event, no commit: another server sharing the file (which watches PRAGMA data_version) does not reload."""
    await small_handbook(mcp_client)
    agent = await call(mcp_client, "upsert_agent", {"agent_id": "tiny"})
    skill = await call(mcp_client, "upsert_skill", {"skill_id": "math"})
    with contextlib.closing(sqlite3.connect(db_path)) as watcher:
        version = watcher.execute("PRAGMA data_version").fetchone()[0]
        before = file_state(db_path)
        unchanged = [
            ("upsert_mode", {"mode_id": "answer"}),
            ("upsert_mode", {"mode_id": "code", "description": "", "insights": []}),
            ("upsert_agent", {"agent_id": "tiny", "enabled": True}),
            ("upsert_agent", {"agent_id": "tiny", "modes": ["answer"], "input_per_mtok": 0.05}),
            ("upsert_skill", {"skill_id": "math", "mode": "answer", "description": "arithmetic"}),
        ]
        results = [await call(mcp_client, tool, args) for tool, args in unchanged]
        assert results[2] == results[3] == agent and results[4] == skill  # the entity as it is stored
        assert results[0]["id"] == "answer"
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == version
        assert file_state(db_path) == before
        # a real change still lands, and the watcher sees it (so the check above could fail)
        assert (await call(mcp_client, "upsert_agent", {"agent_id": "tiny", "enabled": False}))["enabled"] is False
        assert watcher.execute("PRAGMA data_version").fetchone()[0] != version
        events = watcher.execute("SELECT kind FROM events ORDER BY seq").fetchall()
    assert events[-1] == ("upsert_agent",) and len(events) == len(before["events"]) + 1


# -- expiry times --------------------------------------------------------------------------------------------


async def test_an_expired_decisions_report_names_its_expiry_as_a_utc_time(mcp_client: Client, db_path: Path) -> None:
    await small_handbook(mcp_client)
    decision_id = (await call(mcp_client, "route_step", {"text": "add 2 and 2", "lambda_": 0}))["decision_id"]
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE decisions SET expires_at = ? WHERE id = ?", [PAST, decision_id])
    before = file_state(db_path)
    text = await refused(mcp_client, "record_outcome", {"decision_id": decision_id, "success": True})
    assert text == (
        f"decision {decision_id!r} expired at {iso(PAST)} (its time to live is SKILLORCHESTRA_DECISION_TTL"
        " seconds); route the step again"
    )
    assert iso(PAST) == "2001-09-09T01:46:40Z"
    assert file_state(db_path) == before


async def test_delegate_names_claim_and_expiry_times_as_utc_times(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    settings = loaded(tmp_path, priced_pair(fake_openai.api_base))
    db = settings.db_path
    async with Client(create_server(settings)) as client:
        decision_id = (await call(client, "route_step", {"text": "name a prime", "lambda_": 0}))["decision_id"]
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE decisions SET claimed_at = ? WHERE id = ?", [LATER, decision_id])
        claimed = await refused(client, "delegate", {"text": "name a prime", "decision_id": decision_id})
        assert f"a delegate has been carrying it out since {iso(LATER)}, or its server stopped" in claimed, claimed
        assert iso(LATER) == "2026-11-23T12:29:09Z"
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            # still claimed (its server died mid-call) and expired since: the remedy is a new route_step
            conn.execute("UPDATE decisions SET expires_at = ? WHERE id = ?", [PAST, decision_id])
        before = file_state(db)
        expired = await refused(client, "delegate", {"text": "name a prime", "decision_id": decision_id})
        assert expired.endswith("(it expired at 2001-09-09T01:46:40Z: route the step again)"), expired
        assert file_state(db) == before
    assert fake_openai.chat_requests() == []
