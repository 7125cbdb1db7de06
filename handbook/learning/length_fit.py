"""Learning the length effect (models.LengthEffect, applied by handbook/length.py).

Per agent, the slope of its residual success (recorded score minus the handbook's skill-weighted competence) on
the centred ln(characters) of the task, by ridge regression through the origin: slope = sum(r x) / (sum(x^2) +
ridge). Fitting residuals, not raw scores, credits length only with what the skills did not already explain, and
the ridge keeps an agent with few or evenly long tasks at (nearly) no slope. The learner keeps the effect only
when cross-validation shows it routes better (length_trial.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skillorchestra.handbook.length import ln_chars
from skillorchestra.handbook.models import MAX_LENGTH_SLOPE, LengthEffect

DEFAULT_RIDGE = 50.0  # pseudo-observations at the centre: a few dozen tasks before a slope means much


def fit_length_effect(
    quality: np.ndarray, scores: np.ndarray, queries: Sequence[str], agent_ids: Sequence[str], ridge: float
) -> LengthEffect:
    """Slopes of `scores` (N, A; NaN = not judged) minus `quality` (N, A) on the centred ln length of `queries`."""
    x = ln_chars(queries)
    center = float(x.mean()) if x.size else 0.0
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    x = x - center
    slopes: dict[str, float] = {}
    for j, agent_id in enumerate(agent_ids):
        judged = ~np.isnan(scores[:, j])
        residual, xs = scores[judged, j] - quality[judged, j], x[judged]
        slope = float((residual * xs).sum() / ((xs * xs).sum() + ridge))
        slopes[agent_id] = float(np.clip(slope, -MAX_LENGTH_SLOPE, MAX_LENGTH_SLOPE))
    return LengthEffect(center=center, low=low, high=high, slopes=slopes)
