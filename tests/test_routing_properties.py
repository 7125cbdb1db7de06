"""Invariants of the routing maths over many generated pools (hypothesis, derandomized): the router as a pure
function (lambda, permutation, eligibility, Thompson), the Beta-posterior helpers, and the cost rules.

test_router.py checks chosen examples; these check what must hold for every pool: utility = quality - lambda * cost /
c_ref is an argmax, so raising lambda can only trade quality for a cheaper agent, and the agents' order matters only
for exact ties, which the documented rule (cheaper, then earlier) decides.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from routing_strategies import LAMBDAS, demands, documents, permuted, route_inputs

from skillorchestra.handbook import costing
from skillorchestra.handbook.arrays import document_arrays
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.posterior import forget, fractional_update, weighted_mean_update
from skillorchestra.handbook.router import PROPENSITY_DRAWS, RouteInputs, RouteScores, cost_penalty, route

FAST = settings(derandomize=True, max_examples=200, deadline=None, database=None)
lambdas = st.sampled_from(LAMBDAS) | st.floats(0.0, 1000.0)


def mean_route(inputs: RouteInputs, lambda_: float) -> RouteScores:
    return route(inputs, lambda_, "mean", None)


@FAST
@given(route_inputs(), lambdas, lambdas)
def test_raising_lambda_never_picks_a_dearer_or_a_better_agent(inputs: RouteInputs, one: float, two: float) -> None:
    """argmax of q - lambda * c / c_ref: with lambda up, the choice's cost and quality can only go down (the two
    optimality inequalities summed give (l2 - l1) (c1 - c2) >= 0; equal costs then force equal quality)."""
    low, high = sorted((one, two))
    before, after = mean_route(inputs, low), mean_route(inputs, high)
    assert inputs.cost[after.chosen] <= inputs.cost[before.chosen]
    assert after.quality[after.chosen] <= before.quality[before.chosen]


@FAST
@given(route_inputs(), lambdas)
def test_the_mean_choice_is_the_best_eligible_utility_and_heads_the_ranking(
    inputs: RouteInputs, lambda_: float
) -> None:
    scores = mean_route(inputs, lambda_)
    eligible = np.flatnonzero(inputs.eligible)
    assert inputs.eligible[scores.chosen]
    assert sorted(scores.ranking.tolist()) == eligible.tolist()  # every eligible agent, once, and no other
    assert scores.ranking[0] == scores.chosen
    ranked = scores.mean_utility[scores.ranking]
    assert np.all(np.diff(ranked) <= 0)  # best first
    expected_utility = scores.quality - cost_penalty(inputs.cost, inputs.c_ref, lambda_)
    assert np.array_equal(scores.mean_utility, expected_utility)
    assert scores.propensity == 1.0 and not scores.explored


@FAST
@given(route_inputs(), lambdas)
def test_quality_and_its_interval_are_probabilities_in_order(inputs: RouteInputs, lambda_: float) -> None:
    scores = route(inputs, lambda_, "mean", None)
    assert np.all((scores.quality >= 0) & (scores.quality <= 1))
    assert np.all(scores.ci_low <= scores.quality) and np.all(scores.quality <= scores.ci_high)
    assert np.all(scores.ci_low >= 0) and np.all(scores.ci_high <= 1)
    assert np.allclose(scores.contributions.sum(axis=1), (inputs.mean * inputs.weights).sum(axis=1))


def first_of_ties(inputs: RouteInputs, lambda_: float) -> int:
    """The tie rule written out: the highest utility; among equal ones the lowest cost; then the earliest row."""
    utility = mean_route(inputs, lambda_).mean_utility
    rows = [i for i in range(len(inputs.cost)) if inputs.eligible[i]]
    return min(rows, key=lambda i: (-utility[i], inputs.cost[i], i))


@FAST
@given(route_inputs(min_agents=2), lambdas, st.randoms(use_true_random=False))
def test_the_agents_order_matters_only_through_the_documented_tie_rule(
    inputs: RouteInputs, lambda_: float, rnd: object
) -> None:
    order = np.arange(len(inputs.cost))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    shuffled = permuted(inputs, order)
    chosen = mean_route(inputs, lambda_).chosen
    chosen_shuffled = mean_route(shuffled, lambda_).chosen
    assert chosen == first_of_ties(inputs, lambda_)
    assert chosen_shuffled == first_of_ties(shuffled, lambda_)
    utility = mean_route(inputs, lambda_).mean_utility
    tied = [
        i
        for i in range(len(order))
        if inputs.eligible[i] and utility[i] == utility[chosen] and inputs.cost[i] == inputs.cost[chosen]
    ]
    if len(tied) == 1:  # no exact tie: the same agent, wherever it sits
        assert order[chosen_shuffled] == chosen
    else:  # an exact tie (utility and cost): the earliest of the tied in the new order
        assert order[chosen_shuffled] in tied
        assert chosen_shuffled == min(int(np.flatnonzero(order == i)[0]) for i in tied)


@FAST
@given(route_inputs(min_agents=2), lambdas, st.data())
def test_making_a_passed_over_agent_ineligible_changes_nothing(
    inputs: RouteInputs, lambda_: float, data: st.DataObject
) -> None:
    """With c_ref held (the service computes it over enabled agents, never over the eligible ones)."""
    scores = mean_route(inputs, lambda_)
    others = [i for i in np.flatnonzero(inputs.eligible) if i != scores.chosen]
    assume(others)
    dropped = data.draw(st.sampled_from(others))
    eligible = inputs.eligible.copy()
    eligible[dropped] = False
    fewer = RouteInputs(**{**inputs.__dict__, "eligible": eligible})
    again = mean_route(fewer, lambda_)
    assert again.chosen == scores.chosen
    assert again.ranking.tolist() == [i for i in scores.ranking.tolist() if i != dropped]


@FAST
@given(route_inputs(), lambdas, st.integers(0, 2**32 - 1))
def test_thompson_is_reproducible_and_its_propensity_is_a_probability(
    inputs: RouteInputs, lambda_: float, seed: int
) -> None:
    first = route(inputs, lambda_, "thompson", np.random.default_rng(seed))
    again = route(inputs, lambda_, "thompson", np.random.default_rng(seed))
    assert (first.chosen, first.propensity, first.explored) == (again.chosen, again.propensity, again.explored)
    assert np.array_equal(first.utility, again.utility) and np.array_equal(first.ranking, again.ranking)
    assert inputs.eligible[first.chosen]
    assert 0 < first.propensity <= 1
    assert first.propensity * PROPENSITY_DRAWS in {0.5, *range(1, PROPENSITY_DRAWS + 1)}  # a share of the draws
    assert first.explored is (first.chosen != mean_route(inputs, lambda_).chosen)
    assert first.ranking[0] == first.chosen and sorted(first.ranking) == np.flatnonzero(inputs.eligible).tolist()
    if int(np.count_nonzero(inputs.eligible)) == 1:
        assert first.propensity == 1.0 and not first.explored


# --- the Beta-posterior helpers (handbook/posterior.py) --------------------------------------------------------------

counts = st.floats(1.0, 1e6)
gammas = st.floats(0.0, 1.0, exclude_max=True)


@FAST
@given(counts, counts, gammas)
def test_forgetting_moves_evidence_toward_the_prior_and_never_below_it(alpha: float, beta: float, gamma: float) -> None:
    aged_alpha, aged_beta = forget(alpha, beta, gamma)
    for before, after in ((alpha, aged_alpha), (beta, aged_beta)):
        assert 1.0 <= after <= before  # counts start at the prior 1 and only grow, so they shrink back toward it
    mean, aged_mean = alpha / (alpha + beta), aged_alpha / (aged_alpha + aged_beta)
    assert abs(aged_mean - 0.5) <= abs(mean - 0.5) + 1e-12  # the mean moves toward the prior's, never past it
    assert (aged_mean - 0.5) * (mean - 0.5) >= 0


@FAST
@given(st.floats(0.01, 1.0), st.floats(0.01, 1.0), gammas)
def test_forgetting_an_imported_count_below_the_prior_raises_it_toward_the_prior(
    alpha: float, beta: float, gamma: float
) -> None:
    """An imported row may hold alpha < 1 (Competence only needs > 0): forgetting moves it up, never past 1."""
    aged_alpha, aged_beta = forget(alpha, beta, gamma)
    assert alpha <= aged_alpha <= 1.0 and beta <= aged_beta <= 1.0


@FAST
@given(
    st.lists(st.floats(0.001, 1.0), min_size=1, max_size=6),
    st.floats(0.0, 1.0),
    st.lists(st.tuples(counts, counts), min_size=6, max_size=6),
)
def test_a_step_credits_one_observation_in_total(
    raw: list[float], reward: float, cells: list[tuple[float, float]]
) -> None:
    """Weights summing to 1 add one observation across the skills: exactly in real numbers; in floating point
    within a few ulps (w * r + w * (1 - r) rounds), which is why the test has a tolerance."""
    weights = [w / sum(raw) for w in raw]
    added = 0.0
    for weight, (alpha, beta) in zip(weights, cells, strict=False):
        new_alpha, new_beta = fractional_update(alpha, beta, weight, reward)
        assert new_alpha >= alpha and new_beta >= beta
        added += (new_alpha - alpha) + (new_beta - beta)
    assert math.isclose(added, 1.0, rel_tol=0, abs_tol=1e-9)


@FAST
@given(counts, counts, st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_a_higher_reward_never_gives_a_lower_posterior_mean(
    alpha: float, beta: float, weight: float, one: float, two: float
) -> None:
    low, high = sorted((one, two))
    a_low, b_low = fractional_update(alpha, beta, weight, low)
    a_high, b_high = fractional_update(alpha, beta, weight, high)
    assert a_high >= a_low and b_high <= b_low
    assert a_high / (a_high + b_high) >= a_low / (a_low + b_low) - 1e-15


@FAST
@given(st.lists(st.tuples(st.just(0.0) | st.floats(1e-12, 1.0), st.floats(0.0, 100.0)), min_size=1, max_size=20))
def test_the_weighted_running_cost_is_the_batch_weighted_mean(calls: list[tuple[float, float]]) -> None:
    """Weights from 1e-12 up (a subnormal weight loses its precision in delta * weight: a first call of $1.5 at
    weight 5e-324 reads $2.0; such a row carries ~1e-323 calls, so shrinkage makes it invisible to routing)."""
    n, mean, m2 = 0.0, 0.0, 0.0
    for weight, value in calls:
        n, mean, m2 = weighted_mean_update(n, mean, m2, weight, value)
        assert m2 >= 0
    total = sum(w for w, _ in calls)
    assert math.isclose(n, total, rel_tol=1e-12, abs_tol=1e-12)
    if total > 0:
        values = [v for w, v in calls if w > 0]
        assert min(values) - 1e-9 <= mean <= max(values) + 1e-9
        assert math.isclose(mean, sum(w * v for w, v in calls) / total, rel_tol=1e-9, abs_tol=1e-9)


# --- the cost rules (handbook/costing.py) ---------------------------------------------------------------------------


@FAST
@given(documents(), st.data())
def test_a_longer_step_never_costs_less_and_unknown_costs_never_look_cheap(
    document: HandbookDocument, data: st.DataObject
) -> None:
    """Input tokens are billed, so every agent's expected cost and c_ref only grow with the step's length; an agent
    of unknown cost is charged at least c_ref and at least every known enabled agent's cost (interface.md: "an
    agent of unknown cost is charged c_ref"); c_ref is the largest enabled typical cost."""
    arrays = document_arrays(document)
    skills = data.draw(demands(document))
    cols = np.array([arrays.skill_index[s] for s, _ in skills])
    weights = np.array([w for _, w in skills]) / sum(w for _, w in skills)
    short, long = sorted(data.draw(st.lists(st.floats(0.0, 1e5), min_size=2, max_size=2)))
    cost_short, known, ref_short = costing.step_costs(arrays, short, cols, weights)
    cost_long, known_long, ref_long = costing.step_costs(arrays, long, cols, weights)
    assert np.array_equal(known, known_long)
    assert np.all(cost_long >= cost_short) and ref_long >= ref_short >= 0
    for cost, ref in ((cost_short, ref_short), (cost_long, ref_long)):
        assert np.all(cost >= 0)
        dearest_known = max((c for c, k, on in zip(cost, known, arrays.enabled, strict=True) if k and on), default=0.0)
        assert np.all(cost[~known] >= max(ref, dearest_known))
    typical = np.where(
        np.isnan(arrays.agent_cost), costing.priced_costs(arrays, np.array([short]))[0], arrays.agent_cost
    )
    enabled_typical = typical[arrays.enabled & ~np.isnan(typical)]
    assert ref_short == (enabled_typical.max() if enabled_typical.size else 0.0)
