"""Failure-driven refinement: a sub-family the routed agent fails and another agent solves becomes a child skill,
even when discovery (tuned here never to split) left it inside its label; noisy failures add nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from learning_data import family

from skillorchestra.handbook.learning.discovery import DiscoveryParams
from skillorchestra.handbook.learning.grouping import GroupingParams
from skillorchestra.handbook.learning.pipeline import LearnParams, LearnResult, learn
from skillorchestra.handbook.learning.refine import RefineParams
from skillorchestra.handbook.learning.replay import replay
from skillorchestra.handbook.traces import AgentPrice, TraceTask

PRICES = {
    "generalist": AgentPrice(input_per_mtok=1.0, output_per_mtok=1.0, description="good at most things"),
    "specialist": AgentPrice(input_per_mtok=1.0, output_per_mtok=1.0, description="good at money questions"),
}
MAJOR = {"generalist": 0.85, "specialist": 0.3}
HIDDEN = {"generalist": 0.1, "specialist": 0.9}
NOISE = {"generalist": 0.7, "specialist": 0.5}
NEVER = GroupingParams(min_n=10**6)  # grouping never finds enough evidence to split


def params(failures: bool = True) -> LearnParams:
    """Discovery and the split move switched off, so only the failure-driven move can add a skill."""
    discovery = DiscoveryParams(grouping=NEVER, gap=None, gap_halves=None)
    refine = RefineParams(split=NEVER)
    return LearnParams(discovery=discovery, refine=refine if failures else replace(refine, failures=None))


def one_label(major: dict[str, float], minor: dict[str, float], seed: int = 0) -> list[TraceTask]:
    """Label 'math': 320 travel-worded tasks and a hidden sub-family of 90 finance-worded ones."""
    rng = np.random.default_rng(seed)
    tasks = family(rng, "travel", 320, major, "math", "trav") + family(rng, "finance", 90, minor, "math", "fin")
    return [tasks[i] for i in rng.permutation(len(tasks))]


def added(result: LearnResult) -> list[dict[str, object]]:
    return [s for s in result.metrics["refinement"] if s["action"] == "add failure skill"]


def test_a_hidden_sub_family_the_routed_agent_fails_becomes_a_child_skill() -> None:
    tasks = one_label(MAJOR, HIDDEN)
    without = learn(tasks, PRICES, lambda_=0.0, seed=0, params=params(failures=False))
    assert not [s for s in without.document.skills if s.parent_id]  # discovery alone leaves the label whole

    result = learn(tasks, PRICES, lambda_=0.0, seed=0, params=params())
    steps = added(result)
    kept = [s for s in steps if s["accepted"]]
    assert kept and "specialist" in str(kept[0]["target"]) and kept[0]["detail"]
    assert float(kept[0]["utility_after"]) >= float(kept[0]["utility_before"])
    assert (kept[0]["utility_after"], kept[0]["panel_after"]) != (kept[0]["utility_before"], kept[0]["panel_before"])
    children = [s for s in result.document.skills if s.parent_id == "math"]
    assert len(children) == 2 and all(s.id.startswith("math.") for s in children)
    assert any(s.indicators and s.examples and s.description for s in children)
    assert result.selected == "refined" and result.metrics["val"]["utility"] > without.metrics["val"]["utility"]

    rng = np.random.default_rng(21)
    money = family(rng, "finance", 30, HIDDEN, "math", "hf")
    trips = family(rng, "travel", 30, MAJOR, "math", "ht")
    assert replay(result.document, result.labeller, money, PRICES, 0.0).choices.count("specialist") >= 27
    assert replay(result.document, result.labeller, trips, PRICES, 0.0).choices.count("generalist") >= 27
    # without the child, the whole label (finance included) goes to the generalist
    assert replay(without.document, without.labeller, money, PRICES, 0.0).choices.count("generalist") == 30

    again = learn(tasks, PRICES, lambda_=0.0, seed=0, params=params())
    assert again.document == result.document and again.metrics["refinement"] == result.metrics["refinement"]


def test_noisy_failures_without_a_consistently_better_agent_add_nothing() -> None:
    result = learn(one_label(NOISE, NOISE), PRICES, lambda_=0.0, seed=0, params=params())
    assert not added(result)
    assert not [s for s in result.document.skills if s.parent_id]


def test_a_failure_driven_child_of_a_category_merged_in_the_same_round() -> None:
    """Two labels on which the agents behave alike merge; the hidden sub-family they share then becomes a child of
    the merged category in the same refinement round (the merge renames the category the proposal starts from)."""
    rng = np.random.default_rng(0)
    tasks = (
        family(rng, "travel", 200, MAJOR, "geo", "g")
        + family(rng, "finance", 60, HIDDEN, "geo", "gf")
        + family(rng, "travel", 200, MAJOR, "hist", "h")
        + family(rng, "finance", 60, HIDDEN, "hist", "hf")
    )
    tasks = [tasks[i] for i in rng.permutation(len(tasks))]
    result = learn(tasks, PRICES, lambda_=0.0, seed=0, params=params())
    actions = [(s["round"], s["action"], s["accepted"]) for s in result.metrics["refinement"]]
    assert (1, "merge categories", True) in actions and (1, "add failure skill", True) in actions
    children = [s for s in result.document.skills if s.parent_id == "geo+hist"]
    assert len(children) == 2
    money = family(np.random.default_rng(5), "finance", 30, HIDDEN, "geo", "x")
    assert replay(result.document, result.labeller, money, PRICES, 0.0).choices.count("specialist") >= 27


def test_a_change_that_helps_nowhere_is_not_taken_so_merges_and_children_cannot_undo_each_other() -> None:
    from types import SimpleNamespace

    from skillorchestra.handbook.learning.refine import better, not_worse

    def at(utility: float, panel: float) -> SimpleNamespace:
        return SimpleNamespace(utility=utility, panel_utility=panel)

    current = at(0.60, 0.50)
    assert not better(at(0.60, 0.50), current)  # equal everywhere: a failure child is rolled back
    assert better(at(0.60, 0.51), current)  # pays at other lambdas only
    assert better(at(0.61, 0.40), current)  # pays at the operating lambda
    assert not better(at(0.59, 0.90), current)  # never at the operating lambda's expense
    assert not_worse(at(0.60, 0.50), current)  # a merge that changes nothing simplifies the handbook
    assert not not_worse(at(0.60, 0.49), current)  # but not one that loses over the panel
    assert not_worse(at(0.62, 0.10), current)
