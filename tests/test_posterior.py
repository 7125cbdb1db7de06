"""Beta-posterior arithmetic: the rules every live update, replay and learner share."""

from __future__ import annotations

import numpy as np
import pytest

from skillorchestra.handbook.posterior import (
    Z90,
    beta_mean_var,
    forget,
    fractional_update,
    normal_ci90,
    weighted_mean_update,
)


def test_fractional_update_credits_by_weight_and_graded_reward() -> None:
    # dyadic numbers, so equality is exact
    assert fractional_update(1.0, 1.0, 0.75, 0.25) == (1.1875, 1.5625)
    assert fractional_update(2.0, 3.0, 1.0, 1.0) == (3.0, 3.0)
    assert fractional_update(2.0, 3.0, 1.0, 0.0) == (2.0, 4.0)
    assert fractional_update(2.0, 3.0, 0.0, 1.0) == (2.0, 3.0)  # a skill the step did not need is untouched


def test_fractional_updates_over_a_step_add_exactly_one_observation() -> None:
    weights = [0.5, 0.25, 0.25]
    total = 0.0
    for w in weights:
        a, b = fractional_update(1.0, 1.0, w, 0.625)
        total += (a - 1.0) + (b - 1.0)
    assert total == 1.0


def test_forget_is_off_for_none_and_gamma_one() -> None:
    assert forget(7.0, 3.0, None) == (7.0, 3.0)
    assert forget(7.0, 3.0, 1.0) == (7.0, 3.0)


def test_forget_shrinks_evidence_toward_the_uniform_prior() -> None:
    assert forget(5.0, 3.0, 0.5) == (3.0, 2.0)
    assert forget(1.0, 1.0, 0.5) == (1.0, 1.0)  # the prior is a fixed point
    assert forget(5.0, 3.0, 0.0) == (1.0, 1.0)  # gamma 0 forgets everything


def test_forgetting_bounds_the_effective_sample_size() -> None:
    gamma = 0.9
    alpha, beta = 1.0, 1.0
    for _ in range(500):
        alpha, beta = fractional_update(*forget(alpha, beta, gamma), 1.0, 1.0)
    # alpha - 1 converges to 1 / (1 - gamma) = 10 successes; beta stays at the prior
    assert alpha - 1.0 == pytest.approx(1.0 / (1.0 - gamma), rel=1e-9)
    assert beta == 1.0


def test_beta_mean_var_matches_the_closed_form_and_sampling() -> None:
    alpha = np.array([1.0, 2.0, 30.0, 0.5])
    beta = np.array([1.0, 8.0, 2.0, 0.5])
    mean, var = beta_mean_var(alpha, beta)
    assert mean[0] == 0.5 and var[0] == pytest.approx(1.0 / 12.0)
    assert mean[1] == pytest.approx(0.2) and var[1] == pytest.approx(16.0 / (100.0 * 11.0))
    draws = np.random.default_rng(0).beta(alpha, beta, size=(200_000, 4))
    assert np.allclose(draws.mean(axis=0), mean, atol=3e-3)
    assert np.allclose(draws.var(axis=0), var, rtol=3e-2)


def test_normal_ci90_is_symmetric_and_clipped_to_the_unit_interval() -> None:
    mean = np.array([0.5, 0.99, 0.01])
    var = np.array([0.01, 0.01, 0.01])
    low, high = normal_ci90(mean, var)
    assert low[0] == pytest.approx(0.5 - Z90 * 0.1) and high[0] == pytest.approx(0.5 + Z90 * 0.1)
    assert high[1] == 1.0 and low[2] == 0.0
    assert np.all(low <= mean) and np.all(mean <= high)
    zero_low, zero_high = normal_ci90(np.array([0.3]), np.array([-1e-18]))  # rounding noise is not an error
    assert zero_low[0] == zero_high[0] == 0.3


def test_weighted_mean_update_matches_the_batch_weighted_mean_and_variance() -> None:
    rng = np.random.default_rng(3)
    values = rng.uniform(0.0, 0.02, size=40)
    weights = rng.uniform(0.1, 1.0, size=40)
    n, mean, m2 = 0.0, 0.0, 0.0
    for w, v in zip(weights, values, strict=True):
        n, mean, m2 = weighted_mean_update(n, mean, m2, float(w), float(v))
    expected_mean = float(np.average(values, weights=weights))
    assert n == pytest.approx(weights.sum())
    assert mean == pytest.approx(expected_mean, rel=1e-12)
    assert m2 == pytest.approx(float(np.sum(weights * (values - expected_mean) ** 2)), rel=1e-9)


def test_weighted_mean_update_ignores_a_zero_total_weight() -> None:
    assert weighted_mean_update(0.0, 0.0, 0.0, 0.0, 5.0) == (0.0, 0.0, 0.0)
    assert weighted_mean_update(2.0, 1.0, 0.5, 0.0, 9.0) == (2.0, 1.0, 0.5)
