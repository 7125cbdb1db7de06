"""Granularity selection: every candidate replayed on the same validation tasks, reported with 95% intervals.

The objective is interface.md's accuracy - lambda * avg_cost / c_ref; intervals come from one seeded paired
bootstrap (the same resampled tasks for every candidate), so differences between candidates are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from skillorchestra.handbook.learning.replay import ReplayResult

BOOTSTRAP = 1000


@dataclass
class CandidateReport:
    name: str
    depth: int
    n_skills: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    avg_cost: float
    avg_cost_ci: tuple[float, float]
    utility: float
    utility_ci: tuple[float, float]
    pareto: bool = False
    selected: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _ci(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def report(
    names: Sequence[str],
    depths: Sequence[int],
    n_skills: Sequence[int],
    results: Sequence[ReplayResult],
    lambda_: float,
    c_ref: float,
    seed: int,
    n_boot: int = BOOTSTRAP,
) -> list[CandidateReport]:
    """One report per candidate, flags on the accuracy/cost Pareto front; selection is left to `select`."""
    scale = lambda_ / c_ref if c_ref > 0 else 0.0
    n = len(results[0].scores) if results else 0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((n_boot, 0), dtype=np.int64)
    out: list[CandidateReport] = []
    for name, depth, k, res in zip(names, depths, n_skills, results, strict=True):
        if len(res.scores) != n:
            raise ValueError("candidates must be replayed on the same tasks")
        acc_b = res.scores[idx].mean(axis=1) if n else np.zeros(n_boot)
        cost_b = res.costs[idx].mean(axis=1) if n else np.zeros(n_boot)
        out.append(
            CandidateReport(
                name=name,
                depth=depth,
                n_skills=k,
                accuracy=res.accuracy,
                accuracy_ci=_ci(acc_b),
                avg_cost=res.avg_cost,
                avg_cost_ci=_ci(cost_b),
                utility=res.accuracy - scale * res.avg_cost,
                utility_ci=_ci(acc_b - scale * cost_b),
            )
        )
    for r in out:
        r.pareto = not any(
            o is not r
            and o.accuracy >= r.accuracy
            and o.avg_cost <= r.avg_cost
            and (o.accuracy > r.accuracy or o.avg_cost < r.avg_cost)
            for o in out
        )
    return out


def select(reports: Sequence[CandidateReport], tiebreak: Sequence[float] | None = None) -> int:
    """The candidate of highest utility; ties go to the higher `tiebreak` (e.g. utility averaged over several
    lambdas), then to the one with fewer skills, then to the earlier one."""
    second = [0.0] * len(reports) if tiebreak is None else list(tiebreak)
    best = 0
    for i, r in enumerate(reports):
        top = reports[best]
        if r.utility > top.utility + 1e-12:
            best = i
        elif abs(r.utility - top.utility) <= 1e-12:
            if second[i] > second[best] + 1e-12 or (
                abs(second[i] - second[best]) <= 1e-12 and r.n_skills < top.n_skills
            ):
                best = i
    return best
