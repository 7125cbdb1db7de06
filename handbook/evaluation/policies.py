"""The policies compared by `skillorchestra eval`, each a function from test tasks to agent column indices.

Names are fixed by interface.md. Every policy sees only what it would see in deployment: train outcomes and
the test query text; only `oracle` reads the test outcomes (it is the ceiling, not a router). On data where not
every agent was judged on every task, each policy picks among the agents judged on the task (OutcomeTable.judged),
as the replay of `skillorchestra` does: so all are scored on the same tasks, and none pays for an unscored pick.
"""

from __future__ import annotations

import numpy as np

from skillorchestra.handbook import metrics
from skillorchestra.handbook.evaluation.data import OutcomeTable
from skillorchestra.handbook.evaluation.scorer import HandbookScorer, Scored
from skillorchestra.handbook.knn import KnnRouter

SKILLORCHESTRA = "skillorchestra"
THOMPSON = "skillorchestra-thompson"
PAPER_RULE = "paper-rule"
KNN = "knn"
BEST_SINGLE = "best-single"
CHEAPEST = "cheapest"
RANDOM = "random"
ORACLE = "oracle"
FIXED = (PAPER_RULE, BEST_SINGLE, CHEAPEST, RANDOM, ORACLE)


def constant(table: OutcomeTable, column: int) -> np.ndarray:
    """One agent everywhere (a single agent's point on the plane; where it was not judged its score is unknown)."""
    return np.full(len(table.tasks), column, dtype=np.int64)


def ranked(table: OutcomeTable, preference: np.ndarray) -> np.ndarray:
    """Per task, the judged agent ranked first by `preference` (higher first; ties: the earlier agent)."""
    return np.argmax(np.where(table.judged, preference[None, :], -np.inf), axis=1)


def best_single_choices(table: OutcomeTable, train_scores: np.ndarray) -> np.ndarray:
    """The agent best on train, or where it was not judged the next best on train (dense data: one agent)."""
    means = metrics.column_means(train_scores)
    return ranked(table, np.where(np.isnan(means), -np.inf, means))


def cheapest_choices(table: OutcomeTable, agent_costs: dict[str, float]) -> np.ndarray:
    """The agent cheapest on train (unknown cost counts as the most expensive), else the next cheapest judged."""
    top = max(agent_costs.values(), default=0.0)
    return ranked(table, -np.array([agent_costs.get(agent, top) for agent in table.agents]))


def best_single_column(train_scores: np.ndarray) -> int:
    """The agent with the highest mean score on train (ties: the earlier agent)."""
    return metrics.best_single(train_scores)[0]


def cheapest_column(agent_costs: dict[str, float], agents: list[str]) -> int:
    """The agent with the lowest mean cost per call on train (unknown cost counts as the most expensive)."""
    top = max(agent_costs.values(), default=0.0)
    return int(np.argmin([agent_costs.get(agent, top) for agent in agents]))


def random_choices(table: OutcomeTable, seed: int) -> np.ndarray:
    """Uniform over the judged agents of each task: a draw over all agents, and a draw among the judged ones where
    the first fell on an agent that was not (uniform overall; on dense data the first draw alone)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(table.agents), size=len(table.tasks))
    for i in np.flatnonzero(~table.judged[np.arange(len(picks)), picks]):
        picks[i] = rng.choice(np.flatnonzero(table.judged[i]))
    return picks


def oracle_choices(table: OutcomeTable) -> np.ndarray:
    """The cheapest agent that succeeds on each task (metrics.oracle_choice)."""
    return metrics.oracle_choice(table.scores, table.costs)


def paper_rule_choices(scorer: HandbookScorer, table: OutcomeTable, expected: Scored) -> np.ndarray:
    """The published reference rule: argmax of sum_s w_s * s/n (raw rate, unseen = 0); cost only breaks exact
    ties (the cheapest expected cost wins, then the earlier agent)."""
    weighted, _overall = scorer.raw_rates(table.queries)
    return tie_break_cheapest(np.where(scorer.known & table.judged, weighted, -np.inf), expected.cost)


def tie_break_cheapest(values: np.ndarray, cost: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
    """Per row: among the maxima of `values` (within tolerance), the lowest cost; then the earlier column."""
    tied = values >= values.max(axis=1, keepdims=True) - tolerance
    return np.argmin(np.where(tied, cost, np.inf), axis=1)


def knn_scored(router: KnnRouter, table: OutcomeTable) -> Scored:
    """kNN predictions in the same shape as the handbook's, so one sweep serves both."""
    if router.agents != table.agents:
        raise ValueError("the kNN router and the table must list the same agents in the same order")
    quality = router.predict_quality(table.queries)
    cost = np.tile(router.normalised_cost() * router.c_ref, (len(table.tasks), 1))
    return Scored(quality=quality, cost=cost, known=np.ones(len(table.agents), dtype=bool))


def knn_choose(router: KnnRouter, scored: Scored, lambda_: float, judged: np.ndarray | None = None) -> np.ndarray:
    """KnnRouter.choose's rule (ties: cheaper, then earlier) on precomputed predictions, among `judged` agents."""
    utility = scored.quality - lambda_ * router.normalised_cost()
    if judged is not None:
        utility = np.where(judged, utility, -np.inf)
    return tie_break_cheapest(utility, np.tile(router.normalised_cost(), (utility.shape[0], 1)), 1e-12)


def strong_gain(scored: Scored, weak: int, strong: int) -> np.ndarray:
    """Per task, the quality the router expects to gain from the strong agent: RouteLLM's 'prefer strong' score.

    APGR and CPT count calls, so every strong call costs the same there; with a per-agent constant cost the lambda
    sweep sends tasks to the strong agent in exactly this order. (The router's own per-text costs still shape
    the accuracy/cost rows; they would rank a short task first only because it is cheap, which a count of calls
    does not see.)"""
    return scored.quality[:, strong] - scored.quality[:, weak]
