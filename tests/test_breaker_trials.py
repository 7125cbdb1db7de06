"""A half-open breaker's one trial call is given back whenever delegate claims it and then does not call the agent,
and a progress note the client can no longer take does not cut the agent's call: a trial left claimed kept the
agent "circuit breaker open" until the server restarted (review). Real parts: a SQLite file in tmp_path held by
another connection, the fake OpenAI server on loopback, the breaker's own (fake) clock."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fake_openai import FakeOpenAI
from mcp_calls import cheap_agent, db_rows, grader_agent, loaded, priced_pair, until_called

from skillorchestra.handbook.errors import FileReplaced
from skillorchestra.handbook.service import DelegateRequest, Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.breaker import CircuitBreaker
from skillorchestra.server.delegation import Delegator
from skillorchestra.server.settings import ServerSettings

pytestmark = pytest.mark.anyio
GUARD_S = 30.0  # how long a test waits for an event: never reached when the code is right
COOL_DOWN_S = 30.0
# the step goes to cheap first (lambda 1: cost weighs most), then falls back to strong
STEP = RouteRequest(text="add two numbers", allowed_agents=["cheap", "strong"], lambda_=1.0)


@pytest.fixture
def settings(tmp_path: Path, fake_openai: FakeOpenAI) -> ServerSettings:
    return loaded(tmp_path, priced_pair(fake_openai.api_base))


@pytest.fixture
def holder(settings: ServerSettings) -> Iterator[sqlite3.Connection]:
    """Another process's connection to the file: it takes the write lock with BEGIN IMMEDIATE when a test says."""
    conn = sqlite3.connect(settings.db_path, isolation_level=None, check_same_thread=False)
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def half_open(agent_id: str) -> CircuitBreaker:
    """A breaker (fake clock) whose `agent_id` failed once and has cooled down: its next call is the one trial."""
    clock = [1000.0]
    breaker = CircuitBreaker(threshold=1, cooldown_s=COOL_DOWN_S, clock=lambda: clock[0])
    breaker.record_failure(agent_id, "server_error")
    assert not breaker.would_allow(agent_id)
    clock[0] += COOL_DOWN_S
    assert breaker.state(agent_id) == "half_open" and breaker.would_allow(agent_id)
    return breaker


async def _delegate_until_cancelled(
    delegator: Delegator, steps: list[anyio.CancelScope], cancelled: list[bool]
) -> None:
    """The step delegated in a scope the test cancels (`steps`), noting whether the cancellation ended it."""
    with anyio.CancelScope() as scope:
        steps.append(scope)
        await delegator.delegate(DelegateRequest(route=STEP, timeout_s=60))
    cancelled.append(scope.cancelled_caught)


async def test_a_fallback_whose_decision_the_busy_file_refused_gives_its_trial_back(
    settings: ServerSettings, fake_openai: FakeOpenAI, holder: sqlite3.Connection
) -> None:
    """cheap fails; its fallback strong (half-open) is let through, but its decision cannot be written: another
    process holds the file past the busy timeout. delegate fails as it did ("database is locked"), strong was
    never called, and its trial is free for the next step."""
    store = HandbookStore(settings.db_path, busy_timeout_s=0.2)
    breaker = half_open("strong")
    delegator = Delegator(Handbook(store), breaker=breaker)
    fake_openai.behaviours["cheap-model"] = "FAIL500"
    release = fake_openai.hold("cheap-model")
    failures: list[BaseException] = []

    async def step() -> None:
        try:
            await delegator.delegate(DelegateRequest(route=STEP, timeout_s=30))
        except Exception as exc:  # asserted below
            failures.append(exc)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(step)
            await until_called(fake_openai, "cheap-model")  # routed (its decision written), cheap at work
            holder.execute("BEGIN IMMEDIATE")  # another process takes the file's write lock and keeps it
            release.set()
    finally:
        store.close()
    (failure,) = failures
    assert isinstance(failure, sqlite3.OperationalError) and "locked" in str(failure)
    assert len(fake_openai.chat_requests("cheap-model")) == 1 and not fake_openai.chat_requests("strong-model")
    assert breaker.state("strong") == "half_open" and breaker.would_allow("strong")
    assert "strong" not in delegator.unavailable()


async def test_a_fallback_cancelled_before_its_decision_is_written_gives_its_trial_back(
    settings: ServerSettings, fake_openai: FakeOpenAI, holder: sqlite3.Connection
) -> None:
    """The client gives up while cheap's failure is being recorded (a worker thread waits for another process's
    lock; the cancellation waits for it): it reaches the step just after strong's trial was claimed, before its
    fallback decision is written. Nothing called strong: its trial is free again."""
    store = HandbookStore(settings.db_path, busy_timeout_s=GUARD_S)  # the wait never gives up on its own
    breaker = half_open("strong")
    delegator = Delegator(Handbook(store), breaker=breaker)
    fake_openai.behaviours["cheap-model"] = "FAIL500"
    release = fake_openai.hold("cheap-model")
    waiting = threading.Event()
    loop_thread = threading.current_thread()

    def trace(sql: str) -> None:  # a worker thread's write (cheap's failure) now waits on the holder
        if sql == "BEGIN IMMEDIATE" and threading.current_thread() is not loop_thread:
            waiting.set()

    cancelled: list[bool] = []

    steps: list[anyio.CancelScope] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_delegate_until_cancelled, delegator, steps, cancelled)
            await until_called(fake_openai, "cheap-model")
            holder.execute("BEGIN IMMEDIATE")
            store.db.conn.set_trace_callback(trace)
            release.set()
            with anyio.fail_after(GUARD_S):
                await anyio.to_thread.run_sync(waiting.wait)
            steps[0].cancel()  # the client gives up: delivered once the recording thread is done
            holder.execute("ROLLBACK")  # the other process lets go: cheap's failure is recorded
    finally:
        store.db.conn.set_trace_callback(None)
        store.close()
    assert cancelled == [True]
    assert not fake_openai.chat_requests("strong-model")
    assert breaker.state("strong") == "half_open" and breaker.would_allow("strong")


class _HeldFallbacks(Handbook):
    """The handbook, its fallback decisions written only once the test lets them: the write a cancellation meets."""

    def __init__(self, store: HandbookStore) -> None:
        super().__init__(store)
        self.writing, self.go_on = threading.Event(), threading.Event()

    def fallback_decision(self, *args: Any, **kwargs: Any) -> str:
        self.writing.set()
        self.go_on.wait(GUARD_S)
        return super().fallback_decision(*args, **kwargs)


async def test_a_fallback_cancelled_while_its_decision_is_written_closes_that_decision(
    settings: ServerSettings, fake_openai: FakeOpenAI
) -> None:
    """The client gives up while strong's fallback decision is being written (in a worker thread): the write
    finishes, its decision comes back, and the cancellation reaches the call in its wait for strong's slot, so the
    decision, which nobody will call or report, is closed at once (it held the session's budget until it expired,
    a review feared) and strong's trial is free again."""
    store = HandbookStore(settings.db_path)
    handbook = _HeldFallbacks(store)
    breaker = half_open("strong")
    delegator = Delegator(handbook, breaker=breaker)
    fake_openai.behaviours["cheap-model"] = "FAIL500"
    steps: list[anyio.CancelScope] = []
    cancelled: list[bool] = []

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_delegate_until_cancelled, delegator, steps, cancelled)
            with anyio.fail_after(GUARD_S):
                await anyio.to_thread.run_sync(handbook.writing.wait)
            steps[0].cancel()  # delivered once the write is done
            handbook.go_on.set()
    finally:
        store.close()
    assert cancelled == [True]
    assert not fake_openai.chat_requests("strong-model")
    assert breaker.would_allow("strong")
    [(expires_at, call_error)] = db_rows(
        settings.db_path, "SELECT expires_at, call_error_class FROM decisions WHERE role = 'fallback'"
    )
    assert call_error is None  # strong was never called: no call, not even a cancelled one, is on its decision
    assert expires_at <= time.time()  # closed: it holds none of the session's budget


async def test_a_progress_note_that_cannot_be_sent_does_not_cut_the_call(
    settings: ServerSettings, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's stream closed: its progress callback raises. The agent's call goes on and answers, it is
    recorded as called (not cancelled), and the half-open trial it took is settled: the breaker closes."""
    caplog.set_level(logging.DEBUG, logger="skillorchestra.server.delegation")
    store = HandbookStore(settings.db_path)
    breaker = half_open("cheap")
    delegator = Delegator(Handbook(store), breaker=breaker)
    release = fake_openai.hold("cheap-model")
    failed = anyio.Event()
    notes: list[tuple[float, str]] = []

    async def progress(fraction: float, message: str) -> None:
        notes.append((fraction, message))
        failed.set()
        raise RuntimeError("the client's stream is closed")

    results: list[Any] = []

    async def step() -> None:
        request = DelegateRequest(route=RouteRequest(text="add two numbers"), agent_id="cheap", timeout_s=30)
        results.append(await delegator.delegate(request, progress))

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(step)
            with anyio.fail_after(GUARD_S):
                await failed.wait()
            release.set()  # cheap answers only after its progress note failed
    finally:
        store.close()
    (result,) = results
    assert result.agent_id == "cheap" and result.answer == "answer[cheap-model]: add two numbers"
    assert len(notes) == 1  # ticking stopped at the first note that could not be sent
    ((error_class, latency, cost),) = db_rows(
        settings.db_path,
        f"SELECT call_error_class, call_latency_s, call_cost_usd FROM decisions WHERE id = '{result.decision_id}'",
    )
    assert error_class is None and latency is not None and cost == pytest.approx(result.cost_usd)
    assert breaker.state("cheap") == "closed" and breaker.would_allow("cheap")
    said = [r for r in caplog.records if r.name == "skillorchestra.server.delegation" and "progress" in r.message]
    assert [r.levelno for r in said] == [logging.DEBUG]


def judged_agents(api_base: str) -> str:
    """cheap answers; grader (the fake server's judge-model) grades."""
    return cheap_agent(api_base) + grader_agent(api_base) + '\n[judge]\nagent = "grader"\n'


async def test_a_judge_whose_decision_the_replaced_file_refused_gives_its_trial_back(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """The handbook file is replaced (a restore) after cheap's answer was recorded: the half-open judge is let
    through, but its decision cannot be written (FileReplaced, as before). The judge was never called: its trial
    is free again."""
    settings = loaded(tmp_path, judged_agents(fake_openai.api_base))
    restored = tmp_path / "restored.db"
    with sqlite3.connect(settings.db_path) as source, sqlite3.connect(restored) as copy:
        source.backup(copy)
    store = HandbookStore(settings.db_path)
    breaker = half_open("grader")
    delegator = Delegator(Handbook(store), breaker=breaker)
    fake_openai.behaviours["judge-model"] = "JUDGE:0.8"
    release = fake_openai.hold("cheap-model")
    armed = threading.Event()

    def trace(sql: str) -> None:  # cheap's call is being recorded: the restored copy takes the file's place
        if armed.is_set() and sql == "COMMIT":
            armed.clear()
            os.replace(restored, settings.db_path)

    failures: list[BaseException] = []

    async def step() -> None:
        request = DelegateRequest(route=RouteRequest(text="name a prime number"), agent_id="cheap", timeout_s=30)
        try:
            await delegator.delegate(request)
        except Exception as exc:  # asserted below
            failures.append(exc)

    store.db.conn.set_trace_callback(trace)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(step)
            await until_called(fake_openai, "cheap-model")
            armed.set()
            release.set()
    finally:
        store.db.conn.set_trace_callback(None)
        store.close()
    (failure,) = failures
    assert isinstance(failure, FileReplaced) and not armed.is_set()
    assert len(fake_openai.chat_requests("cheap-model")) == 1 and not fake_openai.chat_requests("judge-model")
    assert breaker.state("grader") == "half_open" and breaker.would_allow("grader")
