"""Beta-posterior arithmetic shared by online updates, replay and learning.

One function per rule, so that the live update, `handbook rebuild` and the learner apply exactly the same
floating-point operations in the same order (rebuild equality depends on it).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

Z90 = 1.6448536269514722  # two-sided 90% normal quantile


def forget(alpha: float, beta: float, gamma: float | None) -> tuple[float, float]:
    """Exponential forgetting toward the Beta(1, 1) prior: the effective sample size stays near 1/(1-gamma)."""
    if gamma is None or gamma >= 1.0:
        return alpha, beta
    return 1.0 + gamma * (alpha - 1.0), 1.0 + gamma * (beta - 1.0)


Evidence = TypeVar("Evidence", float, np.ndarray)  # one cell, or the learner's whole (skill, agent) matrix at once


def fractional_update(alpha: Evidence, beta: Evidence, weight: Evidence, reward: Evidence) -> tuple[Evidence, Evidence]:
    """Credit a step's outcome to one skill in proportion to how much the step needed it."""
    return alpha + weight * reward, beta + weight * (1.0 - reward)


def beta_mean_var(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = alpha + beta
    mean = alpha / total
    var = alpha * beta / (total * total * (total + 1.0))
    return mean, var


def normal_ci90(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 90% interval by normal approximation, clipped to [0, 1]."""
    half = Z90 * np.sqrt(np.maximum(var, 0.0))
    return np.clip(mean - half, 0.0, 1.0), np.clip(mean + half, 0.0, 1.0)


def weighted_mean_update(n: float, mean: float, m2: float, weight: float, value: float) -> tuple[float, float, float]:
    """West's weighted incremental mean and sum of squares (for cost per agent and skill)."""
    new_n = n + weight
    if new_n <= 0.0:
        return n, mean, m2
    delta = value - mean
    new_mean = mean + delta * weight / new_n
    new_m2 = m2 + weight * delta * (value - new_mean)
    return new_n, new_mean, max(new_m2, 0.0)
