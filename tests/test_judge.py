"""The optional judge: [judge] in agents.toml, a grading call through litellm to the fake server, the recorded grade."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from fake_openai import FakeOpenAI, RecordedRequest
from log_capture import formatted_log
from mcp import Client
from mcp_calls import cheap_agent, db_rows, give_up_once_called, grader_agent, until_called

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.reply_text import unfenced
from skillorchestra.server.agent_config import JudgeSettings, LlmAgentConnection, load_agent_configs
from skillorchestra.server.app import create_server
from skillorchestra.server.cli import main as cli_main
from skillorchestra.server.judge import parse_verdict, reward_of
from skillorchestra.server.settings import ServerSettings

STEP = "name a prime number"


def agents_toml(api_base: str, judge: str = "") -> str:
    return f"""{cheap_agent(api_base)}{grader_agent(api_base)}
[agents.search]
kind = "mcp"
url = "http://127.0.0.1:9/mcp"
tool = "search"

[judge]
agent = "grader"
{judge}
"""


def dear_judge(tmp_path: Path, fake_openai: FakeOpenAI) -> ServerSettings:
    """A judge grading 0.8 at $5/$2 per Mtok: dear enough not to fit a tight session budget after the answer."""
    fake_openai.behaviours["judge-model"] = "JUDGE:0.8"
    return load(tmp_path, agents_toml(fake_openai.api_base).replace("input_per_mtok = 1.0", "input_per_mtok = 5.0"))


def load(tmp_path: Path, toml: str) -> ServerSettings:
    """Through the real CLI entry point (in-process: `skillorchestra agents load agents.toml --db ...`)."""
    path = tmp_path / "agents.toml"
    path.write_text(toml)
    db = tmp_path / "h.db"
    with pytest.raises(SystemExit) as exited:
        cli_main(["agents", "load", str(path), "--db", str(db)])
    assert exited.value.code == 0
    return ServerSettings(db_path=db, seed_example=False)


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    return result.structured_content  # type: ignore[return-value]


async def card(client: Client, agent_id: str) -> dict[str, Any]:
    return json.loads((await client.read_resource(f"handbook://agents/{agent_id}")).contents[0].text)  # type: ignore[union-attr]


def fake_prompt_tokens(request: RecordedRequest) -> int:
    """The fake server's usage rule (tests/fake_openai.py): all message text // 4 + 1."""
    return len("".join(m["content"] for m in request.body["messages"])) // 4 + 1


# -- the verdict ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ('{"score": 0.8}', 0.8),
        ('  {"score": 1}\n', 1.0),
        ('{"score": 0, "reason": "wrong"}', 0.0),
        ('```json\n{"score": 0.25}\n```', 0.25),
        ('```\n{"score": 0.5}```', 0.5),
        ('```JSON {"score": 1}\n```  ', 1.0),
    ],
)
def test_strict_json_verdicts_are_read(reply: str, score: float) -> None:
    assert parse_verdict(reply) == score


def test_a_reply_built_to_make_the_fence_parser_backtrack_is_refused_at_once() -> None:
    """Review: the fence regex took 7 s on 2 KB of "```" and whitespace, 50 s on 4 KB, on the event loop. A reply
    past the verdict cap is refused unparsed, and fences are stripped in linear time whatever the length."""
    for reply in ("```" + " \n" * 2000 + "x", "```" + " \n" * 400 + "x"):  # over and under the verdict cap
        with pytest.raises(ValueError):
            parse_verdict(reply)
    assert unfenced("```" + " \n" * 200_000 + "x") == "x"  # linear: a regex this long would never return
    assert unfenced("``````") == "" and unfenced("```") == "" and unfenced("plain") == "plain"


@pytest.mark.parametrize(
    "reply",
    ['Score: {"score": 0.8}', '{"score": 1.5}', '{"score": -0.1}', '{"score": true}', '{"score": "0.8"}', "[0.8]", ""],
)
def test_anything_else_is_a_failure_never_a_guess(reply: str) -> None:
    with pytest.raises(ValueError):
        parse_verdict(reply)


def test_threshold_turns_the_score_into_success() -> None:
    assert reward_of(0.7, JudgeSettings(agent="g")) == 0.7
    assert reward_of(0.7, JudgeSettings(agent="g", threshold=0.5)) == 1.0
    assert reward_of(0.4, JudgeSettings(agent="g", threshold=0.5)) == 0.0


# -- the [judge] section -------------------------------------------------------------------------------------


def test_judge_section_travels_with_the_named_llm_agent(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(agents_toml("http://127.0.0.1:1/v1", 'style = "binary"\nthreshold = 0.5'))
    agents = load_agent_configs(path)
    grader = agents["grader"]
    assert isinstance(grader, LlmAgentConnection) and grader.judge is not None
    assert (grader.judge.style, grader.judge.threshold, grader.judge.max_tokens) == ("binary", 0.5, 32)
    assert isinstance(agents["cheap"], LlmAgentConnection) and agents["cheap"].judge is None


@pytest.mark.parametrize(
    ("judge", "needle"),
    [
        ('agent = "nobody"', "judge.agent='nobody'"),
        ('agent = "search"', "one of the file's llm agents ['cheap', 'grader']"),
        ('agent = "grader"\nstyle = "vibes"', "judge.style='vibes'"),
        ('agent = "grader"\nthreshold = 2', "judge.threshold=2"),
        ('agent = "grader"\nmodel = "x"', "judge.model"),
    ],
)
def test_judge_section_errors_name_the_field(tmp_path: Path, judge: str, needle: str) -> None:
    path = tmp_path / "a.toml"
    path.write_text(agents_toml("http://127.0.0.1:1/v1").replace('[judge]\nagent = "grader"', f"[judge]\n{judge}"))
    with pytest.raises(InvalidInput) as err:
        load_agent_configs(path)
    assert needle in str(err.value), str(err.value)


def test_judge_inside_an_agent_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[agents.a]\nmodel = "m"\njudge = { agent = "a" }\n')
    with pytest.raises(InvalidInput, match=r"agents\.a\.judge.*top-level \[judge\]"):
        load_agent_configs(path)


# -- grading through the MCP server ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_judge_grades_records_and_is_accounted(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    fake_openai.behaviours["judge-model"] = "JUDGE:0.8"
    settings = load(tmp_path, agents_toml(fake_openai.api_base))
    async with Client(create_server(settings)) as client:
        before, grader_before = await card(client, "cheap"), await card(client, "grader")
        result = await call(client, "delegate", {"text": STEP, "agent_id": "cheap", "session_id": "s"})
        assert result["answer"] == f"answer[cheap-model]: {STEP}"
        assert (result["judge_agent_id"], result["judge_score"], result["judged_reward"]) == ("grader", 0.8, 0.8)
        assert result["reported_by"] == "judge" and result["warnings"] == []

        (request,) = fake_openai.chat_requests("judge-model")
        prompt = request.body["messages"][-1]["content"]
        assert f"<step>\n{STEP}\n</step>" in prompt and f"<answer>\n{result['answer']}\n</answer>" in prompt
        assert request.body["max_tokens"] == 32
        expected_judge = (fake_prompt_tokens(request) * 1.0 + len('{"score": 0.8}'.split()) * 2.0) / 1e6
        assert result["judge_cost_usd"] == pytest.approx(expected_judge)
        assert result["total_cost_usd"] == pytest.approx(result["cost_usd"] + expected_judge)  # QA: judge left out

        # the grade moved the answering agent's competence (one observation), not the judge's
        after = await card(client, "cheap")
        assert after["overall"]["n"] == pytest.approx(before["overall"]["n"] + 1)
        assert after["overall"]["mean"] > before["overall"]["mean"]
        assert (await card(client, "grader"))["overall"]["n"] == grader_before["overall"]["n"] == 0

        # the judge's call counts in the session's spend, beside the answer's, but not as a routing
        routed = await call(client, "route_step", {"text": "next step", "session_id": "s"})
        assert routed["session_spend_usd"] == pytest.approx(result["cost_usd"] + expected_judge)
        stats = json.loads((await client.read_resource("handbook://stats")).contents[0].text)  # type: ignore[union-attr]
        assert "grader" not in stats["routing_shares"] and stats["routing_shares"]["cheap"] > 0

        # a client report afterwards: identical is a duplicate, anything else a conflict
        same = await call(client, "record_outcome", {"decision_id": result["decision_id"], "reward": 0.8})
        assert same["duplicate"] is True
        other = await client.call_tool("record_outcome", {"decision_id": result["decision_id"], "success": False})
        refusal = other.content[0].text  # type: ignore[union-attr]
        assert other.is_error and "already reported" in refusal and "reported_by 'judge'" in refusal  # who did


@pytest.mark.anyio
async def test_binary_style_with_threshold_records_success(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    fake_openai.behaviours["judge-model"] = "JUDGE:0.7"
    settings = load(tmp_path, agents_toml(fake_openai.api_base, 'style = "binary"\nthreshold = 0.5'))
    async with Client(create_server(settings)) as client:
        result = await call(client, "delegate", {"text": STEP, "agent_id": "grader"})
        assert (result["judge_score"], result["judged_reward"], result["reported_by"]) == (0.7, 1.0, "judge")
        assert any("its own answer" in w for w in result["warnings"])
        outcome = await call(client, "record_outcome", {"decision_id": result["decision_id"], "success": True})
        assert outcome["duplicate"] is True and outcome["reward"] == 1.0
    grading = fake_openai.chat_requests("judge-model")[-1]
    assert "1 if the answer is correct and complete, else 0" in grading.body["messages"][0]["content"]


@pytest.mark.anyio
async def test_judge_failures_leave_the_decision_to_the_client(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    # the malformed verdict must come back within the judge's time: 0.6 s was a stalled host's flake
    settings = load(tmp_path, agents_toml(fake_openai.api_base, "timeout_s = 2"))
    async with Client(create_server(settings)) as client:
        before = await card(client, "grader")

        fake_openai.behaviours["judge-model"] = "JUDGE:oops"  # a malformed reply: the call is paid, nothing recorded
        malformed = await call(client, "delegate", {"text": STEP, "agent_id": "cheap"})
        assert malformed["judged_reward"] is None and malformed["reported_by"] is None
        assert malformed["judge_cost_usd"] > 0
        assert any("not JSON" in w and "left unreported" in w for w in malformed["warnings"])
        reported = await call(client, "record_outcome", {"decision_id": malformed["decision_id"], "success": True})
        assert reported["duplicate"] is False  # the client could still report

        fake_openai.behaviours["judge-model"] = "SLOW:60"  # the judge times out: an infrastructure failure
        slow = await call(client, "delegate", {"text": STEP, "agent_id": "cheap"})
        assert slow["answer"] == f"answer[cheap-model]: {STEP}" and slow["judged_reward"] is None
        assert any("failed (timeout" in w and "left unreported" in w for w in slow["warnings"])
        assert (await card(client, "grader"))["overall"]["n"] == before["overall"]["n"] == 0  # never scored
        reported = await call(client, "record_outcome", {"decision_id": slow["decision_id"], "reward": 0.5})
        assert reported["duplicate"] is False

        calls = len(fake_openai.chat_requests("judge-model"))
        no_answer = await call(client, "delegate", {"text": "FAIL400 too long", "agent_id": "cheap"})
        assert no_answer["error_class"] == "task" and no_answer["judged_reward"] is None
        assert any("not judged: no answer" in w for w in no_answer["warnings"])
        assert len(fake_openai.chat_requests("judge-model")) == calls  # nothing to grade: no judge call


@pytest.mark.anyio
async def test_the_judge_is_skipped_when_it_would_overspend_the_session(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    settings = dear_judge(tmp_path, fake_openai)
    budget = 1.2e-4  # fits the answer (routing expects ~1.03e-4 for cheap), not the judge's ~6e-4 on top
    async with Client(create_server(settings)) as client:
        step = {"text": STEP, "agent_id": "cheap", "session_id": "b", "budget_usd": budget}
        result = await call(client, "delegate", step)
        assert result["answer"] == f"answer[cheap-model]: {STEP}" and result["judged_reward"] is None
        assert any("not judged" in w and "remaining budget" in w for w in result["warnings"])
        assert fake_openai.chat_requests("judge-model") == []
        assert result["total_cost_usd"] == pytest.approx(result["cost_usd"]) and result["judge_cost_usd"] is None
        routed = await call(client, "route_step", {"text": "next", "session_id": "b"})
        assert routed["session_spend_usd"] <= budget
        # with room in the budget the judge grades as before
        roomy = await call(client, "delegate", {**step, "session_id": "r", "budget_usd": 1.0})
        assert roomy["judged_reward"] == 0.8 and len(fake_openai.chat_requests("judge-model")) == 1


@pytest.mark.anyio
async def test_the_judge_keeps_within_the_budget_a_carried_out_decision_was_routed_under(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """delegate(decision_id=...) refuses budget arguments (the decision fixed them), so the budget comes from the
    decision: before it was stored, the judge of a carried-out step never saw one."""
    settings = dear_judge(tmp_path, fake_openai)
    async with Client(create_server(settings)) as client:
        routed = await call(
            client,
            "route_step",
            {"text": STEP, "allowed_agents": ["cheap"], "session_id": "b", "budget_usd": 1.2e-4},
        )
        result = await call(client, "delegate", {"text": STEP, "decision_id": routed["decision_id"]})
        assert result["decision_id"] == routed["decision_id"] and result["judged_reward"] is None
        assert any("not judged" in w and "remaining budget" in w for w in result["warnings"])
        assert fake_openai.chat_requests("judge-model") == []


@pytest.mark.anyio
async def test_an_unpriced_judge_of_a_carried_out_decision_is_charged_c_ref(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """A stored decision has no c_ref: it is recomputed, or an unpriced judge would be charged $0 and always fit."""
    fake_openai.behaviours["judge-model"] = "JUDGE:0.8"
    unpriced_judge = agents_toml(fake_openai.api_base).replace("input_per_mtok = 1.0\noutput_per_mtok = 2.0\n", "")
    assert "input_per_mtok = 1.0" not in unpriced_judge
    settings = load(tmp_path, unpriced_judge)
    async with Client(create_server(settings)) as client:
        probe = await call(client, "route_step", {"text": STEP, "allowed_agents": ["cheap"]})
        expected = probe["candidates"][0]["expected_cost_usd"]  # also c_ref: cheap is the only priced agent
        assert probe["c_ref_usd"] == pytest.approx(expected)
        step = {"text": STEP, "allowed_agents": ["cheap"], "session_id": "b", "budget_usd": expected}
        routed = await call(client, "route_step", step)  # after the call less than c_ref is left for the judge
        result = await call(client, "delegate", {"text": STEP, "decision_id": routed["decision_id"]})
        assert any("not judged" in w and "charged c_ref" in w for w in result["warnings"]), result["warnings"]
        assert fake_openai.chat_requests("judge-model") == []


@pytest.mark.anyio
async def test_a_timed_out_judge_says_why_its_cost_is_unknown(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    fake_openai.behaviours["judge-model"] = "SLOW:60"  # past its timeout by far
    settings = load(tmp_path, agents_toml(fake_openai.api_base, "timeout_s = 0.6"))  # the judge has prices
    async with Client(create_server(settings)) as client:
        result = await call(client, "delegate", {"text": STEP, "agent_id": "cheap"})
    (warning,) = [w for w in result["warnings"] if w.startswith("cost of the judge")]
    assert "timed out" in warning and "no price" not in warning


def test_a_binary_judge_records_pass_or_fail_never_partial_credit() -> None:
    """QA: style = "binary" without a threshold recorded a reply of 0.3 as reward 0.3."""
    binary = JudgeSettings(agent="j", style="binary")
    assert [reward_of(score, binary) for score in (0.0, 0.3, 0.5, 0.7, 1.0)] == [0.0, 0.0, 1.0, 1.0, 1.0]
    graded = JudgeSettings(agent="j")
    assert reward_of(0.3, graded) == 0.3 and reward_of(0.3, JudgeSettings(agent="j", threshold=0.25)) == 1.0


@pytest.mark.anyio
async def test_a_judge_call_the_client_abandons_is_recorded_as_cancelled(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """QA: the client gave up while the judge graded; the judge's call reached the provider but its decision stayed
    claimed and unrecorded for a day. It is recorded as an agent's cancelled call is: called, cost unknown."""
    from skillorchestra.server.llm_backend import ensure_litellm

    await ensure_litellm()  # the client gives up while the judge works, not during the import
    settings = load(tmp_path, agents_toml(fake_openai.api_base))
    release = fake_openai.hold("judge-model")
    judged = "SELECT call_error_class FROM decisions WHERE agent_id = 'grader'"
    async with Client(create_server(settings), mode="legacy") as client:
        async with anyio.create_task_group() as group:
            group.start_soon(give_up_once_called, fake_openai, "judge-model", group)
            await client.call_tool("delegate", {"text": STEP, "agent_id": "cheap"})
            pytest.fail("the judge answered")
        with anyio.fail_after(30):  # recorded by the server's cancelled handler (shielded) after the client left
            while (called := db_rows(settings.db_path, judged)) == [(None,)]:
                await anyio.sleep(0.02)
        assert called == [("cancelled",)]
        release.set()


@pytest.mark.anyio
async def test_a_judge_call_abandoned_while_waiting_for_its_slot_holds_no_budget(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """Review: a judge call cancelled while it still waited for the judge's only slot was recorded as a call of
    unknown cost, holding its expected cost in the session's spend for a day; never sent, it is withdrawn."""
    from skillorchestra.server.llm_backend import ensure_litellm

    await ensure_litellm()
    toml = agents_toml(fake_openai.api_base).replace(
        'model = "openai/judge-model"', 'model = "openai/judge-model"\nconcurrency = 1'
    )
    settings = load(tmp_path, toml)
    release = fake_openai.hold("judge-model")
    graders = "SELECT id, call_error_class, expires_at FROM decisions WHERE agent_id = 'grader' ORDER BY created_at"
    async with Client(create_server(settings), mode="legacy") as client:
        async with anyio.create_task_group() as first:
            first.start_soon(client.call_tool, "delegate", {"text": STEP, "agent_id": "cheap"})
            await until_called(fake_openai, "judge-model")  # the first judge call holds the judge's one slot
            with anyio.CancelScope() as second:

                async def give_up_once_its_judge_waits() -> None:
                    with anyio.fail_after(30):
                        while len(db_rows(settings.db_path, graders)) < 2:  # its judge decision is written
                            await anyio.sleep(0.02)
                    await anyio.sleep(0.2)  # and its call waits for the slot held above
                    second.cancel()

                first.start_soon(give_up_once_its_judge_waits)
                await client.call_tool("delegate", {"text": STEP + " again", "agent_id": "cheap"})
            with anyio.fail_after(30):
                while db_rows(settings.db_path, graders)[1][2] > time.time() + 60:  # withdrawn: it expires now
                    await anyio.sleep(0.02)
            _, waited, _ = db_rows(settings.db_path, graders)[1]
            assert waited is None  # not recorded as a call: it never reached the judge
            release.set()


@pytest.mark.anyio
async def test_each_failed_verdict_is_logged_for_the_operator(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """QA: a failed verdict was only in that tool result's warnings, never in the server's log. One WARNING each,
    naming the judge, the decision and why, with at most 200 characters of the untrusted reply, on one line."""
    settings = load(tmp_path, agents_toml(fake_openai.api_base, "timeout_s = 2"))
    replies = {
        "not JSON": "JUDGE:oops",
        "escapes": "JUDGE:\x1b]0;pwned\x07\x1b[2J",  # a reply that would retitle and clear the operator's terminal
        "too long": "JUDGE:" + "9" * 1_500,
        "out of range": "JUDGE:1.5",
        "call failed": "FAIL500",
    }
    decisions: dict[str, str] = {}
    with formatted_log("skillorchestra.server.judge") as stream:
        async with Client(create_server(settings)) as client:
            for case, behaviour in replies.items():
                fake_openai.behaviours["judge-model"] = behaviour
                result = await call(client, "delegate", {"text": f"{STEP} ({case})", "agent_id": "cheap"})
                assert result["judged_reward"] is None, case
                decisions[case] = result["decision_id"]
            fake_openai.behaviours["judge-model"] = "JUDGE:0.8"
            graded = await call(client, "delegate", {"text": STEP, "agent_id": "cheap"})
            assert graded["judged_reward"] == 0.8  # a good verdict logs nothing
    logged = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]

    def no_verdict(case: str, why: str) -> str:
        return (
            f"WARNING skillorchestra.server.judge: judge grader gave no verdict on decision {decisions[case]} "
            f"(left unreported): {why}"
        )

    expected_json = 'not JSON; expected only {"score": S}'
    assert logged[0] == no_verdict("not JSON", expected_json + """; it replied '{"score": oops}'""")
    assert logged[1] == no_verdict(
        "escapes", expected_json + """; it replied '{"score": \\x1b]0;pwned\\x07\\x1b[2J}'"""
    )
    quoted = '{"score": ' + "9" * 190  # 200 characters of the 1,511
    assert logged[2] == no_verdict(
        "too long", f"""a reply of 1,511 characters; expected only {{"score": S}}; it replied '{quoted}'"""
    )
    assert logged[3] == no_verdict(
        "out of range", """score 1.5 is not a number in [0, 1]; it replied '{"score": 1.5}'"""
    )
    assert logged[4].startswith(no_verdict("call failed", "its call failed (server_error: "))
    assert len(logged) == 5 and all(len(line) < 500 for line in logged)
    assert "\x1b" not in stream.getvalue() and "\x07" not in stream.getvalue()
