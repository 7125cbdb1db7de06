"""Rows of the comparison (one per policy and lambda), the operating point, and RouteLLM's two-agent metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skillorchestra.handbook import metrics
from skillorchestra.handbook.evaluation.data import OutcomeTable

DEFAULT_LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
BUDGET_SHARE = 0.5  # operating point: most accurate lambda costing at most this share of best-single
REFERENCE_LAMBDA = 0.1  # fallback criterion when no lambda meets the budget: max acc - 0.1 * cost / c_ref
BISECTION_STEPS = 5  # validation replays spent narrowing the grid step where the budget is crossed


@dataclass(frozen=True)
class Baseline:
    """What every row is measured against on the test tasks."""

    best_single_accuracy: float
    oracle_accuracy: float
    agent_costs: Mapping[str, float]  # mean cost per call on train (for expensive_share)


def row(
    policy: str, lambda_: float | None, picks: np.ndarray, table: OutcomeTable, baseline: Baseline, **extra: Any
) -> dict[str, Any]:
    """One row of interface.md's `rows`: metrics of the agents `picks` chose on the table's tasks."""
    scores, costs = table.chosen(picks)
    choices = [table.agents[j] for j in picks]
    acc = metrics.accuracy(scores)
    shares = metrics.agent_share(choices, table.agents)
    return {
        "policy": policy,
        "lambda": lambda_,
        "accuracy": _num(acc),
        "avg_cost": _num(metrics.avg_cost(costs)),
        "agent_share": shares,
        "entropy_bits": metrics.entropy_bits(shares),
        "expensive_share": metrics.expensive_share(choices, baseline.agent_costs),
        "oracle_gap_closed": metrics.oracle_gap_closed(acc, baseline.best_single_accuracy, baseline.oracle_accuracy),
        **extra,
    }


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def choose_operating_point(
    points: Sequence[tuple[float, float, float]], best_single_cost: float, c_ref: float
) -> tuple[float, str]:
    """Pick the deployed lambda from validation (lambda, accuracy, avg_cost) points; returns (lambda, rule).

    Rule: the most accurate lambda whose validation cost is at most BUDGET_SHARE of the best single agent's
    (ties: the cheaper, then the smaller lambda); when none is that cheap, the lambda maximising
    accuracy - REFERENCE_LAMBDA * cost / c_ref.
    """
    if not points:
        raise ValueError("no validation points")
    budget = BUDGET_SHARE * best_single_cost
    within = [p for p in points if p[2] <= budget + 1e-15]
    if within:
        best = min(within, key=lambda p: (-round(p[1], 12), p[2], p[0]))
        return best[0], f"max validation accuracy s.t. cost <= {BUDGET_SHARE:.0%} of best-single"
    scale = c_ref if c_ref > 0 else 1.0
    best = max(points, key=lambda p: (p[1] - REFERENCE_LAMBDA * p[2] / scale, -p[0]))
    return best[0], f"no lambda within {BUDGET_SHARE:.0%} of best-single: max acc - {REFERENCE_LAMBDA} cost/c_ref"


def budget_bracket(
    points: Sequence[tuple[float, float, float]],
    best_single_cost: float,
    evaluate: Callable[[float], tuple[float, float]],
    steps: int = BISECTION_STEPS,
) -> list[tuple[float, float, float]]:
    """Validation points inside the smallest-lambda grid step where validation cost crosses the budget (by
    bisection).

    The default grid is coarse where the budget usually binds (0.05 -> 0.1 can halve the cost): the deployed
    lambda should be the smallest one that still meets the budget, not the next grid value. `evaluate(lambda)`
    replays validation and returns (accuracy, avg_cost). Returns the new points only (none when no grid step
    crosses the budget)."""
    budget = BUDGET_SHARE * best_single_cost
    ordered = sorted(points)
    steps_of_grid = zip(ordered, ordered[1:], strict=False)
    crossing = [(lo, hi) for (lo, _, lo_cost), (hi, _, hi_cost) in steps_of_grid if lo_cost > budget >= hi_cost]
    if not crossing:
        return []
    lo, hi = crossing[0]  # the smallest lambdas: where accuracy is highest
    found = []
    for _ in range(steps):
        mid = round((lo + hi) / 2.0, 6)
        if mid in (lo, hi):
            break
        acc, cost = evaluate(mid)
        found.append((mid, acc, cost))
        lo, hi = (lo, mid) if cost <= budget + 1e-15 else (mid, hi)
    return found


def weak_strong(agent_costs: Mapping[str, float], agents: Sequence[str]) -> tuple[int, int]:
    """Column indices of the cheaper (weak) and dearer (strong) agent of a two-agent pool."""
    if len(agents) != 2:
        raise ValueError("two-agent metrics need exactly two agents")
    first, second = (agent_costs.get(a, math.inf) for a in agents)
    return (0, 1) if first <= second else (1, 0)


def both_judged(table: OutcomeTable, weak: int, strong: int) -> np.ndarray:
    """The tasks both agents were judged on: where a two-agent curve is defined (a task missing either score
    cannot say what routing it to that agent gains; counted as 0, one unjudged strong score gave APGR 5.03: QA)."""
    return table.judged[:, weak] & table.judged[:, strong]


def two_agent_metrics(
    prefer_strong: np.ndarray, table: OutcomeTable, weak: int, strong: int
) -> dict[str, float | int | None]:
    """APGR and CPT(50%) of a router whose per-task 'prefer strong' score is swept as a threshold, on the tasks
    both agents were judged on (`tasks`; RouteLLM's data has no other)."""
    mask = both_judged(table, weak, strong)
    if not mask.any():
        return {"apgr": None, "cpt50": None, "curve_points": 0, "tasks": 0}
    weak_scores, strong_scores = table.scores[mask, weak], table.scores[mask, strong]
    fractions, accuracies = metrics.strong_fraction_curve(np.asarray(prefer_strong)[mask], weak_scores, strong_scores)
    acc_weak, acc_strong = float(weak_scores.mean()), float(strong_scores.mean())
    return {
        "apgr": metrics.apgr(fractions, accuracies, acc_weak, acc_strong),
        "cpt50": metrics.cpt(fractions, accuracies, acc_weak, acc_strong, 0.5),
        "curve_points": int(fractions.size),
        "tasks": int(mask.sum()),
    }


def two_agent_from_points(
    points: Sequence[tuple[float, float]], table: OutcomeTable, weak: int, strong: int
) -> dict[str, float | int | None]:
    """APGR and CPT(50%) from a few (strong_fraction, accuracy) points (a coarse lambda grid). The points are rows
    over every test task, so they are comparable with the agents' own accuracies only when both agents were judged
    on every task; otherwise null."""
    if not both_judged(table, weak, strong).all():
        return {"apgr": None, "cpt50": None, "curve_points": len(points)}
    acc_weak = float(table.scores[:, weak].mean())
    acc_strong = float(table.scores[:, strong].mean())
    fractions = np.array([p[0] for p in points], dtype=float)
    accuracies = np.array([p[1] for p in points], dtype=float)
    return {
        "apgr": metrics.apgr(fractions, accuracies, acc_weak, acc_strong),
        "cpt50": metrics.cpt(fractions, accuracies, acc_weak, acc_strong, 0.5),
        "curve_points": len(points),
    }


def curve_above(ours: Sequence[tuple[float, float]], theirs: Sequence[tuple[float, float]]) -> dict[str, float | int]:
    """Is our (cost, accuracy) curve above theirs? Each of their points is compared with our upper envelope
    (linear between our points: mixing two lambdas achieves it) at the same cost, within our cost range.

    Returns how many of their points were comparable, the share at or below our envelope, and the mean margin
    (ours - theirs; positive = our curve above)."""
    frontier = _upper_envelope(ours)
    margins = []
    if len(frontier):
        xs, ys = frontier[:, 0], frontier[:, 1]
        for cost, acc in theirs:
            if math.isfinite(cost) and math.isfinite(acc) and xs[0] - 1e-15 <= cost:
                ours_here = float(np.interp(cost, xs, ys)) if cost <= xs[-1] else float(ys[-1])
                margins.append(ours_here - acc)
    if not margins:
        return {"points_compared": 0, "share_at_or_above": 0.0, "mean_margin": 0.0, "min_margin": 0.0}
    return {
        "points_compared": len(margins),
        "share_at_or_above": float(np.mean([m >= -1e-12 for m in margins])),
        "mean_margin": float(np.mean(margins)),
        "min_margin": float(np.min(margins)),
    }


def _upper_envelope(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Cost-sorted points where accuracy strictly improves (the Pareto front of a curve)."""
    ordered = sorted((float(c), float(a)) for c, a in points if math.isfinite(c) and math.isfinite(a))
    front: list[tuple[float, float]] = []
    for cost, acc in ordered:
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return np.array(front).reshape(-1, 2)
