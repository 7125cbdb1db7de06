"""Which agents may take a step, and the words for the others: disabled, of another mode, not named, behind an open
breaker, or over a cost cap or the session's budget.

route decides with these reasons and consult shows the same ones as `unavailable`, so both read them from here.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from skillorchestra.handbook.arrays import HandbookArrays, serves_step
from skillorchestra.handbook.errors import named
from skillorchestra.handbook.request_types import RouteRequest
from skillorchestra.handbook.results import Exclusion


def unusable(
    arrays: HandbookArrays, mode: str | None, step_modes: frozenset[str], matched: bool = True
) -> dict[str, str]:
    """Agents route_step never picks for a step of `mode` (None: of `step_modes`, HandbookArrays.step_modes: of its
    skills, or of the handbook's skills when none `matched`), and why (consult shows them as unavailable)."""
    reasons = {}
    whose = "from its skills" if matched else "no skill matched: the modes of the handbook's skills"
    for i, agent_id in enumerate(arrays.agent_ids):
        if not arrays.enabled[i]:
            reasons[agent_id] = "disabled"
        elif not serves_step(arrays.agent_modes[i], step_modes):
            reasons[agent_id] = (
                f"does not serve mode {mode!r}"
                if mode
                else f"serves only mode {_quoted(arrays.agent_modes[i])}, and this step is of mode "
                f"{_quoted(step_modes)} ({whose}; a step naming its mode is routed in that mode)"
            )
    return reasons


def _quoted(modes: Collection[str]) -> str:
    return " or ".join(repr(m) for m in sorted(modes))


def eligibility(
    arrays: HandbookArrays,
    request: RouteRequest,
    unusable_agents: dict[str, str],
    cost: np.ndarray,
    known: np.ndarray,
    spend: float | None,
    c_ref: float,
) -> tuple[np.ndarray, list[Exclusion]]:
    """The agents that may take the step (a mask over arrays.agent_ids), and why each other one may not
    (`unusable_agents`: unusable's reasons, which come first)."""
    allowed = set(request.allowed_agents) if request.allowed_agents is not None else None
    remaining = None if request.budget_usd is None else request.budget_usd - (spend or 0.0)
    unavailable = request.unavailable or {}
    eligible = np.ones(len(arrays.agent_ids), dtype=bool)
    excluded: list[Exclusion] = []

    def reason_against(i: int, agent_id: str) -> str | None:
        if agent_id in unusable_agents:
            return unusable_agents[agent_id]
        if allowed is not None and agent_id not in allowed:  # QA: delegate(agent_id=X) never sent allowed_agents
            return f"not the agent_id named ({request.named_agent})" if request.named_agent else "not in allowed_agents"
        if agent_id in unavailable:
            return unavailable[agent_id]
        capped = request.max_cost_usd is not None or remaining is not None
        if capped and not known[i] and cost[i] <= 0:  # c_ref is 0 when no enabled agent's cost is known
            return (
                "cost unknown and no agent's cost is known to charge instead, so no cap can count this step "
                "(give the agent input_per_mtok/output_per_mtok, or report cost_usd for its steps)"
            )
        if request.max_cost_usd is not None and cost[i] > request.max_cost_usd:
            return f"{charged_words(cost[i], known[i], c_ref)} exceeds max_cost_usd ${request.max_cost_usd:.6g}"
        if remaining is not None and cost[i] > remaining:
            left = max(remaining, 0)
            return f"{charged_words(cost[i], known[i], c_ref)} exceeds the session's remaining budget ${left:.6g}"
        return None

    for i, agent_id in enumerate(arrays.agent_ids):
        reason = reason_against(i, agent_id)
        if reason is not None:
            eligible[i] = False
            excluded.append(Exclusion(agent_id=agent_id, reason=reason))
    return eligible, excluded


def why_no_agent(excluded: list[Exclusion], budgeted: bool, shown: int = 6) -> str:
    """Why no agent could take the step, a reason once for all the agents it covers and at most `shown` of them:
    the message grows with the pool otherwise (1 KB at 11 agents when a budget ran out)."""
    groups: dict[str, list[str]] = {}
    for exclusion in excluded:
        groups.setdefault(exclusion.reason, []).append(exclusion.agent_id)
    parts = [f"{named(ids, shown)}: {reason}" for reason, ids in list(groups.items())[:shown]]
    if len(groups) > shown:
        parts.append(f"{len(groups) - shown} more reasons")
    advice = "; raise budget_usd or stop the session" if budgeted and any("budget" in r for r in groups) else ""
    return f"no agent satisfies the step's constraints ({'; '.join(parts)}){advice}"


def charged_words(cost: float, known: bool, c_ref: float) -> str:
    """What a step is charged: its expected cost, or for an agent whose cost is unknown c_ref (interface.md), or the
    dearest known agent's cost of this step when a long text makes that higher (costing.charge_unknown)."""
    if known:
        return f"expected cost ${cost:.6g}"
    if cost > c_ref:  # review: it read "charged c_ref $0.08" where c_ref was $0.001
        dearest = "the dearest known agent's cost of a step this long"
        return f"cost unknown, charged ${cost:.6g} ({dearest}; c_ref ${c_ref:.6g}),"
    return f"cost unknown, charged c_ref ${cost:.6g},"
