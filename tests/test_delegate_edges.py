"""delegate at its edges: replies without usage or choices, prices changed after `agents load`, lowered max_tokens,
a named agent that is refused, and a time budget too short for any try (MCP client -> server -> litellm -> fake)."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from fake_openai import FakeOpenAI
from mcp import Client
from mcp_calls import call, db_rows, loaded, priced_agent, priced_pair, refused, until_called

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.service import DelegateRequest, Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.agent_config import AgentConnection, parse_agent
from skillorchestra.server.app import create_server
from skillorchestra.server.delegation import (
    ANSWER_FLOOR_CHARS,
    ANSWER_JSON_BYTES_MAX,
    Delegator,
    _within_answer_cap,
    answer_cap,
)
from skillorchestra.server.llm_backend import BackendResult
from skillorchestra.server.settings import ServerSettings

pytestmark = pytest.mark.anyio


def agents_toml(api_base: str) -> str:
    return (
        priced_pair(api_base)
        + f"""
[agents.unpriced]
model = "openai/no-price-anywhere"
api_base = "{api_base}"
modes = ["answer"]
"""
    )


@pytest.fixture
def settings(tmp_path: Path, fake_openai: FakeOpenAI) -> ServerSettings:
    return loaded(tmp_path, agents_toml(fake_openai.api_base))


async def overall_n(client: Client, agent_id: str) -> float:
    card = json.loads((await client.read_resource(f"handbook://agents/{agent_id}")).contents[0].text)  # type: ignore[union-attr]
    return card["overall"]["n"]


def mean_cost(db: Path, agent_id: str) -> float | None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT mean_cost_usd FROM cost_stats WHERE agent_id = ?", [agent_id]).fetchone()
    return None if row is None else row[0]


async def test_a_reply_without_usage_is_billed_its_estimated_cost_everywhere(
    settings: ServerSettings, fake_openai: FakeOpenAI
) -> None:
    """litellm reports a missing usage as 0 tokens: that call must not be free for the session or the cost stats."""
    text = "NOUSAGE explain the proof in detail"
    async with Client(create_server(settings)) as client:
        result = await call(client, "delegate", {"text": text, "agent_id": "strong", "session_id": "s"})
        answer = f"answer[strong-model]: {text}"
        assert result["answer"] == answer
        expected = (math.ceil(len(text) / 4) * 10.0 + math.ceil(len(answer) / 4) * 30.0) / 1e6
        assert result["cost_usd"] == pytest.approx(expected) and result["cost_source"] == "estimated"
        assert result["prompt_tokens"] is None and result["completion_tokens"] is None  # the backend did not say
        assert any("reported no token usage" in w for w in result["warnings"])
        routed = await call(client, "route_step", {"text": "next", "session_id": "s"})
        assert routed["session_spend_usd"] == pytest.approx(expected)
        outcome = await call(client, "record_outcome", {"decision_id": result["decision_id"], "success": True})
        assert outcome["cost_usd"] == pytest.approx(expected)
    assert mean_cost(settings.db_path, "strong") == pytest.approx(expected)


async def test_an_answer_far_beyond_max_tokens_is_cut_with_a_warning(
    settings: ServerSettings, fake_openai: FakeOpenAI
) -> None:
    """QA: a backend ignoring max_tokens 16 sent 20 MB, passed on whole as text and structured content."""
    fake_openai.responder = lambda body: "word " * 60_000  # 300,000 characters
    async with Client(create_server(settings)) as client:
        result = await call(client, "delegate", {"text": "x", "agent_id": "strong", "max_tokens": 16})
    cap = answer_cap(parse_agent("strong", {"model": "m"}), 16)
    assert cap == ANSWER_FLOOR_CHARS and len(result["answer"]) == cap
    assert any(f"cut at {cap:,} characters of 300,000" in w for w in result["warnings"])
    assert result["cost_usd"] is not None and result["completion_tokens"] == 60_000  # billed as the backend said
    async with Client(create_server(settings)) as client:  # review: a huge max_tokens lifted the cap
        lifted = await call(client, "delegate", {"text": "y", "agent_id": "strong", "max_tokens": 1_000_000})
    assert len(lifted["answer"]) == ANSWER_FLOOR_CHARS  # the call went out capped at max_output_tokens (1024)
    assert answer_cap(parse_agent("strong", {"model": "m"}), 1_000_000) == ANSWER_FLOOR_CHARS
    assert answer_cap(parse_agent("strong", {"model": "m", "max_output_tokens": 50_000}), 1_000_000) == 800_000


@pytest.mark.parametrize("unit", ['"', "\u5b57", "a", "\U0001f600"])  # 2, 3, 1 and 4 bytes in the JSON
def test_an_answer_is_kept_within_what_a_client_takes_in_one_message(unit: str) -> None:
    """Review: with a large max_output_tokens the cap in characters let through an answer whose result (it carries
    the answer twice) passed the 1 MiB an SDK client takes in one server-sent event: the call was made, the caller
    never got it. The answer is cut to ANSWER_JSON_BYTES_MAX bytes of JSON, with a warning, wherever the limit falls."""
    conn = parse_agent("long", {"model": "m", "max_output_tokens": 100_000})
    answer = "x" + unit * 500_000
    kept = _within_answer_cap(BackendResult(answer=answer, cost_usd=0.01), conn, None)
    size = len(json.dumps(kept.answer, ensure_ascii=False).encode())
    assert size <= ANSWER_JSON_BYTES_MAX and answer.startswith(kept.answer)
    assert size + 6 > ANSWER_JSON_BYTES_MAX  # the longest head that fits: one more character would not
    assert kept.warnings == [
        f"answer of long cut at {len(kept.answer):,} characters of {len(answer):,}: a delegate result carries at "
        f"most {ANSWER_JSON_BYTES_MAX:,} bytes of answer (an MCP client takes at most 1 MiB a message)"
    ]
    assert kept.cost_usd == 0.01
    short = BackendResult(answer=unit * 1000)
    assert _within_answer_cap(short, conn, None) == short


async def test_a_reply_with_no_choices_falls_back_without_touching_competence(
    settings: ServerSettings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviours["cheap-model"] = "EMPTYCHOICES"
    async with Client(create_server(settings)) as client:
        before = await overall_n(client, "cheap")
        result = await call(client, "delegate", {"text": "x", "allowed_agents": ["cheap", "strong"], "lambda_": 1.0})
        assert [(t["agent_id"], t["error_class"]) for t in result["tried"]] == [
            ("cheap", "server_error"),
            ("strong", None),
        ]
        assert "no choices" in result["tried"][0]["message"]
        assert result["agent_id"] == "strong" and result["answer"] == "answer[strong-model]: x"
        assert await overall_n(client, "cheap") == before  # an infrastructure failure never scores the agent


async def test_a_null_content_is_an_empty_answer_with_a_warning(
    settings: ServerSettings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviours["cheap-model"] = "NULLCONTENT"
    async with Client(create_server(settings)) as client:
        result = await call(client, "delegate", {"text": "x", "agent_id": "cheap"})
    assert result["answer"] == "" and result["error_class"] is None
    assert any(w.startswith("empty answer") for w in result["warnings"])


async def test_prices_set_with_upsert_agent_price_the_delegated_call(
    settings: ServerSettings, fake_openai: FakeOpenAI
) -> None:
    """Routing charges the handbook agent's prices; delegation must bill the same ones, not the file's."""
    async with Client(create_server(settings)) as client:
        await call(client, "upsert_agent", {"agent_id": "cheap", "input_per_mtok": 100.0, "output_per_mtok": 200.0})
        await call(client, "upsert_agent", {"agent_id": "unpriced", "input_per_mtok": 1.0, "output_per_mtok": 2.0})
        cheap = await call(client, "delegate", {"text": "hello", "agent_id": "cheap"})
        assert cheap["cost_usd"] == pytest.approx(
            (cheap["prompt_tokens"] * 100.0 + cheap["completion_tokens"] * 200.0) / 1e6
        )
        unpriced = await call(client, "delegate", {"text": "hello", "agent_id": "unpriced"})
        assert unpriced["cost_source"] == "agent_prices" and unpriced["warnings"] == []
        assert unpriced["cost_usd"] == pytest.approx(
            (unpriced["prompt_tokens"] * 1.0 + unpriced["completion_tokens"] * 2.0) / 1e6
        )


async def test_an_unknown_cost_warning_says_what_routing_really_charges(settings: ServerSettings) -> None:
    async with Client(create_server(settings)) as client:
        first = await call(client, "delegate", {"text": "hello", "agent_id": "unpriced"})
        assert first["cost_usd"] is None
        assert any("no price in the handbook" in w and "charges it c_ref" in w for w in first["warnings"])
        # a reported cost gives routing a recorded cost for the agent: it no longer charges c_ref
        await call(client, "record_outcome", {"decision_id": first["decision_id"], "success": True, "cost_usd": 0.002})
        second = await call(client, "delegate", {"text": "hello", "agent_id": "unpriced"})
    (warning,) = [w for w in second["warnings"] if "unknown" in w]
    assert "routing expects $0.002 a call from its recorded costs" in warning and "c_ref" not in warning


async def test_a_max_tokens_above_the_agents_cap_is_lowered_with_a_warning(
    settings: ServerSettings, fake_openai: FakeOpenAI
) -> None:
    async with Client(create_server(settings)) as client:
        lowered = await call(client, "delegate", {"text": "hi", "agent_id": "cheap", "max_tokens": 4000})
        within = await call(client, "delegate", {"text": "hi", "agent_id": "cheap", "max_tokens": 100})
    assert [r.body["max_tokens"] for r in fake_openai.chat_requests("cheap-model")] == [1024, 100]
    assert any("max_tokens 4000 lowered to 1024" in w and "max_output_tokens" in w for w in lowered["warnings"])
    assert within["warnings"] == []


async def test_a_refused_named_agent_is_the_one_the_error_is_about(settings: ServerSettings) -> None:
    async with Client(create_server(settings)) as client:
        await call(client, "upsert_agent", {"agent_id": "strong", "enabled": False})
        disabled = await refused(client, "delegate", {"text": "x", "agent_id": "strong"})
        assert "agent strong is unavailable: disabled" in disabled
        await call(client, "upsert_agent", {"agent_id": "strong", "enabled": True})
        step = {"text": "x", "agent_id": "strong", "session_id": "b", "budget_usd": 1e-6}
        over = await refused(client, "delegate", step)
        assert "agent strong is unavailable: expected cost" in over and "remaining budget" in over
        for said in (disabled, over):  # the caller passed no allowed_agents, and asked about no other agent
            assert "allowed_agents" not in said and "cheap" not in said


async def test_a_time_budget_below_one_try_is_refused_before_anything_is_written(settings: ServerSettings) -> None:
    calls: list[str] = []

    async def caller(conn: AgentConnection, *_: Any) -> BackendResult:
        calls.append(conn.id)
        return BackendResult(answer="42", prompt_tokens=1, completion_tokens=1, cost_usd=0.0)

    handbook = Handbook(HandbookStore(settings.db_path))
    try:
        before = handbook.store.counts()
        route = RouteRequest(text="x", session_id="s", budget_usd=1.0)
        with pytest.raises(InvalidInput, match=r"timeout_s=0\.3: expected at least 0\.5 s \(the time one try needs\)"):
            await Delegator(handbook, caller=caller).delegate(
                DelegateRequest(route=route, agent_id="strong", timeout_s=0.3)
            )
        assert calls == [] and handbook.store.counts() == before  # no decision, no outcome, no budget held
    finally:
        handbook.store.close()


@pytest.mark.anyio
async def test_a_call_the_client_gave_up_on_is_recorded_as_called_with_unknown_cost(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """QA: a delegate whose client timed out left a decision with no trace of the call (the agent had been called),
    which nobody could report or release. The call is recorded: cost unknown, so the session keeps the step's
    expected cost, and the decision can never be delegated again; the agent's record is untouched."""
    from skillorchestra.server.llm_backend import ensure_litellm

    await ensure_litellm()
    settings = loaded(tmp_path, priced_pair(fake_openai.api_base))
    async with Client(create_server(settings)) as client:
        # the agent answers only when the fake server stops: the client gives up once the agent is at work (a fixed
        # read timeout could fire before a loaded host had even routed the step, and test another path)
        step = {"text": "SLOW:60 name a prime", "agent_id": "cheap", "session_id": "s", "budget_usd": 1.0}
        async with anyio.create_task_group() as group:

            async def give_up_once_the_agent_works() -> None:
                await until_called(fake_openai, "cheap-model")
                group.cancel_scope.cancel()  # the client stops waiting (it tells the server, as its timeout does)

            group.start_soon(give_up_once_the_agent_works)
            await client.call_tool("delegate", step)
            pytest.fail("the agent answered")
        query = "SELECT agent_id, call_error_class, call_cost_usd, call_latency_s, expected_cost_usd FROM decisions"
        with anyio.fail_after(30):  # the server's cancelled task records the call (shielded) after the client gave up
            while (rows := db_rows(settings.db_path, query)) and rows[0][1] is None:
                await anyio.sleep(0.02)
        outcomes = db_rows(settings.db_path, "SELECT COUNT(*) FROM outcomes")[0][0]
        assert len(rows) == 1 and rows[0][:3] == ("cheap", "cancelled", None) and rows[0][3] is not None
        assert outcomes == 0  # neither a failure of the agent nor a success
        spend = await call(client, "route_step", {"text": "another", "session_id": "s", "budget_usd": 1.0})
        assert spend["session_spend_usd"] == pytest.approx(rows[0][4], rel=1e-3)  # its expected cost stays held


async def test_a_delegation_cancelled_while_waiting_for_a_slot_holds_no_budget(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """A delegate cancelled while its agent's one concurrency slot was busy never reached the agent: its decision
    is closed at once (the client never saw its id, so nobody could report it) rather than holding the session's
    budget until it expired, and nothing is recorded as a call."""
    from skillorchestra.server.llm_backend import ensure_litellm

    await ensure_litellm()
    settings = loaded(tmp_path, priced_pair(fake_openai.api_base).replace("modes", "concurrency = 1\nmodes", 1))
    handbook = Handbook(HandbookStore(settings.db_path))
    delegator = Delegator(handbook)

    def step(text: str, session_id: str) -> DelegateRequest:
        route = RouteRequest(text=text, session_id=session_id, budget_usd=1.0)
        return DelegateRequest(route=route, agent_id="strong", timeout_s=10)

    release = fake_openai.hold("strong-model")  # the first holds the slot until the second gave up
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(delegator.delegate, step("hold the slot", "first"))
            await until_called(fake_openai, "strong-model")
            with anyio.move_on_after(0.4):  # the second waits for the slot, then its client gives up
                await delegator.delegate(step("queued", "second"))
                pytest.fail("the slot was free")
            release.set()
        rows = dict(handbook.store.db.execute("SELECT session_id, call_latency_s FROM decisions").fetchall())
        assert rows["first"] is not None and rows["second"] is None  # the waiting one was never called
        assert handbook.store.session_spend("second") == 0.0  # its share of the budget was given back at once
        assert handbook.store.session_spend("first") > 0.0
    finally:
        handbook.store.close()


async def test_parallel_fallbacks_keep_within_the_session_budget(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """QA: two steps of a session routed to a failing cheap agent both fell back to a dear one, and both calls were
    billed past budget_usd: a fallback was written without the session's budget. It is now held as route_step holds
    a step, so of two fallbacks only one fits."""
    from skillorchestra.server.delegation import DelegationFailed
    from skillorchestra.server.llm_backend import ensure_litellm

    await ensure_litellm()
    toml = priced_agent("broken", "broken-model", fake_openai.api_base, 0.2, 0.4) + priced_pair(fake_openai.api_base)
    settings = loaded(tmp_path, toml)
    fake_openai.behaviours["broken-model"] = "FAIL500"
    # the strong call answers only once the other step has settled: a call that has finished holds its actual cost,
    # below the expected cost held while it runs, so a slow host could write the second fallback after the first call
    # and fit both (CI did, and SLOW:1 still left that window to a stall of a second). Were both to fit, both calls
    # would wait here until delegate's timeout_s and fail the test.
    release = fake_openai.hold("strong-model")
    handbook = Handbook(HandbookStore(settings.db_path))
    delegator = Delegator(handbook)
    text = "name a prime number"
    dear = handbook.route(RouteRequest(text=text, allowed_agents=["strong"], session_id="probe"))
    budget = 1.5 * float(dear.candidates[0].expected_cost_usd or 0)  # one strong call fits, two do not
    results: list[object] = []

    async def step() -> None:
        route = RouteRequest(text=text, allowed_agents=["broken", "strong"], session_id="s", budget_usd=budget)
        try:
            results.append(await delegator.delegate(DelegateRequest(route=route, timeout_s=10)))
        except DelegationFailed as failed:
            results.append(failed)
        release.set()  # one step settled: a strong call still held may answer

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(step)
            group.start_soon(step)
        answered = [r for r in results if not isinstance(r, Exception)]
        refused = [str(r) for r in results if isinstance(r, Exception)]
        assert len(answered) == 1 and answered[0].agent_id == "strong"  # type: ignore[attr-defined]
        assert len(refused) == 1 and "strong: budget (not called: expected cost" in refused[0]
        assert handbook.store.session_spend("s") <= budget
    finally:
        handbook.store.close()


async def test_a_delegates_own_decision_is_claimed_from_the_start(settings: ServerSettings) -> None:
    """QA: a stdio server killed while delegate's agent answered left the decision unclaimed and uncalled: a new
    server carried it out again (the agent called twice, billed twice) and a report could be applied mid-call. It
    is written claimed, as its fallbacks are, so neither can happen."""
    calls: list[str] = []
    seen: dict[str, object] = {}

    async def caller(conn: AgentConnection, *_: Any) -> BackendResult:
        calls.append(conn.id)
        row = handbook.store.db.execute("SELECT id, claimed_at, role FROM decisions ORDER BY created_at").fetchall()
        seen[conn.id] = row[-1]
        if conn.id == "cheap":
            return BackendResult(error_class="server_error", error_type="APIError", message="boom", cost_usd=0.0)
        return BackendResult(answer="42", prompt_tokens=1, completion_tokens=1, cost_usd=0.0)

    handbook = Handbook(HandbookStore(settings.db_path))
    try:
        route = RouteRequest(text="x", allowed_agents=["cheap", "strong"], lambda_=1.0)
        await Delegator(handbook, caller=caller).delegate(DelegateRequest(route=route))
        assert calls == ["cheap", "strong"]
        routed, fallback = seen["cheap"], seen["strong"]
        assert routed[1] is not None and routed[2] is None  # claimed while its agent was called
        assert fallback[1] is not None and fallback[2] == "fallback"
    finally:
        handbook.store.close()


async def test_a_busy_agent_leaves_its_fallbacks_time(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """QA: the wait for a busy agent's one concurrency slot spent the step's whole time, so the idle fallback was
    never tried ("delegate's time budget spent"); the wait now takes only its share of the time left."""
    from skillorchestra.server.llm_backend import ensure_litellm

    await ensure_litellm()
    busy_cheap = priced_agent("strong", "strong-model", fake_openai.api_base, 10.0, 30.0) + priced_agent(
        "cheap", "cheap-model", fake_openai.api_base, 0.2, 0.4
    ).replace("modes", "concurrency = 1\nmodes")
    settings = loaded(tmp_path, busy_cheap)
    handbook = Handbook(HandbookStore(settings.db_path))
    delegator = Delegator(handbook)
    route = RouteRequest(text="name a prime", allowed_agents=["strong", "cheap"], lambda_=0.0)  # a tie: cheap first
    release = fake_openai.hold("cheap-model")  # cheap's one slot stays busy until the step is done
    try:
        async with anyio.create_task_group() as group:
            hold = DelegateRequest(route=RouteRequest(text="hold the slot"), agent_id="cheap", timeout_s=10)
            group.start_soon(delegator.delegate, hold)
            await until_called(fake_openai, "cheap-model")
            result = await delegator.delegate(DelegateRequest(route=route, timeout_s=4))
            release.set()
        assert [(t.agent_id, t.error_class) for t in result.tried] == [("cheap", "rate_limit"), ("strong", None)]
        assert result.answer == "answer[strong-model]: name a prime"
    finally:
        handbook.store.close()
