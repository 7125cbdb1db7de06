"""Offline skill discovery: categories from task labels (or text clusters), leaf skills where agents differ.

Inside each category the queries are cut into micro-clusters (seeded k-means on MiniLM vectors, or on an SVD
of TF-IDF); micro-clusters are then merged by outcome evidence (grouping.py) until every remaining group is
worth routing on its own. A category whose groups all merge back stays a single skill.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from skillorchestra.handbook.learning.features import Csr, TfidfSpace, distinctive_terms, kmeans, reduce_svd
from skillorchestra.handbook.learning.gapsplit import GapParams, SupervisedGapParams, gap_group, gap_halves
from skillorchestra.handbook.learning.grouping import GroupingParams, group
from skillorchestra.handbook.learning.profile import Outcomes
from skillorchestra.handbook.learning.taxonomy import Category, Leaf, Prototypes, Taxonomy, slug, unique_id


@dataclass(frozen=True)
class DiscoveryParams:
    micro_size: int = 40  # training tasks per micro-cluster (prototype), roughly
    max_micro: int = 12  # prototypes per category at most
    svd_dims: int = 48  # TF-IDF fallback: dimensions the k-means sees
    proto_terms: int = 120  # TF-IDF fallback: terms kept per prototype (the labeller's vocabulary)
    text_categories: int = 10  # at most this many categories found by clustering unlabelled tasks
    grouping: GroupingParams = field(default_factory=GroupingParams)
    gap: GapParams | None = field(default_factory=GapParams)  # where one agent leads everywhere, split by gap
    gap_halves: SupervisedGapParams | None = field(default_factory=SupervisedGapParams)  # then by predicted gap


@dataclass
class Corpus:
    """The training split as discovery and refinement see it."""

    queries: list[str]
    labels: list[str | None]
    modes: list[str]  # the task's mode, or the default mode
    outcomes: Outcomes
    utilities: list[np.ndarray]  # per lambda considered, (N, A) score - lambda * cost / c_ref
    space: TfidfSpace
    rows: Csr  # TF-IDF of the queries
    embeddings: np.ndarray | None
    seed: int

    def features(self, idx: np.ndarray, dims: int) -> np.ndarray:
        """Clustering features of some tasks: their MiniLM vectors, else an SVD of their TF-IDF rows."""
        if self.embeddings is not None:
            return self.embeddings[idx].astype(np.float64)
        return reduce_svd(self.rows.take(idx), dims, seed=self.seed)


def _micro_clusters(corpus: Corpus, idx: np.ndarray, params: DiscoveryParams, seed: int) -> tuple[list, np.ndarray]:
    """Members of each micro-cluster of `idx` and the cosine similarity of their centroids."""
    k = max(1, min(params.max_micro, idx.size // params.micro_size))
    x = corpus.features(idx, params.svd_dims)
    labels = kmeans(x, k, seed, spherical=True)
    members = [idx[labels == j] for j in range(labels.max() + 1)]
    centres = np.array([x[labels == j].mean(axis=0) for j in range(labels.max() + 1)])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return members, centres @ centres.T


def _gap_micro_clusters(
    corpus: Corpus, idx: np.ndarray, params: DiscoveryParams, seed: int
) -> tuple[list, np.ndarray, list[list[int]]] | None:
    """Micro-clusters made inside each half of a label split by predicted agent gap (gapsplit.gap_halves)."""
    if params.gap_halves is None:
        return None
    x = corpus.features(idx, params.svd_dims)
    mask = gap_halves(x, corpus.outcomes.scores[idx], params.gap_halves, seed)
    if mask is None:
        return None
    k = max(2, min(params.max_micro, idx.size // params.micro_size))
    members: list[np.ndarray] = []
    centres: list[np.ndarray] = []
    groups: list[list[int]] = []
    for h, half in enumerate((mask, ~mask)):
        rows, xh = idx[half], x[half]
        kh = max(1, round(k * rows.size / idx.size))
        labels = kmeans(xh, kh, seed + 31 * h, spherical=True)
        first = len(members)
        for j in range(labels.max() + 1):
            members.append(rows[labels == j])
            centres.append(xh[labels == j].mean(axis=0))
        groups.append(list(range(first, len(members))))
    c = np.array(centres)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return members, c @ c.T, groups


def _categories(corpus: Corpus, params: DiscoveryParams) -> list[tuple[str, tuple[str, ...], np.ndarray]]:
    """(mode, labels, task rows) per category: one per task label, plus text clusters of unlabelled tasks."""
    modes = np.array(corpus.modes, dtype=object)
    labels = np.array(["" if lab is None else lab for lab in corpus.labels], dtype=object)
    out: list[tuple[str, tuple[str, ...], np.ndarray]] = []
    for ordinal, mode in enumerate(sorted(set(corpus.modes))):
        in_mode = modes == mode
        for label in sorted(set(labels[in_mode]) - {""}):
            out.append((mode, (label,), np.flatnonzero(in_mode & (labels == label))))
        rest = np.flatnonzero(in_mode & (labels == ""))
        if rest.size == 0:
            continue
        k = min(params.text_categories, max(1, round(math.sqrt(rest.size / 25))))
        if rest.size < 2 * params.micro_size:
            k = 1
        assign = kmeans(corpus.features(rest, params.svd_dims), k, corpus.seed * 7919 + ordinal, spherical=True)
        for j in range(assign.max() + 1):
            out.append((mode, ("",), rest[assign == j]))
    return out


def _category_ids(corpus: Corpus, cats: list[tuple[str, tuple[str, ...], np.ndarray]]) -> list[str]:
    taken: set[str] = set()
    ids = []
    for mode, labels, idx in cats:
        if labels[0]:
            base = slug(labels[0])
        else:
            others = np.concatenate([o for m, lab, o in cats if m == mode and not lab[0] and o is not idx] + [idx[:0]])
            words = distinctive_terms(corpus.space, corpus.rows, idx, others, top=2)
            base = "_".join(slug(w) for w in words) or "general"
        ids.append(unique_id(base if base not in taken else f"{mode}-{base}", taken))
    return ids


def leaf_ids(corpus: Corpus, category_id: str, groups: Sequence[np.ndarray], taken: set[str]) -> list[str]:
    """`category.skill` ids named by each group's most distinctive term against its siblings."""
    ids = []
    for g, rows in enumerate(groups):
        others = np.concatenate([o for h, o in enumerate(groups) if h != g] + [rows[:0]])
        words = distinctive_terms(corpus.space, corpus.rows, rows, others, top=2)
        base = f"{category_id}.{slug(words[0]) if words else f'group{g + 1}'}"
        if base in taken and len(words) > 1:
            base = f"{base}_{slug(words[1])}"
        ids.append(unique_id(base, taken))
    return ids


def discover(corpus: Corpus, params: DiscoveryParams) -> tuple[Taxonomy, list[np.ndarray], list[str]]:
    """The taxonomy, each prototype's member rows and each prototype's mode (vectors are made by the caller)."""
    cats = _categories(corpus, params)
    cat_ids = _category_ids(corpus, cats)
    taken = set(cat_ids)
    members: list[np.ndarray] = []
    proto_modes: list[str] = []
    categories: list[Category] = []
    for ordinal, ((mode, labels, idx), cat_id) in enumerate(zip(cats, cat_ids, strict=True)):
        seed = corpus.seed * 104729 + ordinal
        micro, similarity = _micro_clusters(corpus, idx, params, seed)
        groups = group(micro, corpus.utilities, similarity, params.grouping)
        if len(groups) == 1 and params.gap is not None:
            groups = gap_group(micro, corpus.utilities, similarity, params.gap)
        if len(groups) == 1 and (halves := _gap_micro_clusters(corpus, idx, params, seed)) is not None:
            micro, similarity, groups = halves
        first = len(members)
        members.extend(micro)
        proto_modes.extend([mode] * len(micro))
        protos = tuple(range(first, len(members)))
        leaves: tuple[Leaf, ...] = ()
        if len(groups) > 1:
            rows = [np.concatenate([micro[a] for a in g]) for g in groups]
            ids = leaf_ids(corpus, cat_id, rows, taken)
            leaves = tuple(Leaf(i, tuple(first + a for a in g)) for i, g in zip(ids, groups, strict=True))
        categories.append(Category(cat_id, mode, labels, protos, leaves))
    return Taxonomy(tuple(categories)), members, proto_modes


def few_tasks_note(corpus: Corpus, params: DiscoveryParams) -> str | None:
    """Why discovery could propose no skill: no task labels, and too few training tasks in every mode to cut into
    two micro-clusters (`_categories` and `_micro_clusters` then see one group). None when that is not the case."""
    if any(corpus.labels):
        return None
    needed = 2 * params.micro_size
    per_mode = [corpus.modes.count(m) for m in set(corpus.modes)]
    if not per_mode or max(per_mode) >= needed:
        return None
    return (
        f"{len(corpus.queries)} training tasks without task labels: discovery needs about {needed} in a mode "
        f"(two clusters of about {params.micro_size}) to split them into skills; add a `task` label to the traces, "
        "or more data"
    )


def prototype_vectors(
    corpus: Corpus, members: Sequence[np.ndarray], n_terms: int
) -> tuple[np.ndarray, TfidfSpace | None]:
    """Unit centroids per prototype: mean MiniLM vectors, or truncated TF-IDF means over a compact vocabulary."""
    if corpus.embeddings is not None:
        vecs = np.array([corpus.embeddings[m].mean(axis=0) for m in members], dtype=np.float64)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs.astype(np.float32), None
    means = [corpus.rows.column_sums(m) / max(m.size, 1) for m in members]
    tops = [np.argsort(-mu, kind="stable")[:n_terms] for mu in means]
    tops = [t[mu[t] > 0] for t, mu in zip(tops, means, strict=True)]
    vocab = np.unique(np.concatenate(tops + [np.empty(0, np.int64)]))
    position = {int(c): i for i, c in enumerate(vocab)}
    vecs = np.zeros((len(members), vocab.size), dtype=np.float64)
    for p, (t, mu) in enumerate(zip(tops, means, strict=True)):
        vecs[p, [position[int(c)] for c in t]] = mu[t]
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    space = TfidfSpace({corpus.space.terms[int(c)]: i for i, c in enumerate(vocab)}, corpus.space.idf[vocab])
    return vecs.astype(np.float32), space


def prototype_table(members: list[np.ndarray], modes: list[str], vectors: np.ndarray, n_tasks: int) -> Prototypes:
    of_task = np.full(n_tasks, -1, dtype=np.int64)
    for p, rows in enumerate(members):
        of_task[rows] = p
    return Prototypes(members=members, modes=modes, vectors=vectors, of_task=of_task)
