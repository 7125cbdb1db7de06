"""Handbook.record: a step's outcome applied to the agent's competence and costs, once per decision.

Most of the work is deciding what a report means: a reward or a success, the call figures delegate measured
(a report may leave them out or echo them, not contradict them), a repeat (idempotent, even after expiry) or a
conflict, and what became of a decision whose agent or skills were deleted since. The write queues on the
Handbook's record lock and patches its ArraysCache.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from typing import Any, cast

from skillorchestra.handbook.arrays import MODE_PREFIX, ROOT_SKILL
from skillorchestra.handbook.errors import Conflict, Expired, InvalidInput, NotFound, utc_text
from skillorchestra.handbook.handbook_base import HandbookBase, stored_json
from skillorchestra.handbook.models import INFRASTRUCTURE_ERRORS
from skillorchestra.handbook.request_types import OutcomeReport, check_amount
from skillorchestra.handbook.results import CompetenceUpdate, OutcomeResult
from skillorchestra.handbook.store import OutcomeEffect
from skillorchestra.handbook.store_sql import DecisionRow

CALL_FIGURES = ("cost_usd", "prompt_tokens", "completion_tokens", "latency_s")  # a report's figures of the call


class RecordMixin(HandbookBase):
    def record(self, report: OutcomeReport, *, by_delegate: bool = False) -> OutcomeResult:
        """Apply a step's outcome. `by_delegate`: delegate's own report of the decision it is carrying out, which a
        client's report must wait for (see HandbookStore.record_outcome)."""
        reward = _reward(report)
        for name in CALL_FIGURES:
            check_amount(name, getattr(report, name))
        decision = self.store.decision(report.decision_id)
        if decision is None:
            raise NotFound("decision", report.decision_id, hint="decision ids come from route_step or delegate")
        payload = {
            "reward": reward,
            "error_class": report.error_class,
            "cost_usd": report.cost_usd,
            "prompt_tokens": report.prompt_tokens,
            "completion_tokens": report.completion_tokens,
            "latency_s": report.latency_s,
        }
        if self.clock() > decision["expires_at"]:
            earlier = self._earlier_report(decision, payload)  # a repeated report stays idempotent after expiry
            if earlier is not None:
                return earlier
            raise Expired(
                f"decision {report.decision_id!r} expired at {utc_text(decision['expires_at'])} (its time to live is "
                "SKILLORCHESTRA_DECISION_TTL seconds); route the step again"
            )
        try:
            effective = _with_call_figures(payload, decision)
        except InvalidInput:  # a retry of a report accepted before this rule (or these figures) stays idempotent
            earlier = self._earlier_report(decision, payload)
            if earlier is None:
                raise
            return earlier
        demanded = stored_json(decision["skills"])  # parsed once: the event, the mode and the note read it
        event = {
            "decision_id": report.decision_id,
            "agent_id": decision["agent_id"],
            "skills": demanded,
            "mode": read_in_mode(decision, demanded),
            "gamma": self.settings.forgetting,
            "forget_by_weight": True,  # gamma ** w per skill (older events forgot by gamma whatever the weight)
            "step_tokens": decision.get("step_tokens"),
            **effective,
        }
        row = {
            "decision_id": report.decision_id,
            "created_at": self.clock(),
            "agent_id": decision["agent_id"],
            "session_id": decision["session_id"],
            **effective,
            "payload": _idempotency_key(payload, decision),  # what the client sent, call figures echoed left out
        }
        try:
            # Written without holding the arrays cache's lock: the write may wait for another process's lock (a
            # CLI import), and every consult and route of this server reads the arrays under that lock. The patch
            # checks that this write was the only change since the arrays it patches, else it is dropped and the
            # arrays are derived again. Records of this process write and patch in turn (self._record_lock, which
            # no read takes): two records writing before either patched dropped the patch, and the derivation that
            # reports the competence took 75 ms a record with 8 concurrent clients.
            competence: list[float | None] = []
            deadline = time.monotonic() + self.store.busy_timeout_s  # one busy timeout from arrival (see below)
            with self._queued_record(deadline), self.store.waiting_until(deadline):
                effect = self.store.record_outcome(
                    row, event, decided_under=decision["version"], by_delegate=by_delegate
                )
                # an outcome of a deleted agent writes no event (nor a generation): "patching" it would have
                # declared arrays from before the deletion current, and routed the deleted agent again (QA)
                if effect is not None and not effect.agent_deleted:
                    competence = self._arrays_cache.patched(effect, decision["agent_id"])
        except InvalidInput:  # already reported (the store checks inside the write): a repeat, or a conflict
            earlier = self._earlier_report(decision, payload)
            if earlier is None:
                raise
            return earlier
        note, applied = None, effect is not None
        if effect is None:
            note = (
                f"decision made under handbook version {decision['version']}, now {self.store.current_version()}: "
                "the outcome is logged against its version and not applied to the live posteriors"
            )
        elif effect.agent_deleted or (
            not effect.competence and reward is not None and self.agent(decision["agent_id"]) is None
        ):
            note = _deleted_agent_note(decision["agent_id"], again=effect.agent_deleted)
            applied = False
        elif effect.competence:
            note = _deleted_skills_note(demanded, effect)
        if applied and (outlier := _cost_outlier_note(effective["cost_usd"], decision.get("expected_cost_usd"))):
            note = outlier if note is None else f"{note}; {outlier}"
        return OutcomeResult(
            decision_id=report.decision_id,
            agent_id=decision["agent_id"],
            error_class=report.error_class,
            reward=reward,
            cost_usd=effective["cost_usd"],
            updated=[
                _update(c.skill_id, c.alpha, c.beta, shrunk)
                for c, shrunk in zip(effect.competence if effect else [], competence, strict=True)
            ],
            duplicate=False,
            applied=applied,
            note=note,
        )

    def withdraw(self, decision_id: str) -> None:
        """Close a decision nobody will carry out or report (its client gave up before it got the decision): it
        expires now and holds none of its session's budget. A no-op once the decision was called or reported."""
        self.store.withdraw_decision(decision_id, self.clock())

    @contextlib.contextmanager
    def _queued_record(self, deadline: float) -> Iterator[None]:
        """Hold the record lock, waiting for this process's other records only until `deadline`: behind a record
        that waits out another process's write lock, the rest give up with the same "database is locked" at the
        same busy timeout, not one after another (QA)."""
        if not self._record_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise sqlite3.OperationalError("database is locked")  # what the store's own wait raises: told as busy
        try:
            yield
        finally:
            self._record_lock.release()

    def _earlier_report(self, decision: DecisionRow, payload: dict[str, Any]) -> OutcomeResult | None:
        stored = self.store.outcome(decision["id"])
        if stored is None:
            return None
        if _idempotency_key(stored_json(stored["payload"]), decision) != _json_roundtrip(
            _idempotency_key(payload, decision)
        ):
            raise Conflict(
                f"decision {decision['id']!r} was already reported with {stored['payload']}; "
                "a decision takes one outcome (delegate's result says reported_by 'judge' when the server's judge "
                "reported it)"
            )
        rows = stored_json(stored["result"])
        repeat: dict[str, Any] = {
            "decision_id": decision["id"],
            "agent_id": decision["agent_id"],
            "error_class": stored["error_class"],
            "reward": stored["reward"],
            "cost_usd": stored["cost_usd"],
            "duplicate": True,
        }
        # marked on decisions still open when their agent was deleted: the first report came after, logged only
        if decision.get("agent_deleted_at") is not None:  # and says so again (QA: the repeat said "applied")
            note = _deleted_agent_note(decision["agent_id"], again=True)
            return OutcomeResult(**repeat, updated=[], applied=False, note=note)
        # the competence as routing uses it now (the first report's, unless more came since)
        competence = self._arrays_cache.competence_now(decision["agent_id"], [u["skill_id"] for u in rows], derive=True)
        updated = [
            _update(row["skill_id"], row["alpha"], row["beta"], shrunk)
            for row, shrunk in zip(rows, competence, strict=True)
        ]
        return OutcomeResult(**repeat, updated=updated)


def _reward(report: OutcomeReport) -> float | None:
    """The reward a report gives the agent: its reward or success (exactly one) for a completed answer, none for an
    infrastructure error (which never scores the agent)."""
    infrastructure = report.error_class in INFRASTRUCTURE_ERRORS
    given = [name for name in ("reward", "success") if getattr(report, name) is not None]
    if len(given) > 1:
        raise InvalidInput("reward/success", (report.reward, report.success), "exactly one of reward or success")
    if not given:
        if infrastructure:
            return None
        raise InvalidInput(
            "reward", None, "reward (0..1) or success (bool) for a completed answer (error_class 'task')"
        )
    if infrastructure:
        raise InvalidInput(
            given[0],
            getattr(report, given[0]),
            f"no {given[0]} with error_class {report.error_class!r}: infrastructure errors never score the agent",
        )
    if report.success is not None:
        return 1.0 if report.success else 0.0
    assert report.reward is not None
    if not 0.0 <= report.reward <= 1.0:  # NaN fails it too
        raise InvalidInput("reward", report.reward, "a number in [0, 1]")
    return float(report.reward)


def _with_call_figures(payload: dict[str, Any], decision: DecisionRow) -> dict[str, Any]:
    """A report that leaves cost, tokens or latency out takes what the delegated call recorded. One that sends
    another value, or an infrastructure error for a call that answered, is refused: the measured call is what was
    paid, and a model's guess would overwrite it (a model reading the rounded figures of delegate's result may send
    them back: four significant digits match)."""
    effective = dict(payload)
    answered = decision.get("call_latency_s") is not None and decision.get("call_error_class") is None
    if answered and payload["error_class"] in INFRASTRUCTURE_ERRORS:
        raise InvalidInput(
            "error_class",
            payload["error_class"],
            "'task' (or left out): delegate's call to this decision's agent answered, so grade the answer with "
            "reward or success (an infrastructure error would log an answered call as a failed one)",
        )
    for key in CALL_FIGURES:
        measured = _call_figure(decision, key)
        if measured is None:
            continue
        sent = effective[key]
        if sent is not None and not _echoes(sent, measured):
            raise InvalidInput(
                key, sent, f"left out: delegate measured this decision's call ({key}={measured:.6g}) and records it"
            )
        effective[key] = measured
    return effective


def _idempotency_key(payload: dict[str, Any], decision: DecisionRow) -> dict[str, Any]:
    """The report as the idempotency key compares it: a cost, token count or latency that repeats what delegate
    measured (as _with_call_figures accepts it) counts as left out, so the report that echoed delegate's cost and
    the plain one are the same report (QA: the plain repeat was refused as a conflict)."""
    key = dict(payload)
    for name in CALL_FIGURES:
        measured, sent = _call_figure(decision, name), key.get(name)
        if measured is not None and sent is not None and _echoes(sent, measured):
            key[name] = None
    return key


def _call_figure(decision: DecisionRow, name: str) -> float | None:
    """What delegate measured of the decision's call (its `call_<name>` column), None if it did not call."""
    return cast("float | None", decision.get(f"call_{name}"))


def _echoes(sent: float, measured: float) -> bool:
    """A reported figure that repeats a measured one: a model reading delegate's four significant digits sends
    them back, and that is the same figure, not a conflicting one."""
    return math.isclose(sent, measured, rel_tol=1e-3, abs_tol=1e-12)


def _deleted_agent_note(agent_id: str, *, again: bool) -> str:
    also = " (an agent added since under that id is another agent)" if again else ""
    return f"agent {agent_id!r} was deleted since the decision{also}: the outcome is logged only"


def _deleted_skills_note(demanded: list[list[Any]], effect: OutcomeEffect) -> str | None:
    """Skills of the decision deleted since: their share of the outcome went nowhere (or, when none of its skills
    is left, all of it went to the mode or the agent's overall record); say so rather than look fully applied."""
    gone = [(skill, weight) for skill, weight in demanded if weight > 0 and skill in effect.deleted_skills]
    if not gone:
        return None
    names = ", ".join(repr(skill) for skill, _ in gone)
    if len(gone) == len([w for _, w in demanded if w > 0]):
        column = effect.competence[0].skill_id
        where = "the agent's overall record" if column == ROOT_SKILL else f"mode {column.removeprefix(MODE_PREFIX)!r}"
        return f"the decision's skills ({names}) were deleted since: the outcome went to {where} instead"
    share = sum(weight for _, weight in gone) / sum(weight for _, weight in demanded if weight > 0)
    return f"skills deleted since the decision ({names}): their share ({share:.2f}) of the outcome was not applied"


def _update(skill_id: str, alpha: float, beta: float, competence: float | None = None) -> CompetenceUpdate:
    return CompetenceUpdate(
        skill_id=skill_id, alpha=alpha, beta=beta, mean=alpha / (alpha + beta), competence=competence
    )


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


COST_OUTLIER = 1000.0  # a reported cost this many times the step's expected cost reads as another unit


def _cost_outlier_note(cost_usd: float | None, expected: float | None) -> str | None:
    """Said of a cost far beyond what the step was expected to cost, recorded as given: a unit slip (cents,
    micro-dollars, tokens) becomes the agent's mean cost, and the reference cost c_ref with it, so lambda then
    counts for little for every agent (fuzz QA: one report of $1e6 moved c_ref from $0.01 to $178)."""
    if cost_usd is None or not expected or cost_usd <= COST_OUTLIER * expected:
        return None
    return (
        f"cost_usd {cost_usd:g} is over {COST_OUTLIER:g}x this step's expected cost (${expected:.4g}); it is recorded "
        "as US dollars: if it was in another unit, routing now weighs every agent's cost for little (c_ref follows "
        "the largest recorded costs), so tell the operator"
    )


def read_in_mode(decision: DecisionRow, skills: list[list[Any]]) -> str | None:
    """The mode whose record a decision without skills is evidence for: the one the step named, else the one
    route_step scored it on at an orchestrator's depth 0, as its candidates' contributions label it ("@<mode>"),
    so the outcome updates the record the route showed while the log keeps only modes a caller named. `skills`:
    the decision's skills, parsed."""
    if decision["mode"] or skills:
        return decision["mode"]
    for candidate in stored_json(decision["candidates"]) or []:
        labels = list(candidate.get("contributions") or {})
        if len(labels) == 1 and labels[0].startswith(MODE_PREFIX):
            return labels[0].removeprefix(MODE_PREFIX)
    return None
