"""Patch.competence computes a record's few cells alone (arrays._column_means); it must give the very numbers the
vectorised posteriors give that agent's row, bit for bit, or a repeated report and route_step disagree."""

from __future__ import annotations

import random

import numpy as np
import pytest

from skillorchestra.handbook.arrays import (
    CHAIN_KEPT_MAX,
    MODE_PREFIX,
    ROOT_SKILL,
    HandbookArrays,
    Patch,
    Sums,
    _pool_rate,
    _posteriors,
    build_arrays,
)
from skillorchestra.handbook.models import Agent, Competence, Mode, Skill
from skillorchestra.handbook.posterior import beta_mean_var

MODES = ("code", "search", "idle")  # "idle": named by an agent, no skill in it


def handbook(rng: random.Random, kappa: float) -> HandbookArrays:
    """A tree four levels deep beside a category wider than CHAIN_KEPT_MAX, with random evidence."""
    skills = [Skill(id="wide", mode="search")]
    skills += [Skill(id=f"wide.{i}", mode="search", parent_id="wide") for i in range(CHAIN_KEPT_MAX + 10)]
    parent = None
    for depth in range(4):
        skill_id = f"deep{depth}"
        skills.append(Skill(id=skill_id, mode="code", parent_id=parent))
        skills += [Skill(id=f"{skill_id}.leaf{i}", mode="code", parent_id=skill_id) for i in range(3)]
        parent = skill_id
    agents = [Agent(id=f"agent{a}", modes=["idle"] if a == 0 else []) for a in range(4)]
    columns = [s.id for s in skills] + [f"{MODE_PREFIX}{m}" for m in MODES] + [ROOT_SKILL]
    competence = [
        Competence(agent_id=a.id, skill_id=c, alpha=1.0 + rng.uniform(0, 40), beta=1.0 + rng.uniform(0, 40))
        for a in agents
        for c in columns
        if rng.random() < 0.5
    ]
    return build_arrays([Mode(id=m) for m in MODES], skills, agents, competence, [], kappa=kappa)


def row_means(patch: Patch, agent_id: str) -> np.ndarray:
    """The agent's whole row of means as the vectorised code derives it (what Patch.competence computed before)."""
    base, raw = patch.base, patch.raw
    rows = np.array([base.agent_index[agent_id]])
    sums = Sums.of(raw, base.structure, rows)
    pool = np.full(1, _pool_rate(raw))
    alpha, beta = _posteriors(base.structure, raw.success[rows], raw.failure[rows], sums, pool, base.kappa)
    return beta_mean_var(alpha, beta)[0][0]


@pytest.mark.parametrize("kappa", [2.0, 0.5, 9.0])
def test_patched_cells_equal_the_vectorised_row_bit_for_bit(kappa: float) -> None:
    rng = random.Random(7)
    arrays = handbook(rng, kappa)
    patch = Patch(arrays)
    columns = arrays.skill_ids + [f"{MODE_PREFIX}{m}" for m in arrays.mode_ids] + [ROOT_SKILL]
    for _ in range(60):  # outcomes queued one after another, as records add them
        agent_id = rng.choice(arrays.agent_ids)
        changed = rng.sample(columns, 3)
        rows = [
            Competence(agent_id=agent_id, skill_id=c, alpha=1.0 + rng.uniform(0, 90), beta=1.0 + rng.uniform(0, 9))
            for c in changed
        ]
        assert patch.add(rows, [])
        asked = rng.choice(arrays.agent_ids)
        expected = row_means(patch, asked)
        got = patch.competence(asked, columns)
        assert got == [float(expected[arrays._cell(asked, c)[1]]) for c in columns]  # type: ignore[index]
    assert patch.competence("nobody", ["wide"]) == [None]
    assert patch.competence(arrays.agent_ids[0], ["no-such-skill"]) == [None]
