"""What the server's delegation writes beside route and record: a call's measured figures as soon as it ends, a
cancelled call, and the decision of a fallback agent (or of the judge's call) within the session's budget.

Only server/delegation.py and server/judge.py call these; they are on the Handbook because they write decisions
under its settings (time to live) and clock.
"""

from __future__ import annotations

import uuid
from typing import Any

from skillorchestra.handbook.eligibility import charged_words
from skillorchestra.handbook.errors import NotFound, Unroutable
from skillorchestra.handbook.handbook_base import HandbookBase, stored_json
from skillorchestra.handbook.store_sql import DecisionRow


class DelegatedCallsMixin(HandbookBase):
    def note_cancelled(self, decision_id: str, latency_s: float) -> None:
        """A delegated call (an agent's or a judge's) cut off by its request's cancellation: recorded as called, cost
        unknown (the agent may have charged for it), so the decision keeps its expected cost in the session's spend
        and is never called again; not the agent's failure (no outcome)."""
        self.note_call(
            decision_id,
            cost_usd=None,
            cost_source="unknown",
            prompt_tokens=None,
            completion_tokens=None,
            latency_s=latency_s,
            error_class="cancelled",
        )

    def note_call(
        self,
        decision_id: str,
        *,
        cost_usd: float | None,
        cost_source: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        latency_s: float,
        error_class: str | None,
    ) -> None:
        """What a delegated call cost, recorded at once (the session budget sees it before any report). The decision
        waits for its outcome a full time to live from now: the client learns its id only when delegate returns (QA:
        with a TTL shorter than the call, delegate handed back a decision that had already expired)."""
        self.store.note_call(
            decision_id,
            {
                "cost_usd": cost_usd,
                "cost_source": cost_source,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "latency_s": latency_s,
                "error_class": error_class,
            },
            waits_until=self.clock() + self.settings.decision_ttl_s,
        )

    def fallback_decision(
        self,
        decision_id: str,
        agent_id: str,
        role: str = "fallback",
        *,
        expected_cost: float | None = None,
        budget_usd: float | None = None,
        c_ref: float = 0.0,
    ) -> str:
        """A decision for the next candidate after an infrastructure failure (or, with role "judge", for the call
        that grades the answer): same step, skills and session. With `budget_usd`, the session's spend is read and
        the decision written in one transaction, as route_step does, so parallel steps' calls cannot together pass
        the budget: a call whose `expected_cost` (unknown: what the step charged an unknown cost) does not fit is
        refused (Unroutable)."""
        with self.store.write():
            return self._fallback_decision(decision_id, agent_id, role, expected_cost, budget_usd, c_ref)

    def fallback_refusal(
        self, decision_id: str, *, expected_cost: float | None, budget_usd: float | None, c_ref: float
    ) -> str | None:
        """Why a fallback or judge call on this decision's step would not fit in its session's budget now, worded
        as fallback_decision refuses it, or None (the judge asks before calling; fallback_decision decides)."""
        decision = self._decision_to_follow(decision_id)
        charged = _charge(decision, expected_cost, c_ref)
        return self._over_budget(decision, charged, expected_cost, budget_usd, c_ref, self.clock())

    def _decision_to_follow(self, decision_id: str) -> DecisionRow:
        decision = self.store.decision(decision_id)
        if decision is None:
            raise NotFound("decision", decision_id, hint="decision ids come from route_step or delegate")
        return decision

    def _over_budget(
        self,
        decision: DecisionRow,
        charged: float,
        expected_cost: float | None,
        budget_usd: float | None,
        c_ref: float,
        now: float,
    ) -> str | None:
        if budget_usd is None or decision["session_id"] is None:
            return None
        if charged <= 0 and expected_cost is None:  # as eligibility refuses an agent (review: held at $0)
            return (
                "cost unknown and no agent's cost is known to charge instead, so the session's budget cannot count "
                "this call"
            )
        left = budget_usd - self.store.session_spend(decision["session_id"], now, c_ref)
        if charged <= left:
            return None
        what = charged_words(charged, expected_cost is not None, c_ref)
        return f"{what} exceeds the session's remaining budget ${max(left, 0):.6g}"

    def _fallback_decision(
        self,
        decision_id: str,
        agent_id: str,
        role: str,
        expected_cost: float | None,
        budget_usd: float | None,
        c_ref: float,
    ) -> str:
        decision = self._decision_to_follow(decision_id)
        now = self.clock()
        charged = _charge(decision, expected_cost, c_ref)
        if (refusal := self._over_budget(decision, charged, expected_cost, budget_usd, c_ref, now)) is not None:
            raise Unroutable(refusal)
        new_id = uuid.uuid4().hex
        keys = ("version", "session_id", "mode", "strategy", "lambda", "text", "step_tokens")
        source: dict[str, Any] = dict(decision)
        row = {key: source[key] for key in keys}
        row.update(
            id=new_id,
            created_at=now,
            expires_at=now + self.settings.decision_ttl_s,
            agent_id=agent_id,
            skills=stored_json(decision["skills"]),
            candidates=stored_json(decision["candidates"]),
            propensity=None,
            explored=0,
            expected_cost_usd=expected_cost,
            charged_usd=charged if charged > 0 or expected_cost is not None else None,  # what its budget holds
            unknown_charge_usd=decision.get("unknown_charge_usd"),  # the same step
            parent_decision_id=decision_id,
            role=role,
            claimed_at=now,  # delegate carries it out now, as its own routed decision (see RouteRequest.claimed)
        )
        self.store.insert_decision(row)
        return new_id


def _charge(decision: DecisionRow, expected_cost: float | None, c_ref: float) -> float:
    """What a call on the decision's step is charged: its expected cost, else what the routed step charged an unknown
    cost (m019; a decision older than that: c_ref)."""
    return (decision.get("unknown_charge_usd") or c_ref) if expected_cost is None else expected_cost
