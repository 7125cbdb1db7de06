"""Profiling: competence (Beta) and cost per (agent, skill) from tasks and their skill weights.

Always recomputed from the tasks, never patched: a refined taxonomy is re-profiled from scratch, so nothing is
counted twice. Each judged outcome contributes alpha += w * score, beta += w * (1 - score) for every skill
weight w of its task (weights sum to 1; a task without skills is filed under the root), which is the sum of
handbook/posterior.py `fractional_update` over the tasks; cost statistics are the weighted moments that
`weighted_mean_update` accumulates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from skillorchestra.handbook.arrays import ROOT_SKILL
from skillorchestra.handbook.costing import CHARS_PER_TOKEN
from skillorchestra.handbook.models import Competence, CostStats
from skillorchestra.handbook.posterior import fractional_update
from skillorchestra.handbook.traces import (
    AgentPrice,
    TraceTask,
    estimate_cost_usd,
    infrastructure_failure,
)


@dataclass
class Outcomes:
    """Tasks x agents matrices; NaN where an agent was not run, not judged, or has no known cost."""

    agent_ids: list[str]
    scores: np.ndarray
    costs: np.ndarray
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    latency: np.ndarray
    step_tokens: np.ndarray  # the router's estimate of the step (costing.prompt_tokens), NaN when the text is unknown

    @classmethod
    def build(
        cls, tasks: Sequence[TraceTask], prices: Mapping[str, AgentPrice], agents: Sequence[str] | None = None
    ) -> Outcomes:
        if agents is None:
            agents = sorted({a for t in tasks for a, o in t.outcomes.items() if o.score is not None})
        col = {a: j for j, a in enumerate(agents)}
        shape = (len(tasks), len(agents))
        scores, costs = np.full(shape, np.nan), np.full(shape, np.nan)
        prompt, completion, latency = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        steps = np.full(shape, np.nan)
        for i, task in enumerate(tasks):
            estimate = len(task.query) / CHARS_PER_TOKEN if task.query else np.nan
            for agent, outcome in task.outcomes.items():
                j = col.get(agent)
                if j is None:
                    continue
                if outcome.score is not None:
                    scores[i, j] = outcome.score
                if infrastructure_failure(outcome):
                    continue  # an outage: neither its (zero) cost nor its latency describes the agent's answers
                cost = estimate_cost_usd(task.query, outcome, prices.get(agent))
                if cost is not None:
                    costs[i, j] = cost
                # the figures reported, NaN where not: the cost statistics count the calls behind each mean, and an
                # estimate is not a report (review: learned rows counted every call)
                if outcome.prompt_tokens is not None:
                    prompt[i, j] = outcome.prompt_tokens
                if outcome.completion_tokens is not None:
                    completion[i, j] = outcome.completion_tokens
                if outcome.latency_s is not None:
                    latency[i, j] = outcome.latency_s
                recorded_step = (outcome.model_extra or {}).get("step_tokens")  # the server's log carries its own
                steps[i, j] = float(recorded_step) if isinstance(recorded_step, int | float) else estimate
        return cls(list(agents), scores, costs, prompt, completion, latency, steps)

    def take(self, rows: np.ndarray) -> Outcomes:
        return Outcomes(self.agent_ids, *(getattr(self, name)[rows] for name in _MATRICES))

    @classmethod
    def joined(cls, parts: Sequence[Outcomes]) -> Outcomes:
        """The tasks of `parts` one after the other (the same agents in the same order)."""
        return cls(
            parts[0].agent_ids,
            *(np.concatenate([getattr(p, name) for p in parts]) for name in _MATRICES),
        )

    def mean_costs(self) -> np.ndarray:
        """(A,) mean cost per call over tasks with a known cost (NaN when none)."""
        known = ~np.isnan(self.costs)
        with np.errstate(invalid="ignore"):
            return np.where(known.any(axis=0), np.nansum(self.costs, axis=0) / known.sum(axis=0), np.nan)

    def reference_cost(self) -> float:
        """interface.md's c_ref: the mean cost per call of the most expensive agent (0 when no cost is known)."""
        means = self.mean_costs()
        return float(np.nanmax(means)) if np.isfinite(means).any() else 0.0


_MATRICES = ("scores", "costs", "prompt_tokens", "completion_tokens", "latency", "step_tokens")


def with_root(weights: np.ndarray) -> np.ndarray:
    """Append the root column: a task with no skill weight credits the agent as a whole (as the service does)."""
    root = (weights.sum(axis=1) <= 0).astype(float)[:, None]
    return np.concatenate([weights, root], axis=1)


def profile(
    weights: np.ndarray, skill_ids: Sequence[str], outcomes: Outcomes
) -> tuple[list[Competence], list[CostStats]]:
    """Competence and cost rows for (agent, skill) pairs with evidence; `weights` is (N, S), rows sum to 1 or 0."""
    w = with_root(weights)
    columns = [*skill_ids, ROOT_SKILL]
    judged = ~np.isnan(outcomes.scores)
    y = np.where(judged, outcomes.scores, 0.0)
    total = w.T @ judged  # (S+1, A) weighted number of judged outcomes
    reward = w.T @ y
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_reward = np.where(total > 0, reward / np.maximum(total, 1e-300), 0.0)
    alpha, beta = fractional_update(np.ones_like(total), np.ones_like(total), total, mean_reward)

    known = ~np.isnan(outcomes.costs)
    c = np.where(known, outcomes.costs, 0.0)
    n = w.T @ known
    safe_n = np.maximum(n, 1e-300)
    mean = (w.T @ c) / safe_n
    m2 = np.maximum(w.T @ (c * c) - n * mean * mean, 0.0)
    (prompt, prompt_n), (completion, completion_n), (steps, step_n), (latency, latency_n) = (
        _measured_mean(w, known, figure)
        for figure in (outcomes.prompt_tokens, outcomes.completion_tokens, outcomes.step_tokens, outcomes.latency)
    )

    competence: list[Competence] = []
    cost: list[CostStats] = []
    for k, skill in enumerate(columns):
        for j, agent in enumerate(outcomes.agent_ids):
            if total[k, j] > 0:
                competence.append(
                    Competence(agent_id=agent, skill_id=skill, alpha=float(alpha[k, j]), beta=float(beta[k, j]))
                )
            if n[k, j] > 0:
                cost.append(
                    CostStats(
                        agent_id=agent,
                        skill_id=skill,
                        n=float(n[k, j]),
                        mean_cost_usd=float(mean[k, j]),
                        m2_cost=float(m2[k, j]),
                        mean_prompt_tokens=float(prompt[k, j]),
                        mean_completion_tokens=float(completion[k, j]),
                        mean_latency_s=float(latency[k, j]),
                        mean_step_tokens=float(steps[k, j]),
                        n_step_tokens=float(step_n[k, j]),
                        n_prompt_tokens=float(prompt_n[k, j]),
                        n_completion_tokens=float(completion_n[k, j]),
                        n_latency_s=float(latency_n[k, j]),
                    )
                )
    return competence, cost


def _measured_mean(w: np.ndarray, known: np.ndarray, figure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(skills, agents) weighted mean of a figure over the calls that reported it (NaN: not reported), and the
    weighted count of those calls: a call without the figure is not a 0 in its mean."""
    has = known & ~np.isnan(figure)
    count = w.T @ has
    return (w.T @ np.where(has, figure, 0.0)) / np.maximum(count, 1e-300), count
