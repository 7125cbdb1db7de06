"""Shrinkage: the competence the router scores is each skill's evidence on a prior centred on the level above."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from skillorchestra.handbook.arrays import COST_KAPPA, ROOT_SKILL, HandbookArrays, build_arrays
from skillorchestra.handbook.models import Agent, Competence, CostStats, Mode, Skill
from skillorchestra.handbook.posterior import normal_ci90


def beta_row(agent: str, skill: str, successes: float, failures: float) -> Competence:
    return Competence(agent_id=agent, skill_id=skill, alpha=1.0 + successes, beta=1.0 + failures)


def build(
    skills: Sequence[Skill],
    agents: Sequence[str],
    competence: Sequence[Competence] = (),
    costs: Sequence[CostStats] = (),
    kappa: float = 2.0,
) -> HandbookArrays:
    return build_arrays([Mode(id="m")], skills, [Agent(id=a) for a in agents], competence, costs, kappa=kappa)


def mean_of(arr: HandbookArrays, agent: str, skill: str) -> float:
    return float(arr.mean[arr.agent_index[agent], arr.column_of_skill(skill)])


TREE = [
    Skill(id="cat", mode="m"),
    Skill(id="cat.a", mode="m", parent_id="cat"),
    Skill(id="cat.b", mode="m", parent_id="cat"),
    Skill(id="cat.b.x", mode="m", parent_id="cat.b"),
    Skill(id="other", mode="m2"),
]


def test_unseen_skill_inherits_its_parent_level_not_zero() -> None:
    competence = [beta_row("strong", "cat.a", 8, 0), beta_row("weak", "cat.a", 0, 8)]
    arr = build(TREE, ["strong", "weak"], competence)
    for agent in ("strong", "weak"):
        assert mean_of(arr, agent, "cat.b") == pytest.approx(mean_of(arr, agent, "cat"), rel=1e-12)
        assert mean_of(arr, agent, "cat.b.x") == pytest.approx(mean_of(arr, agent, "cat"), rel=1e-12)
        assert arr.evidence[arr.agent_index[agent], arr.column_of_skill("cat.b")] == 0.0
    assert 0.0 < mean_of(arr, "weak", "cat.b") < mean_of(arr, "strong", "cat.b") < 1.0
    assert mean_of(arr, "strong", "cat.b") > 0.7 and mean_of(arr, "weak", "cat.b") < 0.3


def test_unseen_skill_in_an_unseen_mode_inherits_the_agent_level() -> None:
    arr = build(TREE, ["strong", "weak"], [beta_row("strong", "cat.a", 8, 0), beta_row("weak", "cat.a", 0, 8)])
    for agent in ("strong", "weak"):
        i = arr.agent_index[agent]
        assert mean_of(arr, agent, "other") == pytest.approx(arr.mean[i, arr.root_column], rel=1e-12)
        assert arr.mean[i, arr.column_of_mode("m2")] == pytest.approx(arr.mean[i, arr.root_column], rel=1e-12)


def test_an_agent_without_any_evidence_gets_the_pool_mean() -> None:
    # pool: 6 successes, 2 failures -> (6+1)/(8+2) = 0.7
    arr = build(TREE, ["old", "new"], [beta_row("old", "cat.a", 6, 2)])
    i = arr.agent_index["new"]
    assert np.allclose(arr.mean[i], 0.7)
    assert np.all(arr.evidence[i] == 0.0)


@pytest.mark.parametrize("kappa", [0.5, 2.0, 10.0])
def test_no_mean_is_ever_exactly_zero_or_one(kappa: float) -> None:
    competence = [beta_row("perfect", "cat.a", 30, 0), beta_row("hopeless", "cat.a", 0, 30)]
    arr = build(TREE, ["perfect", "hopeless", "unseen"], competence, kappa=kappa)
    assert np.all(np.isfinite(arr.mean))
    assert np.all(arr.mean > 0.0) and np.all(arr.mean < 1.0)
    assert mean_of(arr, "perfect", "cat.a") > 0.8 and mean_of(arr, "hopeless", "cat.a") < 0.2


def test_one_of_one_and_thirty_of_thirty_differ_in_mean_and_interval() -> None:
    rows = [beta_row("lucky", "s", 1, 0), beta_row("proven", "s", 30, 0), beta_row("ref", "s", 30, 30)]
    arr = build([Skill(id="s", mode="m")], ["lucky", "proven", "ref"], rows)  # ref keeps the pool prior moderate
    low, high = normal_ci90(arr.mean, arr.var)
    col = arr.column_of_skill("s")
    lucky, proven = arr.agent_index["lucky"], arr.agent_index["proven"]
    width_lucky = high[lucky, col] - low[lucky, col]
    width_proven = high[proven, col] - low[proven, col]
    assert width_lucky > 2.0 * width_proven
    assert arr.mean[proven, col] > arr.mean[lucky, col]
    assert arr.evidence[lucky, col] == 1.0 and arr.evidence[proven, col] == 30.0


def test_more_evidence_means_less_shrinkage() -> None:
    gaps = []
    for n in (1, 2, 5, 10, 30, 100):
        # a reference agent at 50% keeps the pool prior moderate; the tested agent succeeds n of n
        arr = build([Skill(id="s", mode="m")], ["ref", "x"], [beta_row("ref", "s", 10, 10), beta_row("x", "s", n, 0)])
        gaps.append(1.0 - mean_of(arr, "x", "s"))  # distance from the raw success rate 1.0
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < 0.02 < 0.1 < gaps[0]


def test_a_category_holds_its_subtree_evidence() -> None:
    competence = [
        beta_row("g", "cat.a", 3, 1),
        beta_row("g", "cat.b.x", 2, 2),
        beta_row("g", "cat", 1, 0),  # steps filed at the category itself
        beta_row("g", ROOT_SKILL, 5, 5),  # steps that named no skill
    ]
    arr = build(TREE, ["g"], competence)
    ev = {s: arr.evidence[0, arr.column_of_skill(s)] for s in ("cat", "cat.a", "cat.b", "cat.b.x", "other")}
    assert ev == {"cat": 9.0, "cat.a": 4.0, "cat.b": 4.0, "cat.b.x": 4.0, "other": 0.0}
    assert arr.evidence[0, arr.column_of_mode("m")] == 9.0  # each observation counted once per mode
    assert arr.evidence[0, arr.column_of_mode("m2")] == 0.0
    assert arr.evidence[0, arr.root_column] == 19.0  # ROOT_SKILL evidence only counts for the agent as a whole
    cat = arr.column_of_skill("cat")
    assert arr.alpha[0, cat] + arr.beta[0, cat] == pytest.approx(9.0 + 2.0)  # subtree evidence + kappa


def test_parents_come_before_children_whatever_the_ids() -> None:
    skills = [Skill(id="a.child", mode="m", parent_id="z.parent"), Skill(id="z.parent", mode="m")]
    arr = build(skills, ["g"], [beta_row("g", "z.parent", 0, 6)])
    assert arr.skill_ids.index("z.parent") < arr.skill_ids.index("a.child")
    assert mean_of(arr, "g", "a.child") == pytest.approx(mean_of(arr, "g", "z.parent"), rel=1e-12)


def test_rows_for_unknown_agents_or_skills_are_ignored() -> None:
    clean = build(TREE, ["g"], [beta_row("g", "cat.a", 2, 1)])
    noisy = build(
        TREE, ["g"], [beta_row("g", "cat.a", 2, 1), beta_row("ghost", "cat.a", 9, 0), beta_row("g", "gone", 9, 0)]
    )
    assert np.array_equal(clean.mean, noisy.mean)


def test_cost_per_skill_is_shrunk_toward_the_agent_mean() -> None:
    costs = [
        CostStats(agent_id="g", skill_id="cat.a", n=3.0, mean_cost_usd=0.03),
        CostStats(agent_id="g", skill_id="cat.b", n=1.0, mean_cost_usd=0.01),
    ]
    arr = build(TREE, ["g", "unpriced"], costs=costs)
    g, u = arr.agent_index["g"], arr.agent_index["unpriced"]
    assert arr.agent_cost[g] == pytest.approx(0.025)  # (3*0.03 + 0.01) / 4
    assert arr.cost_mean[g, arr.column_of_skill("cat.a")] == pytest.approx(
        (0.09 + COST_KAPPA * 0.025) / (3 + COST_KAPPA)
    )
    assert arr.cost_mean[g, arr.column_of_skill("other")] == pytest.approx(0.025)  # unseen: the agent's mean
    assert arr.cost_mean[g, arr.root_column] == pytest.approx(0.025)
    assert np.isnan(arr.agent_cost[u]) and np.all(np.isnan(arr.cost_mean[u]))


def test_a_skills_ancestor_at_each_depth_and_the_trees_levels() -> None:
    arr = build(TREE, ["g"])
    at = {
        (skill, depth): arr.skill_ids[arr.structure.ancestor_at(arr.skill_index[skill], depth)]
        for skill in ("cat.b.x", "cat.a", "other")
        for depth in (1, 2, 3, 32)
    }
    assert [at["cat.b.x", d] for d in (1, 2, 3, 32)] == ["cat", "cat.b", "cat.b.x", "cat.b.x"]
    assert [at["cat.a", d] for d in (1, 2, 3, 32)] == ["cat", "cat.a", "cat.a", "cat.a"]
    assert [at["other", d] for d in (1, 2, 3, 32)] == ["other"] * 4
    assert arr.structure.levels == 3 and build([], ["g"]).structure.levels == 0


def test_a_cyclic_parent_chain_does_not_produce_garbage_means() -> None:
    skills = [
        Skill(id="self", mode="m", parent_id="self"),
        Skill(id="a", mode="m", parent_id="b"),
        Skill(id="b", mode="m", parent_id="a"),
    ]
    arr = build(skills, ["g"], [beta_row("g", "a", 4, 0)])
    assert np.all(np.isfinite(arr.mean)) and np.all(arr.mean > 0.05) and np.all(arr.mean < 0.95)
    assert mean_of(arr, "g", "self") == pytest.approx(arr.mean[0, arr.column_of_mode("m")], rel=1e-12)


DEPTH_BUG = (
    "bug: each level's prior reuses the skill's own evidence, so one observation counts once per level "
    "(1/1 at depth 2 -> mean 0.97, 30/30 -> 0.9999998); priors must leave the child's subtree out"
)


def test_hand_computed_posterior_for_one_agent_and_one_skill() -> None:
    # 3 successes, 1 failure, kappa 2, one agent: pool = (3+1)/(4+2) = 2/3; the agent has no evidence outside
    # the skill, so the skill's prior is the pool: Beta(3 + 2*2/3, 1 + 2*1/3) = Beta(13/3, 5/3), mean 13/18.
    # The same holds for the mode and root columns (their evidence is the same 4 observations).
    arr = build([Skill(id="s", mode="m")], ["g"], [beta_row("g", "s", 3, 1)])
    for col in (arr.column_of_skill("s"), arr.column_of_mode("m"), arr.root_column):
        assert arr.alpha[0, col] == pytest.approx(13 / 3, rel=1e-12)
        assert arr.beta[0, col] == pytest.approx(5 / 3, rel=1e-12)
        assert arr.mean[0, col] == pytest.approx(13 / 18, rel=1e-12)
    assert np.all(arr.evidence[0] == 4.0)


def test_the_depth_of_a_skill_does_not_multiply_its_evidence() -> None:
    deep = [
        Skill(id="c", mode="m"),
        Skill(id="c.b", mode="m", parent_id="c"),
        Skill(id="c.b.x", mode="m", parent_id="c.b"),
    ]
    flat = [Skill(id="c.b.x", mode="m")]
    rows = [beta_row("lucky", "c.b.x", 1, 0), beta_row("proven", "c.b.x", 30, 0), beta_row("ref", "c.b.x", 10, 10)]
    agents = ["lucky", "proven", "ref"]
    deep_arr, flat_arr = build(deep, agents, rows), build(flat, agents, rows)
    for agent in agents:
        assert mean_of(deep_arr, agent, "c.b.x") == pytest.approx(mean_of(flat_arr, agent, "c.b.x"), rel=1e-9)
    # pool = (41+1)/(51+2) = 0.79; one success on a prior of strength 2 there: (1 + 2*0.79)/3 = 0.86;
    # 30 of 30 gives (30 + 2*0.79)/32 = 0.987, not 0.9999998
    assert mean_of(deep_arr, "lucky", "c.b.x") < 0.9
    assert mean_of(deep_arr, "proven", "c.b.x") < 0.99
