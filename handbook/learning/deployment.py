"""What route_step will do with a learned handbook, which the validation replay does not show.

The replay lets only the agents judged on a task compete for it (it can score no other), so an agent judged on a
handful of tasks competes on a handful of validation tasks. route_step lets every enabled agent compete on every
step: an agent whose few outcomes were all successes, shrunk only toward a high pool, can take every step there
while learn reports the replay's figures (learning QA: 3 of 3 successes on an agent 14x dearer than the rest took
all 150 test steps). So learn also routes its validation queries as route_step would, and names the agents that
collapse the calls onto themselves on thin evidence.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skillorchestra.handbook.arrays import document_arrays
from skillorchestra.handbook.errors import counted
from skillorchestra.handbook.learning.profile import Outcomes
from skillorchestra.handbook.learning.replay import labeller_matrix, replay_arrays, task_modes
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.traces import AgentPrice, TraceTask

COLLAPSE_SHARE = 0.6  # issue #6's bound: no more than 60% of calls to one agent unless it is the cheapest
THIN_TASKS = 20  # an agent judged on fewer tasks than this has thin evidence


def deployed_shares(
    document: HandbookDocument, labeller: Any, tasks: Sequence[TraceTask], lambda_: float, kappa: float
) -> dict[str, float]:
    """Each agent's share of `tasks` when route_step routes their queries with `document` at `lambda_`: every
    enabled agent may take every step, and c_ref is the handbook's own, as the server computes it."""
    if not tasks:
        return {}
    arrays = document_arrays(document, kappa)
    queries = [t.query for t in tasks]
    modes = task_modes(tasks, arrays.mode_ids)
    weights = labeller_matrix(labeller, queries, modes, arrays.skill_ids)
    built = Outcomes.build(tasks, {}, arrays.agent_ids)
    anyone = dataclasses.replace(built, scores=np.zeros_like(built.scores))  # every agent "judged": all compete
    result = replay_arrays(arrays, weights, queries, modes, anyone, [t.id for t in tasks], lambda_)
    calls = Counter(result.choices)
    return {agent: calls[agent] / len(result.choices) for agent in arrays.agent_ids if calls[agent]}


def judged_counts(tasks: Sequence[TraceTask]) -> dict[str, int]:
    """Tasks each agent was judged on (a non-null score)."""
    counts: Counter[str] = Counter()
    for task in tasks:
        counts.update(a for a, o in task.outcomes.items() if o.score is not None)
    return dict(counts)


def collapse_note(
    shares: dict[str, float], judged: dict[str, int], cheapest: str | None, n_tasks: int, lambda_: float
) -> str | None:
    """A warning when route_step would send more than COLLAPSE_SHARE of the steps to one agent other than the
    cheapest, on data of more than two agents (with two, one taking most calls is the usual trade-off), or to an
    agent of thin evidence however many there are; `cheapest` None: no cost is known. None when neither holds."""
    if not shares:
        return None
    if len(set(judged) | set(shares)) < 2:  # one agent: there is no choice to warn of
        return None
    agent, share = max(shares.items(), key=lambda item: (item[1], item[0]))
    n = judged.get(agent, 0)
    thin = n < THIN_TASKS
    if share <= COLLAPSE_SHARE or agent == cheapest or not (thin or (cheapest is not None and len(judged) > 2)):
        return None
    text = f"route_step would send {share:.0%} of the validation steps to {agent}"
    text += f", judged on only {counted(n, 'task')}" if thin else ""
    text += "" if cheapest is None else ", not the cheapest agent"
    if n < n_tasks:  # else the replay's figures show the same (review: said of agents judged on every task)
        text += "; the validation figures let each agent compete only where it was judged"
    return text + (": give it more outcomes, or disable it" if thin else f" (a lambda above {lambda_:g} spreads them)")


def deployment_report(
    document: HandbookDocument,
    labeller: Any,
    val: Sequence[TraceTask],
    tasks: Sequence[TraceTask],
    prices: Mapping[str, AgentPrice],
    lambda_: float,
    kappa: float,
) -> tuple[dict[str, float], str | None]:
    """The stored handbook's shares of the validation queries (deployed_shares) and the warning on them
    (collapse_note), for `document` as it goes into the store (with the live agents' modes and enabled flags
    when learning from the log: review)."""
    shares = deployed_shares(document, labeller, val, lambda_, kappa)
    enabled = {a.id for a in document.agents if a.enabled}
    agent_ids = sorted({a for t in tasks for a, o in t.outcomes.items() if o.score is not None and a in enabled})
    cheapest = cheapest_agent(Outcomes.build(tasks, prices, agent_ids)) if agent_ids else None
    judged = {a: n for a, n in judged_counts(tasks).items() if a in enabled}
    return shares, collapse_note(shares, judged, cheapest, len(tasks), lambda_)


def cheapest_agent(outcomes: Outcomes) -> str | None:
    """The agent of the lowest mean recorded cost per call (None when no cost is known)."""
    means = outcomes.mean_costs()
    if not np.isfinite(means).any():
        return None
    return outcomes.agent_ids[int(np.nanargmin(means))]
