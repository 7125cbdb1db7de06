"""The gap split rule: skills split where a cheap agent's gap to a strong one differs, though the strong one is
best everywhere (learned at lambda 0, where the best-agent rule can never fire)."""

from __future__ import annotations

import numpy as np
import pytest
from learning_data import family

from skillorchestra.handbook.learning.gapsplit import GapParams, SupervisedGapParams, gap_group, gap_halves, gap_z
from skillorchestra.handbook.learning.grouping import utilities
from skillorchestra.handbook.learning.pipeline import learn
from skillorchestra.handbook.learning.replay import replay
from skillorchestra.handbook.traces import AgentPrice, TraceTask

PRICES = {
    "strong": AgentPrice(input_per_mtok=30.0, output_per_mtok=60.0, description="expensive, good everywhere"),
    "cheap": AgentPrice(input_per_mtok=0.5, output_per_mtok=0.5, description="cheap"),
}
EASY = {"strong": 0.92, "cheap": 0.9}  # cheap agent nearly as good
HARD = {"strong": 0.92, "cheap": 0.2}  # cheap agent fails
UNIFORM = {"strong": 0.92, "cheap": 0.55}


def one_label(first: dict[str, float], second: dict[str, float], seed: int = 0, n: int = 200) -> list[TraceTask]:
    """One task label 'math' whose tasks come from two hidden sub-families (travel words, finance words)."""
    rng = np.random.default_rng(seed)
    tasks = family(rng, "travel", n, first, "math", "trav") + family(rng, "finance", n, second, "math", "fin")
    return [tasks[i] for i in rng.permutation(len(tasks))]


def test_a_label_whose_cheap_agent_fails_on_one_sub_family_becomes_two_skills() -> None:
    result = learn(one_label(EASY, HARD), PRICES, lambda_=0.0, seed=0)
    leaves = [s for s in result.document.skills if s.parent_id == "math"]
    assert len(leaves) == 2
    assert result.document.selections == {"default": 2}
    rng = np.random.default_rng(11)
    easy, hard = family(rng, "travel", 30, EASY, "math", "ht"), family(rng, "finance", 30, HARD, "math", "hf")
    # at a moderate price of cost the cheap agent takes the sub-family it handles, the strong one the other
    assert replay(result.document, result.labeller, easy, PRICES, 0.2).choices.count("cheap") >= 27
    assert replay(result.document, result.labeller, hard, PRICES, 0.2).choices.count("strong") >= 27


def test_a_label_with_a_uniform_gap_is_not_split() -> None:
    result = learn(one_label(UNIFORM, UNIFORM), PRICES, lambda_=0.0, seed=0)
    assert not [s for s in result.document.skills if s.parent_id == "math"]
    assert len(result.document.skills) <= 1


def _scores(rng: np.random.Generator, n: int, p: dict[str, float]) -> np.ndarray:
    return np.array([[float(rng.random() < p[a]) for a in ("strong", "cheap")] for _ in range(n)])


def test_gap_group_keeps_apart_only_atoms_whose_gap_differs() -> None:
    rng = np.random.default_rng(3)
    s = np.vstack([_scores(rng, 60, EASY), _scores(rng, 60, EASY), _scores(rng, 60, HARD), _scores(rng, 60, HARD)])
    us = utilities(s, np.tile([1.0, 0.02], (s.shape[0], 1)), [0.0])
    atoms = [np.arange(k * 60, (k + 1) * 60) for k in range(4)]
    groups = gap_group(atoms, us, np.eye(4), GapParams(min_n=30))
    assert groups == [[0, 1], [2, 3]]
    assert gap_z(us, atoms[0], atoms[1], 30) < 3.0 < gap_z(us, atoms[0], atoms[2], 30)
    # too few tasks per side: never evidence
    assert gap_z(us, atoms[0][:10], atoms[2][:10], 30) == 0.0


@pytest.mark.parametrize(("second", "split"), [(HARD, True), (EASY, False)])
def test_gap_halves_follows_a_feature_that_predicts_the_gap(second: dict[str, float], split: bool) -> None:
    rng = np.random.default_rng(5)
    s = np.vstack([_scores(rng, 150, EASY), _scores(rng, 150, second)])
    x = np.hstack([np.r_[np.zeros(150), np.ones(150)][:, None], rng.normal(size=(300, 4))])
    mask = gap_halves(x, s, SupervisedGapParams(), seed=0)
    if not split:
        assert mask is None
        return
    assert mask is not None and mask[150:].mean() > 0.9 and mask[:150].mean() < 0.1
