"""The replay evaluator: recorded tasks through the real router, scored by the recorded outcomes.

For every task it does what handbook/service.py does for a step (the labeller's demands, build_arrays'
posteriors, the length shift of handbook/length.py, expected cost from handbook/costing.py, c_ref = the highest
typical cost over enabled agents, unknown cost charged at least c_ref) and scores the choice with the outcome
the chosen agent really had. Agents without a judged outcome on a task are not eligible for it, as if the
request had named `allowed_agents`. The mean strategy is vectorised over tasks with the router's arithmetic
in the router's order; Thompson sampling calls router.route per task with one seeded generator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skillorchestra.handbook import costing
from skillorchestra.handbook.arrays import DEFAULT_KAPPA, HandbookArrays, document_arrays, serves_step
from skillorchestra.handbook.learning.profile import Outcomes
from skillorchestra.handbook.length import length_shifts
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.router import Strategy, argbest, route, shifted
from skillorchestra.handbook.traces import AgentPrice, TraceTask


@dataclass
class ReplayResult:
    choices: list[str]  # chosen agent id per kept task
    scores: np.ndarray  # the chosen agent's recorded score
    costs: np.ndarray  # the chosen agent's recorded cost (the router's expected cost when none is recorded)
    accuracy: float
    avg_cost: float
    propensities: np.ndarray  # probability the policy picks the chosen agent (1.0 for mean)
    task_ids: list[str] = field(default_factory=list)  # kept tasks (at least one judged agent), in order
    dropped: int = 0  # tasks without any judged agent of the handbook
    expected_costs: np.ndarray = field(default_factory=lambda: np.empty(0))
    c_ref: float = 0.0  # the reference cost used (the first task's, when it varies per task)
    demands: list[list[tuple[str, float]]] = field(default_factory=list)

    def utility(self, lambda_: float, c_ref: float) -> float:
        """interface.md's objective: accuracy - lambda * avg_cost / c_ref."""
        return self.accuracy - (lambda_ * self.avg_cost / c_ref if c_ref > 0 else 0.0)


def task_modes(tasks: Sequence[TraceTask], mode_ids: Sequence[str]) -> list[str | None]:
    """The mode a step of this task names: the task's own when the handbook knows it, else none."""
    known = set(mode_ids)
    return [t.mode if t.mode in known else None for t in tasks]


def labeller_matrix(
    labeller: Any, queries: Sequence[str], modes: Sequence[str | None], skill_ids: Sequence[str]
) -> np.ndarray:
    """(N, S) weights in `skill_ids` order; skills the handbook does not know are dropped and the rest renormalised."""
    if hasattr(labeller, "weights_batch"):
        rows = labeller.weights_batch(list(queries), list(modes))
    else:
        rows = [
            labeller.weights(q) if m is None else labeller.weights(q, m) for q, m in zip(queries, modes, strict=True)
        ]
    index = {s: j for j, s in enumerate(skill_ids)}
    out = np.zeros((len(queries), len(skill_ids)))
    for i, row in enumerate(rows):
        for skill, weight in row:
            j = index.get(skill)
            if j is not None and weight > 0:
                out[i, j] += weight
    totals = out.sum(axis=1, keepdims=True)
    return np.divide(out, totals, out=np.zeros_like(out), where=totals > 0)


def replay(
    document: HandbookDocument,
    labeller: Any,
    tasks: Sequence[TraceTask],
    prices: Mapping[str, AgentPrice],
    lambda_: float,
    strategy: Strategy = "mean",
    seed: int = 0,
    c_ref: float | None = None,
    kappa: float = DEFAULT_KAPPA,
) -> ReplayResult:
    """Route each task as the server would with this document and labeller; score with the recorded outcomes.

    `c_ref` overrides the reference cost (so several policies share one scale); None applies the service's rule.
    """
    arrays = document_arrays(document, kappa)
    modes = task_modes(tasks, arrays.mode_ids)
    queries = [t.query for t in tasks]
    weights = labeller_matrix(labeller, queries, modes, arrays.skill_ids)
    outcomes = Outcomes.build(tasks, prices, agents=arrays.agent_ids)
    return replay_arrays(
        arrays, weights, queries, modes, outcomes, [t.id for t in tasks], lambda_, strategy, seed, c_ref
    )


def _demand_columns(
    arrays: HandbookArrays, weights: np.ndarray, modes: Sequence[str | None]
) -> tuple[np.ndarray, np.ndarray, list[list[tuple[str, float]]]]:
    """Per task, the demanded columns heaviest first (ties by skill id: the matcher's order), padded with the root
    column at weight 0; a task demanding no skill demands its mode's column (or the root) at weight 1.

    All rows are sorted in one lexsort (primary key -weight, then the id's rank): replays run on thousands of tasks
    many times per learn, and a Python sort per row was a third of learning's time."""
    n, n_skills = weights.shape
    counts = (weights > 0).sum(axis=1)
    width = max(int(counts.max(initial=0)), 1)
    cols = np.full((n, width), arrays.root_column, dtype=np.int64)
    w = np.zeros((n, width))
    if n_skills:
        rank = np.argsort(np.argsort(np.array(arrays.skill_ids, dtype=object)))
        order = np.lexsort((np.broadcast_to(rank, weights.shape), -weights), axis=-1)[:, :width]
        live = np.arange(width)[None, :] < counts[:, None]
        cols = np.where(live, order, cols)
        w = np.where(live, np.take_along_axis(weights, order, axis=1), 0.0)
    demands: list[list[tuple[str, float]]] = []
    for i in range(n):
        if counts[i]:
            demands.append([(arrays.skill_ids[j], float(weights[i, j])) for j in cols[i, : counts[i]]])
        else:
            mode = modes[i]
            cols[i, 0] = arrays.column_of_mode(mode) if mode is not None else arrays.root_column
            w[i, 0] = 1.0
            demands.append([])
    return cols, w, demands


def _weighted_means(arrays: HandbookArrays, cols: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(N, A) sum_k w_k * posterior mean of the demanded columns, summed in the router's order."""
    mean_t = arrays.mean.T  # (C, A)
    quality = np.zeros((cols.shape[0], len(arrays.agent_ids)))
    for k in range(cols.shape[1]):
        quality = quality + w[:, k, None] * mean_t[cols[:, k]]
    return quality


def skill_quality(arrays: HandbookArrays, weights: np.ndarray, modes: Sequence[str | None]) -> np.ndarray:
    """(N, A) each agent's skill-weighted competence for tasks with `weights` (N, S in arrays.skill_ids order),
    before any length shift: what the length effect is fitted against."""
    cols, w, _ = _demand_columns(arrays, weights, modes)
    return _weighted_means(arrays, cols, w)


def replay_arrays(
    arrays: HandbookArrays,
    weights: np.ndarray,
    queries: Sequence[str],
    modes: Sequence[str | None],
    outcomes: Outcomes,
    task_ids: Sequence[str],
    lambda_: float,
    strategy: Strategy = "mean",
    seed: int = 0,
    c_ref: float | None = None,
) -> ReplayResult:
    """The core of `replay` on prepared arrays, weights (N, S in arrays.skill_ids order) and outcome matrices."""
    if outcomes.agent_ids != arrays.agent_ids:
        raise ValueError("outcomes must be built in the handbook's agent order")
    cols, w, demands = _demand_columns(arrays, weights, modes)
    n = len(queries)
    shifts = length_shifts(arrays, queries)
    quality = shifted(_weighted_means(arrays, cols, w), shifts)
    tokens = costing.prompt_tokens(queries)
    refs = np.full(n, float(c_ref)) if c_ref is not None else costing.reference_costs(arrays, tokens)
    cost = costing.charge_unknown(costing.expected_costs(arrays, tokens, cols, w), refs, arrays.enabled)

    eligible = arrays.enabled[None, :] & ~np.isnan(outcomes.scores)
    if any(arrays.agent_modes):  # route_step's rule (arrays.serves_step); skipped when no agent names a mode
        for i, (mode, demanded) in enumerate(zip(modes, demands, strict=True)):
            step_modes = arrays.step_modes(mode, demanded)
            eligible[i] &= np.array([serves_step(m, step_modes) for m in arrays.agent_modes], dtype=bool)
    kept = np.flatnonzero(eligible.any(axis=1))

    with np.errstate(invalid="ignore", divide="ignore"):
        penalty = np.where(refs[:, None] > 0, lambda_ * cost / refs[:, None], 0.0)
    if strategy == "thompson":
        rng = np.random.default_rng(seed)
        chosen = np.empty(len(kept), dtype=np.int64)
        propensity = np.empty(len(kept))
        for out_i, i in enumerate(kept.tolist()):
            used = w[i] > 0
            scores = route(
                arrays.route_inputs(
                    cols[i][used],
                    w[i][used],
                    cost[i],
                    float(refs[i]),
                    eligible[i],
                    None if shifts is None else shifts[i],
                ),
                lambda_,
                "thompson",
                rng,
            )
            chosen[out_i], propensity[out_i] = scores.chosen, scores.propensity
    else:
        utility = np.where(eligible[kept], quality[kept] - penalty[kept], -np.inf)
        chosen = argbest(utility, cost[kept]) if len(kept) else np.empty(0, dtype=np.int64)  # route_step's rule
        propensity = np.ones(len(kept))

    picked_scores = outcomes.scores[kept, chosen]
    expected = cost[kept, chosen]
    realised = outcomes.costs[kept, chosen]
    realised = np.where(np.isnan(realised), expected, realised)
    return ReplayResult(
        choices=[arrays.agent_ids[j] for j in chosen],
        scores=picked_scores,
        costs=realised,
        accuracy=float(picked_scores.mean()) if len(kept) else float("nan"),
        avg_cost=float(realised.mean()) if len(kept) else float("nan"),
        propensities=propensity,
        task_ids=[task_ids[i] for i in kept.tolist()],
        dropped=n - len(kept),
        expected_costs=expected,
        c_ref=float(refs[kept[0]]) if len(kept) else float(c_ref or 0.0),
        demands=[demands[i] for i in kept],
    )
