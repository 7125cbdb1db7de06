"""learn says where route_step will send the steps, which its validation replay does not show (learning QA)."""

from __future__ import annotations

import random

from skillorchestra.handbook.learning.deployment import collapse_note
from skillorchestra.handbook.learning.pipeline import learn
from skillorchestra.handbook.traces import AgentOutcome, AgentPrice, TraceTask

PRICES = {
    "cheap": AgentPrice(input_per_mtok=0.1, output_per_mtok=0.1),
    "mid": AgentPrice(input_per_mtok=1.0, output_per_mtok=1.0),
    "lucky": AgentPrice(input_per_mtok=50.0, output_per_mtok=150.0),
}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def tasks(lucky_on: int) -> list[TraceTask]:
    """200 tasks both cheap and mid pass about 60% of (at random); `lucky_on` of them also judged for lucky, who
    passed each."""
    rng = random.Random(0)
    out = []
    for i in range(200):
        outcomes = {a: AgentOutcome(score=float(rng.random() < 0.6)) for a in ("cheap", "mid")}
        if i < lucky_on:
            outcomes["lucky"] = AgentOutcome(score=1.0)
        query = " ".join(rng.sample(WORDS, 5)) + f" question {i}"
        out.append(TraceTask(id=f"t{i}", query=query, outcomes=outcomes))
    return out


def test_an_agent_judged_on_three_tasks_that_would_take_every_step_is_named() -> None:
    result = learn(tasks(lucky_on=3), PRICES, lambda_=0.1, seed=0)
    shares = result.metrics["deployed_share"]
    assert shares["lucky"] > 0.6 and abs(sum(shares.values()) - 1) < 1e-9
    note = result.metrics["collapse_note"]
    assert note is not None and "to lucky, judged on only 3 tasks, not the cheapest agent" in note


def test_calls_going_to_the_cheapest_agent_or_spread_are_no_warning() -> None:
    result = learn(tasks(lucky_on=0), PRICES, lambda_=0.1, seed=0)
    assert set(result.metrics["deployed_share"]) <= {"cheap", "mid"} and result.metrics["collapse_note"] is None
    assert collapse_note({"a": 0.5, "b": 0.5}, {"a": 1, "b": 1}, "c") is None  # spread
    assert collapse_note({"a": 0.9, "b": 0.1}, {"a": 100}, None) is None  # no cost known, evidence enough
    assert "judged on only 2 tasks" in (collapse_note({"a": 0.9, "b": 0.1}, {"a": 2}, None) or "")
