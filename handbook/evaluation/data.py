"""Outcome data as arrays: every policy is judged on the same (task x agent) score and cost matrices.

Costs follow interface.md: `cost_usd` wins, else prices x token estimates; an agent without either is charged
c_ref (the mean cost per call of the most expensive agent on train) and flagged, so no policy gets a free agent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.traces import AgentOutcome, AgentPrice, TraceTask, estimate_cost_usd

_NO_OUTCOME = AgentOutcome()


@dataclass(frozen=True)
class OutcomeTable:
    """Scores and costs of every agent on every task, in one fixed agent order."""

    tasks: list[TraceTask]
    agents: list[str]
    scores: np.ndarray  # (n, A) NaN = not run or not judged
    costs: np.ndarray  # (n, A) USD; unknown costs already charged c_ref

    @property
    def queries(self) -> list[str]:
        return [task.query for task in self.tasks]

    @property
    def families(self) -> list[str]:
        return [task.task or "(none)" for task in self.tasks]

    @property
    def judged(self) -> np.ndarray:
        """(n, A) which agents were judged on each task: the only ones a policy may pick there (replay's rule,
        as if each request named them in allowed_agents), so every policy is scored on every task."""
        return ~np.isnan(self.scores)

    def chosen(self, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and costs of the agent picked (by column index) on each task."""
        rows = np.arange(len(self.tasks))
        return self.scores[rows, picks], self.costs[rows, picks]


def judged_agents(tasks: Sequence[TraceTask]) -> list[str]:
    """Agents with at least one judged score, sorted (the order the routers use)."""
    agents = sorted({agent for t in tasks for agent, o in t.outcomes.items() if o.score is not None})
    if not agents:
        raise InvalidInput("train", len(tasks), "tasks with at least one judged (non-null) score")
    return agents


def cost_basis(tasks: Sequence[TraceTask]) -> str:
    """'cost_usd' when every judged outcome carries a recorded cost, else 'estimated'."""
    return "cost_usd" if recorded_cost_share(tasks) == 1.0 else "estimated"


def recorded_cost_share(tasks: Sequence[TraceTask]) -> float:
    """The share of judged outcomes whose cost was recorded (cost_usd), not estimated from prices: 'estimated'
    alone hid a mix (QA: every test outcome of one agent carried its cost)."""
    judged = [o for t in tasks for o in t.outcomes.values() if o.score is not None]
    return sum(o.cost_usd is not None for o in judged) / len(judged) if judged else 0.0


def raw_matrices(
    tasks: Sequence[TraceTask], agents: Sequence[str], prices: Mapping[str, AgentPrice]
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, costs) with NaN for missing scores and for costs neither recorded nor priced."""
    scores = np.full((len(tasks), len(agents)), np.nan)
    costs = np.full((len(tasks), len(agents)), np.nan)
    for i, task in enumerate(tasks):
        for j, agent in enumerate(agents):
            outcome = task.outcomes.get(agent)
            if outcome is not None and outcome.score is not None:
                scores[i, j] = outcome.score
            cost = estimate_cost_usd(task.query, outcome or _NO_OUTCOME, prices.get(agent))
            if cost is not None:
                costs[i, j] = cost
    return scores, costs


def mean_costs(costs: np.ndarray, agents: Sequence[str]) -> dict[str, float]:
    """Mean cost per call of each agent whose cost is known somewhere."""
    out = {}
    for j, agent in enumerate(agents):
        column = costs[:, j]
        if np.any(~np.isnan(column)):
            out[agent] = float(np.nanmean(column))
    return out


def reference_cost(agent_costs: Mapping[str, float]) -> float:
    """c_ref of interface.md: the mean cost per call of the pool's most expensive agent (0 when none is known)."""
    return max(agent_costs.values(), default=0.0)


def charged_costs(agent_costs: Mapping[str, float], agents: Sequence[str], c_ref: float) -> dict[str, float]:
    """The mean cost per call each agent is charged: its known cost, else c_ref (as build_table charges it)."""
    return {agent: agent_costs.get(agent, c_ref) for agent in agents}


def require_a_known_cost(agents: Sequence[str], agent_costs: Mapping[str, float], shown: object = None) -> None:
    """Refuse a pool where no judged agent has a price or a recorded cost: c_ref would be 0, every cost $0 and lambda
    would change nothing, so every row would silently compare accuracy alone. `shown` is the --agents value."""
    if not any(agent in agent_costs for agent in agents):
        raise InvalidInput(
            "--agents",
            "(not given)" if shown is None else shown,
            f"a price (or a cost_usd in the data) for at least one judged agent; none for {', '.join(agents)}, "
            "so every cost would be $0 and lambda would change nothing",
        )


def build_table(
    tasks: Sequence[TraceTask], agents: Sequence[str], prices: Mapping[str, AgentPrice], c_ref: float
) -> OutcomeTable:
    """Tasks nobody was judged on are dropped (a null score is skipped by eval); unknown costs become c_ref."""
    scores, costs = raw_matrices(tasks, agents, prices)
    keep = np.flatnonzero(~np.all(np.isnan(scores), axis=1))
    costs = np.where(np.isnan(costs), c_ref, costs)
    return OutcomeTable([tasks[i] for i in keep.tolist()], list(agents), scores[keep], costs[keep])


def drop_seen(train: Sequence[TraceTask], test: Sequence[TraceTask]) -> tuple[list[TraceTask], int]:
    """Test tasks whose exact query text appears in train are dropped: a router must not be graded on memory."""
    seen = {task.query for task in train}
    kept = [task for task in test if task.query not in seen]
    return kept, len(test) - len(kept)


SCORABLE_TEST = "at least one judged test task (a non-null score, a query not in --train) for an agent of --train"


def scorable(train: Sequence[TraceTask], test: Sequence[TraceTask]) -> list[TraceTask]:
    """The test tasks every row of the eval compares: unseen in train and judged for at least one agent of train
    (what build_table keeps of them); InvalidInput when train judged nobody."""
    agents = set(judged_agents(train))
    unseen, _ = drop_seen(train, test)
    return [t for t in unseen if any(o.score is not None and a in agents for a, o in t.outcomes.items())]


def split_by_query(tasks: Sequence[TraceTask], fraction: float, seed: int) -> tuple[list[TraceTask], list[TraceTask]]:
    """Seeded (fit, validation) split over distinct queries, so one query never lands on both sides."""
    if not 0.0 < fraction < 1.0 or not math.isfinite(fraction):
        raise InvalidInput("val_fraction", fraction, "a fraction strictly between 0 and 1")
    queries = list(dict.fromkeys(task.query for task in tasks))
    random.Random(seed).shuffle(queries)
    n_val = min(max(1, round(len(queries) * fraction)), len(queries) - 1)
    val_queries = set(queries[:n_val])
    fit = [task for task in tasks if task.query not in val_queries]
    val = [task for task in tasks if task.query in val_queries]
    return fit, val
