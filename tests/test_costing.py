"""The expected cost of a call grows with the step's prompt: arithmetic of handbook/costing.py and its effect on a
real routing decision through the service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skillorchestra.handbook import costing
from skillorchestra.handbook.arrays import build_arrays
from skillorchestra.handbook.models import Agent, Competence, CostStats, HandbookDocument, Mode, Skill, SkillDemand
from skillorchestra.handbook.service import Handbook, HandbookSettings, RouteRequest
from skillorchestra.handbook.store import HandbookStore

MODES = [Mode(id="general")]
SKILLS = [Skill(id="summarise", mode="general", description="summarise a document")]


def arrays_for(agents: list[Agent], costs: list[CostStats]):
    return build_arrays(MODES, SKILLS, agents, [], costs)


def cost_of(arrays, text: str) -> np.ndarray:
    column = np.array([[arrays.column_of_skill("summarise")]])
    return costing.expected_costs(arrays, costing.prompt_tokens([text]), column, np.ones((1, 1)))[0]


def test_a_longer_prompt_costs_its_extra_input_tokens_on_top_of_the_recorded_mean() -> None:
    agent = Agent(id="big", input_per_mtok=10.0, output_per_mtok=30.0)
    record = CostStats(
        agent_id="big", skill_id="summarise", n=1000.0, mean_cost_usd=0.01, mean_step_tokens=200.0, n_step_tokens=1000.0
    )
    arrays = arrays_for([agent], [record])
    usual = cost_of(arrays, "x" * 800)[0]  # 200 tokens: exactly the recorded mean prompt
    long = cost_of(arrays, "x" * 40_800)[0]  # 10,200 tokens: 10,000 more input tokens at $10 per million
    assert usual == pytest.approx(0.01, rel=1e-3)  # the per-skill mean is shrunk by one pseudo-call only
    assert long - usual == pytest.approx(10_000 * 10.0 / 1e6)


def test_a_short_prompt_never_makes_a_call_cheaper_than_a_tenth_of_its_recorded_mean() -> None:
    agent = Agent(id="big", input_per_mtok=100.0, output_per_mtok=1.0)
    record = CostStats(
        agent_id="big", skill_id="summarise", n=50.0, mean_cost_usd=0.1, mean_step_tokens=1000.0, n_step_tokens=50.0
    )
    arrays = arrays_for([agent], [record])
    assert cost_of(arrays, "hi")[0] == pytest.approx(0.1 * costing.MIN_SHARE_OF_RECORDED, rel=0.05)


def test_without_recorded_prompt_tokens_or_prices_the_recorded_mean_stands() -> None:
    no_tokens = Agent(id="a", input_per_mtok=10.0, output_per_mtok=10.0)
    no_prices = Agent(id="b")
    costs = [
        CostStats(agent_id="a", skill_id="summarise", n=100.0, mean_cost_usd=0.02),  # tokens never recorded
        CostStats(
            agent_id="b", skill_id="summarise", n=100.0, mean_cost_usd=0.03, mean_step_tokens=50.0, n_step_tokens=100.0
        ),
    ]
    arrays = arrays_for([no_tokens, no_prices], costs)
    short, long = cost_of(arrays, "x" * 40), cost_of(arrays, "x" * 40_000)
    assert np.allclose(short, long)
    assert short == pytest.approx([0.02, 0.03], rel=0.01)


def test_without_records_the_price_of_the_text_and_256_completion_tokens_else_unknown() -> None:
    arrays = arrays_for([Agent(id="priced", input_per_mtok=2.0, output_per_mtok=4.0), Agent(id="dark")], [])
    cost = dict(zip(arrays.agent_ids, cost_of(arrays, "x" * 4000), strict=True))  # 1000 prompt tokens
    assert cost["priced"] == pytest.approx((1000 * 2.0 + 256 * 4.0) / 1e6)
    assert np.isnan(cost["dark"])


def test_reference_cost_is_the_dearest_typical_call_over_enabled_agents() -> None:
    agents = [
        Agent(id="a", input_per_mtok=1.0, output_per_mtok=1.0),
        Agent(id="b", input_per_mtok=50.0, output_per_mtok=50.0, enabled=False),
        Agent(id="c"),
    ]
    arrays = arrays_for(agents, [CostStats(agent_id="c", skill_id="summarise", n=3.0, mean_cost_usd=0.004)])
    refs = costing.reference_costs(arrays, costing.prompt_tokens(["x" * 400]))
    assert refs[0] == pytest.approx(max((100 + 256) * 1.0 / 1e6, 0.004))


def test_a_long_step_goes_to_the_cheap_agent_that_a_short_one_would_not(tmp_path: Path) -> None:
    """Same skill, same competence, same recorded mean cost: only the length of the text changes the choice."""
    agents = [
        Agent(id="large", input_per_mtok=15.0, output_per_mtok=15.0),
        Agent(id="small", input_per_mtok=0.5, output_per_mtok=0.5),
    ]
    document = HandbookDocument(
        modes=MODES,
        skills=SKILLS,
        agents=agents,
        competence=[
            Competence(agent_id="large", skill_id="summarise", alpha=90.0, beta=10.0),
            Competence(agent_id="small", skill_id="summarise", alpha=75.0, beta=25.0),
        ],
        cost=[
            CostStats(
                agent_id=a.id,
                skill_id="summarise",
                n=200.0,
                mean_cost_usd=c,
                mean_step_tokens=500.0,
                n_step_tokens=200.0,
            )
            for a, c in zip(agents, (756 * 15.0 / 1e6, 756 * 0.5 / 1e6), strict=True)
        ],
    )
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(document, source="test")
    book = Handbook(store, HandbookSettings())
    skills = [SkillDemand(skill_id="summarise", weight=1.0)]
    short = book.route(RouteRequest(text="x" * 2000, skills=skills, lambda_=0.1))  # 500 tokens: the usual prompt
    long = book.route(RouteRequest(text="x" * 30_000, skills=skills, lambda_=0.1))
    assert short.agent_id == "large"
    assert long.agent_id == "small"
    dear = {c.agent_id: c.expected_cost_usd for c in long.candidates}
    assert dear["large"] == pytest.approx(756 * 15.0 / 1e6 + (30_000 / 4 - 500) * 15e-6, rel=1e-3)
    with_context = book.route(
        RouteRequest(text="x" * 2000, skills=skills, lambda_=0.1, prompt_extra_chars=28_000)  # delegate's context
    )
    assert with_context.agent_id == "small"


def test_an_agent_of_unknown_cost_never_looks_cheap_on_a_long_step() -> None:
    agents = [Agent(id="big", input_per_mtok=10.0, output_per_mtok=10.0), Agent(id="dark")]
    record = CostStats(
        agent_id="big", skill_id="summarise", n=500.0, mean_cost_usd=0.01, mean_step_tokens=200.0, n_step_tokens=500.0
    )
    arrays = arrays_for(agents, [record])
    for chars in (800, 32_000):
        tokens = costing.prompt_tokens(["x" * chars])
        cost = cost_of(arrays, "x" * chars)
        charged = dict(
            zip(
                arrays.agent_ids,
                costing.charge_unknown(cost[None, :], costing.reference_costs(arrays, tokens), arrays.enabled)[0],
                strict=True,
            )
        )
        assert charged["dark"] >= charged["big"]  # charged c_ref, or the dearest known call of this step
    assert charged["big"] > 0.08  # 7,800 extra tokens at $10 per million on top of $0.01


def book_with_one_skill(path: Path) -> Handbook:
    agent = Agent(id="big", input_per_mtok=10.0, output_per_mtok=10.0)
    store = HandbookStore(path)
    store.create_version(HandbookDocument(modes=MODES, skills=SKILLS, agents=[agent]), source="test")
    return Handbook(store, HandbookSettings())


def test_recorded_outcomes_carry_the_routed_steps_length_into_the_cost_rule(tmp_path: Path) -> None:
    """route -> record (no token counts reported) -> the next, longer step is costed its extra input tokens."""
    from skillorchestra.handbook.service import OutcomeReport

    book = book_with_one_skill(tmp_path / "h.db")
    skills = [SkillDemand(skill_id="summarise", weight=1.0)]
    for _ in range(3):
        decision = book.route(RouteRequest(text="x" * 4000, skills=skills))  # 1,000 tokens each
        book.record(OutcomeReport(decision_id=decision.decision_id, success=True, cost_usd=0.02))
    stats = {c.skill_id: c for c in book.store.costs()}["summarise"]
    assert stats.mean_step_tokens == pytest.approx(1000.0) and stats.mean_cost_usd == pytest.approx(0.02)
    long = book.route(RouteRequest(text="x" * 24_000, skills=skills))  # 6,000 tokens: 5,000 more at $10 per million
    assert long.candidates[0].expected_cost_usd == pytest.approx(0.02 + 0.05, rel=1e-6)
    consult = book.consult("x" * 24_000)
    assert consult.agents and all(a.expected_cost_usd == pytest.approx(0.07, rel=1e-6) for a in consult.agents)
    assert book.store.rebuild() == book.store.document()  # the step lengths are in the event log too


def test_step_lengths_are_averaged_over_the_calls_that_have_one(tmp_path: Path) -> None:
    """Outcomes of decisions without a step length (logged before it was kept) change neither its mean nor count."""
    from skillorchestra.handbook.service import OutcomeReport

    book = book_with_one_skill(tmp_path / "h.db")
    skills = [SkillDemand(skill_id="summarise", weight=1.0)]
    for chars, known in ((4000, True), (400, False), (12_000, True)):
        decision = book.route(RouteRequest(text="x" * chars, skills=skills))
        if not known:  # as a decision routed before migration m004
            book.store.db.execute("UPDATE decisions SET step_tokens = NULL WHERE id = ?", [decision.decision_id])
            book.store.db.conn.commit()
        book.record(OutcomeReport(decision_id=decision.decision_id, success=True, cost_usd=0.01))
    stats = {c.skill_id: c for c in book.store.costs()}["summarise"]
    assert stats.n == 3.0 and stats.n_step_tokens == 2.0
    assert stats.mean_step_tokens == pytest.approx((1000 + 3000) / 2)
    assert book.store.rebuild() == book.store.document()


def test_a_cost_follows_length_only_where_most_of_its_calls_have_a_known_length() -> None:
    """An upgraded handbook (old records, no lengths) is not repriced by its first few new records."""
    agent = Agent(id="big", input_per_mtok=10.0, output_per_mtok=10.0)
    old = CostStats(agent_id="big", skill_id="summarise", n=200.0, mean_cost_usd=0.02, mean_step_tokens=12_000.0)
    thin = arrays_for([agent], [old.model_copy(update={"n_step_tokens": 1.0})])
    assert cost_of(thin, "x" * 400)[0] == pytest.approx(0.02, rel=0.01)  # 1 call of 200: the recorded mean stands
    full = arrays_for([agent], [old.model_copy(update={"n_step_tokens": 150.0})])
    assert cost_of(full, "x" * 400)[0] < 0.01  # 100 tokens against a usual 12,000


def test_a_skill_whose_calls_have_no_known_length_keeps_its_recorded_mean_beside_one_that_has() -> None:
    agent = Agent(id="big", input_per_mtok=10.0, output_per_mtok=10.0)
    skills = [*SKILLS, Skill(id="translate", mode="general", description="translate a text")]
    costs = [
        CostStats(
            agent_id="big",
            skill_id="summarise",
            n=300.0,
            mean_cost_usd=0.02,
            mean_step_tokens=500.0,
            n_step_tokens=300.0,
        ),
        CostStats(
            agent_id="big", skill_id="translate", n=100.0, mean_cost_usd=0.05
        ),  # recorded before lengths were kept
    ]
    arrays = build_arrays(MODES, skills, [agent], [], costs)
    step = costing.prompt_tokens(["x" * 8000])  # 2,000 tokens
    one = np.ones((1, 1))
    translate = costing.expected_costs(arrays, step, np.array([[arrays.column_of_skill("translate")]]), one)[0, 0]
    summarise = costing.expected_costs(arrays, step, np.array([[arrays.column_of_skill("summarise")]]), one)[0, 0]
    assert translate == pytest.approx(0.05, rel=0.01)  # not repriced from another skill's lengths
    assert summarise == pytest.approx(0.02 + 1500 * 10.0 / 1e6, rel=0.01)
