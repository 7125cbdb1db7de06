"""learn says where route_step will send the steps, which its validation replay does not show (learning QA)."""

from __future__ import annotations

import random

from skillorchestra.handbook.learning.deployment import collapse_note, deployment_report
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


def report(data: list[TraceTask], disabled: frozenset[str] = frozenset()) -> tuple[dict[str, float], str | None]:
    result = learn(data, PRICES, lambda_=0.1, seed=0)
    agents = [a.model_copy(update={"enabled": a.id not in disabled}) for a in result.document.agents]
    document = result.document.model_copy(update={"agents": agents})
    return deployment_report(document, result.labeller, result.val, data, PRICES, 0.1, result.metrics["kappa"])


def test_an_agent_judged_on_three_tasks_that_would_take_every_step_is_named() -> None:
    shares, note = report(tasks(lucky_on=3))
    assert shares["lucky"] > 0.6 and abs(sum(shares.values()) - 1) < 1e-9
    assert note is not None and "to lucky, judged on only 3 tasks, not the cheapest agent; the validation" in note


def test_a_disabled_agent_takes_no_step_and_is_no_warning() -> None:
    """Learning from the log keeps the live agents' enabled flags: what is stored is what the shares describe."""
    shares, note = report(tasks(lucky_on=3), disabled=frozenset({"lucky"}))
    assert "lucky" not in shares and note is None


def test_calls_going_to_the_cheapest_agent_or_spread_are_no_warning() -> None:
    shares, note = report(tasks(lucky_on=0))
    assert set(shares) <= {"cheap", "mid"} and note is None
    assert collapse_note({"a": 0.5, "b": 0.5}, {"a": 50, "b": 50, "c": 50}, "c", 50, 0.1) is None  # spread
    assert collapse_note({"a": 0.9, "b": 0.1}, {"a": 100, "b": 100}, None, 100, 0.1) is None  # no cost known
    assert "judged on only 2 tasks" in (collapse_note({"a": 0.9, "b": 0.1}, {"a": 2, "b": 100}, None, 100, 0.1) or "")
    # two agents judged on every task: one taking most calls is the trade-off the replay shows too (review)
    assert collapse_note({"dear": 0.97, "cheap": 0.03}, {"dear": 600, "cheap": 600}, "cheap", 600, 0.1) is None
    three = collapse_note({"a": 0.9, "b": 0.1}, {"a": 600, "b": 600, "c": 600}, "c", 600, 0.1)
    expected = "route_step would send 90% of the validation steps to a, not the cheapest agent"
    assert three == expected + " (a lambda above 0.1 spreads them)"


def test_one_agent_is_no_choice_to_warn_of() -> None:
    assert collapse_note({"only": 1.0}, {"only": 1}, None, 1, 0.1) is None
    # review: one agent judged, another never judged taking every step: that is a choice, and thin
    note = collapse_note({"newbie": 1.0}, {"mid": 40}, None, 40, 0.1)
    assert note is not None and "to newbie, judged on only 0 tasks" in note
