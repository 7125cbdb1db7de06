"""Split where agents' RELATIVE performance differs, even when the same agent is best everywhere.

Cost-aware routing needs to know where a cheap agent is nearly as good as a strong one and where it fails; the
best-agent rule in grouping.py never sees that when one agent leads on every query. Here atoms (micro-clusters)
are agglomerated by the paired gap between agents: for every pair of agents (a, b) and every lambda considered,
d = u_a - u_b per co-judged task; two groups stay apart only when, for some pair, their mean gaps differ by
more standard errors (Welch z on paired per-task gaps) than a Bonferroni bound over every comparison made
(atom pairs x agent pairs x lambdas, family-wise error `alpha`) and each holds at least `min_n` co-judged tasks.
`gap_halves` is the supervised variant: a ridge prediction of the gap from the features, tested out of fold.
The pair of groups with the weakest evidence of a difference merges first (ties: textually closest), so what
remains is a partition whose every pair of groups has a gap difference with posterior evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from skillorchestra.handbook.learning.grouping import agglomerate


def bonferroni_z(alpha: float, tests: int, two_sided: bool = True) -> float:
    """The z a statistic must clear so that `tests` comparisons together err with probability at most alpha."""
    return NormalDist().inv_cdf(1.0 - alpha / (max(tests, 1) * (2 if two_sided else 1)))


@dataclass(frozen=True)
class GapParams:
    alpha: float = 0.01  # family-wise error over every (atom pair, agent pair, lambda) compared (Bonferroni)
    min_n: int = 30  # co-judged tasks each side must hold


def _gap_stats(us: Sequence[np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (lambda, a, b): mean paired gap u_a - u_b, its variance, and the co-judged count, over `rows`."""
    u = np.stack([x[rows] for x in us])  # (L, n, A)
    d = u[:, :, :, None] - u[:, :, None, :]  # (L, n, A, A)
    ok = ~np.isnan(d)
    n = ok.sum(axis=1).astype(np.float64)
    dz = np.where(ok, d, 0.0)
    mean = dz.sum(axis=1) / np.maximum(n, 1)
    sq = (np.where(ok, d - mean[:, None], 0.0) ** 2).sum(axis=1)
    var = sq / np.maximum(n - 1, 1)
    return mean, var, n


def gap_z(us: Sequence[np.ndarray], g: np.ndarray, h: np.ndarray, min_n: int) -> float:
    """Strongest evidence (z) that the paired gap of some agent pair differs between groups g and h; 0 if too few."""
    mg, vg, ng = _gap_stats(us, g)
    mh, vh, nh = _gap_stats(us, h)
    enough = (ng >= min_n) & (nh >= min_n)
    if not enough.any():
        return 0.0
    # a floor on the variance keeps all-identical gaps (e.g. 0 vs 1 on every task) from giving infinite z
    se = np.sqrt(
        np.maximum(vg, 0.25 / np.maximum(ng, 1)) / np.maximum(ng, 1)
        + np.maximum(vh, 0.25 / np.maximum(nh, 1)) / np.maximum(nh, 1)
    )
    z = np.where(enough, np.abs(mg - mh) / np.maximum(se, 1e-12), 0.0)
    return float(z.max())


def gap_group(
    members: Sequence[np.ndarray], us: Sequence[np.ndarray], similarity: np.ndarray, params: GapParams
) -> list[list[int]]:
    """Agglomerate atoms until every remaining pair of groups differs in some agent pair's gap (Bonferroni z)."""
    atoms = sum(1 for m in members if len(m))
    agents = us[0].shape[1] if us else 0
    threshold = bonferroni_z(params.alpha, len(us) * agents * (agents - 1) // 2 * atoms * (atoms - 1) // 2)

    def key(groups: dict[int, list[int]], rows: dict[int, np.ndarray], a: int, b: int) -> tuple[float, ...]:
        small = min(rows[a].size, rows[b].size) < params.min_n
        z = 0.0 if small else gap_z(us, rows[a], rows[b], params.min_n)
        return (-1.0 if small else z, -float(np.mean(similarity[np.ix_(groups[a], groups[b])])))

    return agglomerate(members, key, threshold)


@dataclass(frozen=True)
class SupervisedGapParams:
    # one-sided error rate over the label's agent pairs (Bonferroni on out-of-fold z); the conventional 5%, not
    # stricter, since every split is then judged on the validation split (selection, and refinement's collapse)
    alpha: float = 0.05
    min_n: int = 60  # tasks the label must hold; each half then holds at least min_n / 2
    folds: int = 5
    ridge: float = 100.0


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    reg = alpha * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def _predict(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


def _halves_z(d: np.ndarray, pred: np.ndarray) -> float:
    """Welch z of mean gap above vs at-or-below the median prediction (one-sided: above should be larger)."""
    hi = pred > np.median(pred)
    a, b = d[hi], d[~hi]
    if a.size < 2 or b.size < 2:
        return 0.0
    se = np.sqrt(max(a.var(ddof=1), 0.25 / a.size) / a.size + max(b.var(ddof=1), 0.25 / b.size) / b.size)
    return float((a.mean() - b.mean()) / se)


def gap_halves(x: np.ndarray, scores: np.ndarray, params: SupervisedGapParams, seed: int) -> np.ndarray | None:
    """A boolean mask (True = where the label's best agent leads some other agent by more), or None.

    For each other agent b, the per-task gap d = s_best - s_b is predicted from the features by ridge regression;
    the split is kept only if, with out-of-fold predictions (so the test is honest), tasks predicted above the
    median have a larger mean gap than those below by more than `z` standard errors. The strongest such agent
    pair defines the halves (by the full-data fit's median).
    """
    n = x.shape[0]
    if n < params.min_n:
        return None
    counts = (~np.isnan(scores)).sum(axis=0)
    means = np.where(counts > 0, np.nansum(scores, axis=0) / np.maximum(counts, 1), -np.inf)
    best = int(np.argmax(means))
    xs = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-9)
    folds = np.random.default_rng(seed).permutation(n) % params.folds
    top: tuple[float, np.ndarray | None] = (bonferroni_z(params.alpha, scores.shape[1] - 1, two_sided=False), None)
    for b in range(scores.shape[1]):
        if b == best:
            continue
        d = scores[:, best] - scores[:, b]
        ok = ~np.isnan(d)
        if ok.sum() < params.min_n or np.nanstd(d) == 0:
            continue
        xo, do, fo = xs[ok], d[ok], folds[ok]
        pred = np.empty(do.size)
        for f in range(params.folds):
            test = fo == f
            if test.all() or not test.any():
                continue
            pred[test] = _predict(xo[test], _ridge(xo[~test], do[~test], params.ridge))
        z = _halves_z(do, pred)
        if z > top[0]:
            full = _predict(xs, _ridge(xo, do, params.ridge))
            top = (z, full > np.median(full))
    return top[1]
