"""Online Thompson replay: the real service routes each test task in stream order and records its outcome.

Nothing is simulated around the router: decisions and outcomes go through `Handbook.route` and
`Handbook.record` on a real SQLite handbook, so competence moves by the server's fractional updates (alpha +=
w * reward, beta += w * (1 - reward) for each skill weight w the labeller gave) and cost statistics by the
recorded costs. Regret is measured against the per-task best utility (score - lambda * cost / c_ref).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skillorchestra.handbook.evaluation.data import OutcomeTable
from skillorchestra.handbook.evaluation.scorer import Labeller
from skillorchestra.handbook.models import MAX_SEED, TEXT_MAX, HandbookDocument, SkillDemand
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore


@dataclass(frozen=True)
class OnlineRun:
    start: str  # "cold" | "learned"
    picks: np.ndarray
    cumulative_regret: float
    regret_curve: list[float]  # cumulative regret after each tenth of the stream


def cold_document(document: HandbookDocument) -> HandbookDocument:
    """The learned taxonomy and agents with no evidence at all: competence, cost statistics and the length effect
    (fitted on the same training outcomes) emptied."""
    return document.model_copy(update={"competence": [], "cost": [], "length_effect": None})


def utilities(table: OutcomeTable, lambda_: float, c_ref: float) -> np.ndarray:
    """Realised utility of every agent on every task; unjudged scores count as -inf (never the best)."""
    penalty = lambda_ * table.costs / c_ref if c_ref > 0 else np.zeros_like(table.costs)
    return np.where(np.isnan(table.scores), -np.inf, table.scores - penalty)


def regret_of(picks: np.ndarray, table: OutcomeTable, lambda_: float, c_ref: float) -> tuple[float, list[float]]:
    """Cumulative regret vs the oracle's per-task best utility, and its curve at each tenth of the stream."""
    util = utilities(table, lambda_, c_ref)
    chosen = util[np.arange(len(picks)), picks]
    best = util.max(axis=1)
    per_task = np.where(np.isfinite(chosen), best - chosen, 0.0)  # an unjudged pick teaches and costs nothing
    cumulative = np.cumsum(per_task)
    marks = [max(1, round(len(picks) * k / 10)) - 1 for k in range(1, 11)] if len(picks) else []
    return float(cumulative[-1]) if len(picks) else 0.0, [float(cumulative[m]) for m in marks]


def step_text(query: str) -> str:
    """The router's text bounds: non-empty and at most TEXT_MAX characters."""
    text = query if query.strip() else "(empty query)"
    return text[:TEXT_MAX]


class LabellerMatcher:
    """The learner's labeller as the service's skill matcher, so the server infers the demands replay uses.

    Steps also carry their demands explicitly (as an MCP client stating `skills` would); the matcher only
    answers for steps the labeller finds no skill for, and then with none (the agent level), as replay does."""

    name = "labeller"

    def __init__(self, labeller: Labeller, known: set[str]) -> None:
        self.labeller, self.known = labeller, known

    def match(self, text: str, mode: str | None, top_k: int) -> list[tuple[str, float]]:
        """All of the labeller's known skills, normalised (top_k is ignored so replay and the service agree)."""
        demands = [(s, w) for s, w in self.labeller.weights(text) if s in self.known and w > 0]
        total = sum(w for _, w in demands)
        return [(s, w / total) for s, w in demands] if total > 0 else []

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
        return self.match(text, mode, top_k), self.name


def replay_online(
    document: HandbookDocument,
    labeller: Labeller,
    table: OutcomeTable,
    *,
    start: str,
    lambda_: float,
    c_ref: float,
    seed: int,
    db_path: Path,
    progress: Callable[[int, int], None] | None = None,
) -> OnlineRun:
    """Route every test task with Thompson sampling in order, recording each judged outcome at once."""
    store = HandbookStore(db_path)
    try:
        initial = document if start == "learned" else cold_document(document)
        store.create_version(initial, source="eval", summary=f"eval online replay ({start} start)")
        matcher = LabellerMatcher(labeller, {skill.id for skill in initial.skills})
        service = Handbook(store, matcher=matcher)
        column = {agent: j for j, agent in enumerate(table.agents)}
        routable = [agent.id for agent in initial.agents if agent.id in column and agent.enabled]
        picks = np.zeros(len(table.tasks), dtype=np.int64)
        for t, task in enumerate(table.tasks):
            allowed = [a for a in routable if table.judged[t, column[a]]] or routable  # the eval's one rule
            text = step_text(task.query)
            demands = [SkillDemand(skill_id=s, weight=w) for s, w in matcher.match(text, None, 0)]
            decision = service.route(
                RouteRequest(
                    text=text,
                    skills=demands or None,
                    lambda_=lambda_,
                    strategy="thompson",
                    allowed_agents=allowed,
                    seed=(seed * 1_000_003 + t) % (MAX_SEED + 1),  # a seed route_step takes, for any eval seed
                )
            )
            j = column[decision.agent_id]
            picks[t] = j
            score = table.scores[t, j]
            if not np.isnan(score):
                service.record(
                    OutcomeReport(decision_id=decision.decision_id, reward=float(score), cost_usd=table.costs[t, j])
                )
            if progress is not None:
                progress(t + 1, len(table.tasks))
    finally:
        store.close()
    regret, curve = regret_of(picks, table, lambda_, c_ref)
    return OnlineRun(start=start, picks=picks, cumulative_regret=regret, regret_curve=curve)
