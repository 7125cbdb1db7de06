"""Router evaluation metrics on per-task arrays (pure numpy, no I/O).

Conventions: `scores` is an (n_tasks x n_agents) array with NaN for "not run / not judged"; `choices` are
agent ids, one per task. The two-agent metrics follow RouteLLM: a router is judged by its curve of
(fraction of calls to the strong model, accuracy) as its threshold sweeps from never to always strong.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from skillorchestra.handbook.models import SUCCESS_THRESHOLD

Curve = tuple[np.ndarray, np.ndarray]


def accuracy(chosen_scores: Sequence[float] | np.ndarray) -> float:
    """Mean score of the chosen agents (NaN = not judged, skipped)."""
    values = np.asarray(chosen_scores, dtype=float)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def avg_cost(chosen_costs: Sequence[float] | np.ndarray) -> float:
    """Mean cost per task of the chosen agents."""
    values = np.asarray(chosen_costs, dtype=float)
    return float(values.mean()) if values.size else float("nan")


def agent_share(choices: Sequence[str], agents: Sequence[str] = ()) -> dict[str, float]:
    """Fraction of calls per agent, summing to 1; agents listed in `agents` but never chosen get 0."""
    counts = Counter(choices)
    total = sum(counts.values())
    names = list(dict.fromkeys([*agents, *sorted(counts)]))
    return {name: (counts[name] / total if total else 0.0) for name in names}


def entropy_bits(shares: Mapping[str, float]) -> float:
    """Shannon entropy (bits) of the call shares: 0 = one agent only, log2(n) = uniform over n agents."""
    probs = np.array([p for p in shares.values() if p > 0], dtype=float)
    if probs.size == 0:
        return 0.0
    probs = probs / probs.sum()
    return float(max(0.0, -(probs * np.log2(probs)).sum()))


def expensive_share(choices: Sequence[str], mean_cost: Mapping[str, float]) -> float:
    """Share of calls to the agent with the highest mean cost per call.

    Agents tied at that cost (within 1e-9 relative) count together, so the figure does not depend on an
    arbitrary pick among equally priced models.
    """
    if not choices or not mean_cost:
        return 0.0
    top = max(mean_cost.values())
    priciest = {agent for agent, cost in mean_cost.items() if cost >= top - 1e-9 * abs(top)}
    return sum(1 for choice in choices if choice in priciest) / len(choices)


def oracle_gap_closed(acc: float, best_single: float, oracle: float) -> float | None:
    """How much of the gap between the best single agent and the oracle a router closes; None if no gap."""
    gap = oracle - best_single
    if not math.isfinite(gap) or abs(gap) < 1e-12 or not math.isfinite(acc):
        return None
    return (acc - best_single) / gap


def best_single(scores: np.ndarray) -> tuple[int, float]:
    """Index and mean score of the agent with the highest mean score (ties: the lowest index)."""
    means = column_means(scores)
    index = int(np.argmax(np.where(np.isnan(means), -np.inf, means)))
    return index, float(means[index])


def oracle_accuracy(scores: np.ndarray) -> float:
    """Mean over tasks of the best score any agent got (tasks nobody was judged on are skipped)."""
    scores = np.asarray(scores, dtype=float)
    judged = ~np.all(np.isnan(scores), axis=1)
    if not judged.any():
        return float("nan")
    return float(np.nanmax(scores[judged], axis=1).mean())


def oracle_choice(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per task, the agent index an all-knowing but thrifty router picks.

    Rule: the cheapest agent whose score >= 0.5 (success); if none succeeds, the cheapest among the
    best-scoring agents (for 0/1 data: the cheapest agent overall, since nobody can do better); NaN scores are
    never chosen unless a task has no score at all (then the cheapest). Remaining ties: the lowest index.
    `costs` is (n_agents,) or (n_tasks x n_agents).
    """
    scores = np.asarray(scores, dtype=float)
    costs = np.broadcast_to(np.asarray(costs, dtype=float), scores.shape)
    filled = np.where(np.isnan(scores), -np.inf, scores)
    success = filled >= SUCCESS_THRESHOLD
    best = filled == filled.max(axis=1, keepdims=True)
    eligible = np.where(success.any(axis=1, keepdims=True), success, best)
    return np.argmin(np.where(eligible, costs, np.inf), axis=1)


def pgr(acc: float, acc_weak: float, acc_strong: float) -> float | None:
    """Performance gap recovered: 0 at the weak model's accuracy, 1 at the strong one's; None if they tie."""
    gap = acc_strong - acc_weak
    if abs(gap) < 1e-12:
        return None
    return (acc - acc_weak) / gap


def strong_fraction_curve(prefer_strong: np.ndarray, weak_scores: np.ndarray, strong_scores: np.ndarray) -> Curve:
    """Sweep a threshold over `prefer_strong` (higher = strong) and return (strong_fraction, accuracy).

    A threshold cannot split tasks with equal prefer-strong values, so tied tasks move to the strong model
    together: a constant router yields only the two endpoints (the straight line, APGR 0.5).
    """
    prefer = np.asarray(prefer_strong, dtype=float)
    weak, strong = np.asarray(weak_scores, dtype=float), np.asarray(strong_scores, dtype=float)
    n = prefer.size
    if n == 0 or weak.shape != prefer.shape or strong.shape != prefer.shape:
        raise ValueError("prefer_strong, weak_scores and strong_scores must be non-empty and of one shape")
    order = np.argsort(-prefer, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum(strong[order] - weak[order])])
    sorted_prefer = prefer[order]
    cuts = np.concatenate([[0], np.flatnonzero(sorted_prefer[1:] != sorted_prefer[:-1]) + 1, [n]])
    return cuts / n, (weak.sum() + gain[cuts]) / n


def _pgr_curve(fractions: np.ndarray, accuracies: np.ndarray, acc_weak: float, acc_strong: float) -> Curve | None:
    """The PGR curve on [0, 1], extended with the endpoints (0, weak) and (1, strong), sorted by x."""
    gap = acc_strong - acc_weak
    if abs(gap) < 1e-12:
        return None
    x = np.concatenate([[0.0], np.asarray(fractions, dtype=float), [1.0]])
    y = np.concatenate([[acc_weak], np.asarray(accuracies, dtype=float), [acc_strong]])
    order = np.argsort(x, kind="stable")
    return x[order], (y[order] - acc_weak) / gap


def apgr(fractions: np.ndarray, accuracies: np.ndarray, acc_weak: float, acc_strong: float) -> float | None:
    """Average performance gap recovered: the trapezoid area under PGR(strong_fraction) over [0, 1]."""
    curve = _pgr_curve(fractions, accuracies, acc_weak, acc_strong)
    if curve is None:
        return None
    x, y = curve
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def cpt(
    fractions: np.ndarray, accuracies: np.ndarray, acc_weak: float, acc_strong: float, target: float = 0.5
) -> float | None:
    """Call-performance threshold: the smallest strong-call fraction at which PGR reaches `target`.

    Linear interpolation between curve points; None if the weak and strong models tie.
    """
    curve = _pgr_curve(fractions, accuracies, acc_weak, acc_strong)
    if curve is None:
        return None
    x, y = curve
    if y[0] >= target:
        return float(x[0])
    for i in range(1, x.size):
        if y[i] >= target:
            x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))  # y0 < target <= y1
    return None


def column_means(scores: np.ndarray) -> np.ndarray:
    """Each agent's mean over the tasks it was judged on (NaN where none)."""
    scores = np.asarray(scores, dtype=float)
    judged = (~np.isnan(scores)).sum(axis=0)
    totals = np.nansum(scores, axis=0)
    return np.divide(totals, judged, out=np.full(judged.shape, np.nan), where=judged > 0)
