"""Where a delegated call's cost is written: on the event loop when nothing has to wait, else on a worker thread.

The loop must never wait on a lock: while another connection (a CLI) holds the file's write lock, the write goes to
a worker thread, the loop keeps serving, and the cost lands once the lock is released.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from skillorchestra.handbook.errors import Unroutable
from skillorchestra.handbook.models import Agent
from skillorchestra.handbook.service import DelegateRequest, Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.delegation import Delegator
from skillorchestra.server.llm_backend import BackendResult

pytestmark = pytest.mark.anyio
ANSWER = BackendResult(answer="42", prompt_tokens=10, completion_tokens=2, cost_usd=1.5e-5, cost_source="agent_prices")


@pytest.fixture
def handbook(tmp_path: Path) -> Iterator[Handbook]:
    store = HandbookStore(tmp_path / "h.db")
    handbook = Handbook(store)
    handbook.upsert_agent(Agent(id="solo", input_per_mtok=1.0, output_per_mtok=2.0))
    store.save_connections({"solo": ("llm", {"model": "openai/solo", "api_base": "http://127.0.0.1:9/v1"})})
    yield handbook
    store.close()


def pragmas(store: HandbookStore) -> tuple[int, int]:
    """The connection settings the inline write changes for its transaction and must put back."""
    conn = store.db.conn
    return conn.execute("PRAGMA busy_timeout").fetchone()[0], conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]


def call_cost(path: Path, decision_id: str) -> Any:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT call_cost_usd FROM decisions WHERE id = ?", [decision_id]).fetchone()[0]


async def test_an_answered_call_is_accounted_without_a_worker_thread(handbook: Handbook) -> None:
    threads: list[str] = []

    async def caller(*_: Any) -> BackendResult:
        return ANSWER

    before = pragmas(handbook.store)
    delegator = Delegator(handbook, caller=caller)
    delegator.breaker.record_failure("solo")  # an earlier failure the answered call must clear
    assert "solo" in delegator.breaker.snapshot()
    account = delegator._account
    delegator._account = lambda *a: threads.append("worker") or account(*a)  # type: ignore[method-assign]
    result = await delegator.delegate(DelegateRequest(route=RouteRequest(text="add two numbers")))
    assert result.answer == "42" and result.cost_usd == pytest.approx(1.5e-5)
    assert call_cost(handbook.store.path, result.decision_id) == pytest.approx(1.5e-5)
    assert threads == []  # written on the loop
    assert "solo" not in delegator.breaker.snapshot()  # healthy again
    assert pragmas(handbook.store) == before and before[0] == 30_000  # the store's busy timeout is back


async def delegate_while_ticking(delegator: Delegator) -> tuple[Any, float, list[float]]:
    """The delegate result, how long it took, and when a 10 ms ticker on the same event loop ran."""
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        start = time.monotonic()
        result = await delegator.delegate(DelegateRequest(route=RouteRequest(text="add two numbers")))
        group.cancel_scope.cancel()
    return result, time.monotonic() - start, ticks


def ran_between(ticks: list[float], held: list[float]) -> bool:
    """Whether the loop ran while the lock was held: a loop blocked on the lock could not tick in between."""
    start, end = held
    return any(start < t < end for t in ticks)


async def test_a_held_write_lock_sends_the_write_to_a_worker_and_the_loop_keeps_running(handbook: Handbook) -> None:
    path = handbook.store.path
    cli = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    held_s = 0.6
    before = pragmas(handbook.store)

    held: list[float] = []

    def release() -> None:
        held.append(time.monotonic())
        cli.execute("COMMIT")

    async def caller(*_: Any) -> BackendResult:
        cli.execute("BEGIN IMMEDIATE")  # a CLI takes the file's write lock while the agent is answering
        held.append(time.monotonic())
        threading.Timer(held_s, release).start()
        return ANSWER

    result, took, ticks = await delegate_while_ticking(Delegator(handbook, caller=caller))
    cli.close()
    assert took >= held_s * 0.9  # the write waited for the lock ...
    assert ran_between(ticks, held)  # ... on a worker thread: the loop kept running meanwhile
    assert call_cost(path, result.decision_id) == pytest.approx(1.5e-5)
    assert pragmas(handbook.store) == before


async def test_a_busy_store_lock_sends_the_write_to_a_worker(handbook: Handbook) -> None:
    held_s = 0.6
    taken = threading.Event()

    held: list[float] = []

    def hold_store_lock() -> None:
        with handbook.store.lock:  # another request's thread is using the store
            held.append(time.monotonic())
            taken.set()
            time.sleep(held_s)
            held.append(time.monotonic())

    async def caller(*_: Any) -> BackendResult:
        threading.Thread(target=hold_store_lock, daemon=True).start()
        taken.wait(5)
        return ANSWER

    result, took, ticks = await delegate_while_ticking(Delegator(handbook, caller=caller))
    assert took >= held_s * 0.9
    assert ran_between(ticks, held)
    assert call_cost(handbook.store.path, result.decision_id) == pytest.approx(1.5e-5)


async def test_a_failed_call_is_accounted_on_a_worker_as_before(handbook: Handbook) -> None:
    failed = BackendResult(error_class="server_error", error_type="X", message="boom", cost_usd=0.0)

    async def caller(*_: Any) -> BackendResult:
        return failed

    delegator = Delegator(handbook, caller=caller, max_fallbacks=0)
    with pytest.raises(Exception, match="no agent answered"):
        await delegator.delegate(DelegateRequest(route=RouteRequest(text="add two numbers")))
    assert handbook.store.counts()["outcomes"] == 1  # the failure became the decision's outcome
    assert delegator.breaker.snapshot()["solo"]["consecutive_failures"] == 1


async def test_a_loaded_agent_the_live_handbook_lost_is_named_with_the_way_back(handbook: Handbook) -> None:
    handbook.store.save_connections(  # `agents load` stored ghost; the live handbook (an import, a learn) lacks it
        {
            "solo": ("llm", {"model": "openai/solo", "api_base": "http://127.0.0.1:9/v1"}),
            "ghost": ("llm", {"model": "openai/ghost", "api_base": "http://127.0.0.1:9/v1"}),
        }
    )
    with pytest.raises(Unroutable, match="agents load"):
        await Delegator(handbook).delegate(DelegateRequest(route=RouteRequest(text="x"), agent_id="ghost"))


@pytest.fixture
def busy_handbook(tmp_path: Path) -> Iterator[Handbook]:
    """A handbook whose writes give up after 0.2 s of another connection's lock, with an agent and a judge."""
    store = HandbookStore(tmp_path / "h.db", busy_timeout_s=0.2)
    handbook = Handbook(store)
    handbook.upsert_agent(Agent(id="solo", input_per_mtok=1.0, output_per_mtok=2.0))
    handbook.upsert_agent(Agent(id="grader", input_per_mtok=1.0, output_per_mtok=2.0))
    base = {"api_base": "http://127.0.0.1:9/v1"}
    store.save_connections(
        {
            "solo": ("llm", {"model": "openai/solo", **base}),
            "grader": ("llm", {"model": "openai/grader", **base, "judge": {"agent": "grader"}}),
        }
    )
    yield handbook
    store.close()


async def test_a_paid_answer_is_returned_when_the_file_stays_locked_for_its_bookkeeping(
    busy_handbook: Handbook,
) -> None:
    """Review: a write that gave up on another process's lock after the calls were made threw the delegate away,
    though the agent and the judge had answered and been paid; a retry paid them again. Now the answer comes back,
    each unrecorded piece said in a warning."""
    store = busy_handbook.store
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)

    async def caller(conn: Any, *_: Any) -> BackendResult:
        if conn.id == "grader":  # a CLI takes the file between the agent's answer and the judge's bookkeeping
            other.execute("BEGIN IMMEDIATE")
            return BackendResult(answer='{"score": 1}', cost_usd=1e-6, cost_source="agent_prices")
        return ANSWER

    route = RouteRequest(text="add two numbers", allowed_agents=["solo"])
    try:
        result = await Delegator(busy_handbook, caller=caller).delegate(DelegateRequest(route=route))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert result.answer == "42" and result.agent_id == "solo" and result.reported_by is None
    assert result.judge_score == 1.0 and result.judged_reward is None
    locked = "the handbook file stayed locked by another process for 30 s"
    assert any(w.startswith("the call of grader is not in the handbook") for w in result.warnings), result.warnings
    assert any(w.startswith(f"the judge's grade was not recorded ({locked})") for w in result.warnings)
    assert call_cost(store.path, result.decision_id) == pytest.approx(1.5e-5)  # the agent's call was recorded
    assert store.outcome(result.decision_id) is None  # left for record_outcome, as the warning says
