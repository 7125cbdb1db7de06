"""Which groups of queries deserve separate skills: only those where routing them apart pays, with evidence.

Two groups g, h of training tasks are worth separating when the agent that is best on g (by mean utility,
score - lambda * cost / c_ref) beats, on g's own tasks, the agent that would be chosen for g and h pooled, by a
margin whose lower confidence bound is positive (paired per-task differences, z standard errors), and
likewise for h. The separation value is the expected number of extra successes, conservatively estimated:
n_g * max(LCB_g, 0) + n_h * max(LCB_h, 0). Groups whose separation is zero are merged, closest first, until
every remaining pair is worth keeping apart. Raw variance of success rates never enters: a skill where all
agents are mediocre but rank the same way is not split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupingParams:
    z: float = 2.0  # standard errors the paired gain must clear
    min_n: int = 20  # fewer co-judged tasks than this never justify a separate skill


def utilities(scores: np.ndarray, norm_costs: np.ndarray, lambdas: Sequence[float]) -> list[np.ndarray]:
    """Per lambda, (N, A) utility per task (NaN where the agent was not judged; unknown cost counts as c_ref)."""
    cost = np.where(np.isnan(norm_costs), 1.0, norm_costs)
    return [scores - lam * cost for lam in lambdas]


def _best(u: np.ndarray, rows: np.ndarray) -> int:
    sub = u[rows]
    counts = (~np.isnan(sub)).sum(axis=0)
    means = np.where(counts > 0, np.nansum(sub, axis=0) / np.maximum(counts, 1), -np.inf)
    return int(np.argmax(means))


def gain(u: np.ndarray, rows: np.ndarray, pooled: np.ndarray, params: GroupingParams) -> tuple[float, float]:
    """(conservative, point) extra successes from routing `rows` on their own instead of with `pooled`."""
    own, shared = _best(u, rows), _best(u, pooled)
    if own == shared:
        return 0.0, 0.0
    d = u[rows, own] - u[rows, shared]
    d = d[~np.isnan(d)]
    if d.size < max(params.min_n, 2):
        return 0.0, 0.0
    mean = float(d.mean())
    lcb = mean - params.z * float(d.std(ddof=1)) / np.sqrt(d.size)
    return d.size * max(lcb, 0.0), d.size * max(mean, 0.0)


def separation(us: Sequence[np.ndarray], g: np.ndarray, h: np.ndarray, params: GroupingParams) -> tuple[float, float]:
    pooled = np.concatenate([g, h])
    best = (0.0, 0.0)
    for u in us:
        cg, pg = gain(u, g, pooled, params)
        ch, ph = gain(u, h, pooled, params)
        best = max(best, (cg + ch, pg + ph))
    return best


PairKey = Callable[[dict[int, list[int]], dict[int, np.ndarray], int, int], tuple[float, ...]]


def agglomerate(members: Sequence[np.ndarray], key: PairKey, threshold: float) -> list[list[int]]:
    """Greedy agglomeration: merge the pair of groups with the smallest key while its first entry is <= threshold.

    `key(groups, rows, a, b)` scores a pair (computed once per pair: merged groups get new ids); lists of atom ids.
    """
    groups: dict[int, list[int]] = {i: [i] for i in range(len(members)) if len(members[i])}
    rows = {i: np.asarray(members[i]) for i in groups}
    cache: dict[tuple[int, int], tuple[float, ...]] = {}
    next_id = len(members)

    def scored(a: int, b: int) -> tuple[float, ...]:
        pair = (min(a, b), max(a, b))
        if pair not in cache:
            cache[pair] = key(groups, rows, a, b)
        return cache[pair]

    while len(groups) > 1:
        ids = sorted(groups)
        best_pair, best_key = None, None
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                k = scored(ids[x], ids[y])
                if best_key is None or k < best_key:
                    best_pair, best_key = (ids[x], ids[y]), k
        assert best_pair is not None and best_key is not None
        if best_key[0] > threshold:
            break
        a, b = best_pair
        groups[next_id] = groups.pop(a) + groups.pop(b)
        rows[next_id] = np.concatenate([rows.pop(a), rows.pop(b)])
        next_id += 1
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def group(
    members: Sequence[np.ndarray], us: Sequence[np.ndarray], similarity: np.ndarray, params: GroupingParams
) -> list[list[int]]:
    """Greedy agglomeration of atoms (e.g. micro-clusters) into outcome-distinct groups; lists of atom ids.

    `similarity` (atoms x atoms) breaks ties between pairs of equal separation: the textually closest merge first.
    """

    def key(groups: dict[int, list[int]], rows: dict[int, np.ndarray], a: int, b: int) -> tuple[float, ...]:
        conservative, point = separation(us, rows[a], rows[b], params)
        return conservative, point, -float(np.mean(similarity[np.ix_(groups[a], groups[b])]))

    return agglomerate(members, key, threshold=0.0)
