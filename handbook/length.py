"""The learned length effect at routing time: how far the length of a step moves each agent's competence.

Skills say what a step is about; they do not say how long or involved it is, and a small model's success falls
faster with the length of a problem than a large model's does. When the learner found that on its traces (and
cross-validation showed that it routes better), the handbook carries a slope per agent (models.LengthEffect) and
every scorer of a step (the service's route and consult, the replay evaluator, the eval) adds
slope * (ln(characters) - center) to the agent's competence (skill-weighted; consult adds it to each skill's)
through this one rule, with the length held within the range the slopes were fitted on and surrounding whitespace
not counted. The step's own text counts, not context sent beside it: the slopes were fitted on task texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skillorchestra.handbook.arrays import HandbookArrays


def ln_chars(texts: Sequence[str]) -> np.ndarray:
    """(n,) ln of each text's length in characters without surrounding whitespace (padding is not a longer
    problem); an empty text counts as one character."""
    return np.log(np.maximum(np.array([len(text.strip()) for text in texts], dtype=float), 1.0))


def length_shifts(arrays: HandbookArrays, texts: Sequence[str]) -> np.ndarray | None:
    """(n, A) competence shift per step and agent, or None when the handbook has no length effect (the router
    then scores exactly as before)."""
    if not arrays.has_length_effect:
        return None
    low, center, high = arrays.length_range
    return (np.clip(ln_chars(texts), low, high) - center)[:, None] * arrays.length_slope[None, :]


def step_shift(arrays: HandbookArrays, text: str) -> np.ndarray | None:
    """(A,) the shift of one step, or None when the handbook has no length effect."""
    shifts = length_shifts(arrays, [text])
    return None if shifts is None else shifts[0]
