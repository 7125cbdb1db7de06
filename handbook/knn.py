"""The kNN baseline router: TF-IDF neighbours of the query vote on each agent's quality.

It is the simplest router that uses the query text, so SkillOrchestra must beat it to justify a handbook.
TF-IDF is computed here with numpy and an inverted index (no scikit-learn): word unigrams and bigrams,
sublinear tf, smoothed idf, l2-normalised rows, so the dot product of two rows is their cosine.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.traces import AgentPrice, TraceTask, estimate_cost_usd

TOKEN = re.compile(r"(?u)\b\w\w+\b")
MAX_FEATURES = 20_000


def terms(text: str) -> list[str]:
    """Lower-cased word unigrams (two characters or more) and the bigrams of consecutive words."""
    words = TOKEN.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


class TfidfIndex:
    """TF-IDF vectors of a fixed corpus with an inverted index for fast cosine similarities."""

    def __init__(self, documents: Sequence[str], max_features: int = MAX_FEATURES) -> None:
        counts = [Counter(terms(doc)) for doc in documents]
        df = Counter(term for count in counts for term in count)
        kept = sorted(df, key=lambda term: (-df[term], term))[:max_features]
        self.vocabulary = {term: col for col, term in enumerate(kept)}
        n = len(documents)
        self.idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float32)
        self.n_documents = n
        self._build_postings([self._vector(count) for count in counts])

    def _vector(self, count: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """Sparse (columns, weights) of one document: (1 + log tf) * idf, l2-normalised."""
        cols = np.array([self.vocabulary[t] for t in count if t in self.vocabulary], dtype=np.int64)
        tf = np.array([count[t] for t in count if t in self.vocabulary], dtype=np.float32)
        if cols.size == 0:
            return cols, tf
        weights = (1.0 + np.log(tf)) * self.idf[cols]
        return cols, (weights / np.linalg.norm(weights)).astype(np.float32)

    def _build_postings(self, vectors: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Column-sorted (document, weight) arrays; `_starts[c]:_starts[c+1]` are column c's postings."""
        rows = np.repeat(np.arange(len(vectors), dtype=np.int64), [c.size for c, _ in vectors])
        cols = np.concatenate([c for c, _ in vectors] + [np.empty(0, dtype=np.int64)])
        vals = np.concatenate([w for _, w in vectors] + [np.empty(0, dtype=np.float32)])
        order = np.argsort(cols, kind="stable")
        self._docs = rows[order].astype(np.int64)
        self._weights = vals[order].astype(np.float32)
        self._starts = np.searchsorted(cols[order], np.arange(len(self.vocabulary) + 1))

    def similarities(self, text: str) -> np.ndarray:
        """Cosine similarity of `text` to every indexed document (0 for documents sharing no term)."""
        sims = np.zeros(self.n_documents, dtype=np.float32)
        cols, weights = self._vector(Counter(terms(text)))
        for col, weight in zip(cols.tolist(), weights.tolist(), strict=True):
            start, end = self._starts[col], self._starts[col + 1]
            sims[self._docs[start:end]] += weight * self._weights[start:end]
        return sims


class KnnRouter:
    """Predicts each agent's quality as the mean score of the k most similar training queries.

    Choice: argmax of `quality - lambda * cost / c_ref` (interface.md "Lambda"); ties go to the cheaper agent,
    then to the earlier agent in `agents` (sorted ids). Neighbours with zero similarity are ignored; a query
    with no similar training query, or an agent none of its neighbours was judged on, falls back to the
    agent's global mean.
    """

    def __init__(self, k: int = 20, max_features: int = MAX_FEATURES) -> None:
        if not isinstance(k, int) or k < 1:
            raise InvalidInput("k", k, "an integer >= 1")
        self.k, self.max_features = k, max_features
        self.agents: list[str] = []
        self.mean_cost: dict[str, float] = {}
        self.unknown_cost: set[str] = set()
        self.c_ref: float = 0.0
        self._index: TfidfIndex | None = None

    def fit(
        self,
        tasks: Sequence[TraceTask],
        prices: Mapping[str, AgentPrice] | None = None,
        c_ref: float | None = None,
    ) -> KnnRouter:
        """Index the training queries and learn each agent's scores and mean cost per call.

        Only agents with at least one judged score are routable. `c_ref` overrides the data's reference cost
        (the mean cost per call of the most expensive agent) so several policies can share one scale.
        """
        if not tasks:
            raise InvalidInput("tasks", 0, "at least one training task")
        if c_ref is not None and not (math.isfinite(c_ref) and c_ref >= 0):
            raise InvalidInput("c_ref", c_ref, "a finite cost >= 0")
        self.agents = sorted({a for t in tasks for a, o in t.outcomes.items() if o.score is not None})
        if not self.agents:
            raise InvalidInput("tasks", len(tasks), "at least one judged (non-null) score")
        self._scores = self._score_matrix(tasks)
        self._global = np.nanmean(self._scores, axis=0)
        self._fit_costs(tasks, prices or {}, c_ref)
        self._index = TfidfIndex([t.query for t in tasks], self.max_features)
        return self

    def _score_matrix(self, tasks: Sequence[TraceTask]) -> np.ndarray:
        column = {agent: j for j, agent in enumerate(self.agents)}
        scores = np.full((len(tasks), len(self.agents)), np.nan)
        for i, task in enumerate(tasks):
            for agent, outcome in task.outcomes.items():
                if outcome.score is not None:
                    scores[i, column[agent]] = outcome.score
        return scores

    def _fit_costs(self, tasks: Sequence[TraceTask], prices: Mapping[str, AgentPrice], c_ref: float | None) -> None:
        """Mean cost per call from `cost_usd` or prices; an agent without either is charged c_ref."""
        costs: dict[str, list[float]] = {agent: [] for agent in self.agents}
        for task in tasks:
            for agent, outcome in task.outcomes.items():
                cost = estimate_cost_usd(task.query, outcome, prices.get(agent)) if agent in costs else None
                if cost is not None:
                    costs[agent].append(cost)
        self.mean_cost = {agent: float(np.mean(values)) for agent, values in costs.items() if values}
        self.unknown_cost = {agent for agent in self.agents if agent not in self.mean_cost}
        self.c_ref = c_ref if c_ref is not None else max(self.mean_cost.values(), default=0.0)

    def normalised_cost(self) -> np.ndarray:
        """Each agent's mean cost per call divided by c_ref (unknown cost counts as c_ref, i.e. 1)."""
        if self.c_ref <= 0:
            return np.array([0.0 if a in self.mean_cost else 1.0 for a in self.agents])
        return np.array([self.mean_cost.get(a, self.c_ref) / self.c_ref for a in self.agents])

    def _fitted_index(self) -> TfidfIndex:
        if self._index is None:
            raise InvalidInput("router", "unfitted", "fit() before predicting")
        return self._index

    def _neighbours(self, index: TfidfIndex, query: str) -> np.ndarray:
        """Indices of the k most similar training queries with positive similarity (ties: training order)."""
        sims = index.similarities(query)
        top = np.argsort(-sims, kind="stable")[: self.k]
        return top[sims[top] > 0]

    def predict_quality(self, queries: Sequence[str]) -> np.ndarray:
        """(n_queries x n_agents) predicted quality: neighbours' mean judged score, else the global mean."""
        index = self._fitted_index()
        quality = np.tile(self._global, (len(queries), 1))
        for i, query in enumerate(queries):
            neighbours = self._scores[self._neighbours(index, query)]
            judged = (~np.isnan(neighbours)).sum(axis=0)
            sums = np.nansum(neighbours, axis=0)
            quality[i] = np.where(judged > 0, sums / np.maximum(judged, 1), self._global)
        return quality

    def utilities(self, queries: Sequence[str], lambda_: float) -> np.ndarray:
        """(n_queries x n_agents) `quality - lambda * cost / c_ref`."""
        if not (isinstance(lambda_, int | float) and math.isfinite(lambda_) and lambda_ >= 0):
            raise InvalidInput("lambda_", lambda_, "a finite number >= 0")
        return self.predict_quality(queries) - lambda_ * self.normalised_cost()

    def choose(self, queries: Sequence[str], lambda_: float = 0.0) -> list[str]:
        """The agent id of highest utility per query (ties: cheaper, then earlier in `agents`)."""
        utility = self.utilities(queries, lambda_)
        tied = utility >= utility.max(axis=1, keepdims=True) - 1e-12
        picks = np.argmin(np.where(tied, self.normalised_cost(), np.inf), axis=1)
        return [self.agents[j] for j in picks]
