"""What one outcome does to an agent's evidence rows, as arithmetic on the rows it read: no SQL.

Kept apart from the store (store_events.py reads the rows and writes these results) so the update can be read, and
tested, as the maths it is. Every floating-point operation stays in its order: a rebuild replays the log through
these same functions and must land on the very numbers the live tables hold (posterior.py says why).
"""

from __future__ import annotations

from typing import Any

from skillorchestra.handbook.models import Competence, CostStats
from skillorchestra.handbook.posterior import forget, fractional_update, weighted_mean_update
from skillorchestra.handbook.store_sql import COST_NUMBERS, NO_COSTS


def updated_competence(
    agent_id: str,
    demands: list[tuple[str, float]],
    current: dict[str, tuple[Any, ...]],
    reward: float,
    gamma: float | None,
    by_weight: bool,
) -> list[Competence]:
    """alpha += w * reward, beta += w * (1 - reward) for each demanded skill (`current`: skill -> (alpha, beta) as
    stored; a skill without a row starts at the prior 1, 1), after optional forgetting by gamma ** w (`by_weight`):
    a step that barely needs a skill barely ages its evidence (QA: at gamma 0.95, 60 steps giving a skill 0.02 each
    cut its 17.4 observations to 1.2, while adding 1.2). Events logged before forgot by gamma whatever the weight,
    and a rebuild replays them so."""
    updated = []
    for skill_id, weight in demands:
        alpha, beta = current.get(skill_id, (1.0, 1.0))
        aged = forget(alpha, beta, gamma**weight if gamma is not None and by_weight else gamma)
        alpha, beta = fractional_update(*aged, weight, reward)
        updated.append(Competence(agent_id=agent_id, skill_id=skill_id, alpha=alpha, beta=beta))
    return updated


def updated_costs(
    agent_id: str,
    demands: list[tuple[str, float]],
    current: dict[str, tuple[Any, ...]],
    payload: dict[str, Any],
    infrastructure: bool,
) -> list[CostStats]:
    """Weighted running cost statistics for each demanded skill (`current`: skill -> the row's COST_NUMBERS as
    stored); a failed call's latency says nothing about the agent's speed, and a figure the call did not report
    leaves its mean alone."""
    measured = (  # (outcomes logged before m004 carry no step tokens)
        ("mean_prompt_tokens", "n_prompt_tokens", payload.get("prompt_tokens")),
        ("mean_completion_tokens", "n_completion_tokens", payload.get("completion_tokens")),
        ("mean_latency_s", "n_latency_s", None if infrastructure else payload.get("latency_s")),
        ("mean_step_tokens", "n_step_tokens", payload.get("step_tokens")),
    )
    reported = [(mean, count, value) for mean, count, value in measured if value is not None]
    cost = payload["cost_usd"]
    updated = []
    for skill_id, weight in demands:
        row = dict(zip(COST_NUMBERS, current.get(skill_id, NO_COSTS), strict=True), agent_id=agent_id)
        row["skill_id"] = skill_id
        row["n"], row["mean_cost_usd"], row["m2_cost"] = weighted_mean_update(
            row["n"], row["mean_cost_usd"], row["m2_cost"], weight, cost
        )
        for mean, count, value in reported:
            row[count] += weight
            row[mean] += (value - row[mean]) * weight / row[count]
        # validated as CostStats(**row) validates it: from the dict, without unpacking 13 keywords (a third cheaper)
        updated.append(CostStats.model_validate(row))
    return updated
