"""Whether the selected handbook should carry a length effect: decided by cross-validation on every task.

The length effect (length_fit.py) is one slope per agent, but the routing gain it buys is small and a single
validation split of a few hundred tasks cannot tell it from noise: on GSM8K's 132 validation tasks the verdict
flipped from seed to seed while the test set gained at every seed. So the selected skill set (its labeller
fixed) is re-profiled on k - 1 folds of train + validation, the slopes are fitted on the same folds, and the
held-out fold is routed with and without them; the effect is kept when the mean validation utility over the
lambda panel (the objective that breaks selection ties) rises over all folds together. The skill set and its
labeller were chosen with these tasks and stay fixed across folds: that favours the side without the effect as
much as the side with it, so the comparison stays fair, though neither side is wholly out of sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from skillorchestra.handbook.arrays import document_arrays
from skillorchestra.handbook.learning.candidates import Built, Evaluator, Split

DEFAULT_FOLDS = 5


@dataclass
class LengthTrial:
    kept: bool
    folds: int
    ridge: float
    panel_utility: tuple[float, float]  # (without, with), task-weighted over the held-out folds
    utility: tuple[float, float]  # at the learner's lambda
    accuracy: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "folds": self.folds,
            "ridge": self.ridge,
            "cv_panel_utility": {"without": self.panel_utility[0], "with": self.panel_utility[1]},
            "cv_utility": {"without": self.utility[0], "with": self.utility[1]},
            "cv_accuracy": {"without": self.accuracy[0], "with": self.accuracy[1]},
        }


def length_trial(
    chosen: Built, evaluator: Evaluator, tasks: Split, ridge: float, folds: int = DEFAULT_FOLDS
) -> LengthTrial | None:
    """Cross-validate the length effect of `chosen`'s skill set on `tasks`; None with fewer tasks than folds."""
    n = len(tasks.queries)
    if n < max(folds, 2):
        return None
    order = np.random.default_rng(evaluator.seed).permutation(n)
    totals = np.zeros((3, 2))  # rows: panel utility, utility, accuracy; columns: without, with
    routed = 0  # held-out tasks with a judged agent (the same with and without the effect)
    for held in np.array_split(order, folds):
        fit_on = tasks.take(np.sort(np.setdiff1d(order, held)))
        check = tasks.take(np.sort(held))
        weights = evaluator.weights(chosen.labeller, fit_on)
        document = evaluator.document(chosen.specs, chosen.labeller, weights, fit_on.outcomes)
        plain = document_arrays(document, evaluator.kappa)
        effect = evaluator.fit_length_effect(plain, chosen.labeller, [fit_on], ridge)
        for column, arrays in enumerate((plain, plain.with_length_effect(effect))):
            result = evaluator.replay(arrays, chosen.labeller, check)
            share = len(result.scores)
            if column == 0:
                routed += share
            if not share:
                continue
            totals[0, column] += share * evaluator.panel_utility(arrays, chosen.labeller, result, check)
            totals[1, column] += share * result.utility(evaluator.lambda_, evaluator.c_ref)
            totals[2, column] += share * result.accuracy
    if not routed:
        return None
    panel, utility, accuracy = ((float(row[0]) / routed, float(row[1]) / routed) for row in totals)
    return LengthTrial(
        kept=panel[1] > panel[0] + 1e-12,
        folds=folds,
        ridge=ridge,
        panel_utility=panel,
        utility=utility,
        accuracy=accuracy,
    )
