"""The learned handbook as a batch scorer: per task, each agent's weighted posterior-mean quality and
expected cost, computed as the live router scores a step (handbook/arrays.py, handbook/router.py, the learned
length shift of handbook/length.py and the shared cost rule of handbook/costing.py, else c_ref).

The eval needs these numbers beyond single choices: the two-agent curves rank tasks by the expected gain from
the strong agent, the paper rule reads the raw counts, and episodes score concatenated texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from skillorchestra.handbook import costing
from skillorchestra.handbook.arrays import DEFAULT_KAPPA, ROOT_SKILL, HandbookArrays, document_arrays
from skillorchestra.handbook.length import length_shifts
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.router import argbest, cost_penalty, shifted

Demands = list[tuple[str, float]]


class Labeller(Protocol):
    def weights(self, query: str) -> Demands: ...


class CachedLabeller:
    """Memoises the labeller's weights per (query, mode): the learner's labeller may embed the text, and the
    eval asks for the same test queries at every lambda. Everything else passes through."""

    def __init__(self, inner: Labeller) -> None:
        self._inner = inner
        self._cache: dict[tuple[str, str | None], Demands] = {}

    def weights(self, query: str, mode: str | None = None) -> Demands:
        key = (query, mode)
        if key not in self._cache:
            raw = self._inner.weights(query) if mode is None else self._inner.weights(query, mode)  # type: ignore[call-arg]
            self._cache[key] = list(raw)
        return self._cache[key]

    def weights_batch(self, queries: Sequence[str], modes: Sequence[str | None] | None = None) -> list[Demands]:
        """Batch form (replay uses it when present): misses go to the inner batch call when it has one."""
        modes = list(modes) if modes is not None else [None] * len(queries)
        missing = list(dict.fromkeys(k for k in zip(queries, modes, strict=True) if k not in self._cache))
        batch = getattr(self._inner, "weights_batch", None)
        if missing and batch is not None:
            for key, row in zip(missing, batch([q for q, _ in missing], [m for _, m in missing]), strict=True):
                self._cache[key] = list(row)
        return [self.weights(q, m) for q, m in zip(queries, modes, strict=True)]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


@dataclass(frozen=True)
class Scored:
    """Per task and agent (eval agent order): quality, expected cost, and whether the handbook knows the agent."""

    quality: np.ndarray  # (n, A)
    cost: np.ndarray  # (n, A) expected USD per call
    known: np.ndarray  # (A,) bool: the agent is in the handbook and enabled

    def utilities(self, lambda_: float, c_ref: float) -> np.ndarray:
        utility = self.quality - cost_penalty(self.cost, c_ref, lambda_)
        return np.where(self.known, utility, -np.inf)

    def choose(self, lambda_: float, c_ref: float, judged: np.ndarray | None = None) -> np.ndarray:
        """argmax utility (among `judged` agents, when given); as in the router, ties go to the cheaper agent,
        then to the earlier one (sorted ids)."""
        utility = self.utilities(lambda_, c_ref)
        return argbest(utility if judged is None else np.where(judged, utility, -np.inf), self.cost)


class HandbookScorer:
    """Scores texts with a handbook document and a labeller, in the eval's agent order."""

    def __init__(
        self,
        document: HandbookDocument,
        labeller: Labeller,
        agents: Sequence[str],
        c_ref: float,
        kappa: float = DEFAULT_KAPPA,
    ) -> None:
        self.document = document
        self.labeller = labeller if isinstance(labeller, CachedLabeller) else CachedLabeller(labeller)
        self.agents = list(agents)
        self.c_ref = c_ref
        self.arrays: HandbookArrays = document_arrays(document, kappa)
        rows = [self.arrays.agent_index.get(agent, -1) for agent in self.agents]
        self._rows = np.array(rows, dtype=np.int64)
        enabled = np.array([r >= 0 and bool(self.arrays.enabled[r]) for r in rows], dtype=bool)
        self.known = enabled

    def columns(self, text: str, mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The labeller's demands as handbook columns and weights summing to 1 (none known: the mode or root)."""
        mode = mode if mode in self.arrays.mode_index else None
        raw = self.labeller.weights(text, mode)
        demands = [(s, w) for s, w in raw if s in self.arrays.skill_index and w > 0]
        total = sum(w for _, w in demands)
        if not demands or total <= 0:
            column = self.arrays.root_column if mode is None else self.arrays.column_of_mode(mode)
            return np.array([column]), np.ones(1)
        cols = np.array([self.arrays.column_of_skill(s) for s, _ in demands])
        return cols, np.array([w / total for _, w in demands])

    def expected_cost(self, text: str, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(A_handbook,) expected cost per call of this text (handbook/costing.py), else c_ref."""
        cost = costing.expected_costs(self.arrays, costing.prompt_tokens([text]), cols[None, :], weights[None, :])
        return costing.charge_unknown(cost, np.array([self.c_ref]), self.arrays.enabled)[0]

    def score(self, texts: Sequence[str], modes: Sequence[str | None] | None = None) -> Scored:
        """Quality and expected cost of every agent for each text (a task's mode, when the handbook knows it)."""
        modes = list(modes) if modes is not None else [None] * len(texts)
        modes = [m if m in self.arrays.mode_index else None for m in modes]
        self.labeller.weights_batch(texts, modes)  # one batched labelling pass; later lookups hit the cache
        n, a = len(texts), len(self.agents)
        quality = np.zeros((n, a))
        cost = np.full((n, a), self.c_ref)
        present = self._rows >= 0
        shifts = length_shifts(self.arrays, texts)
        for i, text in enumerate(texts):
            cols, weights = self.columns(text, modes[i])
            own = shifted(self.arrays.mean[:, cols] @ weights, None if shifts is None else shifts[i])
            quality[i, present] = own[self._rows[present]]
            cost[i, present] = self.expected_cost(text, cols, weights)[self._rows[present]]
        return Scored(quality=quality, cost=cost, known=self.known)

    def raw_rates(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The published rule's inputs: sum_s w_s * s/n from the raw counts (unseen = 0) and the overall rate."""
        success, total = self._raw_counts()
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(total > 0, success / np.maximum(total, 1e-300), 0.0)
        n, a = len(texts), len(self.agents)
        weighted = np.zeros((n, a))
        present = self._rows >= 0
        for i, text in enumerate(texts):
            cols, weights = self.columns(text)
            weighted[i, present] = (rate[:, cols] @ weights)[self._rows[present]]
        overall = np.zeros(a)
        overall[present] = rate[self._rows[present], self.arrays.root_column]
        return weighted, overall

    def _raw_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, C) successes and observations without shrinkage, summed over each skill's subtree and mode."""
        arrays = self.arrays
        n_skills, n_modes = len(arrays.skill_ids), len(arrays.mode_ids)
        own_s = np.zeros((len(arrays.agent_ids), n_skills + n_modes + 1))
        own_f = np.zeros_like(own_s)
        for row in self.document.competence:
            i = arrays.agent_index.get(row.agent_id)
            j = arrays.root_column if row.skill_id == ROOT_SKILL else arrays.skill_index.get(row.skill_id)
            if i is None or j is None:
                continue
            own_s[i, j] += max(row.alpha - 1.0, 0.0)
            own_f[i, j] += max(row.beta - 1.0, 0.0)
        success, failure = own_s.copy(), own_f.copy()
        skills = arrays.skills  # topological: parents before children
        for k in range(n_skills - 1, -1, -1):
            parent = arrays.skill_index.get(skills[k].parent_id or "")
            if parent is not None:
                success[:, parent] += success[:, k]
                failure[:, parent] += failure[:, k]
        for k, skill in enumerate(skills):
            column = arrays.column_of_mode(skill.mode)
            success[:, column] += own_s[:, k]
            failure[:, column] += own_f[:, k]
        success[:, arrays.root_column] = own_s.sum(axis=1)
        failure[:, arrays.root_column] = own_f.sum(axis=1)
        return success, success + failure
