"""What an agent's circuit breaker tells the operator (the server's log) and the caller (why the agent is refused),
through a real delegation to the fake OpenAI server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from log_capture import formatted_log
from mcp import Client
from mcp_calls import loaded, priced_pair, refused

from skillorchestra.handbook.errors import Unroutable
from skillorchestra.handbook.service import DelegateRequest, Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.app import create_server
from skillorchestra.server.breaker import CircuitBreaker
from skillorchestra.server.delegation import DelegationFailed, Delegator

pytestmark = pytest.mark.anyio
BREAKER_LOG = "skillorchestra.server.breaker"


def _records(text: str) -> list[str]:
    """The formatted records without their timestamps ("<date> <time> LEVEL name: message")."""
    return [line.split(" ", 2)[2] for line in text.splitlines()]


async def test_refusal_says_when_the_agent_is_tried_again_and_the_log_follows_the_breaker(
    tmp_path: Path, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: "agent mid is unavailable: circuit breaker open after 3 infrastructure failures" never said when, and
    the breaker opening and closing again never reached the log. Timed by the breaker's own (fake) clock."""
    caplog.set_level(logging.INFO, logger=BREAKER_LOG)
    settings = loaded(tmp_path, priced_pair(fake_openai.api_base))
    clock = [1000.0]
    handbook = Handbook(HandbookStore(settings.db_path))
    delegator = Delegator(handbook, breaker=CircuitBreaker(threshold=3, cooldown_s=30, clock=lambda: clock[0]))
    request = DelegateRequest(route=RouteRequest(text="x"), agent_id="strong", timeout_s=5)
    fake_openai.behaviours["strong-model"] = "FAIL500"
    with formatted_log(BREAKER_LOG) as stream:
        for _ in range(3):
            with pytest.raises(DelegationFailed):
                await delegator.delegate(request)
        clock[0] += 3
        reason = "circuit breaker open after 3 infrastructure failures; tried again in 27 s"
        assert delegator.unavailable()["strong"] == reason
        for _ in range(5):  # refused without a call, and without a log line each
            with pytest.raises(Unroutable, match=f"agent strong is unavailable: {reason}$"):
                await delegator.delegate(request)
        clock[0] += 26.5
        assert delegator.unavailable()["strong"].endswith("; tried again in 1 s")  # rounded up: never "0 s"
        assert len(fake_openai.chat_requests("strong-model")) == 3
        fake_openai.behaviours.clear()
        clock[0] += 0.5  # cool-down over: the trial call answers and closes the breaker
        result = await delegator.delegate(request)
    handbook.store.close()
    assert result.answer == "answer[strong-model]: x" and "strong" not in delegator.unavailable()
    assert _records(stream.getvalue()) == [
        f"WARNING {BREAKER_LOG}: circuit breaker of agent strong opened after 3 consecutive infrastructure failures "
        "(last server_error); tried again in 30 s",
        f"INFO {BREAKER_LOG}: circuit breaker of agent strong half-open: one trial call let through "
        "(3 consecutive infrastructure failures, last server_error)",
        f"WARNING {BREAKER_LOG}: circuit breaker of agent strong closed: a call succeeded after 3 infrastructure "
        "failures",
    ]


async def test_the_live_server_logs_the_breaker_opening_once(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """Through the MCP server, as QA ran it: many refused steps, one WARNING when the breaker opened."""
    settings = loaded(tmp_path, priced_pair(fake_openai.api_base)).model_copy(
        update={"breaker_threshold": 2, "breaker_cooldown_s": 3600}
    )
    fake_openai.behaviours["strong-model"] = "FAIL500"
    with formatted_log(BREAKER_LOG) as stream:
        async with Client(create_server(settings)) as client:
            for _ in range(2):
                failed = await client.call_tool("delegate", {"text": "step", "agent_id": "strong"})
                assert failed.is_error
            for _ in range(10):
                said = await refused(client, "delegate", {"text": "step", "agent_id": "strong"})
                assert (
                    "agent strong is unavailable: circuit breaker open after 2 infrastructure failures; tried " in said
                )
    assert _records(stream.getvalue()) == [
        f"WARNING {BREAKER_LOG}: circuit breaker of agent strong opened after 2 consecutive infrastructure failures "
        "(last server_error); tried again in 3600 s"
    ]
