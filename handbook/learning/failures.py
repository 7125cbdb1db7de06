"""Failure-driven refinement: add a child skill where routing sends tasks to an agent that fails and another succeeds.

The training tasks are replayed through the current candidate. Each skill's tasks are cut into two seeded halves;
in one half the tasks whose routed agent failed while some other agent succeeded are clustered (seeded k-means on
the discovery features). A cluster of at least `min_n` failures defines a neighbourhood: tasks at least as close
to its centroid (in the labeller's feature space) as a quarter of its members. The evidence is read on the OTHER
half's tasks in that neighbourhood, never on the failures that placed the centroid (on those the routed agent
fails by construction, and noise would always look like a sub-family): the proposal stands only when another
agent's success rate there beats the routed agent's with non-overlapping 90% posterior intervals. The child skill
owns a new prototype (the neighbourhood's centroid, made of the neighbourhood's tasks) and the skill's prototypes
that lie mostly inside it; the handbook is re-labelled and re-profiled from the tasks, replayed on validation and
kept only if validation utility does not drop and rises at lambda or over the lambda panel (refine.better), else
the prototype table is restored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from skillorchestra.handbook.learning.candidates import Built, Evaluator
from skillorchestra.handbook.learning.discovery import Corpus, leaf_ids
from skillorchestra.handbook.learning.features import Csr, kmeans
from skillorchestra.handbook.learning.labeller import SkillLabeller
from skillorchestra.handbook.learning.taxonomy import Leaf, Prototypes, Taxonomy, with_leaves
from skillorchestra.handbook.posterior import beta_mean_var, normal_ci90
from skillorchestra.handbook.traces import SUCCESS_THRESHOLD


@dataclass(frozen=True)
class FailureParams:
    min_n: int = 20  # failures a cluster must hold, and tasks its neighbourhood must hold
    cluster_size: int = 40  # failures per k-means cluster, roughly
    max_clusters: int = 6  # clusters per skill at most
    max_proposals: int = 3  # proposals tried per round (the strongest evidence first)
    quantile: float = 0.25  # the neighbourhood: tasks at least as close to the centroid as this quantile of its cluster
    steal_share: float = 0.5  # an existing prototype moves to the child when this share of its tasks lie inside
    svd_dims: int = 48


@dataclass
class Proposal:
    skill: str  # the skill the failures were routed through
    category: str
    rows: np.ndarray  # the neighbourhood: training rows the child covers
    better: str
    routed: str
    rates: tuple[float, float]  # posterior mean success of better and routed agent on the neighbourhood
    strength: float  # neighbourhood size x rate gap (ranks proposals)

    def detail(self) -> str:
        return (
            f"{len(self.rows)} train tasks of {self.skill}: {self.better} {self.rates[0]:.2f} vs routed "
            f"{self.routed} {self.rates[1]:.2f} (90% intervals apart)"
        )


class FeatureCache:
    """The labeller-space features of the train and validation queries, computed once when first needed."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self._train: np.ndarray | Csr | None = None
        self._val: np.ndarray | Csr | None = None

    def train(self) -> np.ndarray | Csr:
        if self._train is None:
            self._train = self.evaluator.base.featurize(self.evaluator.train.queries)
        return self._train

    def val(self) -> np.ndarray | Csr:
        if self._val is None:
            self._val = self.evaluator.base.featurize(self.evaluator.val.queries)
        return self._val


def _centroid(feats: np.ndarray | Csr, rows: np.ndarray) -> np.ndarray:
    if isinstance(feats, Csr):
        mean = feats.column_sums(rows) / max(rows.size, 1)
    else:
        mean = feats[rows].astype(np.float64).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def _loo_sims(feats: np.ndarray | Csr, rows: np.ndarray) -> np.ndarray:
    """Each member's cosine to the centroid of the OTHER members (so members are not judged by their own pull)."""
    if isinstance(feats, Csr):
        sub = feats.take(rows)
        total = sub.column_sums()
        dot = sub.matmul_dense(total[:, None])[:, 0]
        sq = np.bincount(sub.row_ids(), weights=sub.data.astype(np.float64) ** 2, minlength=rows.size)
    else:
        x = feats[rows].astype(np.float64)
        total = x.sum(axis=0)
        dot, sq = x @ total, (x * x).sum(axis=1)
    rest_dot = dot - sq  # x_i . (sum of the others)
    rest_norm = np.sqrt(np.maximum(total @ total - 2 * dot + sq, 1e-24))
    return rest_dot / (rest_norm * np.sqrt(np.maximum(sq, 1e-24)))


def _sims(feats: np.ndarray | Csr, vector: np.ndarray) -> np.ndarray:
    """Cosine of every row to one unit vector (NaN for rows without any feature, as the labeller does)."""
    if isinstance(feats, Csr):
        out = feats.matmul_dense(vector[:, None].astype(np.float64))[:, 0]
        out[np.diff(feats.indptr) == 0] = np.nan
        return out
    return feats.astype(np.float64) @ vector.astype(np.float64)


def _interval(succ: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, var = beta_mean_var(1.0 + succ, 1.0 + n - succ)
    lo, hi = normal_ci90(mean, var)
    return mean, lo, hi


def propose(
    built: Built, evaluator: Evaluator, corpus: Corpus, cache: FeatureCache, params: FailureParams
) -> list[Proposal]:
    """Failure clusters with a consistently better agent, strongest first, at most one per skill."""
    train = evaluator.train
    result = evaluator.replay(built.arrays, built.labeller, train)
    row_of = {t: i for i, t in enumerate(train.ids)}
    kept = np.array([row_of[t] for t in result.task_ids], dtype=np.int64)
    agent_ids = list(built.arrays.agent_ids)
    scores = train.outcomes.scores  # (N, A) in the handbook's agent order
    chosen = np.full(len(train.ids), -1, dtype=np.int64)
    chosen[kept] = [agent_ids.index(a) for a in result.choices]
    ok = np.nan_to_num(scores, nan=-1.0) >= SUCCESS_THRESHOLD
    failed = np.zeros(len(train.ids), dtype=bool)
    failed[kept] = (result.scores < SUCCESS_THRESHOLD) & ok[kept].any(axis=1)
    proto_owner = {p: (s.id, s.parent or s.id) for s in built.specs for p in s.protos}
    owner = np.array([proto_owner.get(int(p), ("", ""))[0] if p >= 0 else "" for p in evaluator.protos.of_task])
    judged = ~np.isnan(scores)
    found: list[Proposal] = []
    for spec in built.specs:
        if not spec.protos:
            continue
        in_skill = np.flatnonzero(owner == spec.id)
        if failed[in_skill].sum() < params.min_n:
            continue
        seed = corpus.seed * 7211 + int(in_skill[0])
        fold = np.random.default_rng(seed).permutation(in_skill.size) % 2
        best: Proposal | None = None
        for f in (0, 1):
            fit, test = in_skill[fold == f], in_skill[fold != f]
            fails = fit[failed[fit]]
            if fails.size < params.min_n:
                continue
            k = max(1, min(params.max_clusters, fails.size // params.cluster_size))
            labels = kmeans(corpus.features(fails, params.svd_dims), k, seed + f, spherical=True)
            for j in range(int(labels.max()) + 1):
                group = fails[labels == j]
                if group.size < params.min_n:
                    continue
                centre = _centroid(cache.train(), group)
                near = np.nan_to_num(_sims(cache.train(), centre), nan=-np.inf)
                threshold = float(np.quantile(_loo_sims(cache.train(), group), params.quantile))
                held = test[near[test] >= threshold]  # evidence from tasks the centroid was not fitted to
                rows = in_skill[near[in_skill] >= threshold]
                if held.size < params.min_n or rows.size == in_skill.size:
                    continue
                picked = chosen[held][chosen[held] >= 0]
                if picked.size == 0:
                    continue
                routed = int(np.bincount(picked, minlength=len(agent_ids)).argmax())
                succ = (ok[held] & judged[held]).sum(axis=0).astype(np.float64)
                n = judged[held].sum(axis=0).astype(np.float64)
                mean, lo, hi = _interval(succ, n)
                better = int(np.argmax(np.where(np.arange(len(agent_ids)) == routed, -np.inf, mean)))
                if n[better] < params.min_n or lo[better] <= hi[routed]:
                    continue
                strength = held.size * float(mean[better] - mean[routed])
                if best is None or strength > best.strength:
                    rates = (float(mean[better]), float(mean[routed]))
                    cat = spec.parent or spec.id
                    best = Proposal(spec.id, cat, rows, agent_ids[better], agent_ids[routed], rates, strength)
        if best is not None:
            found.append(best)
    found.sort(key=lambda p: (-p.strength, p.skill))
    return found[: params.max_proposals]


@dataclass
class _Saved:
    members: list[np.ndarray]
    modes: list[str]
    vectors: np.ndarray
    of_task: np.ndarray
    base: SkillLabeller
    train_sims: np.ndarray
    val_sims: np.ndarray


def _save(evaluator: Evaluator) -> _Saved:
    p = evaluator.protos
    return _Saved(
        list(p.members), list(p.modes), p.vectors, p.of_task.copy(), evaluator.base, evaluator.train.sims,
        evaluator.val.sims,
    )  # fmt: skip


def restore(evaluator: Evaluator, saved: _Saved) -> None:
    """Undo `apply`: the evaluator's prototype table, base labeller and similarities as they were."""
    p = evaluator.protos
    p.members, p.modes, p.vectors, p.of_task = saved.members, saved.modes, saved.vectors, saved.of_task
    evaluator.base, evaluator.train.sims, evaluator.val.sims = saved.base, saved.train_sims, saved.val_sims


def _add_prototype(evaluator: Evaluator, cache: FeatureCache, rows: np.ndarray, category: str, mode: str) -> int:
    """Append a prototype made of `rows` (moved out of their old prototypes); returns its index."""
    protos: Prototypes = evaluator.protos
    taken = np.zeros(protos.of_task.size, dtype=bool)
    taken[rows] = True
    protos.members = [m[~taken[m]] for m in protos.members] + [np.sort(rows)]
    protos.modes = protos.modes + [mode]
    vector = _centroid(cache.train(), rows).astype(np.float32)
    protos.vectors = np.vstack([protos.vectors, vector[None, :]])
    protos.of_task = protos.of_task.copy()
    protos.of_task[rows] = len(protos.members) - 1
    b = evaluator.base
    evaluator.base = SkillLabeller(
        b.kind,
        np.vstack([b.prototypes, vector[None, :]]),
        b.prototype_skills + [category],
        b.skill_modes,
        b.temperature,
        top_k=b.top_k,
        min_ratio=b.min_ratio,
        space=b.space,
        model_name=b.model_name,
        embedder=b._embedder,  # noqa: SLF001 - the same labeller with one more prototype
    )
    evaluator.train.sims = np.hstack([evaluator.train.sims, _sims(cache.train(), vector)[:, None]])
    evaluator.val.sims = np.hstack([evaluator.val.sims, _sims(cache.val(), vector)[:, None]])
    return len(protos.members) - 1


def apply(
    built: Built, evaluator: Evaluator, corpus: Corpus, cache: FeatureCache, proposal: Proposal, params: FailureParams
) -> tuple[Taxonomy, str, _Saved]:
    """The taxonomy with the child skill (the evaluator extended in place), its id, and how to restore it."""
    saved = _save(evaluator)
    tax = built.taxonomy
    cat = tax.category(proposal.category)
    owned = next(s.protos for s in built.specs if s.id == proposal.skill)
    inside = np.zeros(evaluator.protos.of_task.size, dtype=bool)
    inside[proposal.rows] = True
    members = evaluator.protos.members
    stolen = [p for p in owned if members[p].size and inside[members[p]].mean() >= params.steal_share]
    if len(stolen) == len(owned):
        stolen = []
    in_stolen = np.zeros_like(inside)
    for p in stolen:
        in_stolen[members[p]] = True
    loose = proposal.rows[~in_stolen[proposal.rows]]
    child_protos = list(stolen)
    if loose.size:
        child_protos.append(_add_prototype(evaluator, cache, loose, cat.id, cat.mode))
    members = evaluator.protos.members
    rest = [p for p in owned if p not in stolen]
    child_rows = np.concatenate([members[p] for p in child_protos])
    rest_rows = np.concatenate([members[p] for p in rest])
    taken = tax.all_ids()
    if cat.leaves:
        child_id = leaf_ids(corpus, cat.id, [child_rows, rest_rows], taken)[0]
        leaves = [replace(x, protos=tuple(rest)) if x.id == proposal.skill else x for x in cat.leaves]
        leaves.append(Leaf(child_id, tuple(sorted(child_protos))))
    else:
        child_id, rest_id = leaf_ids(corpus, cat.id, [child_rows, rest_rows], taken)
        leaves = [Leaf(rest_id, tuple(rest)), Leaf(child_id, tuple(sorted(child_protos)))]
    grown = replace(cat, protos=tuple(sorted(set(cat.protos) | set(child_protos))))
    return tax.replace_category(cat.id, [with_leaves(grown, leaves)]), child_id, saved
