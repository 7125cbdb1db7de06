"""The learned widening of ci90 at routing time: how much wider each agent's interval is than its posteriors say.

A handbook learned from a few hundred tasks is overconfident: the learner shapes its skills with the same outcomes
it then counts in them, so a skill where both agents went 16 of 16 reads 0.98 +- little. The learner measures how
far its train-derived estimates miss the validation outcomes in units of their stated sd (models.CiInflation,
learning/ci_inflation.py); route_step and consult_handbook multiply their ci90 half-widths by it through this one
rule. Quality is never touched, so no routing choice changes.

It fades with the evidence recorded after learning. The excess error sits in the learning-time evidence: n0
observations carrying a shared bias of variance (F^2 - 1) * sd0^2 (sd0^2 ~ q(1 - q) / n0). Once n honest
observations in all stand behind the estimate that bias is diluted by n0 / n, and the error variance over the stated
one is 1 + (F^2 - 1) * n0 / n. So an agent's scale is sqrt(1 + (F^2 - 1) * min(1, n0 / n)), n0 and n its
observations at learning time and now (its whole row, so new outcomes on one skill narrow the agent's interval on
all); an agent the learner did not see is not widened. With forgetting (SKILLORCHESTRA_FORGETTING) n stays near
1 / (1 - gamma) and may never pass n0: the factor then stays whole, wider than needed once the learning-time
evidence has aged out (a known limit: conservative, never narrower).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skillorchestra.handbook.models import CiInflation


def effective_ci_inflation(inflation: CiInflation | None) -> CiInflation | None:
    """A factor of 1 (or one naming no agent) widens nothing: it is no inflation, so versions, the live state and
    exports say "none" alike (and an export without the key imports into older releases)."""
    if inflation is None or inflation.factor <= 1.0 or not any(n > 0 for n in inflation.evidence.values()):
        return None
    return inflation


def ci_scales(inflation: CiInflation | None, agent_ids: Sequence[str], evidence_now: np.ndarray) -> np.ndarray:
    """(A,) the ci90 half-width multiplier of each agent (1.0 = as the posteriors say), given each agent's
    observations now (`evidence_now`, the arrays' root column)."""
    scale = np.ones(len(agent_ids))
    if inflation is None:
        return scale
    excess = inflation.factor**2 - 1.0
    for i, agent_id in enumerate(agent_ids):
        learned = inflation.evidence.get(agent_id, 0.0)
        if learned <= 0:
            continue
        now = float(evidence_now[i])
        share = 1.0 if now <= learned else learned / now
        scale[i] = np.sqrt(1.0 + excess * share)
    return scale
