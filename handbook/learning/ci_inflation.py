"""How overconfident the selected handbook is, measured on the validation split: the factor ci90 is widened by.

Discovery and refinement shape the skills with the training outcomes that profiling then counts in them, so a young
handbook's posteriors read surer than they are (bench/calibration.py: learned from 100 MMLU tasks, test rates missed
the quality by 3x the stated sd). The validation tasks took no part in that shaping. Profiled on train only, the
selected skill set predicts each validation task's quality q_i and sd s_i per agent (sum_s w_s sd_s, as route_step
states it). Tasks of one (agent, heaviest skill) cell share that cell's error; an honest sd has
E[r_i r_j] = s_i s_j for two such tasks' residuals r = y - q (their own Bernoulli noise is independent, so the
products of distinct tasks carry the shared error alone, where a single task's r^2 cannot tell it from noise).
The moment estimate over all cells,

    F^2 = sum_cells sum_{i != j} r_i r_j / sum_cells sum_{i != j} s_i s_j,

is the error variance in units of the stated one; the factor is sqrt(F^2) floored at 1 (a good handbook is never
made to look worse) and capped at models.MAX_CI_INFLATION. With plenty of data the estimate falls to 1 and nothing
is widened. Without a validation split there is no honest measurement: no factor.
Only the interval moves (handbook/ci_scale.py); the learner's choices and the document's numbers are as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skillorchestra.handbook.arrays import HandbookArrays
from skillorchestra.handbook.learning.candidates import Built, Evaluator, _reorder
from skillorchestra.handbook.learning.replay import _demand_columns
from skillorchestra.handbook.models import MAX_CI_INFLATION, CiInflation, Competence


@dataclass(frozen=True)
class Measured:
    """The validation measurement: the moment sums, the pairs behind them and the tasks."""

    shared: float  # sum of r_i r_j over pairs of a cell
    stated: float  # sum of s_i s_j over the same pairs
    pairs: int
    tasks: int

    @property
    def variance_ratio(self) -> float | None:
        """F^2, or None when no cell held two judged tasks."""
        return self.shared / self.stated if self.stated > 0 else None

    @property
    def factor(self) -> float:
        ratio = self.variance_ratio
        return 1.0 if ratio is None else min(max(math.sqrt(max(ratio, 0.0)), 1.0), MAX_CI_INFLATION)

    def as_dict(self) -> dict[str, Any]:
        ratio = self.variance_ratio
        return {
            "factor": self.factor,
            "variance_ratio": None if ratio is None else round(ratio, 6),
            "pairs": self.pairs,
            "validation_tasks": self.tasks,
        }


def measure(arrays: HandbookArrays, weights: np.ndarray, modes: Sequence[str | None], scores: np.ndarray) -> Measured:
    """The moment sums of handbook `arrays` (profiled without these tasks) on tasks with skill `weights` (N, S in
    arrays.skill_ids order), the modes their steps name and their `scores` (N, A; NaN = not judged)."""
    cols, w, _ = _demand_columns(arrays, weights, modes)
    mean_t, sd_t = arrays.mean.T, np.sqrt(np.maximum(arrays.var, 0.0)).T  # (C, A)
    quality = np.zeros((len(cols), len(arrays.agent_ids)))
    sd = np.zeros_like(quality)
    for k in range(cols.shape[1]):
        quality += w[:, k, None] * mean_t[cols[:, k]]
        sd += w[:, k, None] * sd_t[cols[:, k]]
    heaviest = cols[:, 0]  # _demand_columns puts the heaviest column first (the mode's or the root without skills)
    shared = stated = 0.0
    pairs = 0
    for agent in range(quality.shape[1]):
        judged = ~np.isnan(scores[:, agent])
        for cell in np.unique(heaviest[judged]):
            rows = judged & (heaviest == cell)
            k = int(rows.sum())
            if k < 2:
                continue
            r, s = scores[rows, agent] - quality[rows, agent], sd[rows, agent]
            shared += float(r.sum() ** 2 - (r**2).sum())
            stated += float(s.sum() ** 2 - (s**2).sum())
            pairs += k * (k - 1) // 2
    return Measured(shared, stated, pairs, len(cols))


def measure_selected(chosen: Built, evaluator: Evaluator) -> Measured:
    """The selected candidate (its arrays profiled on the training split) measured on the validation split."""
    arrays, val = chosen.arrays, evaluator.val
    if val.outcomes.agent_ids != arrays.agent_ids:
        raise ValueError("validation outcomes must be in the handbook's agent order")
    weights = _reorder(evaluator.weights(chosen.labeller, val), chosen.labeller.skill_ids, arrays.skill_ids)
    return measure(arrays, weights, val.modes, val.outcomes.scores)


def agent_evidence(competence: Sequence[Competence]) -> dict[str, float]:
    """agent_id -> observations in its competence rows (the arrays' root column of the same document)."""
    out: dict[str, float] = {}
    for row in competence:
        out[row.agent_id] = out.get(row.agent_id, 0.0) + max(row.alpha - 1.0, 0.0) + max(row.beta - 1.0, 0.0)
    return out


def inflation(measured: Measured, competence: Sequence[Competence]) -> CiInflation | None:
    """The document's CiInflation: the measured factor, with the evidence it fades against (None at 1)."""
    if measured.factor <= 1.0:
        return None
    return CiInflation(factor=measured.factor, evidence=agent_evidence(competence))
