"""The skill-aware router: a pure function of arrays.

utility(agent) = sum_s w_s * theta(agent, s) [+ the step's length shift] - lambda * expected_cost(agent) / c_ref

`mean` scores the posterior means; `thompson` scores one draw from each posterior and estimates the chosen
agent's propensity (the probability that a fresh draw picks it) from a fixed number of further draws, which
is what off-policy evaluation of a new handbook needs. Storage, MCP and litellm stay outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from skillorchestra.handbook.posterior import Z90

Strategy = Literal["mean", "thompson"]
PROPENSITY_DRAWS = 256


@dataclass(frozen=True)
class RouteInputs:
    """Everything the scoring needs, already restricted to the step's demanded columns."""

    mean: np.ndarray  # (A, D) posterior means of the demanded columns
    var: np.ndarray  # (A, D)
    alpha: np.ndarray  # (A, D)
    beta: np.ndarray  # (A, D)
    weights: np.ndarray  # (D,) summing to 1
    cost: np.ndarray  # (A,) expected cost per call in USD (unknown already charged c_ref)
    c_ref: float  # the reference cost that makes lambda dimensionless (0 disables the cost term)
    eligible: np.ndarray  # (A,) bool
    shift: np.ndarray | None = None  # (A,) the learned length effect for this step (handbook/length.py), or none
    ci_scale: np.ndarray | None = None  # (A,) ci90 half-width multiplier (handbook/ci_scale.py): the interval only


def shifted(quality: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    """Competence moved by the step's length shift, still a probability."""
    return quality if shift is None else np.clip(quality + shift, 0.0, 1.0)


@dataclass(frozen=True)
class RouteScores:
    chosen: int
    utility: np.ndarray  # (A,) the scores used to choose (sampled for thompson)
    mean_utility: np.ndarray  # (A,) utility of the posterior means
    quality: np.ndarray  # (A,) weighted posterior mean competence
    ci_low: np.ndarray
    ci_high: np.ndarray
    contributions: np.ndarray  # (A, D) w_s * theta(agent, s)
    ranking: np.ndarray  # eligible agents, best first
    explored: bool
    propensity: float


def cost_penalty(cost: np.ndarray, c_ref: float, lambda_: float) -> np.ndarray:
    if c_ref <= 0:
        return np.zeros_like(cost)
    with np.errstate(invalid="ignore"):  # inf / inf is NaN, which route() ranks last
        return lambda_ * cost / c_ref


_LARGEST = float(np.finfo(np.float64).max)


def nan_to_num(values: np.ndarray, nan: float = 0.0) -> np.ndarray:
    """np.nan_to_num(values, nan=nan) of a float array, bit for bit (NaN -> `nan`, +-inf -> +-the largest float),
    without its Python overhead: ~7 us a call, four to six of them per route (profiled: ~7% of Handbook.route)."""
    return np.where(np.isnan(values), nan, np.minimum(np.maximum(values, -_LARGEST), _LARGEST))


def _nan_last(utility: np.ndarray) -> np.ndarray:
    """NaN utilities (an unusable cost, e.g. inf / inf) rank below every number: np.argmax would pick them first."""
    return np.where(np.isnan(utility), -np.inf, utility)


def best_first(utility: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indexes by utility, highest first; equal utilities go to the cheaper agent, then the earlier one (QA: at
    lambda 0 a fresh pool sent every step to the alphabetically first agent, 600x dearer for the same quality)."""
    return np.lexsort((nan_to_num(cost, nan=np.inf), -utility))


def argbest(utility: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The first of best_first along the last axis, for many rows at once (the replay, the eval's scorer and
    episodes, Thompson's draws): the highest utility, ties to the cheaper agent, then the earlier one. NaN
    utilities lose; `cost` broadcasts against `utility`."""
    utility = _nan_last(utility)
    tied = utility == utility.max(axis=-1, keepdims=True)
    costs = np.broadcast_to(nan_to_num(cost, nan=np.inf), utility.shape)
    cheapest = np.argmin(np.where(tied, costs, np.inf), axis=-1)
    cheapest_tied = np.take_along_axis(tied, np.expand_dims(cheapest, -1), axis=-1).squeeze(-1)
    return np.where(cheapest_tied, cheapest, np.argmax(tied, axis=-1))  # every tied cost unknown: the earlier


def route(inputs: RouteInputs, lambda_: float, strategy: Strategy, rng: np.random.Generator | None) -> RouteScores:
    """Choose among eligible agents; the caller guarantees at least one is eligible."""
    eligible = np.flatnonzero(inputs.eligible)
    if eligible.size == 0:
        raise ValueError("route() needs at least one eligible agent")
    w = inputs.weights
    contributions = inputs.mean * w
    quality = shifted(contributions.sum(axis=1), inputs.shift)
    # sd of sum_s w_s * theta_s taken as if the skills' posteriors moved together (sum_s w_s * sd_s), the widest
    # it can be: they share their pooled evidence (an agent never observed has the same prior on every skill), so
    # summing variances as if independent showed such an agent a step interval half as wide as each skill's (QA)
    half = Z90 * (np.sqrt(np.maximum(inputs.var, 0.0)) @ w)
    if inputs.ci_scale is not None:  # a young handbook's learned overconfidence: wider, never moved
        half = half * inputs.ci_scale
    penalty = cost_penalty(inputs.cost, inputs.c_ref, lambda_)
    mean_utility = _nan_last(quality - penalty)
    masked_mean = np.where(inputs.eligible, mean_utility, -np.inf)
    by_mean = eligible[best_first(mean_utility[eligible], inputs.cost[eligible])]  # the mean strategy's ranking
    greedy = int(by_mean[0])

    if strategy == "thompson":
        if rng is None:
            rng = np.random.default_rng()
        a = inputs.alpha[eligible]
        b = inputs.beta[eligible]
        shift = None if inputs.shift is None else inputs.shift[eligible]
        sampled = shifted(rng.beta(a, b, size=(PROPENSITY_DRAWS + 1, *a.shape)) @ w, shift)
        draws = _nan_last(sampled - penalty[eligible])
        winners = argbest(draws, inputs.cost[eligible])  # ties (draws clipped by a length shift): as best_first
        chosen_local = int(winners[0])
        chosen = int(eligible[chosen_local])
        # the share of the fresh draws the chosen agent wins: counting the choosing draw too biased a rare choice up
        # by (1 - p) / 257 (0.0057 reported for 0.0016: calibration QA), shrinking its off-policy weight; an agent
        # winning none of them is reported at half a draw, never 0
        propensity = max(int(np.count_nonzero(winners[1:] == chosen_local)), 0.5) / PROPENSITY_DRAWS
        utility = np.full(quality.shape, -np.inf)
        utility[eligible] = draws[0]
        order = eligible[best_first(draws[0], inputs.cost[eligible])]
        explored = chosen != greedy
    else:
        chosen, propensity, explored = greedy, 1.0, False
        utility = masked_mean
        order = by_mean

    return RouteScores(
        chosen=chosen,
        utility=utility,
        mean_utility=mean_utility,
        quality=quality,
        ci_low=np.clip(quality - half, 0.0, 1.0),
        ci_high=np.clip(quality + half, 0.0, 1.0),
        contributions=contributions,
        ranking=order,
        explored=explored,
        propensity=propensity,
    )
