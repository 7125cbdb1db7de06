"""Invariants of routing and learning from outcomes through the real service (Handbook over a SQLite file), over
generated handbooks (hypothesis, derandomized): evidence moves competence the right way, the order things were
inserted in and how weights are scaled do not matter, allowed_agents and max_cost_usd only remove agents, and a
handbook exported and imported routes exactly as it did.
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from routing_strategies import LAMBDAS, TEXTS, demands, documents
from unknown_cost import unknown_cost_document

from skillorchestra.handbook import costing
from skillorchestra.handbook.arrays import document_arrays
from skillorchestra.handbook.errors import Unroutable
from skillorchestra.handbook.models import Agent, ErrorClass, HandbookDocument, Skill, SkillDemand
from skillorchestra.handbook.results import RouteDecision
from skillorchestra.handbook.service import Handbook, HandbookSettings, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.commands import handbook_export, handbook_import
from skillorchestra.server.opened_stores import closing_opened

SERVICE = settings(
    derandomize=True,
    max_examples=15,  # each example writes one or two SQLite files: ~50-100 ms apiece on a loaded host
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
files = itertools.count()


@contextmanager
def opened(folder: Path, document: HandbookDocument, forgetting: float | None = None) -> Iterator[Handbook]:
    """The document imported into a new SQLite file under `folder`, served by a Handbook."""
    store = HandbookStore(folder / f"h{next(files)}.db")
    try:
        store.create_version(document, source="test")
        yield Handbook(store, HandbookSettings(forgetting=forgetting), clock=lambda: 1_700_000_000.0)
    finally:
        store.close()


def step(skills: Sequence[tuple[str, float]], **options: Any) -> RouteRequest:
    return RouteRequest(
        text=options.pop("text", "a step"), skills=[SkillDemand(skill_id=s, weight=w) for s, w in skills], **options
    )


def routed(book: Handbook, request: RouteRequest) -> RouteDecision | None:
    try:
        return book.route(request)
    except Unroutable:
        return None


def outcome(decision: RouteDecision | None) -> tuple[Any, ...] | None:
    """What a decision says, without its id and expiry: the agent, every candidate's figures, c_ref, exclusions."""
    if decision is None:
        return None
    candidates = [(c.agent_id, c.utility, c.quality, c.ci90, c.n, c.expected_cost_usd) for c in decision.candidates]
    return decision.agent_id, candidates, decision.c_ref_usd, [(e.agent_id, e.reason) for e in decision.excluded]


def enabled_ids(document: HandbookDocument) -> list[str]:
    return [a.id for a in document.agents if a.enabled]


# --- learning from outcomes ---------------------------------------------------------------------------------------


Outcome = tuple[str, list[tuple[str, float]], bool, ErrorClass]  # agent, skills, success, an infrastructure error
INFRASTRUCTURE: tuple[ErrorClass, ...] = ("timeout", "rate_limit", "connection", "auth", "server_error")


@st.composite
def reports(draw: st.DrawFn) -> tuple[HandbookDocument, list[Outcome]]:
    """A handbook and a few outcomes to record on it, one after another."""
    document = draw(documents())
    agents = enabled_ids(document)
    count = draw(st.integers(1, 5))
    return document, [
        (
            draw(st.sampled_from(agents)),
            draw(demands(document)),
            draw(st.booleans()),
            draw(st.sampled_from(INFRASTRUCTURE)),
        )
        for _ in range(count)
    ]


@SERVICE
@given(reports())
def test_an_outcome_moves_competence_its_way_and_its_agent_furthest(
    tmp_path: Path, report: tuple[HandbookDocument, list[Outcome]]
) -> None:
    """Without forgetting (which ages old evidence toward the prior: test_forgetting_lets_a_success_lower_...),
    for each outcome recorded in turn:
    - an infrastructure error changes no competence at all;
    - a success never lowers and a failure never raises any cell, the agent's (its own evidence) or another's (the
      pool rate seeding every agent's prior moves with it), and the agent's demanded skills do move;
    - on the step's skills the agent moves at least as far as any other agent, relative to how far each could still
      move that way (others move only through the pool rate, shrunk by their own evidence). In absolute terms it
      can move less: test_a_nearly_certain_agent_moves_less_than_an_unobserved_one."""
    document, outcomes = report
    with opened(tmp_path, document) as book:
        for agent, skills, success, error_class in outcomes:
            failed = book.route(step(skills, allowed_agents=[agent]))
            decision = book.route(step(skills, allowed_agents=[agent]))
            before = book.arrays()
            book.record(OutcomeReport(decision_id=failed.decision_id, error_class=error_class, cost_usd=0.01))
            unchanged = book.arrays()
            assert np.array_equal(unchanged.alpha, before.alpha) and np.array_equal(unchanged.beta, before.beta)
            book.record(OutcomeReport(decision_id=decision.decision_id, success=success))
            after = book.arrays()
            moved = after.mean - before.mean
            assert np.all(moved >= -1e-15) if success else np.all(moved <= 1e-15)
            row = before.agent_index[agent]
            cols = [before.skill_index[s] for s, _ in skills]
            assert np.all(np.abs(moved[row, cols]) > 0)
            weights = np.array([w for _, w in skills]) / sum(w for _, w in skills)
            quality_before, quality_after = before.mean[:, cols] @ weights, after.mean[:, cols] @ weights
            room = (1.0 - quality_before) if success else quality_before
            relative = np.abs(quality_after - quality_before) / room
            assert relative[row] >= relative.max() - 1e-12


def test_forgetting_lets_a_success_lower_a_long_record(tmp_path: Path) -> None:
    """By design, surprising: with forgetting on, a success first ages the agent's 99 of 99 toward the prior
    (gamma 0.5: to 49.5 of 49.5) and then adds itself, so the agent's competence goes down after a success."""
    document = HandbookDocument(
        skills=[Skill(id="s", mode="m")],
        agents=[Agent(id="a")],
        competence=[{"agent_id": "a", "skill_id": "s", "alpha": 100.0, "beta": 1.0}],
    )
    with opened(tmp_path, document, forgetting=0.5) as book:
        decision = book.route(step([("s", 1.0)]))
        before = book.arrays().competence("a", ["s"])[0]
        result = book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
        after = book.arrays().competence("a", ["s"])[0]
    assert (result.updated[0].alpha, result.updated[0].beta) == (51.5, 1.0)
    assert before is not None and after is not None and after < before


def test_a_nearly_certain_agent_moves_less_than_an_unobserved_one(tmp_path: Path) -> None:
    """By design, surprising: a success for an agent at 100 of 100 barely moves it (0.00014), and moves an agent
    never observed by the pool rate's change (0.0025), 17 times as far; relative to their room to rise, the
    recorded agent still moves furthest."""
    document = HandbookDocument(
        skills=[],
        agents=[Agent(id="sure"), Agent(id="bad"), Agent(id="new")],
        competence=[
            {"agent_id": "sure", "skill_id": "*", "alpha": 101.0, "beta": 1.0},
            {"agent_id": "bad", "skill_id": "*", "alpha": 1.0, "beta": 101.0},
        ],
    )
    with opened(tmp_path, document) as book:
        decision = book.route(RouteRequest(text="a step", allowed_agents=["sure"]))
        before = book.arrays()
        book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
        after = book.arrays()
    root = before.root_column
    sure, new = before.agent_index["sure"], before.agent_index["new"]
    moved = after.mean[:, root] - before.mean[:, root]
    assert 0 < moved[sure] < moved[new] / 10
    room = 1.0 - before.mean[:, root]
    assert moved[sure] / room[sure] > moved[new] / room[new]


@SERVICE
@given(reports(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_a_higher_reward_never_leaves_a_lower_competence(
    tmp_path: Path, report: tuple[HandbookDocument, list[Outcome]], one: float, two: float
) -> None:
    document, outcomes = report
    agent, skills, _, _ = outcomes[0]
    low, high = sorted((one, two))
    means = []
    for reward in (low, high):
        with opened(tmp_path, document) as book:
            decision = book.route(step(skills, allowed_agents=[agent]))
            book.record(OutcomeReport(decision_id=decision.decision_id, reward=reward))
            means.append(book.arrays().mean)
    assert np.all(means[1] >= means[0] - 1e-15)


@st.composite
def histories(draw: st.DrawFn) -> tuple[HandbookDocument, list[tuple[str, list[tuple[str, float]], float, float]]]:
    """A handbook and a few outcomes: (agent, skills, reward, cost)."""
    document = draw(documents())
    agents = enabled_ids(document)
    steps = [
        (
            draw(st.sampled_from(agents)),
            draw(demands(document)),
            draw(st.sampled_from((0.0, 0.3, 1.0))),
            draw(st.sampled_from((0.0001, 0.002, 0.05))),
        )
        for _ in range(draw(st.integers(1, 6)))
    ]
    return document, steps


def replay(book: Handbook, steps: list[tuple[str, list[tuple[str, float]], float, float]]) -> None:
    for agent, skills, reward, cost in steps:
        decision = book.route(step(skills, allowed_agents=[agent]))
        book.record(OutcomeReport(decision_id=decision.decision_id, reward=reward, cost_usd=cost))


@SERVICE
@given(histories(), st.sampled_from((None, 0.9)), st.data())
def test_live_patches_a_fresh_reader_and_a_rebuild_route_alike(
    tmp_path: Path,
    history: tuple[HandbookDocument, list[tuple[str, list[tuple[str, float]], float, float]]],
    forgetting: float | None,
    data: st.DataObject,
) -> None:
    """The arrays a server patches record by record are those another process derives from the file, and those
    `handbook rebuild` replays from the log: bit for bit, so every route agrees."""
    document, steps = history
    probe = data.draw(demands(document))
    lambda_ = data.draw(st.sampled_from(LAMBDAS))
    with opened(tmp_path, document, forgetting) as book:
        replay(book, steps)
        live = book.arrays()
        request = step(probe, lambda_=lambda_)
        live_decision = outcome(routed(book, request))
        fresh = Handbook(book.store, book.settings, clock=book.clock)
        assert np.array_equal(fresh.arrays().mean, live.mean) and np.array_equal(fresh.arrays().var, live.var)
        assert np.array_equal(fresh.arrays().cost_mean, live.cost_mean, equal_nan=True)
        assert outcome(routed(fresh, request)) == live_decision
        book.store.rebuild()
        rebuilt = Handbook(book.store, book.settings, clock=book.clock)
        assert np.array_equal(rebuilt.arrays().mean, live.mean)
        assert outcome(routed(rebuilt, request)) == live_decision


# --- metamorphic relations of route_step ---------------------------------------------------------------------------


@st.composite
def routings(
    draw: st.DrawFn, **document_options: Any
) -> tuple[HandbookDocument, list[tuple[str, float]], RouteRequest]:
    document = draw(documents(**document_options))
    skills = draw(demands(document))
    return document, skills, step(skills, text=draw(TEXTS), lambda_=draw(st.sampled_from(LAMBDAS)))


def with_request(request: RouteRequest, **changes: Any) -> RouteRequest:
    return RouteRequest(**{**request.__dict__, **changes})


@SERVICE
@given(routings())
def test_raising_lambda_through_route_step_never_picks_a_dearer_or_a_better_agent(
    tmp_path: Path, routing: tuple[HandbookDocument, list[tuple[str, float]], RouteRequest]
) -> None:
    """The default sweep, one step: the chosen agent's expected cost (unknown: as charged) and quality only fall."""
    document, skills, request = routing
    with opened(tmp_path, document) as book:
        arrays = book.arrays()
        cols = np.array([arrays.skill_index[s] for s, _ in skills])
        weights = np.array([w for _, w in skills]) / sum(w for _, w in skills)
        cost, _, _ = costing.step_costs(arrays, float(costing.prompt_tokens([request.text])[0]), cols, weights)
        chosen = [routed(book, with_request(request, lambda_=lambda_)) for lambda_ in LAMBDAS]
    assume(chosen[0] is not None)  # routable at one lambda: routable at all (lambda never excludes)
    picks = [(cost[arrays.agent_index[d.agent_id]], d.candidates[0].quality) for d in chosen if d is not None]
    assert len(picks) == len(LAMBDAS)
    assert all(later[0] <= earlier[0] and later[1] <= earlier[1] for earlier, later in itertools.pairwise(picks))


@SERVICE
@given(routings(), st.randoms(use_true_random=False))
def test_the_order_things_were_inserted_in_changes_no_decision(
    tmp_path: Path, routing: tuple[HandbookDocument, list[tuple[str, float]], RouteRequest], rnd: random.Random
) -> None:
    """The arrays sort agents by id and skills parents-first by id: a tie goes to the same agent too ("earlier"
    is the id's order, not the order of insertion)."""
    document, _, request = routing
    shuffled = document.model_copy(
        update={
            name: rnd.sample(getattr(document, name), len(getattr(document, name)))
            for name in ("modes", "skills", "agents", "competence", "cost")
        }
    )
    mine, theirs = document_arrays(document), document_arrays(shuffled)  # what learning, replay and eval score
    assert (mine.agent_ids, mine.skill_ids, mine.mode_ids) == (theirs.agent_ids, theirs.skill_ids, theirs.mode_ids)
    assert np.array_equal(mine.mean, theirs.mean) and np.array_equal(mine.var, theirs.var)
    assert np.array_equal(mine.cost_mean, theirs.cost_mean, equal_nan=True)
    with opened(tmp_path, document) as book, opened(tmp_path, shuffled) as other:
        assert outcome(routed(other, request)) == outcome(routed(book, request))


@SERVICE
@given(routings(), st.integers(-8, 8), st.floats(1e-3, 1e3))
def test_scaling_every_weight_changes_no_decision(
    tmp_path: Path,
    routing: tuple[HandbookDocument, list[tuple[str, float]], RouteRequest],
    power: int,
    factor: float,
) -> None:
    """Weights are normalised: scaled by a power of two, the decision is the same to the bit; by any other
    factor the normalised weights may differ in the last bit, so the choice is the same unless two utilities are
    within rounding of each other."""
    document, skills, request = routing
    with opened(tmp_path, document) as book:
        first = routed(book, request)
        exact = routed(book, step([(s, w * 2.0**power) for s, w in skills], text=request.text, lambda_=request.lambda_))
        assert outcome(exact) == outcome(first)
        scaled = routed(book, step([(s, w * factor) for s, w in skills], text=request.text, lambda_=request.lambda_))
    assert (scaled is None) == (first is None)
    if first is not None and scaled is not None and scaled.agent_id != first.agent_id:
        utility = {c.agent_id: c.utility for c in first.candidates}
        assert abs(utility[first.agent_id] - utility.get(scaled.agent_id, -np.inf)) < 1e-12


@SERVICE
@given(routings())
def test_a_skill_of_weight_zero_changes_no_decision(
    tmp_path: Path, routing: tuple[HandbookDocument, list[tuple[str, float]], RouteRequest]
) -> None:
    document, skills, request = routing
    unused = [s.id for s in document.skills if s.id not in dict(skills)]
    assume(unused)
    with opened(tmp_path, document) as book:
        first = routed(book, request)
        padded = routed(book, step([*skills, (unused[0], 0.0)], text=request.text, lambda_=request.lambda_))
    assert outcome(padded) == outcome(first)
    if first is not None and padded is not None:
        assert [(u.skill_id, u.weight) for u in padded.skills] == [(u.skill_id, u.weight) for u in first.skills]


@SERVICE
@given(routings(scoped=False), st.data())
def test_leaving_a_passed_over_agent_out_of_allowed_agents_changes_no_choice(
    tmp_path: Path, routing: tuple[HandbookDocument, list[tuple[str, float]], RouteRequest], data: st.DataObject
) -> None:
    """c_ref is over the enabled agents (interface.md: the pool's most expensive agent), not the allowed ones, so
    narrowing allowed_agents neither rescales lambda nor re-charges an agent of unknown cost."""
    document, _, request = routing
    everyone = [a.id for a in document.agents]
    with opened(tmp_path, document) as book:
        first = book.route(request)
        others = [a for a in everyone if a != first.agent_id]
        assume(others)
        dropped = data.draw(st.sampled_from(others))
        narrowed = book.route(with_request(request, allowed_agents=[a for a in everyone if a != dropped]))
    assert narrowed.agent_id == first.agent_id
    assert narrowed.c_ref_usd == first.c_ref_usd
    kept = [(c.agent_id, c.utility) for c in first.candidates if c.agent_id != dropped]
    assert [(c.agent_id, c.utility) for c in narrowed.candidates][: len(kept)] == kept[: len(narrowed.candidates)]


def test_disabling_the_dearest_agent_rescales_lambda_and_can_change_the_choice(tmp_path: Path) -> None:
    """By design (interface.md: c_ref is the pool's most expensive agent, the pool being the enabled agents),
    surprising: disabling an agent that was never chosen changes c_ref, so every agent's cost term, so the choice.
    allowed_agents does not (test above)."""
    document = HandbookDocument(
        agents=[
            Agent(id="cheap", input_per_mtok=0.1, output_per_mtok=0.1),
            Agent(id="good", input_per_mtok=1.0, output_per_mtok=1.0),
            Agent(id="dear", input_per_mtok=100.0, output_per_mtok=100.0),
        ],
        competence=[
            {"agent_id": "cheap", "skill_id": "*", "alpha": 6.0, "beta": 5.0},
            {"agent_id": "good", "skill_id": "*", "alpha": 8.0, "beta": 3.0},
            {"agent_id": "dear", "skill_id": "*", "alpha": 1.0, "beta": 10.0},
        ],
    )
    request = RouteRequest(text="a step", lambda_=1.0)
    with opened(tmp_path, document) as book:
        first = book.route(request)
        narrowed = book.route(with_request(request, allowed_agents=["cheap", "good"]))
        book.edit_agent("dear", {"enabled": False})
        disabled = book.route(request)
    assert first.agent_id == narrowed.agent_id == "good"
    assert narrowed.c_ref_usd == first.c_ref_usd
    assert disabled.c_ref_usd is not None and first.c_ref_usd is not None
    assert disabled.c_ref_usd < first.c_ref_usd / 50
    assert disabled.agent_id == "cheap"


@SERVICE
@given(routings(scoped=False), st.sampled_from((0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 0.01, 0.1)))
def test_a_cost_cap_only_removes_the_agents_dearer_than_it(
    tmp_path: Path, routing: tuple[HandbookDocument, list[tuple[str, float]], RouteRequest], cap: float
) -> None:
    """route(max_cost_usd=cap) is route() among the agents whose expected cost (unknown: charged c_ref) is within
    the cap, and it fails only when there is none."""
    document, skills, request = routing
    with opened(tmp_path, document) as book:
        arrays = book.arrays()
        cols = np.array([arrays.skill_index[s] for s, _ in skills])
        weights = np.array([w for _, w in skills]) / sum(w for _, w in skills)
        tokens = float(costing.prompt_tokens([request.text])[0])
        cost, known, c_ref = costing.step_costs(arrays, tokens, cols, weights)
        affordable = [
            a
            for i, a in enumerate(arrays.agent_ids)
            if arrays.enabled[i] and cost[i] <= cap and (known[i] or cost[i] > 0)
        ]
        capped = routed(book, with_request(request, max_cost_usd=cap))
        among = routed(book, with_request(request, allowed_agents=affordable)) if affordable else None
    if not affordable:
        assert capped is None
        return
    assert capped is not None and among is not None
    assert capped.agent_id in affordable and cost[arrays.agent_index[capped.agent_id]] <= cap
    assert capped.agent_id == among.agent_id
    assert capped.c_ref_usd == (c_ref or None)


@SERVICE
@given(routings(), st.integers(0, 2**31 - 1))
def test_thompson_through_the_service_is_reproducible_with_a_seed(
    tmp_path: Path, routing: tuple[HandbookDocument, list[tuple[str, float]], RouteRequest], seed: int
) -> None:
    document, _, request = routing
    sampled = with_request(request, strategy="thompson", seed=seed)
    with opened(tmp_path, document) as book:
        first, again = routed(book, sampled), routed(book, sampled)
        greedy = routed(book, request)
    assert outcome(first) == outcome(again)
    if first is not None and again is not None and greedy is not None:
        assert (first.agent_id, first.propensity, first.explored) == (again.agent_id, again.propensity, again.explored)
        assert 0 < first.propensity <= 1
        assert first.explored is (first.agent_id != greedy.agent_id)


# --- the handbook as an artifact -------------------------------------------------------------------------------------


@SERVICE
@given(histories(), st.data())
def test_an_exported_and_imported_handbook_routes_exactly_as_the_original(
    tmp_path: Path,
    history: tuple[HandbookDocument, list[tuple[str, list[tuple[str, float]], float, float]]],
    data: st.DataObject,
) -> None:
    """`handbook export` then `handbook import` into a new file (the CLI's own functions): the same decisions,
    qualities and ci90 to the bit, after outcomes were recorded on top of the imported document."""
    document, steps = history
    probes = [data.draw(demands(document)) for _ in range(3)]
    texts = [data.draw(TEXTS) for _ in probes]
    lambdas = [data.draw(st.sampled_from(LAMBDAS)) for _ in probes]
    source = tmp_path / f"h{next(files)}.db"
    target = tmp_path / f"h{next(files)}.db"
    exported = tmp_path / f"h{next(files)}.json"
    store = HandbookStore(source)
    store.create_version(document, source="test")
    book = Handbook(store, clock=lambda: 1_700_000_000.0)
    replay(book, steps)
    with redirect_stdout(StringIO()), closing_opened():  # the handlers' stores are closed, as a CLI dispatch does
        handbook_export(argparse.Namespace(db=source, file=str(exported)))
        handbook_import(argparse.Namespace(db=target, file=str(exported), example=False))
    imported_store = HandbookStore(target)
    imported = Handbook(imported_store, clock=lambda: 1_700_000_000.0)
    try:
        for probe, text, lambda_ in zip(probes, texts, lambdas, strict=True):
            request = step(probe, text=text, lambda_=lambda_)
            assert outcome(routed(imported, request)) == outcome(routed(book, request))
        assert np.array_equal(imported.arrays().mean, book.arrays().mean)
        assert np.array_equal(imported.arrays().cost_mean, book.arrays().cost_mean, equal_nan=True)
    finally:
        store.close()
        imported_store.close()


def test_a_session_budget_holds_steps_of_unknown_cost_at_what_they_were_charged(tmp_path: Path) -> None:
    """Bug (property QA): a long step charges an agent of unknown cost the dearest known agent's expected cost
    ($0.08 here, over c_ref $0.001: costing.charge_unknown), but the session then held each such step at c_ref only,
    so 20 steps of $0.08 passed a $0.50 budget. Each is held at its charge now: 6 fit, the 7th is refused."""
    request = step([("s", 1.0)], text="x" * 32_000, lambda_=0.0, session_id="S", budget_usd=0.5)
    with opened(tmp_path, unknown_cost_document()) as book:
        decisions = [routed(book, request) for _ in range(8)]
    admitted = [d for d in decisions if d is not None]
    assert [d.agent_id for d in admitted] == ["unknown"] * 6 and decisions[6] is None
    assert admitted[0].c_ref_usd == 0.001
    assert admitted[-1].session_spend_usd == pytest.approx(5 * 0.08)


@pytest.mark.parametrize(
    ("lengths", "admitted_count"),
    [
        # six long steps hold $0.48; a shorter one ($0.03) no longer fits: it read $0.18 when the long steps were
        # held at the shorter step's own charge (review)
        ([32_000] * 6 + [12_000], 6),
        # ten short steps hold $0.01; a long one ($0.08) still fits: it was refused when the short steps were held
        # at the long step's charge (review)
        ([400] * 10 + [32_000], 11),
    ],
)
def test_a_session_holds_each_step_at_its_own_charge(tmp_path: Path, lengths: list[int], admitted_count: int) -> None:
    """Steps of one session of different lengths: each holds what it was charged when admitted (m018's
    charged_usd), whatever the step being routed now charges an unknown cost."""
    with opened(tmp_path, unknown_cost_document()) as book:
        decisions = [
            routed(book, step([("s", 1.0)], text="x" * n, lambda_=0.0, session_id="S", budget_usd=0.5)) for n in lengths
        ]
        charged = [row[0] for row in book.store.db.execute("SELECT charged_usd FROM decisions ORDER BY rowid")]
    admitted = [d for d in decisions if d is not None]
    assert len(admitted) == admitted_count
    assert sum(charged) <= 0.5
    assert admitted[-1].session_spend_usd == pytest.approx(sum(charged[:-1]))


@SERVICE
@given(routings(scoped=False), st.sampled_from((1e-4, 1e-3, 0.01, 0.05)))
def test_a_session_never_admits_more_than_its_budget(
    tmp_path: Path, routing: tuple[HandbookDocument, list[tuple[str, float]], RouteRequest], budget: float
) -> None:
    """Steps of one session routed and not yet reported: what they were charged at admission (expected cost,
    unknown: as charged) sums to at most the budget, and routing stops only when the next step does not fit."""
    document, skills, request = routing
    budgeted = with_request(request, session_id="S", budget_usd=budget)
    with opened(tmp_path, document) as book:
        arrays = book.arrays()
        cols = np.array([arrays.skill_index[s] for s, _ in skills])
        weights = np.array([w for _, w in skills]) / sum(w for _, w in skills)
        cost, _, _ = costing.step_costs(arrays, float(costing.prompt_tokens([request.text])[0]), cols, weights)
        charged = []
        for _ in range(12):
            decision = routed(book, budgeted)
            if decision is None:
                break
            charged.append(cost[arrays.agent_index[decision.agent_id]])
    assert sum(charged) <= budget * (1 + 1e-9)


def test_an_unknown_cost_charged_above_c_ref_says_what_it_was_charged(tmp_path: Path) -> None:
    """A long step charges the agent of unknown cost the dearest known agent's cost, not c_ref: the refusal says so
    (review: it read "charged c_ref $0.08" where c_ref was $0.001)."""
    with opened(tmp_path, unknown_cost_document()) as book, pytest.raises(Unroutable) as refused:
        book.route(step([("s", 1.0)], text="x" * 32_000, lambda_=0.0, max_cost_usd=0.05))
    assert (
        "unknown: cost unknown, charged $0.08 (the dearest known agent's cost of a step this long; c_ref $0.001), "
        "exceeds max_cost_usd $0.05" in str(refused.value)
    )


def test_a_fallback_holds_what_it_was_charged(tmp_path: Path) -> None:
    """delegate's fallback (and judge) decisions keep their charge too: an unknown cost at what the routed step
    charged one (m019: c_ref alone let a fallback pass a budget route_step refused for the same step), a known one at
    its expected cost; the session's spend then counts each, and the routed step at its own charge."""
    with opened(tmp_path, unknown_cost_document()) as book:
        routed_step = book.route(step([("s", 1.0)], text="x" * 32_000, lambda_=0.0, session_id="S", budget_usd=0.5))
        book.fallback_decision(routed_step.decision_id, "unknown", budget_usd=0.5, c_ref=0.001)
        book.fallback_decision(routed_step.decision_id, "known", expected_cost=0.02, budget_usd=0.5, c_ref=0.001)
        charged = [row[0] for row in book.store.db.execute("SELECT charged_usd FROM decisions ORDER BY rowid")]
        spend = book.store.session_spend("S", 1_700_000_000.0, unknown_cost=99.0)
    assert charged == pytest.approx([0.08, 0.08, 0.02])
    assert spend == pytest.approx(0.18)


def test_a_fallback_of_unknown_cost_is_refused_where_route_step_refuses_it(tmp_path: Path) -> None:
    """The review's case: budget $0.10, a long step named to `known` ($0.08); routing it to `unknown` is refused,
    and so is a fallback to `unknown` on it (it was admitted at c_ref's $0.001)."""
    with opened(tmp_path, unknown_cost_document()) as book:
        budgeted = {"session_id": "S", "budget_usd": 0.1}
        first = book.route(step([("s", 1.0)], text="x" * 32_000, allowed_agents=["known"], **budgeted))
        assert routed(book, step([("s", 1.0)], text="x" * 32_000, allowed_agents=["unknown"], **budgeted)) is None
        with pytest.raises(
            Unroutable, match=r"cost unknown, charged \$0.08 \(the dearest .*\), exceeds the session's remaining budget"
        ):
            book.fallback_decision(first.decision_id, "unknown", budget_usd=0.1, c_ref=0.001)
        # the judge asks the same rule before calling (review: it checked c_ref alone)
        asked = book.fallback_refusal(first.decision_id, expected_cost=None, budget_usd=0.1, c_ref=0.001)
        assert asked is not None and asked.startswith("cost unknown, charged $0.08 (the dearest")
        assert book.fallback_refusal(first.decision_id, expected_cost=0.01, budget_usd=0.1, c_ref=0.001) is None


def test_an_unknown_cost_nobody_could_charge_is_left_to_the_reader(tmp_path: Path) -> None:
    """No agent's cost known (c_ref 0): an unbudgeted step to the unknown agent is charged nothing, so its decision
    keeps no charge and a later budgeted step holds it at that step's c_ref, as before m018 (review: stored as $0,
    it was held at $0 once a price was known); under a budget a fallback of such a cost is refused, as route_step
    refuses the agent."""
    document = HandbookDocument(
        skills=[Skill(id="s", mode="m")],
        agents=[Agent(id="tool", cost_per_call_usd=0.0), Agent(id="llm")],
        competence=[{"agent_id": "llm", "skill_id": "s", "alpha": 50.0, "beta": 1.0}],
    )
    with opened(tmp_path, document) as book:
        free = book.route(step([("s", 1.0)], lambda_=0.0, session_id="T"))
        assert free.agent_id == "llm" and not free.c_ref_usd
        [(charged,)] = list(book.store.db.execute("SELECT charged_usd FROM decisions"))
        assert charged is None
        with pytest.raises(Unroutable, match="no agent's cost is known to charge instead"):
            book.fallback_decision(free.decision_id, "llm", budget_usd=1.0, c_ref=0.0)
        book.upsert_agent(Agent(id="tool", cost_per_call_usd=0.05))
        later = book.route(step([("s", 1.0)], lambda_=0.0, session_id="T", budget_usd=1.0))
    assert later.c_ref_usd == pytest.approx(0.05)
    assert later.session_spend_usd == pytest.approx(0.05)
