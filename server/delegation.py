"""Delegation: route a step, call the chosen agent (litellm or another MCP server's tool), account for it.

Policy, owned here rather than by litellm (which is called with max_retries=0):
- one deadline for all tries together (45 s by default: many hosts give up on a request after 60 s);
- an infrastructure failure (timeout, rate limit, connection, auth, server error) is recorded at once as that
  decision's outcome (cost, no competence change), feeds the agent's circuit breaker, and the next-best candidate
  is tried, up to `max_fallbacks`;
- a completed answer's cost and latency are recorded at once on its decision; competence moves when the client
  reports the outcome with record_outcome(decision_id), or when the optional judge (server/judge.py) grades it;
- an llm agent's call is priced with the live handbook agent's prices when it has them (upsert_agent may have
  changed them since `agents load`), so delegation bills what routing expects; else the connection's prices;
- timeout_s below MIN_TRY_S is refused; the first try always runs, and a fallback starts only while MIN_TRY_S of
  the time budget is left;
- with `decision_id`, a route_step decision is carried out instead of routing again (one decision per step):
  its agent first, then its stored candidates as fallbacks. A decision unknown, expired, reported, already
  called or claimed by a delegate still running (on any server sharing the file: the claim is a column of the
  decision) is refused before anything is written.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from skillorchestra.handbook import costing
from skillorchestra.handbook.arrays import HandbookArrays
from skillorchestra.handbook.errors import HandbookError, InvalidInput, NotFound, Unroutable, utc_text
from skillorchestra.handbook.models import MIN_TRY_S
from skillorchestra.handbook.paging import json_bytes
from skillorchestra.handbook.results import (
    Attempt,
    Candidate,
    DelegateResult,
    Exclusion,
    RouteDecision,
    Routing,
    UsedSkill,
)
from skillorchestra.handbook.service import DelegateRequest, Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.sqlite_file import BUSY_NOT_RECORDED, is_busy
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.store_sql import DecisionRow
from skillorchestra.server.breaker import CircuitBreaker, whole_seconds

if TYPE_CHECKING:  # the backends, their connection settings and the judge load on the first delegation (start-up)
    from skillorchestra.server.agent_config import AgentConnection
    from skillorchestra.server.llm_backend import BackendResult, SlotWait

log = logging.getLogger(__name__)

Progress = Callable[[float, str], Awaitable[None]]
PROGRESS_INTERVAL_S = 1.0
ANSWER_CHARS_PER_TOKEN = 16  # an answer cap per max_tokens token: 3-4 characters a token is usual
ANSWER_FLOOR_CHARS = 100_000  # the least cap (a tool agent's answer, a small max_tokens)
# the most an answer may take in the result's JSON: the result carries it twice (text and structured content), and
# the SDK's client refuses a server-sent event over 1 MiB, so a longer one never reached the caller (review)
ANSWER_JSON_BYTES_MAX = 400_000


TIME_SPENT = "delegate's time budget spent"


class DelegationFailed(HandbookError):
    """Every agent tried failed for infrastructure reasons (each failure is recorded)."""


Caller = Callable[["AgentConnection", str, list[dict[str, Any]], float, int | None], Awaitable["BackendResult"]]


@dataclass(frozen=True)
class _Plan:
    """One step's tries as _carry_out makes them: what was asked, whom to call in which order, and one deadline."""

    request: DelegateRequest
    connections: dict[str, AgentConnection]
    route: RouteRequest
    decision: RouteDecision  # its candidates cut to the ones the caller is shown (route.top_k)
    routed_costs: dict[str, float | None]  # what routing expects each candidate to cost (None: unknown to it)
    callable_order: list[str]  # the decision's agent, then every candidate with connection settings
    order: list[str]  # the ones tried: callable_order cut to 1 + max_fallbacks
    messages: list[dict[str, Any]]
    progress: Progress | None
    start: float  # time.monotonic() when the time budget started
    deadline: float


async def _litellm_ready(connections: dict[str, AgentConnection]) -> None:
    """Import litellm and warm its first call when an llm agent may be called, before the step's time budget
    starts."""
    from skillorchestra.server.agent_config import LlmAgentConnection

    if any(isinstance(conn, LlmAgentConnection) for conn in connections.values()):
        from skillorchestra.server.llm_backend import ensure_litellm

        await ensure_litellm()


def _noted(result: BackendResult, note: str | None) -> BackendResult:
    """The result with the accounting's note (a call the file did not take) among its warnings and in its message."""
    if not note:
        return result
    result = result.model_copy(update={"warnings": [*result.warnings, note]})
    if result.message is not None:
        result = result.model_copy(update={"message": f"{result.message}; {note}"})
    return result


def _attempt(agent_id: str, decision_id: str, result: BackendResult) -> Attempt:
    """One called agent as the result's `tried` list shows it."""
    return Attempt(
        agent_id=agent_id,
        decision_id=decision_id,
        error_class=result.error_class,
        message=result.message,
        latency_s=result.latency_s,
        cost_usd=result.cost_usd,
    )


async def call_agent(
    conn: AgentConnection, text: str, messages: list[dict[str, Any]], timeout_s: float, max_tokens: int | None
) -> BackendResult:
    """The real backends; imported lazily so start-up never pays for litellm."""
    from skillorchestra.server.agent_config import LlmAgentConnection

    if isinstance(conn, LlmAgentConnection):
        from skillorchestra.server.llm_backend import call_llm

        return await call_llm(conn, messages, timeout_s=timeout_s, max_tokens=max_tokens)
    from skillorchestra.server.mcp_backend import call_mcp_tool

    return await call_mcp_tool(conn, text, timeout_s=timeout_s)


class Delegator:
    def __init__(
        self,
        handbook: Handbook,
        *,
        breaker: CircuitBreaker | None = None,
        max_fallbacks: int = 2,
        caller: Caller = call_agent,
    ) -> None:
        self.handbook = handbook
        self.breaker = breaker or CircuitBreaker()
        self.max_fallbacks = max_fallbacks
        self.caller = caller

    def connections(self) -> dict[str, AgentConnection]:
        """Connection settings as loaded by `skillorchestra agents load` (re-read: the CLI may reload them)."""
        from skillorchestra.server.agent_config import parse_agent

        loaded: dict[str, AgentConnection] = {}
        for agent_id, raw in self.handbook.store.connections().items():
            try:
                loaded[agent_id] = parse_agent(agent_id, {k: v for k, v in raw.items() if k != "id"}, "database")
            except (InvalidInput, ValidationError) as exc:  # a row written by an older version: skip, say why
                log.warning("ignoring stored connection of %s: %s", agent_id, exc)
        return loaded

    def unavailable(self, connections: dict[str, AgentConnection] | None = None) -> dict[str, str]:
        """Agents routing must skip: a circuit breaker that would refuse the call (open, or half-open with its one
        trial call already in flight), and, for delegation, no connection settings."""
        reasons = {
            agent_id: f"circuit breaker {health.get('state')} after {health.get('consecutive_failures')} "
            "infrastructure failures" + _breaker_wait(health)
            for agent_id, health in self.breaker.snapshot().items()
            if not self.breaker.would_allow(agent_id)
        }
        if connections is not None:
            for agent_id in self.handbook.arrays().agent_ids:  # cached, re-derived when the file changes
                if agent_id not in connections:
                    reasons.setdefault(agent_id, "no connection settings (load them with `skillorchestra agents load`)")
        return reasons

    async def delegate(self, request: DelegateRequest, progress: Progress | None = None) -> DelegateResult:
        if not request.timeout_s >= MIN_TRY_S:  # refused before anything is written: no try could fit
            raise InvalidInput("timeout_s", request.timeout_s, f"at least {MIN_TRY_S:g} s (the time one try needs)")
        # every read of the file happens off the event loop (a CLI import may hold the write lock for a while),
        # in one trip to a worker thread: on a busy 2-core host each trip can cost a scheduling slice
        if request.decision_id is None:
            prepared = await anyio.to_thread.run_sync(self._prepare_and_route, request)
            try:
                return await self._carry_out(request, *prepared, progress)
            except BaseException:  # stopped before its agent was called (no-op after): the client never saw the
                with anyio.CancelScope(shield=True):  # decision, so it would hold budget until it expired
                    await anyio.to_thread.run_sync(self._withdraw, prepared[2].decision_id)
                raise
        prepared = await anyio.to_thread.run_sync(self._prepare_decided, request)
        try:
            return await self._carry_out(request, *prepared, progress)
        except BaseException:  # stopped before its agent was called or skipped (no-op after): claim given back
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.handbook.store.release_claim, request.decision_id)
            raise

    async def _carry_out(
        self,
        request: DelegateRequest,
        connections: dict[str, AgentConnection],
        route: RouteRequest,
        decision: RouteDecision,
        progress: Progress | None,
    ) -> DelegateResult:
        """Call the decision's agent, then its candidates in order after infrastructure failures."""
        await _litellm_ready(connections)  # the one-off import (seconds) is the server's start-up, not this step's
        plan = self._plan(request, connections, route, decision, progress)  # the time budget starts here
        tried: list[Attempt] = []
        for position, agent_id in enumerate(plan.order):
            remaining = plan.deadline - time.monotonic()
            if position > 0 and remaining < MIN_TRY_S:  # the first try always runs (QA: 0.5 s called nobody)
                tried.append(Attempt(agent_id=agent_id, error_class="timeout", message=TIME_SPENT))
                break
            decision_id = await self._decision_for(plan, position, agent_id, tried)
            if decision_id is None:  # skipped: its breaker is open, or the session's budget has no room for it
                continue
            result = await self._try_agent(plan, position, agent_id, decision_id, remaining)
            tried.append(_attempt(agent_id, decision_id, result))
            if not result.infrastructure_failure:
                answer = _answer(plan.decision, decision_id, agent_id, result, tried, plan.routed_costs.get(agent_id))
                return await self._judged(plan, answer)
        raise DelegationFailed(
            f"no agent answered; each failure is recorded without touching competence: {self._summary(plan, tried)}"
        )

    def _plan(
        self,
        request: DelegateRequest,
        connections: dict[str, AgentConnection],
        route: RouteRequest,
        decision: RouteDecision,
        progress: Progress | None,
    ) -> _Plan:
        """The step's tries: the decision's agent, then its callable candidates up to max_fallbacks, one deadline."""
        start = time.monotonic()
        # a stored decision's candidates may include agents the server cannot call: they are no fallbacks
        fallbacks = [c.agent_id for c in decision.candidates if c.agent_id != decision.agent_id]
        callable_order = [decision.agent_id] + [agent_id for agent_id in fallbacks if agent_id in connections]
        return _Plan(
            request=request,
            connections=connections,
            route=route,
            decision=decision.model_copy(update={"candidates": decision.candidates[: route.top_k]}),
            routed_costs={c.agent_id: c.expected_cost_usd for c in decision.candidates},
            callable_order=callable_order,
            order=callable_order[: 1 + self.max_fallbacks],
            messages=_messages(route.text, request.context),
            progress=progress,
            start=start,
            deadline=start + request.timeout_s,
        )

    async def _decision_for(self, plan: _Plan, position: int, agent_id: str, tried: list[Attempt]) -> str | None:
        """The decision this try is recorded on: the routed one first, then a fallback decision per candidate, held
        against the session's budget. None, noted in `tried`, when the agent is skipped: its breaker refuses it
        (the routed decision is then closed, uncalled), or a fallback does not fit in the budget."""
        if not self.breaker.allow(agent_id):
            tried.append(Attempt(agent_id=agent_id, error_class="connection", message="circuit breaker open"))
            if position == 0:  # the breaker turned between routing and calling: close the decision, uncalled
                await anyio.to_thread.run_sync(self._uncalled, plan.decision.decision_id)
            return None
        if position == 0:
            return plan.decision.decision_id
        try:  # held against the session's budget as route_step holds a step (QA: parallel fallbacks overspent)
            return await anyio.to_thread.run_sync(
                functools.partial(
                    self.handbook.fallback_decision,
                    plan.decision.decision_id,
                    agent_id,
                    expected_cost=plan.routed_costs.get(agent_id),
                    budget_usd=plan.route.budget_usd,
                    c_ref=plan.decision.c_ref_usd or 0.0,
                )
            )
        except Unroutable as over:
            self.breaker.release(agent_id)
            tried.append(Attempt(agent_id=agent_id, error_class="budget", message=f"not called: {over}"))
            return None
        except BaseException:  # a busy or replaced file, or the request cancelled: the agent was not called, and a
            self.breaker.release(agent_id)  # half-open trial kept claimed left it unavailable until a restart
            raise

    async def _try_agent(
        self, plan: _Plan, position: int, agent_id: str, decision_id: str, remaining: float
    ) -> BackendResult:
        """Call one agent and account for the call on `decision_id`. Cancelled (the client gave up, or the server
        stops), the call is recorded as cut off when it reached the agent, and a fallback's decision is closed when
        it was still waiting for the agent's concurrency slot."""
        from skillorchestra.server.llm_backend import SlotWait

        called = time.monotonic()
        # with fallbacks left, a busy agent's slot is waited for only its share of the time left (QA: the wait
        # for one busy agent spent the whole step, and an idle fallback was never tried)
        left = len(plan.order) - position - 1
        slot = SlotWait(max(remaining / (left + 1), MIN_TRY_S) if left else None)
        try:
            result = await self._call(plan, plan.connections[agent_id], slot)
        except BaseException:  # the client cancelled the request (or the server stops)
            with anyio.CancelScope(shield=True):
                if not slot.waiting:  # while the agent worked
                    await anyio.to_thread.run_sync(self._cancelled, decision_id, agent_id, time.monotonic() - called)
                elif position > 0:  # before a fallback reached its agent: its decision is nobody's to report
                    await anyio.to_thread.run_sync(self._withdraw, decision_id)
            raise
        return _noted(result, await self._settle_call(decision_id, agent_id, result))

    async def _judged(self, plan: _Plan, answer: DelegateResult) -> DelegateResult:
        """The answer, graded by the judge when agents.toml configures one (server/judge.py)."""
        from skillorchestra.server.judge import find_judge, judge_answer

        judge = find_judge(plan.connections)
        if judge is None:
            return answer
        return await judge_answer(
            judge,
            answer,
            step=plan.route.text,
            context=plan.request.context,
            deadline=plan.deadline,
            handbook=self.handbook,
            breaker=self.breaker,
            caller=self.caller,
            account=self._settle_call,
            session_id=plan.route.session_id,
            budget_usd=plan.route.budget_usd,
        )

    def _summary(self, plan: _Plan, tried: list[Attempt]) -> str:
        """Each try's failure, and the candidates the fallback cap left untried (QA: it stopped without a word)."""
        summary = "; ".join(f"{t.agent_id}: {t.error_class} ({t.message})" for t in tried)
        untried = len(plan.callable_order) - len(plan.order)
        out_of_time = any(t.message == TIME_SPENT for t in tried)
        if untried > 0 and len(tried) == len(plan.order) and not out_of_time:
            summary += (
                f"; {untried} more candidate(s) not tried: this server tries at most {self.max_fallbacks} fallbacks "
                "a step (narrow allowed_agents, or delegate again)"
            )
        return summary

    def _prepare_and_route(
        self, request: DelegateRequest
    ) -> tuple[dict[str, AgentConnection], RouteRequest, RouteDecision]:
        connections, route = self._prepare(request)
        connections = with_live_prices(connections, self.handbook.arrays())
        # fallbacks come from the candidates; the context is billed with the text, so it is costed with it
        wide = _replace(
            route,
            top_k=max(route.top_k, 1 + self.max_fallbacks),
            prompt_extra_chars=len(request.context or ""),
            claimed=True,  # carried out at once: never again, even after this server is killed mid-call
        )
        return connections, route, self.handbook.route(wide)

    def _prepare_decided(
        self, request: DelegateRequest
    ) -> tuple[dict[str, AgentConnection], RouteRequest, RouteDecision]:
        """The stored route_step decision `request.decision_id`, checked and claimed; refusals write nothing."""
        decision_id = request.decision_id
        assert decision_id is not None
        if request.agent_id is not None:
            raise InvalidInput(
                "agent_id", request.agent_id, f"no agent_id with decision_id: decision {decision_id} already fixed it"
            )
        now = self.handbook.clock()
        text = request.route.text
        store = self.handbook.store
        refuse = functools.partial(_refuse_unclaimable, store, decision_id, text, now)
        row = store.claim_decision(decision_id, refuse, now)
        try:
            return self._decided(request, row)
        except BaseException:
            store.release_claim(decision_id)
            raise

    def _decided(
        self, request: DelegateRequest, row: DecisionRow
    ) -> tuple[dict[str, AgentConnection], RouteRequest, RouteDecision]:
        """The claimed decision `row` as _carry_out takes it: connections, the step's request, the decision."""
        text = request.route.text
        arrays = self.handbook.arrays()
        c_ref = float(costing.reference_costs(arrays, costing.prompt_tokens([text]))[0])  # what routing charges now
        decision = _stored_decision(row, c_ref)
        connections = with_live_prices(self.connections(), arrays)
        if decision.agent_id not in connections:
            raise _not_callable(decision, connections)
        if not _routable(arrays, decision.agent_id):  # QA: delegate called an agent disabled since route_step
            gone = "deleted" if decision.agent_id not in arrays.agent_index else "disabled"
            # it can never be carried out: closed now, or it held its session's budget until it expired
            self.handbook.store.withdraw_decision(decision.decision_id, self.handbook.clock())
            raise Unroutable(
                f"agent {decision.agent_id} was {gone} after route_step chose it for decision "
                f"{decision.decision_id}: the decision is closed (it holds no budget); route the step again"
            )
        usable = [c for c in decision.candidates if _routable(arrays, c.agent_id)]  # fallbacks too
        decision = decision.model_copy(update={"candidates": usable})
        route = RouteRequest(
            text=text,
            mode=row.get("mode"),
            lambda_=decision.lambda_,
            strategy=decision.strategy,
            session_id=row.get("session_id"),
            budget_usd=row.get("budget_usd"),  # the judge keeps within the budget the step was routed under
            top_k=max(len(decision.candidates), 1),
        )
        return connections, route, decision

    def _prepare(self, request: DelegateRequest) -> tuple[dict[str, AgentConnection], RouteRequest]:
        connections = self.connections()
        route = request.route
        if request.agent_id is not None:
            agents = self.handbook.arrays().agent_ids
            if request.agent_id not in agents:
                if request.agent_id in connections:  # loaded, then an import or a learned version replaced the agents
                    raise Unroutable(
                        f"agent {request.agent_id} has connection settings but is not in the live handbook (it was "
                        "deleted, or a later import or learn brought its own agents): run `skillorchestra agents load"
                        " FILE` again to add it back"
                    )
                raise NotFound("agent (agent_id)", request.agent_id, agents)
            if request.agent_id not in connections:
                raise InvalidInput("agent_id", request.agent_id, "an agent with connection settings (agents.toml)")
            route = _replace(route, allowed_agents=[request.agent_id], named_agent=request.agent_id)
        unavailable = self.unavailable(connections)
        if request.agent_id is not None and request.agent_id in unavailable:
            # the named agent is the only candidate: say why it cannot take the step, not why the others were left out
            raise Unroutable(f"agent {request.agent_id} is unavailable: {unavailable[request.agent_id]}")
        return connections, _replace(route, unavailable=unavailable)

    async def _call(self, plan: _Plan, conn: AgentConnection, slot: SlotWait) -> BackendResult:
        """The backend's call within the step's deadline (at least MIN_TRY_S), with progress ticks when the client
        asked for them, its answer capped (answer_cap); cancelled, the agent's breaker gets its trial back."""
        from skillorchestra.server.llm_backend import SLOT_WAIT

        request, text, messages = plan.request, plan.route.text, plan.messages
        timeout = max(min(plan.deadline - time.monotonic(), conn.timeout_s), MIN_TRY_S)
        reset = SLOT_WAIT.set(slot)
        try:
            if plan.progress is None:
                result = await self.caller(conn, text, messages, timeout, request.max_tokens)
            else:
                async with anyio.create_task_group() as group:
                    group.start_soon(_tick, plan.progress, conn.id, plan.start, request.timeout_s)  # never backwards
                    result = await self.caller(conn, text, messages, timeout, request.max_tokens)
                    group.cancel_scope.cancel()
            return _within_answer_cap(result, conn, request.max_tokens)
        except anyio.get_cancelled_exc_class():
            self.breaker.release(conn.id)  # the client gave up: not the agent's failure
            raise
        finally:
            SLOT_WAIT.reset(reset)

    async def _settle_call(self, decision_id: str, agent_id: str, result: BackendResult) -> str | None:
        """Account one backend call (the agent's or the judge's): on the loop when that waits for nothing. A file
        another process held past the busy timeout loses this bookkeeping only, and the returned note says so:
        the call was made and paid, and its answer is the caller's (review: a busy write threw it away)."""
        try:
            if not self._account_now(decision_id, agent_id, result):
                await anyio.to_thread.run_sync(self._account, decision_id, agent_id, result)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            log.warning("call of %s on decision %s not recorded: %s", agent_id, decision_id, BUSY_NOT_RECORDED)
            return f"the call of {agent_id} is not in the handbook ({BUSY_NOT_RECORDED}): its cost is not counted"
        return None

    def _account_now(self, decision_id: str, agent_id: str, result: BackendResult) -> bool:
        """Record an answered call's cost on the event loop when nothing has to wait for it; False otherwise.

        A trip to a worker thread costs more than the write: its wake-ups and GIL hand-offs (litellm's post-call
        logging runs on the loop meanwhile) took 0.3-1.3 ms a call on a busy 2-core host, the UPDATE ~0.05 ms.
        `HandbookStore.try_write` never waits on a lock, so another thread's transaction or a CLI holding the
        file sends the write to a worker thread (`_account`) as before (tests/test_delegate_accounting.py).
        Failures take that path too: they also record an outcome, which updates the arrays under the handbook's
        own locks."""
        if not result.ok or not self.handbook.store.try_write(lambda: self._note(decision_id, result)):
            return False
        self._settle_breaker(agent_id, result)
        return True

    def _note(self, decision_id: str, result: BackendResult) -> None:
        self.handbook.note_call(
            decision_id,
            cost_usd=result.cost_usd,
            cost_source=result.cost_source,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=result.latency_s,
            error_class=result.error_class,
        )

    def _account(self, decision_id: str, agent_id: str, result: BackendResult) -> None:
        """Cost and latency now; an infrastructure failure is the decision's outcome (competence untouched). The
        breaker hears how the call went whether or not the file took the write."""
        try:
            self._note(decision_id, result)
            if result.infrastructure_failure:
                self.handbook.record(
                    OutcomeReport(
                        decision_id=decision_id,
                        error_class=result.error_class,  # type: ignore[arg-type]
                        cost_usd=result.cost_usd,
                        latency_s=result.latency_s,
                    )
                )
        finally:
            self._settle_breaker(agent_id, result)

    def _cancelled(self, decision_id: str, agent_id: str, latency_s: float) -> None:
        """A call cut off by its request's cancellation (Handbook.note_cancelled); the agent's breaker (_call gave
        back a half-open trial) and competence stay as they were (QA: nothing recorded the call)."""
        from skillorchestra.server.judge import note_cancelled

        note_cancelled(self.handbook, decision_id, agent_id, latency_s)

    def _withdraw(self, decision_id: str) -> None:
        """Close a decision whose agent was never reached (judge.withdraw)."""
        from skillorchestra.server.judge import withdraw

        withdraw(self.handbook, decision_id)

    def _uncalled(self, decision_id: str) -> None:
        """A routed agent that was not called (its breaker refused it between routing and calling): no cost,
        no change to competence, and no budget held. The decision counts as reported from then on."""
        report = OutcomeReport(decision_id=decision_id, error_class="connection", cost_usd=0.0)
        try:
            self.handbook.record(report, by_delegate=True)  # its own claim (it called nobody) must not refuse it
        except sqlite3.OperationalError as exc:  # the fallbacks may still answer: the decision expires unreported
            if not is_busy(exc):
                raise
            log.warning("decision %s left open: %s", decision_id, BUSY_NOT_RECORDED)

    def _settle_breaker(self, agent_id: str, result: BackendResult) -> None:
        settle_breaker(self.breaker, agent_id, result)


def settle_breaker(breaker: CircuitBreaker, agent_id: str, result: BackendResult) -> None:
    """What a call tells the agent's circuit breaker: nothing when it was the local queue's (no slot in time, or a
    timeout after waiting most of the call for one), else a failure or a success of the agent."""
    from skillorchestra.server.llm_backend import QUEUE_FULL, QUEUED_TIMEOUT

    if result.error_type in (QUEUE_FULL, QUEUED_TIMEOUT):
        breaker.release(agent_id)
    elif result.infrastructure_failure:
        breaker.record_failure(agent_id, result.error_class)
    else:
        breaker.record_success(agent_id)


def _breaker_wait(health: dict[str, object]) -> str:
    """When a refused agent is tried again (QA: the reason never said), by the breaker's own clock."""
    if health.get("state") == "half_open":
        return " (its trial call is in flight)"
    retry = health.get("retry_in_s")
    return f"; tried again in {whole_seconds(retry)} s" if isinstance(retry, float | int) else ""


def with_live_prices(connections: dict[str, AgentConnection], arrays: HandbookArrays) -> dict[str, AgentConnection]:
    """The connections priced as the live handbook agent is, where it has the prices: an llm connection's input and
    output prices (both), an MCP tool's price per call. Those are the prices routing charges (upsert_agent changes
    them; `agents load` sets them from the file)."""
    from skillorchestra.server.agent_config import LlmAgentConnection

    priced: dict[str, AgentConnection] = {}
    for agent_id, conn in connections.items():
        i = arrays.agent_index.get(agent_id)
        if i is None:
            pass
        elif isinstance(conn, LlmAgentConnection):
            prices = float(arrays.input_price[i]), float(arrays.output_price[i])
            if not any(math.isnan(p) for p in prices) and prices != (conn.input_per_mtok, conn.output_per_mtok):
                conn = conn.model_copy(update={"input_per_mtok": prices[0], "output_per_mtok": prices[1]})
        elif not math.isnan(per_call := float(arrays.call_price[i])) and per_call != conn.cost_per_call_usd:
            conn = conn.model_copy(update={"cost_per_call_usd": per_call})
        priced[agent_id] = conn
    return priced


async def _tick(progress: Progress, agent_id: str, start: float, budget: float) -> None:
    """Progress notes while the agent works. One that cannot be sent (the client's stream closed) ends the ticking,
    never the call: raised in the call's task group it cancelled the paid call and kept its breaker trial claimed."""
    while True:
        elapsed = time.monotonic() - start
        try:
            await progress(min(elapsed / budget, 0.99), f"waiting for {agent_id} ({elapsed:.0f} s)")
        except Exception as exc:
            log.debug("progress of the call of %s no longer sent: %r", agent_id, exc)
            return
        await anyio.sleep(PROGRESS_INTERVAL_S)


_CARRIED_OUT = "an unexpired route_step decision that was neither reported nor carried out yet"


def _refuse_unclaimable(store: HandbookStore, decision_id: str, text: str, now: float, row: DecisionRow | None) -> None:
    """Refuse carrying out decision `row` unless it is an unexpired route_step decision for `text` that nobody
    reported, called or claimed (run inside the claim's write transaction)."""
    wanted = _CARRIED_OUT
    if row is None:
        raise InvalidInput("decision_id", decision_id, f"{wanted} (no decision has this id)")
    if row.get("role") is not None:
        raise InvalidInput("decision_id", decision_id, f"{wanted} (this is a {row['role']} decision of delegate)")
    if store.outcome(decision_id) is not None:
        raise InvalidInput("decision_id", decision_id, f"{wanted} (it was already reported)")
    if row.get("call_latency_s") is not None or row.get("call_error_class") is not None:
        raise InvalidInput("decision_id", decision_id, f"{wanted} (delegate already called its agent)")
    if now > row["expires_at"]:
        expired = f"it expired at {utc_text(row['expires_at'])}: route the step again"
        raise InvalidInput("decision_id", decision_id, f"{wanted} ({expired})")
    if (claimed_at := row.get("claimed_at")) is not None:
        raise InvalidInput(
            "decision_id",
            decision_id,
            f"{wanted} (a delegate has been carrying it out since {utc_text(claimed_at)}, or its server"
            " stopped while it did)",
        )
    if row.get("text") is not None and row["text"] != text:
        raise InvalidInput("text", text, f"the text decision {decision_id} was routed for")


def _routable(arrays: HandbookArrays, agent_id: str) -> bool:
    """The agent is in the live handbook and enabled (a stored decision may predate its deletion or disabling)."""
    i = arrays.agent_index.get(agent_id)
    return i is not None and bool(arrays.enabled[i])


def _not_callable(decision: RouteDecision, connections: dict[str, AgentConnection]) -> InvalidInput:
    """route_step chose an agent without connection settings: refused before anything is written, so the decision
    stays open for the model to run the step itself and report it."""
    callable_ids = ", ".join(sorted(connections)) or "none: load them with `skillorchestra agents load`"
    return InvalidInput(
        "decision_id",
        decision.decision_id,
        f"a decision whose agent the server can call; route_step chose {decision.agent_id}, which has no connection "
        "settings. Run the step yourself and report it with record_outcome(decision_id), or call delegate(text) "
        f"without decision_id: it routes only among the agents it can call ({callable_ids})",
    )


def _stored_decision(row: DecisionRow, c_ref: float) -> RouteDecision:
    """A decision as route_step returned it, rebuilt from its row (c_ref as routing would charge it now)."""

    def loaded(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    skills = [UsedSkill(skill_id=s, weight=w) for s, w in loaded(row["skills"]) or []]
    candidates = [Candidate.model_validate(c) for c in loaded(row["candidates"]) or []]
    return RouteDecision(
        decision_id=row["id"],
        agent_id=row["agent_id"],
        explored=bool(row["explored"]),
        propensity=row["propensity"] if row["propensity"] is not None else 1.0,
        strategy=row["strategy"],
        lambda_=row["lambda"],
        skills=skills,
        skills_source=f"decision {row['id']} (route_step)",
        granularity=row.get("granularity"),  # None before m016 and for steps without an orchestrator
        candidates=candidates,
        excluded=[Exclusion.model_validate(e) for e in loaded(row.get("excluded")) or []],  # [] before m009
        c_ref_usd=c_ref or None,
        session_spend_usd=row.get("session_spend_usd"),
        handbook_version=row["version"],
        expires_at=row["expires_at"],
    )


def _messages(text: str, context: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if context:
        messages.append({"role": "system", "content": context})
    messages.append({"role": "user", "content": text})
    return messages


def answer_cap(conn: AgentConnection, max_tokens: int | None) -> int:
    """The most characters of an answer delegate passes on: generous for the max_tokens the call was sent with
    (no tokenizer writes 16 characters a token on average), and ANSWER_FLOOR_CHARS for a tool agent, which takes
    no max_tokens. The caller's max_tokens counts only as far as the agent's max_output_tokens, as the call itself
    was capped (review: max_tokens=1e6 let a 4 MB answer through, to the judge and past the client's 1 MiB event)."""
    from skillorchestra.server.agent_config import LlmAgentConnection

    if not isinstance(conn, LlmAgentConnection):
        return ANSWER_FLOOR_CHARS
    tokens = min(max_tokens, conn.max_output_tokens) if max_tokens is not None else conn.max_output_tokens
    return max(ANSWER_FLOOR_CHARS, ANSWER_CHARS_PER_TOKEN * tokens)


def _within_answer_cap(result: BackendResult, conn: AgentConnection, max_tokens: int | None) -> BackendResult:
    """The answer cut to `answer_cap`, with a warning (QA: a backend ignoring max_tokens 16 sent 20 MB, passed on
    whole as text and structured content, and to the judge). The call's cost stays what it was."""
    cap = answer_cap(conn, max_tokens)
    answer = result.answer
    warning = None
    if len(answer) > cap:
        warning = f"answer of {conn.id} cut at {cap:,} characters of {len(answer):,}: far more than max_tokens allow"
    kept = _within_json_bytes(answer[:cap], ANSWER_JSON_BYTES_MAX)
    if len(kept) < min(cap, len(answer)):
        warning = (
            f"answer of {conn.id} cut at {len(kept):,} characters of {len(answer):,}: a delegate result carries at "
            f"most {ANSWER_JSON_BYTES_MAX:,} bytes of answer (an MCP client takes at most 1 MiB a message)"
        )
    if warning is None:
        return result
    return result.model_copy(update={"answer": kept, "warnings": [*result.warnings, warning]})


def _within_json_bytes(text: str, limit: int) -> str:
    """The longest head of `text` (found by halving) whose JSON string takes at most `limit` bytes."""
    if len(text) * 6 + 2 <= limit or json_bytes(text) <= limit:  # 6: the most bytes one character can take
        return text
    text = text[:limit]  # a character takes a byte at least: at most 19 halvings of a few milliseconds each
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if json_bytes(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def _replace(route: RouteRequest, **changes: Any) -> RouteRequest:
    from dataclasses import replace

    if "allowed_agents" in changes and route.allowed_agents is not None:
        wanted = set(changes["allowed_agents"])
        if not wanted & set(route.allowed_agents):
            raise InvalidInput("agent_id", changes["allowed_agents"][0], "an agent inside allowed_agents")
    return replace(route, **changes)


def _answer(
    decision: RouteDecision,
    decision_id: str,
    agent_id: str,
    result: BackendResult,
    tried: list[Attempt],
    routed_cost: float | None,
) -> DelegateResult:
    """The delegate result; `routed_cost` is what routing expected this agent to cost (None: unknown to it)."""
    costs = [t.cost_usd for t in tried if t.decision_id is not None]  # skipped agents cost nothing
    warnings = list(result.warnings)
    if result.ok and not result.answer.strip():
        warnings.append(f"empty answer: {agent_id} returned no text")
    if result.cost_usd is None:
        routing = (
            "routing charges it c_ref (the pool's reference cost) until it has a price or recorded costs"
            if routed_cost is None
            else f"routing expects ${routed_cost:.6g} a call from its recorded costs"
        )
        warnings.append(f"cost of {agent_id} unknown: {result.unknown_cost_reason()}; {routing}")
    return DelegateResult(
        decision_id=decision_id,
        agent_id=agent_id,
        answer=result.answer if result.ok else None,
        error_class=result.error_class,
        tried=tried,
        cost_usd=result.cost_usd,
        cost_source=result.cost_source,
        total_cost_usd=None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None)),
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        latency_s=result.latency_s,
        warnings=warnings,
        routing=Routing.of(decision),
    )
