"""The router as a pure function: utility = sum_s w_s * theta - lambda * cost / c_ref, mean or Thompson."""

from __future__ import annotations

import numpy as np
import pytest

from skillorchestra.handbook.posterior import Z90, beta_mean_var
from skillorchestra.handbook.router import PROPENSITY_DRAWS, RouteInputs, nan_to_num, route


def inputs(
    alpha: list[list[float]],
    beta: list[list[float]],
    weights: list[float],
    cost: list[float] | None = None,
    c_ref: float = 0.0,
    eligible: list[bool] | None = None,
) -> RouteInputs:
    a, b = np.array(alpha, dtype=float), np.array(beta, dtype=float)
    mean, var = beta_mean_var(a, b)
    n = a.shape[0]
    return RouteInputs(
        mean=mean,
        var=var,
        alpha=a,
        beta=b,
        weights=np.array(weights, dtype=float),
        cost=np.zeros(n) if cost is None else np.array(cost, dtype=float),
        c_ref=c_ref,
        eligible=np.ones(n, dtype=bool) if eligible is None else np.array(eligible),
    )


def three_agents(eligible: list[bool] | None = None) -> RouteInputs:
    """Means A=(0.9, 0.5), B=(0.7, 0.7), C=(0.5, 0.9) on two skills weighted 0.75/0.25 -> quality 0.8, 0.7, 0.6.

    Costs A=0.01, B=0.004, C=0.001 USD with c_ref=0.01, so the cost term is lambda * (1, 0.4, 0.1).
    """
    alpha = [[9.0, 5.0], [7.0, 7.0], [5.0, 9.0]]  # alpha + beta = 10: means are alpha / 10
    beta = [[1.0, 5.0], [3.0, 3.0], [5.0, 1.0]]
    return inputs(alpha, beta, [0.75, 0.25], cost=[0.01, 0.004, 0.001], c_ref=0.01, eligible=eligible)


@pytest.mark.parametrize(
    ("lambda_", "winner", "utilities"),
    [
        (0.0, 0, (0.8, 0.7, 0.6)),  # lambda 0: quality alone
        (0.1, 0, (0.7, 0.66, 0.59)),
        (0.2, 1, (0.6, 0.62, 0.58)),  # the middle agent wins on balance
        (0.5, 2, (0.3, 0.5, 0.55)),
        (100.0, 2, (-99.2, -39.3, -9.4)),  # a big lambda picks the cheapest
    ],
)
def test_mean_picks_the_argmax_of_quality_minus_normalised_cost(
    lambda_: float, winner: int, utilities: tuple[float, float, float]
) -> None:
    scores = route(three_agents(), lambda_, "mean", None)
    assert scores.chosen == winner
    assert np.allclose(scores.quality, [0.8, 0.7, 0.6])
    assert np.allclose(scores.mean_utility, utilities)
    assert np.allclose(scores.utility, utilities)
    assert list(scores.ranking) == list(np.argsort(-np.array(utilities), kind="stable"))
    assert scores.propensity == 1.0 and scores.explored is False


def test_contributions_and_interval_are_per_skill_and_weighted() -> None:
    data = three_agents()
    scores = route(data, 0.1, "mean", None)
    assert np.allclose(scores.contributions, data.mean * np.array([0.75, 0.25]))
    assert np.allclose(scores.contributions.sum(axis=1), scores.quality)
    half = Z90 * np.sqrt(data.var) @ np.array([0.75, 0.25])  # the skills' sds add: their uncertainty is shared
    assert np.allclose(scores.ci_low, scores.quality - half)
    assert np.allclose(scores.ci_high, scores.quality + half)


def test_a_steps_interval_is_no_narrower_than_its_skills_when_they_share_a_prior() -> None:
    """QA: an agent never observed showed [0.0, 0.90] on each skill in consult_handbook but [0.19, 0.66] for a step
    of four such skills in route_step, as if four independent draws had narrowed it."""
    prior_mean, prior_var = 0.5, 0.02  # within [0, 1] after the half width: nothing clipped
    shared = RouteInputs(
        mean=np.full((1, 4), prior_mean),
        var=np.full((1, 4), prior_var),
        alpha=np.ones((1, 4)),
        beta=np.ones((1, 4)),
        weights=np.full(4, 0.25),
        cost=np.zeros(1),
        c_ref=0.0,
        eligible=np.ones(1, dtype=bool),
    )
    scores = route(shared, 0.0, "mean", None)
    one_skill = Z90 * np.sqrt(prior_var)
    assert np.allclose([scores.ci_low[0], scores.ci_high[0]], [prior_mean - one_skill, prior_mean + one_skill])


def test_zero_c_ref_disables_the_cost_term() -> None:
    data = three_agents()
    free = RouteInputs(**{**data.__dict__, "c_ref": 0.0})
    scores = route(free, 50.0, "mean", None)
    assert scores.chosen == 0 and np.allclose(scores.mean_utility, scores.quality)


def test_an_ineligible_agent_is_never_chosen_or_ranked() -> None:
    data = three_agents(eligible=[False, True, True])
    scores = route(data, 0.0, "mean", None)
    assert scores.chosen == 1
    assert list(scores.ranking) == [1, 2]
    assert scores.utility[0] == -np.inf
    for seed in range(50):
        sampled = route(data, 0.0, "thompson", np.random.default_rng(seed))
        assert sampled.chosen != 0 and 0 not in sampled.ranking


def test_an_unusable_cost_ranks_its_agent_last_instead_of_first() -> None:
    """inf / inf is NaN, and np.argmax picks a NaN first: an infinite cost once won every route."""
    data = inputs([[9.0], [5.0]], [[1.0], [5.0]], [1.0], cost=[np.inf, 0.001], c_ref=np.inf)
    scores = route(data, 0.1, "mean", None)
    assert scores.chosen == 1 and list(scores.ranking) == [1, 0]
    for seed in range(20):
        assert route(data, 0.1, "thompson", np.random.default_rng(seed)).chosen == 1


def test_no_eligible_agent_is_an_error() -> None:
    with pytest.raises(ValueError, match="eligible"):
        route(three_agents(eligible=[False, False, False]), 0.1, "mean", None)


def test_thompson_is_reproducible_with_a_seed() -> None:
    data = inputs([[6.0], [5.0], [4.0]], [[4.0], [5.0], [6.0]], [1.0])
    first = [route(data, 0.0, "thompson", np.random.default_rng(seed)) for seed in range(20)]
    again = [route(data, 0.0, "thompson", np.random.default_rng(seed)) for seed in range(20)]
    assert [(s.chosen, s.propensity) for s in first] == [(s.chosen, s.propensity) for s in again]
    assert all(np.array_equal(a.utility, b.utility) for a, b in zip(first, again, strict=True))
    assert len({s.chosen for s in first}) > 1  # the draws do differ between seeds


def test_thompson_propensity_of_a_dominant_agent_is_one() -> None:
    data = inputs([[300.0], [1.0]], [[1.0], [300.0]], [1.0])
    for seed in range(5):
        scores = route(data, 0.0, "thompson", np.random.default_rng(seed))
        assert scores.chosen == 0 and scores.propensity == 1.0 and scores.explored is False


def test_thompson_propensity_of_two_identical_agents_is_a_half() -> None:
    data = inputs([[5.0], [5.0]], [[5.0], [5.0]], [1.0])
    chosen = []
    for seed in range(40):
        scores = route(data, 0.0, "thompson", np.random.default_rng(seed))
        # 256 draws: standard error sqrt(0.25/256) = 0.031; allow about 3.5 of them
        assert abs(scores.propensity - 0.5) < 0.11, (seed, scores.propensity)
        # the greedy choice among equal means is the first agent: choosing the second is exploring
        assert scores.explored is (scores.chosen == 1)
        chosen.append(scores.chosen)
    assert 8 < sum(chosen) < 32


def test_thompson_propensity_estimates_the_true_choice_probability() -> None:
    data = inputs([[6.0, 2.0], [5.0, 5.0]], [[4.0, 2.0], [5.0, 3.0]], [0.5, 0.5])
    draws = np.random.default_rng(99).beta(data.alpha, data.beta, size=(40_000, 2, 2)) @ data.weights
    p_first = float(np.mean(draws[:, 0] > draws[:, 1]))
    for seed in range(10):
        scores = route(data, 0.0, "thompson", np.random.default_rng(seed))
        truth = p_first if scores.chosen == 0 else 1.0 - p_first
        assert abs(scores.propensity - truth) < 4 * np.sqrt(truth * (1 - truth) / PROPENSITY_DRAWS) + 0.01


def test_thompson_explored_flag_marks_choices_other_than_the_greedy_one() -> None:
    data = inputs([[7.0], [6.0], [5.0]], [[5.0], [6.0], [7.0]], [1.0], cost=[0.0, 0.0, 0.0], c_ref=1.0)
    greedy = route(data, 0.0, "mean", None).chosen
    flags = []
    for seed in range(60):
        scores = route(data, 0.0, "thompson", np.random.default_rng(seed))
        assert scores.explored is (scores.chosen != greedy)
        assert scores.utility[scores.chosen] == scores.utility.max()
        assert scores.ranking[0] == scores.chosen
        flags.append(scores.explored)
    assert any(flags) and not all(flags)


def test_thompson_pays_the_cost_term_too() -> None:
    data = inputs([[5.0], [5.0]], [[5.0], [5.0]], [1.0], cost=[1.0, 0.0], c_ref=1.0)
    for seed in range(30):
        assert route(data, 10.0, "thompson", np.random.default_rng(seed)).chosen == 1


def test_thompson_propensity_of_a_rare_choice_is_not_biased_up_by_the_choosing_draw() -> None:
    """Calibration QA: the share of 257 draws, the choosing one among them, read (1 + X) / 257, which overstates a
    choice of probability p by (1 - p) / 257. Over the seeds where the weaker agent is chosen, the propensities
    average to its true probability (the fresh draws do not depend on the choosing one)."""
    data = inputs([[20.0], [14.0]], [[10.0], [16.0]], [1.0])
    draws = np.random.default_rng(7).beta(data.alpha, data.beta, size=(400_000, 2, 1)) @ data.weights
    truth = float(np.mean(draws[:, 1] > draws[:, 0]))
    reported = [
        scores.propensity
        for seed in range(8_000)
        if (scores := route(data, 0.0, "thompson", np.random.default_rng(seed))).chosen == 1
    ]
    standard_error = np.sqrt(truth * (1 - truth) / PROPENSITY_DRAWS / len(reported))
    assert len(reported) > 100 and abs(np.mean(reported) - truth) < 2.5 * standard_error, (truth, np.mean(reported))


def test_thompson_propensity_of_the_chosen_agent_is_never_zero() -> None:
    data = inputs([[20.0], [12.0]], [[10.0], [18.0]], [1.0])  # the weaker agent wins about 1% of draws
    scores = route(data, 0.0, "thompson", np.random.default_rng(1314))  # a seed where the weaker agent wins
    assert scores.chosen == 1
    assert scores.propensity > 0.0


def test_equal_utilities_go_to_the_cheaper_agent() -> None:
    """QA: at lambda 0 a fresh pool (equal posteriors) sent every step to the alphabetically first agent, 600x
    dearer than another of the same expected quality; a tie now goes to the cheaper one, in the ranking too."""
    fresh = inputs([[1.0]] * 3, [[1.0]] * 3, [1.0], cost=[0.6, 0.001, 0.6], c_ref=0.6)
    scores = route(fresh, 0.0, "mean", None)
    assert scores.chosen == 1 and list(scores.ranking) == [1, 0, 2]
    without_cheap = inputs(
        [[1.0]] * 3, [[1.0]] * 3, [1.0], cost=[0.6, 0.001, 0.6], c_ref=0.6, eligible=[True, False, True]
    )
    only_dear = route(without_cheap, 0.0, "mean", None)
    assert only_dear.chosen == 0 and list(only_dear.ranking) == [0, 2]  # equal costs: the earlier agent


def test_thompson_ties_go_to_the_cheaper_agent_as_the_ranking_says() -> None:
    """Review: draws clipped to 1.0 by a length shift tied; Thompson chose the dearer agent, ranked the cheaper first
    and reported an exploration of propensity 1."""
    tied = inputs([[9.0], [9.0]], [[1.0], [1.0]], [1.0], cost=[0.6, 0.001], c_ref=0.6)
    long_step = RouteInputs(**{**tied.__dict__, "shift": np.array([0.5, 0.5])})  # both draws clip to 1.0
    scores = route(long_step, 0.0, "thompson", np.random.default_rng(0))
    assert scores.chosen == 1 and list(scores.ranking) == [1, 0]
    assert not scores.explored and scores.propensity == 1.0


@pytest.mark.parametrize("nan", [0.0, np.inf])
def test_the_routers_nan_to_num_is_numpys_bit_for_bit(nan: float) -> None:
    """router.nan_to_num skips np.nan_to_num's per-call overhead (four to six calls a route): same bits."""
    values = np.array([[np.nan, np.inf, -np.inf, -0.0, 0.0, 1e308, -1e-320, 3.5]])
    mine, numpys = nan_to_num(values, nan=nan), np.nan_to_num(values, nan=nan)
    assert mine.dtype == numpys.dtype and mine.tobytes() == numpys.tobytes()
