"""Router metrics on hand-made arrays whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skillorchestra.handbook import metrics as m

NAN = float("nan")


def test_accuracy_skips_unjudged_and_avg_cost() -> None:
    assert m.accuracy([1.0, 0.0, 1.0, NAN]) == pytest.approx(2 / 3)
    assert math.isnan(m.accuracy([NAN]))
    assert m.avg_cost([0.1, 0.3]) == pytest.approx(0.2)


def test_agent_share_sums_to_one_and_lists_unused_agents() -> None:
    shares = m.agent_share(["a", "a", "b", "c"], agents=["a", "b", "c", "d"])
    assert shares == {"a": 0.5, "b": 0.25, "c": 0.25, "d": 0.0}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_entropy_bits() -> None:
    assert m.entropy_bits({a: 0.25 for a in "abcd"}) == pytest.approx(2.0)
    assert m.entropy_bits({a: 1 / 3 for a in "abc"}) == pytest.approx(math.log2(3))
    assert m.entropy_bits({"a": 1.0, "b": 0.0}) == 0.0


def test_expensive_share_counts_agents_tied_at_the_top_price() -> None:
    choices = ["a", "b", "b", "c"]
    assert m.expensive_share(choices, {"a": 1.0, "b": 3.0, "c": 2.0}) == 0.5
    assert m.expensive_share(choices, {"a": 1.0, "b": 3.0, "c": 3.0}) == 0.75
    assert m.expensive_share([], {"a": 1.0}) == 0.0


def test_oracle_gap_closed_and_zero_gap() -> None:
    assert m.oracle_gap_closed(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert m.oracle_gap_closed(0.5, 0.6, 0.8) == pytest.approx(-0.5)
    assert m.oracle_gap_closed(0.6, 0.6, 0.6) is None


SCORES = np.array(
    [
        [1.0, 1.0, 0.0],  # two succeed: the cheaper (0)
        [0.0, 0.6, 1.0],  # 1 and 2 succeed: the cheaper (1), though 2 scores higher
        [0.0, 0.0, 0.0],  # nobody succeeds, all tie: the cheapest (0)
        [0.2, 0.4, 0.4],  # nobody succeeds: the cheapest of the best-scoring (1)
        [NAN, 1.0, 1.0],  # agent 0 not judged: never chosen
    ]
)


def test_oracle_choice_and_accuracy() -> None:
    assert m.oracle_choice(SCORES, np.array([1.0, 2.0, 3.0])).tolist() == [0, 1, 0, 1, 1]
    per_task = np.tile([1.0, 2.0, 3.0], (5, 1))
    per_task[0] = [5.0, 2.0, 3.0]
    assert m.oracle_choice(SCORES, per_task).tolist() == [1, 1, 0, 1, 1]
    assert m.oracle_accuracy(SCORES) == pytest.approx((1 + 1 + 0 + 0.4 + 1) / 5)


def test_best_single() -> None:
    index, mean = m.best_single(SCORES)
    assert index == 1 and mean == pytest.approx(3.0 / 5)


def test_strong_fraction_curve_moves_tied_tasks_together() -> None:
    weak = np.array([1.0, 0.0, 1.0, 0.0])
    strong = np.array([1.0, 1.0, 0.0, 1.0])
    x, acc = m.strong_fraction_curve(np.array([0.1, 0.9, 0.5, 0.9]), weak, strong)
    assert x.tolist() == [0.0, 0.5, 0.75, 1.0]
    assert acc.tolist() == [0.5, 1.0, 0.75, 0.75]


def test_straight_line_apgr_and_cpt() -> None:
    assert m.apgr(np.array([]), np.array([]), 0.6, 0.8) == pytest.approx(0.5)
    assert m.cpt(np.array([]), np.array([]), 0.6, 0.8) == pytest.approx(0.5)
    assert m.cpt(np.array([0.5]), np.array([0.7]), 0.6, 0.8) == pytest.approx(0.5)
    assert m.pgr(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert m.pgr(0.7, 0.6, 0.6) is None and m.apgr(np.array([0.5]), np.array([0.6]), 0.6, 0.6) is None


def test_constant_router_is_the_straight_line() -> None:
    weak, strong = np.array([1.0, 0.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0, 0.0])
    x, acc = m.strong_fraction_curve(np.zeros(4), weak, strong)
    assert x.tolist() == [0.0, 1.0]
    assert m.apgr(x, acc, 0.5, 0.75) == pytest.approx(0.5)


def test_perfect_router() -> None:
    """Weak right on half, strong right on all: sending exactly the weak failures to strong recovers all."""
    weak = np.array([1.0] * 5 + [0.0] * 5)
    strong = np.ones(10)
    x, acc = m.strong_fraction_curve(1.0 - weak, weak, strong)
    assert x.tolist() == [0.0, 0.5, 1.0] and acc.tolist() == [0.5, 1.0, 1.0]
    # PGR rises 0 -> 1 over [0, 0.5] (area 0.25), then stays 1 (area 0.5).
    assert m.apgr(x, acc, 0.5, 1.0) == pytest.approx(0.75)
    assert m.cpt(x, acc, 0.5, 1.0) == pytest.approx(0.25)
    assert m.cpt(x, acc, 0.5, 1.0, target=1.0) == pytest.approx(0.5)


def test_random_router_apgr_is_about_half() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    weak = (rng.random(n) < 0.6).astype(float)
    strong = (rng.random(n) < 0.85).astype(float)
    x, acc = m.strong_fraction_curve(rng.random(n), weak, strong)
    result = m.apgr(x, acc, weak.mean(), strong.mean())
    assert result == pytest.approx(0.5, abs=0.05)
    assert m.cpt(x, acc, weak.mean(), strong.mean()) == pytest.approx(0.5, abs=0.08)


def test_informed_router_beats_random() -> None:
    """A noisy but informative signal (strong right, weak wrong) must give APGR well above 0.5."""
    rng = np.random.default_rng(11)
    n = 2000
    weak = (rng.random(n) < 0.6).astype(float)
    strong = (rng.random(n) < 0.85).astype(float)
    signal = (strong - weak) + rng.normal(0.0, 0.5, n)
    x, acc = m.strong_fraction_curve(signal, weak, strong)
    assert m.apgr(x, acc, weak.mean(), strong.mean()) > 0.7
