"""Skill identification: one function maps a query to skill weights, at learning time and at deployment.

Each skill owns a few prototypes (centroids of the training queries it covers) in one feature space: MiniLM
vectors, or TF-IDF over the labeller's own vocabulary when no embedder is available. The weight of a skill is
the softmax mass of its prototypes, P(skill | q) = sum_{p in skill} softmax_p(cos(q, p) / T), so merging two
skills sums their weights (and so their evidence); then the top-k skills above a floor are kept and
renormalised. The query's task label is never an input: at deployment there is none.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from skillorchestra.handbook.embedding import Embedder, load_default_embedder
from skillorchestra.handbook.learning.features import Csr, TfidfSpace

LabellerKind = Literal["tfidf", "minilm"]
FORMAT = "skillorchestra-labeller"
DEFAULT_TOP_K = 3
DEFAULT_MIN_RATIO = 0.05  # a skill below this share of the best skill's weight is dropped
TEMPERATURES = np.geomspace(0.004, 0.5, 36)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _unb64(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32).reshape(shape)


class SkillLabeller:
    """Nearest-prototype skill weights; usable as the service's matcher (`match`) and persisted as JSON."""

    def __init__(
        self,
        kind: LabellerKind,
        prototypes: np.ndarray,
        prototype_skills: Sequence[str],
        skill_modes: Mapping[str, str],
        temperature: float,
        *,
        top_k: int = DEFAULT_TOP_K,
        min_ratio: float = DEFAULT_MIN_RATIO,
        space: TfidfSpace | None = None,
        model_name: str | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        if kind == "tfidf" and space is None:
            raise ValueError("a tfidf labeller needs its TfidfSpace")
        self.kind: LabellerKind = kind
        self.prototypes = np.asarray(prototypes, dtype=np.float32)
        self.prototype_skills = list(prototype_skills)
        if not self.prototype_skills:  # no skills (a mode-level handbook): nothing to compare with
            self.prototypes = self.prototypes[:0]
        if len(self.prototype_skills) != len(self.prototypes):
            raise ValueError("one skill per prototype")
        self.skill_ids = list(skill_modes)
        self.skill_modes = dict(skill_modes)
        self.temperature = float(temperature)
        self.top_k = top_k
        self.min_ratio = min_ratio
        self.space = space
        self.model_name = model_name or (embedder.model_name if embedder is not None else None)
        self._embedder = embedder
        index = {s: j for j, s in enumerate(self.skill_ids)}
        self._proto_col = np.array([index[s] for s in self.prototype_skills], dtype=np.int64)
        self._membership = np.zeros((len(self.prototype_skills), len(self.skill_ids)))
        if self.prototype_skills:
            self._membership[np.arange(len(self.prototype_skills)), self._proto_col] = 1.0

    name = "learned"

    # -- the one labelling function ------------------------------------------------------------------------

    def featurize(self, queries: Sequence[str]) -> np.ndarray | Csr:
        if self.kind == "tfidf":
            assert self.space is not None
            return self.space.transform(queries)
        return self.embedder().encode(list(queries))

    def similarities(self, queries: Sequence[str]) -> np.ndarray:
        """(N, P) cosine of each query to each prototype; rows of queries with no usable feature are NaN."""
        feats = self.featurize(queries)
        if isinstance(feats, Csr):
            sims = feats.matmul_dense(self.prototypes.T.astype(np.float64))
            sims[np.diff(feats.indptr) == 0] = np.nan
            return sims
        return feats.astype(np.float64) @ self.prototypes.T.astype(np.float64)

    def weights_matrix(self, sims: np.ndarray, modes: Sequence[str | None] | None = None) -> np.ndarray:
        """(N, S) weights from prototype similarities: softmax mass per skill, top-k, relative floor, renormalised."""
        n, n_skills = sims.shape[0], len(self.skill_ids)
        out = np.zeros((n, n_skills))
        if n_skills == 0 or n == 0:
            return out
        logits = sims / self.temperature
        allowed = np.ones_like(logits, dtype=bool)
        if modes is not None:
            proto_modes = np.array([self.skill_modes[s] for s in self.prototype_skills], dtype=object)
            for mode in set(modes) - {None}:
                rows = np.array([m == mode for m in modes])
                allowed[rows] = proto_modes == mode
        logits = np.where(allowed, logits, -np.inf)
        usable = np.isfinite(logits).any(axis=1)
        logits = logits[usable]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = (e / e.sum(axis=1, keepdims=True)) @ self._membership
        if self.top_k < n_skills:
            cut = -np.sort(-p, axis=1)[:, self.top_k - 1 : self.top_k]
            p = np.where(p >= cut, p, 0.0)
        p = np.where(p >= self.min_ratio * p.max(axis=1, keepdims=True), p, 0.0)
        # at most top_k survive even when several tie at the cut: keep the earliest skill ids
        if self.top_k < n_skills and ((p > 0).sum(axis=1) > self.top_k).any():
            for i in np.flatnonzero((p > 0).sum(axis=1) > self.top_k):
                ranked = sorted(np.flatnonzero(p[i] > 0), key=lambda j: (-p[i, j], self.skill_ids[j]))
                p[i, ranked[self.top_k :]] = 0.0
        out[usable] = p / p.sum(axis=1, keepdims=True)
        return out

    def demands(self, row: np.ndarray) -> list[tuple[str, float]]:
        """One row of `weights_matrix` as (skill_id, weight) pairs, heaviest first (ties: skill id)."""
        cols = np.flatnonzero(row > 0)
        ranked = sorted(cols, key=lambda j: (-row[j], self.skill_ids[j]))
        return [(self.skill_ids[j], float(row[j])) for j in ranked]

    def weights(self, query: str, mode: str | None = None) -> list[tuple[str, float]]:
        """Skill weights of one query (summing to 1), or [] when nothing in the handbook resembles it."""
        return self.weights_batch([query], [mode])[0]

    def weights_batch(
        self, queries: Sequence[str], modes: Sequence[str | None] | None = None
    ) -> list[list[tuple[str, float]]]:
        if not self.skill_ids or not queries:
            return [[] for _ in queries]
        matrix = self.weights_matrix(self.similarities(queries), modes)
        return [self.demands(row) for row in matrix]

    def match(self, text: str, mode: str | None, top_k: int) -> list[tuple[str, float]]:
        """Up to top_k of the weights, renormalised (the older matcher interface)."""
        found = self.weights(text, mode)[: max(top_k, 0)]
        total = sum(w for _, w in found)
        return [(s, w / total) for s, w in found] if total > 0 else []

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
        """The service's matcher interface: the demands and which matcher found them."""
        return self.match(text, mode, top_k), self.name

    # -- variants and persistence --------------------------------------------------------------------------

    def with_skills(
        self, prototype_skills: Sequence[str], skill_modes: Mapping[str, str], temperature: float | None = None
    ) -> SkillLabeller:
        """The same prototypes mapped to another skill set (a coarser or refined taxonomy)."""
        return SkillLabeller(
            self.kind,
            self.prototypes,
            prototype_skills,
            skill_modes,
            self.temperature if temperature is None else temperature,
            top_k=self.top_k,
            min_ratio=self.min_ratio,
            space=self.space,
            model_name=self.model_name,
            embedder=self._embedder,
        )

    def use_embedder(self, embedder: Embedder | None) -> None:
        """Serve with this embedder (same model) from now on; None loads the default MiniLM when first needed."""
        self._embedder = embedder

    def embedder(self) -> Embedder:
        if self._embedder is None:
            loaded, reason = load_default_embedder()
            if loaded is None:
                raise RuntimeError(f"this labeller needs the MiniLM embedder: {reason}")
            self._embedder = loaded
        if self.model_name and self._embedder.model_name != self.model_name:
            raise RuntimeError(f"labeller built with {self.model_name}, embedder is {self._embedder.model_name}")
        return self._embedder

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "schema_version": 1,
            "kind": self.kind,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "min_ratio": self.min_ratio,
            "skills": [{"id": s, "mode": self.skill_modes[s]} for s in self.skill_ids],
            "prototype_skills": self.prototype_skills,
            "dim": int(self.prototypes.shape[1]) if self.prototypes.ndim == 2 else 0,
            "prototypes": _b64(self.prototypes),
        }
        if self.kind == "tfidf":
            assert self.space is not None
            d["terms"] = self.space.terms
            d["idf"] = _b64(self.space.idf)
        else:
            d["model_name"] = self.model_name
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], embedder: Embedder | None = None) -> SkillLabeller:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a labeller: format {d.get('format')!r}, expected {FORMAT!r}")
        n_protos = len(d["prototype_skills"])
        space = None
        if d["kind"] == "tfidf":
            terms = list(d["terms"])
            space = TfidfSpace({t: i for i, t in enumerate(terms)}, _unb64(d["idf"], (len(terms),)))
        return cls(
            d["kind"],
            _unb64(d["prototypes"], (n_protos, int(d["dim"]))),
            d["prototype_skills"],
            {s["id"]: s["mode"] for s in d["skills"]},
            float(d["temperature"]),
            top_k=int(d["top_k"]),
            min_ratio=float(d["min_ratio"]),
            space=space,
            model_name=d.get("model_name"),
            embedder=embedder,
        )


def calibrate_temperature(
    sims: np.ndarray, prototype_skill_index: np.ndarray, target: np.ndarray, n_skills: int
) -> float:
    """The temperature under which the training queries' own skills are most likely (mean log-likelihood)."""
    usable = ~np.isnan(sims).any(axis=1) & (target >= 0)
    if not usable.any() or n_skills <= 1:
        return float(TEMPERATURES[len(TEMPERATURES) // 2])
    sims, target = sims[usable], target[usable]
    own = prototype_skill_index[None, :] == target[:, None]
    best, best_ll = float(TEMPERATURES[0]), -np.inf
    for t in TEMPERATURES:
        logits = sims / t
        top = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - top)
        ll = np.log(np.maximum((e * own).sum(axis=1), 1e-300)) - np.log(e.sum(axis=1))
        score = float(ll.mean())
        if score > best_ll:
            best, best_ll = float(t), score
    return best
