"""call_llm against the fake OpenAI-compatible server: litellm really speaks HTTP to it (no mocks)."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from fake_openai import FakeOpenAI
from log_capture import formatted_log
from mcp_calls import until_called

from skillorchestra.server.agent_config import LlmAgentConnection
from skillorchestra.server.llm_backend import (
    PLACEHOLDER_API_KEY,
    PLAUSIBLE_TOKENS,
    BackendResult,
    call_llm,
    classify_exception,
    ensure_litellm,
    usage_believed,
)

SECRET = "sk-test-SECRET123"


def conn(server: FakeOpenAI, model: str = "openai/m1", **kw: object) -> LlmAgentConnection:
    return LlmAgentConnection(id=kw.pop("id", model), model=model, api_base=server.api_base, **kw)  # type: ignore[arg-type]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def expected_usage(messages: list[dict[str, str]], answer: str) -> tuple[int, int]:
    """The fake server's documented usage formula."""
    return len("".join(m["content"] for m in messages)) // 4 + 1, len(answer.split())


@pytest.mark.anyio
async def test_cost_is_usage_times_agent_prices(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M1_KEY", SECRET)
    agent = conn(fake_openai, api_key_env="M1_KEY", input_per_mtok=2.0, output_per_mtok=10.0)
    msgs = user("sum 2 and 3 please")
    r = await call_llm(agent, msgs, timeout_s=10, max_tokens=50)
    assert r.ok and r.error_class is None and r.answer == "answer[m1]: sum 2 and 3 please"
    pt, ct = expected_usage(msgs, r.answer)
    assert (r.prompt_tokens, r.completion_tokens) == (pt, ct)
    assert r.cost_source == "agent_prices"
    assert r.cost_usd == pytest.approx((pt * 2.0 + ct * 10.0) / 1e6)
    assert 0 < r.latency_s < 5
    (req,) = fake_openai.chat_requests()
    assert req.headers["authorization"] == f"Bearer {SECRET}"  # the key was really sent...
    assert req.body["max_tokens"] == 50 and req.model == "m1"


@pytest.mark.anyio
async def test_unknown_price_is_unknown_not_zero(fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="skillorchestra")
    r = await call_llm(conn(fake_openai, "openai/house-model-7"), user("hi"), timeout_s=10, max_tokens=20)
    assert r.ok and r.prompt_tokens and r.completion_tokens
    assert r.cost_usd is None and r.cost_source == "unknown"
    assert "cost unknown" in caplog.text
    (req,) = fake_openai.chat_requests()
    assert req.headers["authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"  # no key configured


@pytest.mark.anyio
async def test_known_model_gets_litellm_table_price(fake_openai: FakeOpenAI) -> None:
    litellm = await ensure_litellm()
    msgs = user("a question for a known model")
    r = await call_llm(conn(fake_openai, "openai/gpt-4o-mini"), msgs, timeout_s=10, max_tokens=20)
    assert r.ok and r.cost_source == "litellm_table"
    in_usd, out_usd = litellm.model_cost["gpt-4o-mini"]["input_cost_per_token"], 6e-07
    assert r.cost_usd == pytest.approx(r.prompt_tokens * in_usd + r.completion_tokens * out_usd)
    assert r.cost_usd > 0


@pytest.mark.anyio
async def test_timeout_is_classified_and_bounded(fake_openai: FakeOpenAI) -> None:
    t0 = time.perf_counter()
    r = await call_llm(conn(fake_openai), user("think hard SLOW:60"), timeout_s=0.5, max_tokens=20)
    elapsed = time.perf_counter() - t0
    assert r.error_class == "timeout" and r.infrastructure_failure and not r.ok
    # bounded by timeout_s, not by the answer (60 s): the margin absorbs a loaded host's stall of a few seconds
    assert 0.4 < r.latency_s < 5 and elapsed < 5
    assert r.cost_usd is None and r.answer == ""
    assert len(fake_openai.chat_requests()) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("word", "error_class"),
    [
        ("FAIL429", "rate_limit"),
        ("FAIL500", "server_error"),
        ("FAIL401", "auth"),
        ("DROP", "connection"),
        ("FAIL400", "task"),
    ],
)
async def test_failures_are_classified_with_one_request_each(
    fake_openai: FakeOpenAI, word: str, error_class: str
) -> None:
    r = await call_llm(conn(fake_openai), user(f"please {word}"), timeout_s=5, max_tokens=20)
    assert r.error_class == error_class and r.message and r.error_type
    assert r.infrastructure_failure == (error_class != "task")
    assert len(fake_openai.chat_requests()) == 1  # max_retries=0: the SDK did not retry behind our back


@pytest.mark.anyio
async def test_refused_connection_is_connection() -> None:
    with FakeOpenAI() as srv:
        agent = conn(srv)
    with formatted_log("skillorchestra.server.llm_backend") as logged:
        r = await call_llm(agent, user("anyone there?"), timeout_s=5, max_tokens=20)  # server already stopped
    assert r.error_class == "connection"
    assert r.message is not None and str(agent.api_base) not in r.message  # connection settings stay off the model's
    assert f"(api_base {agent.api_base})" in logged.getvalue()  # the operator's log names it


@pytest.mark.anyio
async def test_api_key_never_leaks_and_stdout_stays_clean(
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # everything: ours, litellm's, openai's, httpx's
    monkeypatch.setenv("LEAKY_KEY", SECRET)
    agent = conn(fake_openai, api_key_env="LEAKY_KEY")
    results = [
        await call_llm(agent, user(word), timeout_s=5, max_tokens=20)
        for word in ["FAIL401", "FAIL500", "FAIL429", "DROP", "SLOW:0.2", "fine"]
    ]
    assert [r.error_class for r in results] == ["auth", "server_error", "rate_limit", "connection", None, None]
    assert "Incorrect API key provided: ***" in (results[0].message or "")  # the provider echoed the key
    for r in results:
        assert SECRET not in r.model_dump_json()
    assert SECRET not in caplog.text
    captured = capsys.readouterr()
    assert captured.out == ""  # litellm's banners would corrupt an MCP stdio stream
    assert SECRET not in captured.err
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in fake_openai.chat_requests())


@pytest.mark.anyio
async def test_api_key_echoed_in_an_answer_is_scrubbed(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAKY_KEY", SECRET)
    r = await call_llm(conn(fake_openai, api_key_env="LEAKY_KEY"), user(f"repeat {SECRET}"), timeout_s=5)
    assert r.ok and r.answer == "answer[m1]: repeat ***"


@pytest.mark.anyio
async def test_missing_key_variable_is_named_on_auth_error(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    r = await call_llm(conn(fake_openai, api_key_env="NOT_SET_KEY"), user("hello"), timeout_s=5)
    assert r.error_class == "auth" and "NOT_SET_KEY is not set" in (r.message or "")
    assert fake_openai.chat_requests() == []  # refused before any request: the provider never saw a keyless call


@pytest.mark.anyio
async def test_streaming_reports_progress_and_usage(fake_openai: FakeOpenAI) -> None:
    seen: list[int] = []

    async def progress(chars: int) -> None:
        seen.append(chars)

    agent = conn(fake_openai, input_per_mtok=1.0, output_per_mtok=1.0)
    msgs = user("stream these four words")
    r = await call_llm(agent, msgs, timeout_s=10, stream=True, on_progress=progress)
    assert r.ok and r.answer == "answer[m1]: stream these four words"
    assert (r.prompt_tokens, r.completion_tokens) == expected_usage(msgs, r.answer)
    assert r.cost_usd == pytest.approx((r.prompt_tokens + r.completion_tokens) / 1e6)
    assert seen and seen == sorted(seen) and seen[-1] == len(r.answer)
    assert fake_openai.chat_requests()[0].body["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_a_call_cut_off_mid_answer_has_an_unknown_cost_not_zero(fake_openai: FakeOpenAI) -> None:
    """The provider had started generating (and billing) when the stream broke: 0 would undercount budgets."""

    async def broken(chars: int) -> None:
        raise ConnectionResetError("the client went away mid-stream")

    agent = conn(fake_openai, input_per_mtok=1.0, output_per_mtok=1.0)
    r = await call_llm(agent, user("stream these four words"), timeout_s=10, stream=True, on_progress=broken)
    assert r.error_class == "connection" and r.cost_usd is None and r.cost_source == "unknown"
    refused = await call_llm(agent, user("FAIL500"), timeout_s=10, stream=True)
    assert refused.error_class == "server_error" and refused.cost_usd == 0.0  # an error response: nothing billed


@pytest.mark.anyio
async def test_agent_settings_cap_the_call(fake_openai: FakeOpenAI) -> None:
    agent = conn(fake_openai, max_output_tokens=16, timeout_s=0.5)
    r = await call_llm(agent, user("SLOW:60"), timeout_s=30, max_tokens=4096)
    assert r.error_class == "timeout" and r.latency_s < 5  # the agent's 0.5 s, not the call's 30 s
    assert fake_openai.chat_requests()[0].body["max_tokens"] == 16


@pytest.mark.anyio
async def test_concurrency_limit_serialises_calls(fake_openai: FakeOpenAI) -> None:
    agent = conn(fake_openai, id="serial", concurrency=1)
    results: list[BackendResult] = []

    async def one() -> None:
        results.append(await call_llm(agent, user("SLOW:0.3"), timeout_s=5))

    await call_llm(agent, user("warm up"), timeout_s=5)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)
    assert all(r.ok for r in results) and time.perf_counter() - t0 >= 0.55


@pytest.mark.anyio
async def test_classifier_on_litellm_exception_types() -> None:
    litellm = await ensure_litellm()
    kw = {"message": "m", "model": "x", "llm_provider": "openai"}
    assert classify_exception(litellm.ContextWindowExceededError(**kw)) == "task"
    assert classify_exception(litellm.ContentPolicyViolationError(**kw)) == "task"
    assert classify_exception(litellm.NotFoundError(**kw)) == "server_error"
    assert classify_exception(litellm.ServiceUnavailableError(**kw)) == "server_error"
    assert classify_exception(litellm.PermissionDeniedError(**kw, response=_response(403))) == "auth"
    assert classify_exception(litellm.Timeout(**kw)) == "timeout"
    assert classify_exception(TimeoutError()) == "timeout"
    assert classify_exception(RuntimeError("weird")) == "server_error"
    # what litellm raises when the OpenAI client finds no key at all (no api_key_env, no provider variable)
    missing = "OpenAIException - Missing credentials. Please pass an `api_key`, or set the `OPENAI_API_KEY` variable."
    assert classify_exception(litellm.InternalServerError(**{**kw, "message": missing})) == "auth"


def _response(status: int):  # noqa: ANN202 - an httpx.Response, imported lazily like litellm
    import httpx

    return httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))


def test_importing_the_backend_does_not_import_litellm() -> None:
    code = "import sys, skillorchestra.server.llm_backend; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_litellm_records_reach_our_one_line_stderr_log_never_stdout() -> None:
    """litellm's own handler writes records below WARNING to stdout (the stdio transport's channel) and formats
    them its way; after our import its loggers hand their records to the root handler instead."""
    code = (
        "import logging\n"
        "from skillorchestra.server.log_format import configure_logging\n"
        "from skillorchestra.server.llm_backend import _import_litellm\n"
        "configure_logging('DEBUG')\n"
        "_import_litellm()\n"
        "log = logging.getLogger('LiteLLM')\n"
        "log.critical('provider said: line one\\nCRITICAL forged')\n"
        "log.setLevel(logging.DEBUG)  # as litellm's own verbose switch does\n"
        "log.debug('a debug record')\n"
    )
    env = {**os.environ, "LITELLM_LOG": "DEBUG"}  # a user's setting: its handler then passes debug records on
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert not [line for line in lines if line.startswith("CRITICAL forged")]  # no forged line of its format
    ours = [line.split(" ", 2)[2] for line in lines if "provider said" in line or "a debug record" in line]
    assert ours == ["CRITICAL LiteLLM: provider said: line one\\nCRITICAL forged", "DEBUG LiteLLM: a debug record"]


def test_fake_server_runs_as_a_subprocess() -> None:
    import json
    import urllib.request

    script = str(Path(__file__).with_name("fake_openai.py"))
    proc = subprocess.Popen(
        [sys.executable, script, "--port", "0", "--behaviour", "bad=WRONG"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("ready http://127.0.0.1:")
        api_base = line.split()[1]
        with urllib.request.urlopen(f"{api_base}/models", timeout=5) as resp:
            assert "bad" in {m["id"] for m in json.load(resp)["data"]}
        body = json.dumps({"model": "bad", "messages": [{"role": "user", "content": "2+2?"}]}).encode()
        req = urllib.request.Request(f"{api_base}/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["choices"][0]["message"]["content"] == "wrong[bad]: 42"
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


@pytest.mark.anyio
async def test_waiting_for_a_busy_slot_is_not_the_agents_timeout(fake_openai: FakeOpenAI) -> None:
    """With concurrency 1, a second call that cannot get the slot in time never reaches the agent."""
    from skillorchestra.server.llm_backend import QUEUE_FULL

    agent = conn(fake_openai, "openai/one-at-a-time", concurrency=1)
    results: dict[str, object] = {}

    async def first() -> None:
        results["first"] = await call_llm(agent, user("SLOW:1.5 hello"), timeout_s=10, max_tokens=5)

    async def second() -> None:
        await anyio.sleep(0.2)  # the first call holds the only slot by now
        results["second"] = await call_llm(agent, user("hi"), timeout_s=0.4, max_tokens=5)

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        group.start_soon(second)
    assert results["first"].ok  # type: ignore[attr-defined]
    queued = results["second"]
    assert queued.error_type == QUEUE_FULL and queued.error_class == "rate_limit"  # type: ignore[attr-defined]
    assert len(fake_openai.chat_requests("one-at-a-time")) == 1


@pytest.mark.anyio
async def test_a_timeout_after_waiting_most_of_the_call_for_a_slot_is_the_queues_not_the_agents(
    fake_openai: FakeOpenAI,
) -> None:
    """Soak QA: 16 clients on an agent of 4 slots got timeouts after 0.4-1.5 s with the agent, worded "no answer
    within 4.99999 s", and fed its circuit breaker until it opened against a healthy agent."""
    from skillorchestra.server.breaker import CircuitBreaker
    from skillorchestra.server.delegation import settle_breaker
    from skillorchestra.server.llm_backend import QUEUED_TIMEOUT, SLOT_WAIT, SlotWait, agent_limiter

    agent = conn(fake_openai, "openai/queued", concurrency=1)
    busy = agent_limiter(agent.id, 1)
    await busy.acquire()  # another call holds the only slot
    results: dict[str, object] = {}
    wait = SlotWait()

    async def waiting() -> None:
        SLOT_WAIT.set(wait)  # this task's: it says when the call is waiting for the slot (litellm's import first)
        results["call"] = await call_llm(agent, user("SLOW:30 hello"), timeout_s=2.0, max_tokens=5)

    async with anyio.create_task_group() as group:
        group.start_soon(waiting)
        with anyio.fail_after(30):
            while not wait.waiting:
                await anyio.sleep(0.01)
        await anyio.sleep(1.2)  # most of its 2 s waiting; then the agent has the rest, and answers in 30 s
        busy.release()
    result = results["call"]
    assert result.error_class == "timeout" and result.error_type == QUEUED_TIMEOUT  # type: ignore[attr-defined]
    assert "waiting for one of its 1 concurrency slots" in result.message  # type: ignore[attr-defined]
    assert len(fake_openai.chat_requests("queued")) == 1  # it did reach the agent
    breaker = CircuitBreaker(threshold=1, cooldown_s=60)
    settle_breaker(breaker, agent.id, result)  # type: ignore[arg-type]
    assert breaker.state(agent.id) == "closed"  # one timeout of the agent's own would have opened it


def test_only_a_timeout_that_used_up_the_time_left_after_a_slot_wait_is_the_queues() -> None:
    """Review: an agent's own quick timeout (a 408 at once) after a slot wait was blamed on the queue, and a 300 s
    call's message read "1e+02 s"."""
    from skillorchestra.server.llm_backend import QUEUED_TIMEOUT, timeout_message

    assert timeout_message(2.0, 0.8, 0.8, 4)[1] == QUEUED_TIMEOUT
    assert timeout_message(2.0, 0.8, 0.01, 4) == ("no answer within 2 s", None)  # answered at once: the agent's
    assert timeout_message(2.0, 1.5, 1.5, 4)[1] is None  # a short wait: the agent had most of the call
    message, _ = timeout_message(300.0, 100.0, 100.0, 4)
    assert message.startswith("no answer within 100 s, after 200 s of the call's 300 s waiting for one of its 4")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("directive", "warned"),
    [
        ("NOUSAGE", "reported no token usage"),  # litellm turns a missing usage into 0/0: the call would look free
        ("HUGEUSAGE", "1,000,000,000,000,000,000 prompt"),  # QA: billed $3e12, every agent's reference cost then
    ],
)
async def test_a_reply_without_a_believable_usage_is_priced_from_estimated_tokens_never_zero(
    fake_openai: FakeOpenAI, directive: str, warned: str
) -> None:
    msgs = user(f"{directive} explain this")
    answer = f"answer[m1]: {directive} explain this"
    chars = len("".join(m["content"] for m in msgs))
    priced = await call_llm(conn(fake_openai, input_per_mtok=2.0, output_per_mtok=10.0), msgs, timeout_s=10)
    assert priced.ok and priced.answer == answer
    assert priced.cost_source == "estimated" and (priced.prompt_tokens, priced.completion_tokens) == (None, None)
    assert priced.cost_usd == pytest.approx((math.ceil(chars / 4) * 2.0 + math.ceil(len(answer) / 4) * 10.0) / 1e6)
    assert any(warned in w for w in priced.warnings)
    unpriced = await call_llm(conn(fake_openai, "openai/house-model-7"), msgs, timeout_s=10)
    assert unpriced.ok and unpriced.cost_usd is None and unpriced.cost_source == "unknown"  # unknown, not $0


def test_only_a_usage_no_model_could_have_is_disbelieved() -> None:
    """Bounded by what a model can take or write in one call, not by the text sent: an agent behind an endpoint may
    add context of its own, and its honest usage is billed (review)."""
    assert usage_believed(5_000_000, 5) and usage_believed(None, None) and usage_believed(PLAUSIBLE_TOKENS, 0)
    assert not usage_believed(30, PLAUSIBLE_TOKENS + 1) and not usage_believed(-1, 5)


@pytest.mark.anyio
async def test_a_reply_with_no_choices_is_a_server_error(fake_openai: FakeOpenAI) -> None:
    r = await call_llm(conn(fake_openai, input_per_mtok=1.0, output_per_mtok=1.0), user("EMPTYCHOICES"), timeout_s=10)
    assert r.error_class == "server_error" and r.infrastructure_failure and r.error_type == "EmptyChoices"
    assert r.answer == "" and r.cost_usd is not None and r.cost_usd > 0  # the provider reported (and billed) a prompt


def test_the_first_call_warm_up_is_skipped_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: with HTTP_PROXY set, the warm-up's refused call to 127.0.0.1:9 went to the proxy instead."""
    from skillorchestra.server.llm_backend import WARM_UP_BASE, _proxied

    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert not _proxied(WARM_UP_BASE)
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    assert _proxied(WARM_UP_BASE)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    assert not _proxied(WARM_UP_BASE)


@pytest.mark.anyio
async def test_calls_arriving_during_the_first_calls_warm_up_wait_for_it(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: only the first caller waited for the warm-up; three other first delegations started their clocks at once,
    paid the client's set-up inside timeout_s=0.5 and timed out. The warm-up is pointed at the fake server, held
    there, so the interleaving is forced, not timed."""
    from skillorchestra.server import llm_backend

    monkeypatch.setattr(llm_backend, "_first_call_warmed", False)
    monkeypatch.setattr(llm_backend, "WARM_UP_BASE", fake_openai.api_base)
    release = fake_openai.hold("warm-up")
    returned: list[str] = []

    async def first_call(name: str) -> None:
        await llm_backend.ensure_litellm()
        returned.append(name)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(first_call, "warming")
        await until_called(fake_openai, "warm-up")
        tasks.start_soon(first_call, "arrived during the warm-up")
        await anyio.sleep(0.2)  # ample for a caller that does not wait: it returns at once
        assert returned == []
        release.set()
    assert sorted(returned) == ["arrived during the warm-up", "warming"]
    assert llm_backend._first_call_warmed and llm_backend._warming is None


@pytest.mark.anyio
async def test_the_wait_for_a_busy_slot_counts_against_the_calls_time(fake_openai: FakeOpenAI) -> None:
    """QA: a call waited 5.5 s of its 6 s for the agent's one slot, then took a fresh 6 s: delegate returned after
    11.5 s. Here the slot is held 1.5 s of a 2.5 s budget, and the answer needs 1.5 s: only a fresh budget fits it."""
    await ensure_litellm()
    agent = conn(fake_openai, model="openai/busy-model", concurrency=1)
    release = fake_openai.hold("busy-model")
    results: dict[str, BackendResult] = {}

    async def call(name: str, text: str, timeout_s: float) -> None:
        results[name] = await call_llm(agent, user(text), timeout_s=timeout_s)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call, "holder", "first", 30.0)
        await until_called(fake_openai, "busy-model")  # it holds the slot
        tasks.start_soon(call, "waiter", "SLOW:1.5 second", 2.5)
        await anyio.sleep(1.5)  # the waiter's time runs while the slot is busy
        release.set()
    assert results["holder"].error_class is None
    assert results["waiter"].error_class == "timeout", results["waiter"]
