"""Step-level episodes: chains of 3-5 real test tasks (from different families where there are three or more),
succeeding only when every step does. They test the method's premise: needs change from step to step, so routing
each step should beat choosing one agent for the whole request.

Compared: `step-level` (the handbook routes each step's own text), `query-level` (the handbook chooses one
agent from the episode's full concatenated text, its cost term the agent's mean expected cost over the steps,
at the same lambda), `query-level-knn` (kNN on the full text, same lambda) and `best-single`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from skillorchestra.handbook.evaluation.data import OutcomeTable
from skillorchestra.handbook.evaluation.policies import knn_choose
from skillorchestra.handbook.evaluation.scorer import HandbookScorer, Scored
from skillorchestra.handbook.knn import KnnRouter
from skillorchestra.handbook.router import argbest, cost_penalty
from skillorchestra.handbook.traces import SUCCESS_THRESHOLD

MIN_STEPS, MAX_STEPS = 3, 5
ROUTINGS = ("step-level", "query-level", "query-level-knn", "best-single")


@dataclass(frozen=True)
class Episode:
    steps: list[int]  # row indices into the test table, in order


def build_episodes(table: OutcomeTable, n_episodes: int, seed: int) -> list[Episode]:
    """Seeded episodes; each step from a different family when at least MIN_STEPS families exist."""
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[int]] = defaultdict(list)
    for i, family in enumerate(table.families):
        by_family[family].append(i)
    families = sorted(by_family)
    episodes: list[Episode] = []
    if len(table.tasks) < MIN_STEPS:
        return episodes
    for _ in range(n_episodes):
        length = int(rng.integers(MIN_STEPS, MAX_STEPS + 1))
        if len(families) >= MIN_STEPS:
            chosen = rng.choice(len(families), size=min(length, len(families)), replace=False)
            steps = [int(rng.choice(by_family[families[k]])) for k in chosen]
        else:  # one or two families (GSM8K): distinct tasks of any family
            steps = [int(i) for i in rng.choice(len(table.tasks), size=min(length, len(table.tasks)), replace=False)]
        episodes.append(Episode(steps=steps))
    return episodes


def episode_rule(table: OutcomeTable) -> str:
    """How build_episodes drew the episodes on this table, in words (the JSON's episodes_detail.rule): steps from
    distinct families only when there are at least MIN_STEPS families, and never more steps than families then."""
    families = len(set(table.families))
    if families >= MIN_STEPS:
        longest = min(MAX_STEPS, families)
        steps = f"{MIN_STEPS}-{longest}" if longest > MIN_STEPS else f"{MIN_STEPS}"
        return f"{steps} steps, each from a different task family"
    if len(table.tasks) < MIN_STEPS:
        return f"none: {len(table.tasks)} test task(s), an episode takes {MIN_STEPS}-{MAX_STEPS} distinct ones"
    kind = "one task family" if families == 1 else f"{families} task families"
    return f"{MIN_STEPS}-{MAX_STEPS} distinct tasks drawn from all test tasks ({kind}: fewer than {MIN_STEPS})"


def _outcome(table: OutcomeTable, episodes: list[Episode], picks: list[np.ndarray]) -> dict[str, float | None]:
    """Episode accuracy (every step succeeds) and mean cost per episode (sum over its steps)."""
    successes, costs = [], []
    for episode, pick in zip(episodes, picks, strict=True):
        scores = table.scores[episode.steps, pick]
        successes.append(bool(np.all(np.nan_to_num(scores, nan=0.0) >= SUCCESS_THRESHOLD)))
        costs.append(float(table.costs[episode.steps, pick].sum()))
    return {"accuracy": float(np.mean(successes)), "avg_cost": float(np.mean(costs)), "episodes": len(episodes)}


def episode_text(table: OutcomeTable, episode: Episode) -> str:
    return "\n\n".join(f"Step {n}: {table.tasks[i].query}" for n, i in enumerate(episode.steps, start=1))


def evaluate_episodes(
    table: OutcomeTable,
    episodes: list[Episode],
    scorer: HandbookScorer,
    step_scores: Scored,
    knn: KnnRouter,
    lambda_: float,
    c_ref: float,
    train_means: np.ndarray,
) -> dict[str, dict[str, float | None]]:
    """The four routings of the module docstring, on the same episodes. As in the eval's rows, a step goes only to
    an agent judged on it, and one agent for a whole episode only to one judged on all its steps (if there is one);
    best-single is the agent best on train (`train_means`) among those. With no episode (under MIN_STEPS test
    tasks) every routing is still named, its figures null: readers of the contract's keys find them (QA)."""
    if not episodes:
        return {name: {"accuracy": None, "avg_cost": None, "episodes": 0} for name in ROUTINGS}
    step_picks = step_scores.choose(lambda_, c_ref, table.judged)
    texts = [episode_text(table, e) for e in episodes]
    whole = scorer.score(texts)
    eligible = np.array([_judged_throughout(table, e) for e in episodes])
    query_picks = []
    for n, episode in enumerate(episodes):
        mean_cost = step_scores.cost[episode.steps].mean(axis=0)  # per-call cost term over the episode's steps
        utility = whole.quality[n] - cost_penalty(mean_cost, c_ref, lambda_)
        j = int(argbest(np.where(whole.known & eligible[n], utility, -np.inf), mean_cost))
        query_picks.append(np.full(len(episode.steps), j))
    knn_picks = knn_choose(knn, _knn_scored(knn, texts), lambda_, eligible)
    best = np.argmax(np.where(eligible, np.nan_to_num(train_means, nan=-np.inf)[None, :], -np.inf), axis=1)
    return {
        "step-level": _outcome(table, episodes, [step_picks[e.steps] for e in episodes]),
        "query-level": _outcome(table, episodes, query_picks),
        "query-level-knn": _outcome(table, episodes, _whole_episode(episodes, knn_picks)),
        "best-single": _outcome(table, episodes, _whole_episode(episodes, best)),
    }


def _judged_throughout(table: OutcomeTable, episode: Episode) -> np.ndarray:
    """The agents judged on every step of the episode; all agents when none is (its unjudged steps then fail)."""
    judged = np.asarray(table.judged[episode.steps].all(axis=0))
    return judged if judged.any() else np.ones_like(judged)


def _whole_episode(episodes: list[Episode], picks: np.ndarray) -> list[np.ndarray]:
    return [np.full(len(e.steps), j) for e, j in zip(episodes, picks, strict=True)]


def _knn_scored(knn: KnnRouter, texts: list[str]) -> Scored:
    quality = knn.predict_quality(texts)
    cost = np.tile(knn.normalised_cost() * knn.c_ref, (len(texts), 1))
    return Scored(quality=quality, cost=cost, known=np.ones(quality.shape[1], dtype=bool))
