"""The Handbook service over a real SQLite file: constraints, validation, online learning, writes-nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skillorchestra.handbook.arrays import HandbookArrays, build_arrays, serves
from skillorchestra.handbook.errors import Conflict, Expired, HandbookError, InvalidInput, NotFound, Unroutable
from skillorchestra.handbook.models import (
    TEXT_MAX,
    Agent,
    Competence,
    HandbookDocument,
    Mode,
    Skill,
    SkillDemand,
)
from skillorchestra.handbook.service import Handbook, HandbookSettings, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.resources import agent_card, skill_card

TTL = 60.0
TEXT = ("write a python function " * 20)[:400]  # 400 characters -> 100 prompt tokens when priced


def priced(input_per_mtok: float, output_per_mtok: float) -> float:
    """The service's estimate without recorded cost: 100 prompt tokens and 256 completion tokens."""
    return (100 * input_per_mtok + 256 * output_per_mtok) / 1e6


CHEAP, MID, PRICEY, SEARCHER = priced(0.1, 0.2), priced(1.0, 2.0), priced(10.0, 30.0), priced(0.5, 0.5)

DOCUMENT = HandbookDocument(
    modes=[Mode(id="code", insights=["prefer the cheap model for boilerplate"]), Mode(id="search")],
    skills=[
        Skill(id="code", mode="code", description="programming"),
        Skill(id="code.python", mode="code", parent_id="code", description="write python functions and scripts"),
        Skill(id="code.sql", mode="code", parent_id="code", description="write sql queries against a database"),
        Skill(id="search.web", mode="search", description="look up current facts on the web"),
    ],
    agents=[
        Agent(id="cheap", input_per_mtok=0.1, output_per_mtok=0.2),
        Agent(id="mid", modes=["code", "search"], input_per_mtok=1.0, output_per_mtok=2.0),
        Agent(id="pricey", modes=["code"], input_per_mtok=10.0, output_per_mtok=30.0),
        Agent(id="searcher", modes=["search"], input_per_mtok=0.5, output_per_mtok=0.5),
    ],
    competence=[
        Competence(agent_id="pricey", skill_id="code.python", alpha=20.0, beta=2.0),
        Competence(agent_id="mid", skill_id="code.python", alpha=10.0, beta=5.0),
        Competence(agent_id="cheap", skill_id="code.python", alpha=3.0, beta=6.0),
        Competence(agent_id="searcher", skill_id="search.web", alpha=8.0, beta=2.0),
        Competence(agent_id="searcher", skill_id="code.python", alpha=1.0, beta=5.0),
    ],
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_book(path: Path, clock: Clock, forgetting: float | None = None) -> Handbook:
    store = HandbookStore(path)
    store.create_version(DOCUMENT, source="test")
    return Handbook(store, HandbookSettings(decision_ttl_s=TTL, forgetting=forgetting), clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(tmp_path: Path, clock: Clock) -> Iterator[Handbook]:
    handbook = make_book(tmp_path / "h.db", clock)
    yield handbook
    handbook.store.close()  # not left to the garbage collector (Python 3.13 warns of an unclosed database)


def python(weight: float = 1.0) -> list[SkillDemand]:
    # built without validation: SkillDemand itself refuses an infinite weight, and the service must too
    return [SkillDemand.model_construct(skill_id="code.python", weight=weight)]


def request(**fields: Any) -> RouteRequest:
    fields.setdefault("text", TEXT)
    fields.setdefault("skills", python())
    fields.setdefault("lambda_", 0.0)
    return RouteRequest(**fields)


def dump(store: HandbookStore) -> dict[str, Any]:
    """Everything the file holds: the document, the counts and every row of every table (FTS shadows included)."""
    with store.lock:
        conn = store.db.conn
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    return {"document": store.document().model_dump(), "counts": store.counts(), "rows": rows}


def competence_of(store: HandbookStore, agent: str, skill: str) -> tuple[float, float] | None:
    for row in store.competence():
        if (row.agent_id, row.skill_id) == (agent, skill):
            return row.alpha, row.beta
    return None


def reasons(decision_excluded: list[Any]) -> dict[str, str]:
    return {e.agent_id: e.reason for e in decision_excluded}


# a step demanding code.python names no mode, so it is of mode 'code': the searcher (modes ["search"]) never takes it
OFF_MODE = (
    "serves only mode 'search', and this step is of mode 'code' (from its skills; a step naming its mode is routed in "
    "that mode)"
)


# -- routing and constraints ------------------------------------------------------------------------------


def test_route_picks_the_most_competent_and_records_the_decision(book: Handbook, clock: Clock) -> None:
    before = book.store.counts()
    decision = book.route(request())
    assert decision.agent_id == "pricey" and decision.explored is False and decision.propensity == 1.0
    assert [(s.skill_id, s.weight) for s in decision.skills] == [("code.python", 1.0)]
    assert decision.c_ref_usd == pytest.approx(PRICEY)
    assert decision.handbook_version == book.store.current_version()
    assert decision.expires_at == clock.now + TTL
    costs = {c.agent_id: c.expected_cost_usd for c in decision.candidates}
    assert costs == pytest.approx({"pricey": PRICEY, "mid": MID, "cheap": CHEAP})
    assert reasons(decision.excluded) == {"searcher": OFF_MODE}
    assert [c.agent_id for c in decision.candidates][:3] == ["pricey", "mid", "cheap"]
    assert all(c.ci90[0] <= c.quality <= c.ci90[1] for c in decision.candidates)
    assert book.store.counts() == {**before, "decisions": before["decisions"] + 1}
    row = book.store.decision(decision.decision_id)
    assert row is not None and row["agent_id"] == "pricey" and row["version"] == decision.handbook_version


def test_demands_are_normalised_and_reported_per_skill(book: Handbook) -> None:
    skills = [SkillDemand(skill_id="code.python", weight=3.0), SkillDemand(skill_id="code.sql", weight=1.0)]
    decision = book.route(request(skills=skills, top_k=2))
    assert [(s.skill_id, s.weight) for s in decision.skills] == [("code.python", 0.75), ("code.sql", 0.25)]
    assert len(decision.candidates) == 2
    for candidate in decision.candidates:
        assert set(candidate.contributions) == {"code.python", "code.sql"}
        assert sum(candidate.contributions.values()) == pytest.approx(candidate.quality)


@pytest.mark.parametrize("lambda_", [-0.1, 1000.5, float("nan")])
def test_lambda_outside_the_tools_range_is_refused(book: Handbook, lambda_: float) -> None:
    with pytest.raises(InvalidInput, match=r"lambda_.*a number in \[0, 1000\]"):
        book.route(request(lambda_=lambda_))


def test_lambda_trades_quality_for_cost(book: Handbook) -> None:
    assert book.route(request(lambda_=0.0)).agent_id == "pricey"
    decision = book.route(request(lambda_=1000.0))
    assert decision.agent_id == "cheap"
    for c in decision.candidates:
        assert c.utility == pytest.approx(c.quality - 1000.0 * c.expected_cost_usd / PRICEY)


def test_allowed_agents(book: Handbook) -> None:
    decision = book.route(request(allowed_agents=["mid", "cheap"]))
    assert decision.agent_id == "mid"
    assert reasons(decision.excluded) == {"pricey": "not in allowed_agents", "searcher": OFF_MODE}
    assert {c.agent_id for c in decision.candidates} == {"mid", "cheap"}


def test_mode_excludes_agents_that_do_not_serve_it(book: Handbook) -> None:
    decision = book.route(request(mode="search", skills=[SkillDemand(skill_id="search.web", weight=1.0)]))
    assert reasons(decision.excluded) == {"pricey": "does not serve mode 'search'"}
    assert decision.agent_id == "searcher"  # agents without modes (cheap) serve every mode
    assert "cheap" in {c.agent_id for c in decision.candidates}


def test_a_step_naming_no_mode_is_of_its_skills_modes(book: Handbook) -> None:
    """QA: steps rarely name a mode, and then every agent served them: a search tool scoped to ["search"] was sent
    arithmetic, and a judge its answer steps."""
    web = book.route(RouteRequest(text="look up the weather", skills=[SkillDemand(skill_id="search.web", weight=1)]))
    assert web.agent_id == "searcher"
    assert reasons(web.excluded) == {
        "pricey": "serves only mode 'code', and this step is of mode 'search' (from its skills; a step naming its "
        "mode is routed in that mode)"
    }
    mixed = [SkillDemand(skill_id="search.web", weight=0.5), SkillDemand(skill_id="code.python", weight=0.5)]
    assert book.route(RouteRequest(text="look up and code", skills=mixed)).excluded == []  # either mode serves
    minor = [SkillDemand(skill_id="search.web", weight=0.05), SkillDemand(skill_id="code.python", weight=0.95)]
    assert reasons(book.route(RouteRequest(text="code, and a look", skills=minor)).excluded) == {"searcher": OFF_MODE}
    # a step whose skills are unknown (none inferred) is of no known mode: every agent may take it
    unknown = book.route(RouteRequest(text="zzqx vvkw"))
    assert unknown.skills == [] and unknown.excluded == []
    assert reasons(book.route(request()).excluded) == {"searcher": OFF_MODE}
    # consult offers what route_step would consider, and names the rest
    consulted = book.consult("write python functions")
    assert [s.skill_id for s in consulted.skills][0] == "code.python"
    assert "searcher" not in {r.agent_id for r in consulted.agents} and consulted.unavailable == {"searcher": OFF_MODE}
    # an agent the caller names is not second-guessed by a mode only inferred
    named = book.route(request(allowed_agents=["searcher"]))
    assert named.agent_id == "searcher" and named.excluded[0].reason == "not in allowed_agents"
    among = book.route(request(allowed_agents=["searcher", "cheap"]))  # a choice among several keeps the rule
    assert among.agent_id == "cheap" and reasons(among.excluded)["searcher"] == OFF_MODE
    # skills of a mode no agent names, with no unscoped agent enabled, say nothing: the step is routed, not refused
    # (a skill added without a mode lands in 'general', which agents scoped to their modes do not name)
    book.upsert_skill(Skill(id="chat", description="small talk"))
    for agent in ("cheap", "mid", "searcher"):
        book.edit_agent(agent, {"enabled": False})
    chat = [SkillDemand(skill_id="chat", weight=1)]
    assert book.route(RouteRequest(text="how are you", skills=chat)).agent_id == "pricey"
    # but a specialist out of service (disabled, or its breaker open) keeps its steps: they wait, not go elsewhere
    web = [SkillDemand(skill_id="search.web", weight=1)]
    with pytest.raises(Unroutable, match=r"pricey: serves only mode 'code', and this step is of mode 'search' \(from"):
        book.route(RouteRequest(text="look up the weather", skills=web))
    with pytest.raises(Unroutable, match="pricey: does not serve mode 'search'"):  # a mode named is kept to
        book.route(request(mode="search", skills=web))
    # no skill matched: the step is of the modes the handbook has skills in (a judge or a tool scoped to a mode
    # without skills is not sent what the matcher could not place)
    for agent in ("cheap", "mid", "searcher"):
        book.edit_agent(agent, {"enabled": True})
    book.delete_skill("search.web")
    unplaced = book.route(RouteRequest(text="zzqx vvkw"))
    assert unplaced.skills == [] and reasons(unplaced.excluded) == {
        "searcher": "serves only mode 'search', and this step is of mode 'code' or 'general' (no skill matched: the "
        "modes of the handbook's skills; a step naming its mode is routed in that mode)"
    }
    assert book.consult("zzqx vvkw").unavailable == reasons(unplaced.excluded)


def test_max_cost_per_step(book: Handbook) -> None:
    decision = book.route(request(max_cost_usd=1e-3))
    assert decision.agent_id == "mid"
    assert set(reasons(decision.excluded)) == {"pricey", "searcher"}
    assert "max_cost_usd" in reasons(decision.excluded)["pricey"]


def test_session_budget_counts_recorded_spend(book: Handbook) -> None:
    first = book.route(request(session_id="s1", budget_usd=1.0))
    assert first.agent_id == "pricey" and first.session_spend_usd == 0.0
    book.record(OutcomeReport(decision_id=first.decision_id, success=True, cost_usd=0.995))
    second = book.route(request(session_id="s1", budget_usd=1.0))
    assert second.session_spend_usd == pytest.approx(0.995)
    assert second.agent_id == "mid"
    assert "remaining budget" in reasons(second.excluded)["pricey"]
    # infrastructure failures cost money too
    book.record(OutcomeReport(decision_id=second.decision_id, error_class="timeout", cost_usd=0.004))
    third = book.route(request(session_id="s1", budget_usd=1.0))
    assert third.session_spend_usd == pytest.approx(0.999)
    assert third.agent_id == "cheap" and set(reasons(third.excluded)) == {"pricey", "mid", "searcher"}  # 0.001 left
    # another session has its own budget
    assert book.route(request(session_id="s2", budget_usd=1.0)).agent_id == "pricey"


def test_a_spent_budget_says_what_to_do_and_names_each_reason_once(book: Handbook) -> None:
    first = book.route(request(session_id="s1", budget_usd=0.01))
    book.record(OutcomeReport(decision_id=first.decision_id, success=True, cost_usd=0.01))
    with pytest.raises(Unroutable) as refused:
        book.route(request(session_id="s1", budget_usd=0.01))
    message = str(refused.value)
    assert message.endswith("raise budget_usd or stop the session")
    assert all(message.count(f"{agent}:") + message.count(f"{agent},") == 1 for agent in ("cheap", "mid", "pricey"))


def test_an_unknown_mode_lists_the_modes_there_are(book: Handbook) -> None:
    with pytest.raises(NotFound, match=r"unknown mode 'xyz'; known: code, search$"):
        book.route(request(mode="xyz", skills=None))
    # QA: "closest known: answer" for 'web' hid the 'search' it meant: with few, all are named beside
    with pytest.raises(NotFound, match=r"unknown mode 'searching'; closest known: search \(known: code, search\)$"):
        book.route(request(mode="searching", skills=None))


def test_steps_routed_but_not_reported_hold_their_share_of_the_budget(book: Handbook, clock: Clock) -> None:
    pricey = book.route(request(allowed_agents=["pricey"])).candidates[0].expected_cost_usd
    assert pricey is not None
    budget = 1.5 * pricey
    first = book.route(request(session_id="s", budget_usd=budget, allowed_agents=["pricey"]))
    with pytest.raises(Unroutable, match="remaining budget"):  # the first step's expected cost is committed
        book.route(request(session_id="s", budget_usd=budget, allowed_agents=["pricey"]))
    book.record(OutcomeReport(decision_id=first.decision_id, success=True))  # no cost reported: still not $0
    assert book.store.session_spend("s", clock()) == pytest.approx(pricey)
    clock.now += TTL + 1  # a step that expired unreported and uncalled gives its share back
    other = book.route(request(session_id="t", budget_usd=budget, allowed_agents=["pricey"]))
    clock.now += TTL + 1
    assert book.store.session_spend("t", clock()) == 0.0 and other.agent_id == "pricey"


def test_parallel_steps_of_one_session_cannot_overspend_its_budget(book: Handbook) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pricey = book.route(request(allowed_agents=["pricey"])).candidates[0].expected_cost_usd
    budget = 1.5 * pricey

    def step(_: int) -> str:
        try:
            return book.route(request(session_id="par", budget_usd=budget, allowed_agents=["pricey"])).agent_id
        except Unroutable:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(step, range(8)))
    assert sorted(outcomes) == ["pricey"] + ["refused"] * 7


def test_a_budgeted_judge_decision_is_checked_and_written_in_one_transaction(book: Handbook) -> None:
    """The judge's share of a session budget is held like a routed step's: refused whole when it does not fit."""
    decision = book.route(request(allowed_agents=["mid"], session_id="j", budget_usd=1.5 * MID))
    before = dump(book.store)
    with pytest.raises(Unroutable, match="expected cost .* exceeds the session's remaining budget"):
        book.fallback_decision(decision.decision_id, "pricey", "judge", expected_cost=MID, budget_usd=1.5 * MID)
    assert dump(book.store) == before
    with pytest.raises(Unroutable, match="cost unknown, charged c_ref"):
        book.fallback_decision(decision.decision_id, "pricey", "judge", budget_usd=1.5 * MID, c_ref=PRICEY)
    book.fallback_decision(decision.decision_id, "pricey", "judge", expected_cost=0.4 * MID, budget_usd=1.5 * MID)
    assert book.store.session_spend("j", book.clock()) == pytest.approx(1.4 * MID)  # held until its cost is known


def test_an_agent_of_unknown_cost_holds_c_ref_of_the_budget_while_its_steps_run(tmp_path: Path, clock: Clock) -> None:
    """Routing charges an unknown cost c_ref, so the budget holds c_ref for it, not $0."""
    from concurrent.futures import ThreadPoolExecutor

    store = HandbookStore(tmp_path / "u.db")
    store.create_version(DOCUMENT.model_copy(update={"agents": [*DOCUMENT.agents, Agent(id="mystery")]}), source="t")
    book = Handbook(store, HandbookSettings(decision_ttl_s=TTL), clock=clock)
    c_ref = book.route(request(allowed_agents=["mystery"])).c_ref_usd
    assert c_ref is not None

    def step(_: int) -> bool:
        try:
            book.route(request(session_id="u", budget_usd=1.5 * c_ref, allowed_agents=["mystery"]))
            return True
        except Unroutable:
            return False

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(step, range(8))) == 1
    store.close()


def test_a_budgeted_route_never_waits_on_a_matcher_while_it_holds_the_file(tmp_path: Path) -> None:
    """The matchers take their own lock and then the file's; a budgeted route takes the file's for its spend and
    decision. Inferring the skills inside that transaction deadlocked against a plain route building its scorer."""
    import threading
    import time

    from skillorchestra.handbook.inference import HandbookMatcher
    from skillorchestra.handbook.semantic import SemanticMatcher

    entered = threading.Event()

    class SlowEmbedder:
        model_name, dim = "slow", 8

        def encode(self, texts: list[str]) -> np.ndarray:
            entered.set()
            time.sleep(0.3)  # a MiniLM encode of the skill texts takes as long, or longer
            vectors = np.ones((len(texts), 8), dtype=np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="test")
    matcher = HandbookMatcher(store, SemanticMatcher(store, load=lambda: (SlowEmbedder(), "")))
    book = Handbook(store, HandbookSettings(), matcher=matcher)
    routed: dict[str, str] = {}
    plain = threading.Thread(
        target=lambda: routed.update(plain=book.route(RouteRequest(text=TEXT)).agent_id), daemon=True
    )
    plain.start()
    entered.wait(5)
    budgeted = threading.Thread(
        target=lambda: routed.update(
            budgeted=book.route(RouteRequest(text=TEXT, session_id="s", budget_usd=1.0)).agent_id
        ),
        daemon=True,
    )
    budgeted.start()
    plain.join(10)
    budgeted.join(10)
    assert not plain.is_alive() and not budgeted.is_alive(), "deadlocked"
    assert set(routed) == {"plain", "budgeted"}
    store.close()


def test_unavailable_agents_are_excluded_with_their_reason(book: Handbook) -> None:
    decision = book.route(request(unavailable={"pricey": "circuit open after 3 timeouts"}))
    assert decision.agent_id == "mid"
    assert reasons(decision.excluded) == {"pricey": "circuit open after 3 timeouts", "searcher": OFF_MODE}


def test_disabled_agents_are_excluded(book: Handbook) -> None:
    book.upsert_agent(DOCUMENT.agents[2].model_copy(update={"enabled": False}))
    decision = book.route(request())
    assert decision.agent_id == "mid" and reasons(decision.excluded) == {"pricey": "disabled", "searcher": OFF_MODE}


def test_everything_excluded_is_unroutable_naming_each_reason(book: Handbook) -> None:
    with pytest.raises(Unroutable) as caught:
        book.route(request(allowed_agents=["pricey"], max_cost_usd=1e-3))
    message = str(caught.value)
    assert "pricey: expected cost" in message and "max_cost_usd" in message
    assert "cheap, mid, searcher: not in allowed_agents" in message  # a shared reason is said once


def test_an_empty_handbook_is_unroutable(tmp_path: Path) -> None:
    with pytest.raises(Unroutable, match="no agents"):
        Handbook(HandbookStore(tmp_path / "empty.db")).route(request(skills=None))


def test_unknown_cost_is_charged_c_ref_and_flagged(book: Handbook) -> None:
    book.upsert_agent(Agent(id="mystery"))
    decision = book.route(request(lambda_=0.5, top_k=5))
    mystery = next(c for c in decision.candidates if c.agent_id == "mystery")
    assert mystery.expected_cost_usd is None
    assert mystery.utility == pytest.approx(mystery.quality - 0.5)
    capped = book.route(request(max_cost_usd=CHEAP * 2, allowed_agents=["cheap", "mystery"]))
    reason = {e.agent_id: e.reason for e in capped.excluded}["mystery"]
    assert reason == f"cost unknown, charged c_ref ${decision.c_ref_usd:.6g}, exceeds max_cost_usd ${CHEAP * 2:.6g}"


def test_recorded_cost_replaces_the_price_estimate(book: Handbook) -> None:
    decision = book.route(request(allowed_agents=["mid"]))
    book.record(OutcomeReport(decision_id=decision.decision_id, success=True, cost_usd=0.05))
    again = book.route(request(allowed_agents=["mid"]))
    assert again.candidates[0].expected_cost_usd == pytest.approx(0.05)
    assert again.c_ref_usd == pytest.approx(0.05)  # mid's recorded cost is now the pool's most expensive call


def test_inferred_demands_come_from_the_text(book: Handbook) -> None:
    decision = book.route(RouteRequest(text="write sql queries for the database", mode="code", lambda_=0.0))
    assert decision.skills and decision.skills[0].skill_id == "code.sql"
    assert decision.skills_source == "lexical"
    assert sum(s.weight for s in decision.skills) == pytest.approx(1.0)


def test_thompson_through_the_service_is_seeded_and_logged(book: Handbook) -> None:
    runs = [book.route(request(strategy="thompson", seed=seed)) for seed in (7, 7, 8)]
    assert (runs[0].agent_id, runs[0].propensity) == (runs[1].agent_id, runs[1].propensity)
    for decision in runs:
        row = book.store.decision(decision.decision_id)
        assert row is not None
        assert row["propensity"] == decision.propensity and bool(row["explored"]) == decision.explored
        assert 0.0 < decision.propensity <= 1.0


def test_consult_reports_skills_agents_and_insights_without_writing(book: Handbook) -> None:
    before = dump(book.store)
    result = book.consult("write python functions", mode="code")
    assert result.skills[0].skill_id == "code.python" and result.skills[0].weight > 0.5
    assert result.insights == ["[code] prefer the cheap model for boilerplate"]
    python_rows = [r for r in result.agents if r.skill_id == "code.python"]
    assert [r.agent_id for r in python_rows][0] == "pricey"
    assert next(r for r in python_rows if r.agent_id == "pricey").n == 20.0
    assert all(r.ci90[0] <= r.mean <= r.ci90[1] for r in result.agents)
    assert dump(book.store) == before


def test_consult_lists_the_agents_route_step_would_consider_for_the_mode(book: Handbook) -> None:
    """searcher serves only 'search': route_step excludes it from a code step, so consult does not offer it."""
    consulted = {r.agent_id for r in book.consult("write python functions", mode="code").agents}
    routed = book.route(request(mode="code"))
    assert consulted == {c.agent_id for c in routed.candidates} == {"cheap", "mid", "pricey"}
    assert [e.agent_id for e in routed.excluded] == ["searcher"]


def test_consult_shows_the_most_competent_agents_per_skill_up_to_agents_per_skill(book: Handbook) -> None:
    everyone = book.consult("write python functions", mode="code")
    for skill in {r.skill_id for r in everyone.agents}:
        ranked = [r.agent_id for r in everyone.agents if r.skill_id == skill]
        shown = book.consult("write python functions", mode="code", agents_per_skill=2).agents
        assert [r.agent_id for r in shown if r.skill_id == skill] == ranked[:2] and len(ranked) == 3
    one = book.consult("write python functions", mode="code", agents_per_skill=1)
    assert one.unavailable == everyone.unavailable and everyone.agents_not_shown == 0
    assert one.agents_not_shown == len(everyone.agents) - len(one.agents) > 0  # the model is told some are left out


def test_consult_says_why_an_agent_is_not_offered(book: Handbook) -> None:
    """With every agent out of the running, consult used to answer no agents and no reason at all."""
    book.edit_agent("cheap", {"enabled": False})
    result = book.consult("write python functions", mode="code")
    assert result.unavailable == {"cheap": "disabled", "searcher": "does not serve mode 'code'"}
    assert {r.agent_id for r in result.agents} == {"mid", "pricey"}


# -- recording outcomes -----------------------------------------------------------------------------------


def test_an_outcome_of_a_deleted_agent_does_not_credit_an_agent_added_again_under_its_id(book: Handbook) -> None:
    """Delete an agent to reset it, add it back: a step routed to the old one must not move the new one."""
    stale = book.route(request(allowed_agents=["mid"]))
    book.delete_agent("mid")
    book.upsert_agent(Agent(id="mid", modes=["code", "search"], input_per_mtok=1.0, output_per_mtok=2.0))
    fresh = book.route(request(allowed_agents=["mid"]))
    before = book.store.competence()
    result = book.record(OutcomeReport(decision_id=stale.decision_id, success=True, cost_usd=0.5))
    assert not result.applied and result.updated == [] and "was deleted since the decision" in (result.note or "")
    assert book.store.competence() == before
    assert book.record(OutcomeReport(decision_id=stale.decision_id, success=True, cost_usd=0.5)).duplicate
    assert book.record(OutcomeReport(decision_id=fresh.decision_id, success=True)).applied  # the new one's own
    live = book.store.document()
    book.store.rebuild()
    assert book.store.document() == live  # the stale outcome left no event to replay onto the new agent


def test_a_cost_far_beyond_the_steps_expected_cost_is_recorded_and_said_to_look_like_another_unit(
    book: Handbook,
) -> None:
    """Fuzz QA: one report of $1e6 (a unit slip) became the agent's mean cost and c_ref with it, silently."""
    routed = book.route(request(allowed_agents=["mid"]))
    expected = routed.candidates[0].expected_cost_usd
    assert expected is not None and expected > 0
    usual = book.record(OutcomeReport(decision_id=routed.decision_id, success=True, cost_usd=expected * 50))
    assert usual.note is None  # a dear call, not an outlier
    routed = book.route(request(allowed_agents=["mid"]))
    expected = routed.candidates[0].expected_cost_usd  # moved by the dear call
    assert expected is not None
    slipped = book.record(OutcomeReport(decision_id=routed.decision_id, success=True, cost_usd=expected * 5000))
    assert slipped.applied and slipped.cost_usd == pytest.approx(expected * 5000)  # recorded as given
    assert slipped.note is not None and "over 1000x this step's expected cost" in slipped.note
    again = book.record(OutcomeReport(decision_id=routed.decision_id, success=True, cost_usd=expected * 5000))
    assert again.duplicate


def test_an_outcome_says_which_of_its_skills_were_deleted_since_the_decision(book: Handbook) -> None:
    """Deleting a demanded skill between route and report used to drop its share silently (applied, no note)."""
    skills = [SkillDemand(skill_id="code.python", weight=3.0), SkillDemand(skill_id="code.sql", weight=1.0)]
    partly = book.route(request(skills=skills, allowed_agents=["mid"]))
    sql = [SkillDemand(skill_id="code.sql", weight=1.0)]
    wholly = book.route(request(skills=sql, allowed_agents=["mid"], mode="code"))
    book.delete_skill("code.sql")
    result = book.record(OutcomeReport(decision_id=partly.decision_id, success=True))
    assert [u.skill_id for u in result.updated] == ["code.python"] and result.applied
    assert result.note == (
        "skills deleted since the decision ('code.sql'): their share (0.25) of the outcome was not applied"
    )
    result = book.record(OutcomeReport(decision_id=wholly.decision_id, success=True))
    assert (
        result.note == "the decision's skills ('code.sql') were deleted since: the outcome went to mode 'code' instead"
    )
    untouched = book.route(request(allowed_agents=["mid"]))
    assert book.record(OutcomeReport(decision_id=untouched.decision_id, success=True)).note is None


def test_outcome_updates_fractionally_by_the_decisions_weights(book: Handbook) -> None:
    skills = [SkillDemand(skill_id="code.python", weight=3.0), SkillDemand(skill_id="code.sql", weight=1.0)]
    decision = book.route(request(skills=skills, allowed_agents=["mid"]))
    result = book.record(OutcomeReport(decision_id=decision.decision_id, reward=0.25))
    # mid had Beta(10, 5) on python and nothing on sql; dyadic numbers, so exact
    expected = {"code.python": (10.1875, 5.5625), "code.sql": (1.0625, 1.1875)}
    assert {u.skill_id: (u.alpha, u.beta) for u in result.updated} == expected
    assert result.duplicate is False and result.agent_id == "mid" and result.reward == 0.25
    for skill, (alpha, beta) in expected.items():
        assert competence_of(book.store, "mid", skill) == (alpha, beta)
        assert next(u for u in result.updated if u.skill_id == skill).mean == alpha / (alpha + beta)
    arrays = book.arrays()  # the live arrays move at once
    assert arrays.evidence[arrays.agent_index["mid"], arrays.column_of_skill("code.sql")] == 0.25


def test_weights_near_the_float_maximum_are_normalised_like_small_ones(book: Handbook) -> None:
    def weights(scale: float) -> dict[str, float]:
        demands = [
            SkillDemand(skill_id="code.python", weight=3 * scale),
            SkillDemand(skill_id="code.sql", weight=scale),
            SkillDemand(skill_id="code.sql", weight=scale),  # the same skill twice adds up
        ]
        return {s.skill_id: s.weight for s in book.route(request(skills=demands)).skills}

    expected = pytest.approx({"code.python": 0.6, "code.sql": 0.4})
    assert weights(5e307) == expected and weights(1.0) == expected


def test_an_outcome_for_a_deleted_agent_is_logged_and_says_so(book: Handbook) -> None:
    decision = book.route(request(allowed_agents=["mid"]))
    book.delete_agent("mid")
    report = OutcomeReport(decision_id=decision.decision_id, success=True)
    result = book.record(report)
    assert result.updated == [] and result.note is not None and "'mid' was deleted" in result.note
    assert result.applied is False
    assert book.store.outcome(decision.decision_id) is not None
    again = book.record(report)  # its repeat says the same (QA: it said applied, with no note)
    assert again.duplicate is True and (again.applied, again.note, again.updated) == (False, result.note, [])
    # and the deleted agent stays deleted for routing (QA: the record declared the arrays from before the deletion
    # current, and route_step and delegate took 'mid' again until the server restarted)
    assert "mid" not in book.arrays().agent_ids
    with pytest.raises(NotFound, match="mid"):
        book.route(request(allowed_agents=["mid"]))
    assert all(book.route(request()).agent_id != "mid" for _ in range(3))


@pytest.mark.parametrize(("success", "expected"), [(True, (10.5, 5.0)), (False, (10.0, 5.5))])
def test_success_is_reward_one_or_zero(book: Handbook, success: bool, expected: tuple[float, float]) -> None:
    skills = [SkillDemand(skill_id="code.python", weight=1.0), SkillDemand(skill_id="code.sql", weight=1.0)]
    decision = book.route(request(skills=skills, allowed_agents=["mid"]))
    book.record(OutcomeReport(decision_id=decision.decision_id, success=success))
    assert competence_of(book.store, "mid", "code.python") == expected


def test_infrastructure_errors_record_cost_but_never_touch_competence(book: Handbook) -> None:
    skills = [SkillDemand(skill_id="code.python", weight=3.0), SkillDemand(skill_id="code.sql", weight=1.0)]
    for error_class in ("timeout", "rate_limit", "connection", "auth", "server_error"):
        competence = book.store.competence()
        decision = book.route(request(skills=skills, allowed_agents=["mid"], session_id="s"))
        result = book.record(
            OutcomeReport(decision_id=decision.decision_id, error_class=error_class, cost_usd=0.002, latency_s=30.0)
        )
        assert result.updated == [] and result.reward is None and result.error_class == error_class
        assert book.store.competence() == competence
        assert book.store.outcome(decision.decision_id) is not None
    costs = {c.skill_id: c for c in book.store.costs() if c.agent_id == "mid"}
    assert costs["code.python"].n == pytest.approx(5 * 0.75) and costs["code.sql"].n == pytest.approx(5 * 0.25)
    assert costs["code.python"].mean_cost_usd == pytest.approx(0.002)
    assert costs["code.python"].mean_latency_s == 0.0  # a timeout's latency says nothing about the agent
    assert book.store.session_spend("s") == pytest.approx(0.01)


def test_a_figure_a_call_did_not_report_is_not_a_zero_in_its_mean(book: Handbook) -> None:
    """QA: a call that reported no latency nor tokens, then one of 10 s and 100 prompt tokens, read 5 s and 50
    tokens; a billed timeout's latency (left out) still halved the next success's."""
    skills = [SkillDemand(skill_id="code.python", weight=1.0)]
    reports = [
        {"success": True, "cost_usd": 0.001},
        {"success": True, "cost_usd": 0.001, "latency_s": 10.0, "prompt_tokens": 100},
        {"error_class": "timeout", "cost_usd": 0.001, "latency_s": 30.0},
        {"success": True, "cost_usd": 0.001, "latency_s": 4.0, "prompt_tokens": 200},
    ]
    for report in reports:
        decision = book.route(request(skills=skills, allowed_agents=["mid"]))
        book.record(OutcomeReport(decision_id=decision.decision_id, **report))
    (stats,) = [c for c in book.store.costs() if (c.agent_id, c.skill_id) == ("mid", "code.python")]
    assert (stats.n, stats.n_latency_s, stats.n_prompt_tokens, stats.n_completion_tokens) == (4.0, 2.0, 2.0, 0.0)
    assert stats.mean_latency_s == pytest.approx(7.0) and stats.mean_prompt_tokens == pytest.approx(150.0)
    assert stats.mean_completion_tokens == 0.0  # none reported: its count says so
    assert book.store.rebuild() == book.store.document()  # the event log replays to the same figures


def test_duplicate_report_returns_the_first_result_and_changes_nothing(book: Handbook, clock: Clock) -> None:
    decision = book.route(request(allowed_agents=["mid"]))
    report = OutcomeReport(decision_id=decision.decision_id, reward=0.75, cost_usd=0.01, prompt_tokens=10)
    first = book.record(report)
    before = dump(book.store)
    second = book.record(report)
    assert second.duplicate is True
    assert second.model_dump(exclude={"duplicate"}) == first.model_dump(exclude={"duplicate"})
    clock.now += 10 * TTL  # still a duplicate, not an expiry, after the time to live
    assert book.record(report).duplicate is True
    assert dump(book.store) == before


def test_forgetting_discounts_old_evidence(tmp_path: Path, clock: Clock) -> None:
    book = make_book(tmp_path / "f.db", clock, forgetting=0.5)
    for expected in ((6.5, 3.0), (4.75, 2.0)):  # Beta(10, 5): forget to (5.5, 3), +1 -> (6.5, 3); (3.75, 2) +1
        decision = book.route(request(allowed_agents=["mid"]))
        book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
        assert competence_of(book.store, "mid", "code.python") == expected
    assert competence_of(book.store, "pricey", "code.python") == (20.0, 2.0)  # only the updated pair forgets
    book.store.close()


def test_forgetting_ages_a_skill_by_how_much_the_step_needed_it(tmp_path: Path, clock: Clock) -> None:
    """QA: every step listing a skill aged all its evidence by gamma, whatever its weight: at gamma 0.95, 60 steps
    giving a skill 0.02 each cut 17.4 observations to 1.2. Now a weight w ages by gamma ** w."""
    book = make_book(tmp_path / "f.db", clock, forgetting=0.5)
    before = {s: competence_of(book.store, "mid", s) or (1.0, 1.0) for s in ("code.python", "code.sql")}
    skills = [SkillDemand(skill_id="code.python", weight=0.75), SkillDemand(skill_id="code.sql", weight=0.25)]
    decision = book.route(request(allowed_agents=["mid"], skills=skills))
    book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
    for skill_id, weight in (("code.python", 0.75), ("code.sql", 0.25)):
        alpha, beta = before[skill_id]
        aged = 0.5**weight
        expected = (1 + aged * (alpha - 1) + weight, 1 + aged * (beta - 1))
        assert competence_of(book.store, "mid", skill_id) == pytest.approx(expected)
    assert book.store.rebuild() == book.store.document()  # the replay ages alike
    # an event logged by an earlier release has no forget_by_weight: it aged by gamma whatever the weight, and a
    # rebuild must replay it so to equal the state that release left
    alpha, beta = competence_of(book.store, "mid", "code.sql") or (1.0, 1.0)
    old_event = {"decision_id": "old", "agent_id": "mid", "skills": [["code.sql", 0.25]], "mode": None}
    book.store.apply("outcome", {**old_event, "gamma": 0.5, "reward": 1.0, "error_class": "task"})
    flat = (1 + 0.5 * (alpha - 1) + 0.25, 1 + 0.5 * (beta - 1))
    assert competence_of(book.store, "mid", "code.sql") == pytest.approx(flat)
    assert book.store.rebuild() == book.store.document()
    book.store.close()


def test_a_mode_level_outcome_is_evidence_for_that_mode(book: Handbook) -> None:
    decision = book.route(RouteRequest(text="zebra marmalade", mode="search", lambda_=0.0, allowed_agents=["mid"]))
    assert decision.skills == [] and decision.skills_source == "mode level"
    consulted = book.consult("zebra marmalade", mode="search")  # consult words it as route_step does (QA)
    assert consulted.skills == [] and consulted.skills_source == "mode level"
    assert book.consult("zebra marmalade").skills_source == "agent level"
    book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
    arrays = book.arrays()
    assert arrays.evidence[arrays.agent_index["mid"], arrays.column_of_mode("search")] == 1.0


# -- rejected calls write nothing -------------------------------------------------------------------------


@pytest.fixture
def settled(book: Handbook) -> tuple[Handbook, str, str]:
    """A handbook with one reported decision and one pending decision."""
    reported = book.route(request(allowed_agents=["mid"]))
    book.record(OutcomeReport(decision_id=reported.decision_id, reward=0.5, cost_usd=0.01))
    pending = book.route(request(allowed_agents=["mid"]))
    return book, reported.decision_id, pending.decision_id


Call = Callable[[Handbook, str, str], Any]
REJECTED: list[tuple[str, Call, type[HandbookError], str]] = [
    ("empty text", lambda b, r, p: b.route(request(text="   ")), InvalidInput, "text"),
    ("oversized text", lambda b, r, p: b.route(request(text="x" * (TEXT_MAX + 1))), InvalidInput, "at most"),
    ("negative lambda", lambda b, r, p: b.route(request(lambda_=-0.1)), InvalidInput, "lambda_"),
    ("nan lambda", lambda b, r, p: b.route(request(lambda_=math.nan)), InvalidInput, "lambda_"),
    ("top_k 0", lambda b, r, p: b.route(request(top_k=0)), InvalidInput, "top_k"),
    (
        "unknown skill",
        lambda b, r, p: b.route(request(skills=[SkillDemand(skill_id="code.pyton", weight=1)])),
        NotFound,
        "closest known: code.python",
    ),
    ("zero weights", lambda b, r, p: b.route(request(skills=python(0.0))), InvalidInput, "sum to a positive"),
    ("infinite weight", lambda b, r, p: b.route(request(skills=python(math.inf))), InvalidInput, "finite"),
    ("unknown mode", lambda b, r, p: b.route(request(mode="cod")), NotFound, "closest known: code"),
    ("unknown allowed agent", lambda b, r, p: b.route(request(allowed_agents=["pricy"])), NotFound, "pricey"),
    ("unroutable", lambda b, r, p: b.route(request(allowed_agents=[])), Unroutable, "not in allowed_agents"),
    ("consult oversized", lambda b, r, p: b.consult("x" * (TEXT_MAX + 1)), InvalidInput, "text"),
    ("unknown decision", lambda b, r, p: b.record(OutcomeReport(decision_id="nope", reward=1.0)), NotFound, "nope"),
    ("reward above 1", lambda b, r, p: b.record(OutcomeReport(decision_id=p, reward=1.5)), InvalidInput, "[0, 1]"),
    ("reward below 0", lambda b, r, p: b.record(OutcomeReport(decision_id=p, reward=-0.1)), InvalidInput, "reward"),
    ("nan reward", lambda b, r, p: b.record(OutcomeReport(decision_id=p, reward=math.nan)), InvalidInput, "reward"),
    (
        "reward and success",
        lambda b, r, p: b.record(OutcomeReport(decision_id=p, reward=1.0, success=True)),
        InvalidInput,
        "exactly one",
    ),
    ("no reward", lambda b, r, p: b.record(OutcomeReport(decision_id=p)), InvalidInput, "reward"),
    (
        "infra with reward",
        lambda b, r, p: b.record(OutcomeReport(decision_id=p, reward=0.0, error_class="timeout")),
        InvalidInput,
        "infrastructure",
    ),
    (
        "infra with success",
        lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, error_class="timeout")),
        InvalidInput,
        "success=True: expected no success with error_class 'timeout'",
    ),
    (
        "conflicting report",
        lambda b, r, p: b.record(OutcomeReport(decision_id=r, reward=0.25, cost_usd=0.01)),
        Conflict,
        "already reported",
    ),
    ("unknown parent", lambda b, r, p: b.upsert_skill(Skill(id="x", parent_id="code.pythn")), NotFound, "code.python"),
    (
        "cycle",
        lambda b, r, p: b.upsert_skill(Skill(id="code", mode="code", parent_id="code.sql")),
        InvalidInput,
        "parent_id",
    ),
    ("reserved skill id", lambda b, r, p: b.upsert_skill(Skill(id="*")), InvalidInput, "reserved"),
    ("delete unknown agent", lambda b, r, p: b.delete_agent("mdi"), NotFound, "mid"),
    ("delete unknown skill", lambda b, r, p: b.delete_skill("code.sq"), NotFound, "code.sql"),
    ("delete a parent", lambda b, r, p: b.delete_skill("code"), InvalidInput, "without children"),
    ("bad cursor", lambda b, r, p: b.list_skills(cursor="zz"), InvalidInput, "cursor"),
    ("bad limit", lambda b, r, p: b.list_agents(limit=0), InvalidInput, "limit"),
]


@pytest.mark.parametrize(("name", "call", "error", "says"), REJECTED, ids=[r[0] for r in REJECTED])
def test_a_rejected_call_writes_nothing(
    settled: tuple[Handbook, str, str], name: str, call: Call, error: type[HandbookError], says: str
) -> None:
    book, reported, pending = settled
    before = dump(book.store)
    with pytest.raises(error) as caught:
        call(book, reported, pending)
    assert says in str(caught.value)
    assert dump(book.store) == before


def test_an_expired_decision_is_refused_and_writes_nothing(settled: tuple[Handbook, str, str], clock: Clock) -> None:
    book, _, pending = settled
    clock.now += TTL + 1.0
    before = dump(book.store)
    with pytest.raises(Expired, match="expired"):
        book.record(OutcomeReport(decision_id=pending, success=True))
    assert dump(book.store) == before


def test_a_report_just_inside_the_time_to_live_is_accepted(settled: tuple[Handbook, str, str], clock: Clock) -> None:
    book, _, pending = settled
    clock.now += TTL
    assert book.record(OutcomeReport(decision_id=pending, success=True)).duplicate is False


UNCHECKED: list[tuple[str, Call]] = [
    ("negative cost", lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, cost_usd=-1.0))),
    ("nan cost", lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, cost_usd=math.nan))),
    ("infinite cost", lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, cost_usd=math.inf))),
    ("negative tokens", lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, prompt_tokens=-5))),
    ("nan latency", lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, latency_s=math.nan))),
    ("nan max cost", lambda b, r, p: b.route(request(max_cost_usd=math.nan))),
    ("negative max cost", lambda b, r, p: b.route(request(max_cost_usd=-1.0))),
    ("negative budget", lambda b, r, p: b.route(request(session_id="s", budget_usd=-1.0))),
    ("negative seed", lambda b, r, p: b.route(request(strategy="thompson", seed=-1))),
    ("a seed beyond any float", lambda b, r, p: b.route(request(strategy="thompson", seed=10**400))),
    ("a seed wider than 32 bits", lambda b, r, p: b.route(request(strategy="thompson", seed=2**32))),
    ("a cost above MAX_USD", lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, cost_usd=1e300))),
    (
        "tokens above MAX_TOKENS",
        lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, prompt_tokens=2**60)),
    ),
    (
        "a latency above MAX_SECONDS",
        lambda b, r, p: b.record(OutcomeReport(decision_id=p, success=True, latency_s=1e9)),
    ),
    ("a budget above MAX_USD", lambda b, r, p: b.route(request(session_id="s", budget_usd=1e7))),
    ("unknown strategy", lambda b, r, p: b.route(request(strategy="greedy"))),
]


@pytest.mark.parametrize(("name", "call"), UNCHECKED, ids=[u[0] for u in UNCHECKED])
def test_out_of_bounds_numbers_are_rejected_and_write_nothing(
    settled: tuple[Handbook, str, str], name: str, call: Call
) -> None:
    book, reported, pending = settled
    before = dump(book.store)
    with pytest.raises(InvalidInput):
        call(book, reported, pending)
    assert dump(book.store) == before
    book.store.document()  # still readable


def test_a_new_version_through_the_same_store_reaches_the_arrays(book: Handbook) -> None:
    assert "pricey" in book.arrays().agent_ids
    book.store.create_version(HandbookDocument(agents=[Agent(id="solo")]), source="learn")
    assert book.arrays().agent_ids == ["solo"]
    assert book.route(request(skills=None)).agent_id == "solo"


def test_arrays_patched_by_records_equal_arrays_rebuilt_from_the_file(tmp_path: Path, clock: Clock) -> None:
    book = make_book(tmp_path / "p.db", clock, forgetting=0.9)
    skills = ["code", "code.python", "code.sql", "search.web"]
    for step in range(60):
        demands = [SkillDemand(skill_id=skills[step % 4], weight=1.0), SkillDemand(skill_id="code.sql", weight=0.5)]
        decision = book.route(
            request(
                text="zebra" if step % 5 == 0 else TEXT,
                skills=None if step % 5 == 0 else demands,
                mode="search" if step % 5 == 0 else None,
                strategy="thompson",
                seed=step,
            )
        )
        if step % 7 == 3:
            report = OutcomeReport(decision_id=decision.decision_id, error_class="timeout", cost_usd=0.003)
        else:
            report = OutcomeReport(decision_id=decision.decision_id, reward=(step % 4) / 3, cost_usd=0.001 * step)
        book.record(report)
    cached = book.arrays()
    fresh = build_arrays(
        book.store.modes(), book.store.skills(), book.store.agents(), book.store.competence(), book.store.costs()
    )
    assert cached.agent_ids == fresh.agent_ids and cached.skill_ids == fresh.skill_ids
    assert np.isfinite(cached.prompt_mean).any()  # the routed steps' token estimates reached the arrays
    for name in ("alpha", "beta", "mean", "var", "evidence", "cost_mean", "agent_cost", "prompt_mean"):
        assert np.allclose(getattr(cached, name), getattr(fresh, name), rtol=1e-12, atol=0.0, equal_nan=True), name
    book.store.close()


def _rebuilt(book: Handbook) -> HandbookArrays:
    store = book.store
    return build_arrays(store.modes(), store.skills(), store.agents(), store.competence(), store.costs())


def _same_posteriors(cached: HandbookArrays, fresh: HandbookArrays) -> None:
    for name in ("alpha", "beta", "mean", "var", "evidence", "cost_mean", "agent_cost", "prompt_mean"):
        assert np.allclose(getattr(cached, name), getattr(fresh, name), rtol=1e-12, atol=0.0, equal_nan=True), name


def test_a_burst_of_records_reaches_the_arrays_on_the_next_read(tmp_path: Path, clock: Clock) -> None:
    book = make_book(tmp_path / "burst.db", clock)
    skills = ["code", "code.python", "code.sql", "search.web"]
    decisions = [
        book.route(request(skills=[SkillDemand(skill_id=skills[i % 4], weight=1.0)], strategy="thompson", seed=i))
        for i in range(24)
    ]
    before = book.arrays()
    for i, decision in enumerate(decisions):  # no read in between: the patches queue up
        book.record(OutcomeReport(decision_id=decision.decision_id, reward=(i % 3) / 2, cost_usd=0.002 * (i + 1)))
    after = book.arrays()
    assert not np.allclose(after.alpha, before.alpha)  # the records moved the posteriors
    _same_posteriors(after, _rebuilt(book))
    book.store.close()


def test_an_outcome_that_changes_no_cell_keeps_the_cached_arrays(tmp_path: Path, clock: Clock) -> None:
    book = make_book(tmp_path / "same.db", clock)
    decision = book.route(request())
    cached = book.arrays()
    book.record(OutcomeReport(decision_id=decision.decision_id, error_class="connection", cost_usd=0.0))
    assert book.arrays() is cached  # an outage that cost nothing changes no posterior: nothing to re-derive
    _same_posteriors(cached, _rebuilt(book))
    later = book.route(request())
    book.record(OutcomeReport(decision_id=later.decision_id, success=True, cost_usd=0.01))
    assert book.arrays() is not cached  # a real outcome still reaches the arrays
    _same_posteriors(book.arrays(), _rebuilt(book))
    book.store.close()


def test_an_edit_of_texts_alone_keeps_the_cached_arrays(tmp_path: Path, clock: Clock) -> None:
    """No derived number reads a description, indicator, example or insight: such an edit does not re-derive (3.5 s
    at 200 x 2,000), while an edit of a routed field (a price, a parent) does, and queued outcomes survive it."""
    book = make_book(tmp_path / "texts.db", clock)
    decision = book.route(request())
    cached = book.arrays()
    book.edit_skill("code.python", {"description": "writes Python", "indicators": ["def", "import"]})
    book.edit_agent("mid", {"description": "the middle one"})
    book.edit_mode("search", {"insights": ["prefer the cheap agent for lookups"]})
    assert book.arrays() is cached
    cards = {c.skill_id: c for c in book.consult("writes python def import").skills}  # shown: the edited text
    assert (cards["code.python"].description, cards["code.python"].indicators) == ("writes Python", ["def", "import"])
    assert skill_card(book, "code.python")["description"] == "writes Python"
    assert agent_card(book, "mid")["description"] == "the middle one"
    book.record(OutcomeReport(decision_id=decision.decision_id, success=True, cost_usd=0.01))
    book.edit_skill("code.sql", {"description": "writes SQL"})  # after a queued outcome: it still lands
    _same_posteriors(book.arrays(), _rebuilt(book))
    assert book.arrays() is not cached
    patched = book.arrays()
    book.edit_agent("mid", {"input_per_mtok": 9.0})
    assert book.arrays() is not patched and book.arrays().agent_ids == _rebuilt(book).agent_ids
    _same_posteriors(book.arrays(), _rebuilt(book))
    book.store.close()


def test_a_report_returns_the_competence_routing_now_uses(tmp_path: Path, clock: Clock) -> None:
    """updated[].mean is the skill's own count (0.6 after one success); `competence` is the shrunk mean that
    route_step scores next: the cell of arrays built afresh from the file, with one or several outcomes queued;
    unknown (None) after another process's write rather than derived in the record."""
    book = make_book(tmp_path / "shrunk.db", clock)
    other = Handbook(HandbookStore(tmp_path / "shrunk.db"), HandbookSettings(decision_ttl_s=TTL), clock=clock)
    book.arrays()
    steps = [[SkillDemand(skill_id="code.sql", weight=0.7), SkillDemand(skill_id="code.python", weight=0.3)]] * 3
    steps.append([SkillDemand(skill_id="search.web", weight=1.0)])
    for i, skills in enumerate(steps * 2):
        decision = book.route(request(skills=skills, allowed_agents=["cheap", "mid"][i % 2 :][:1]))
        if i == 5:  # another process writes: the queued patch is dropped, the arrays are derived again
            theirs = other.route(request(skills=skills))
            other.record(OutcomeReport(decision_id=theirs.decision_id, success=True))
        result = book.record(OutcomeReport(decision_id=decision.decision_id, reward=(i % 3) / 2))
        assert result.updated, i
        if i == 5:  # not derived in the record (two servers on a file would derive at every record): unknown
            assert all(update.competence is None for update in result.updated)
            continue
        if i % 2:  # a read now and then: the patch either holds one outcome or several queued ones
            book.arrays()
        fresh = _rebuilt(book)  # from the file, not from the patch
        for update in result.updated:
            cell = fresh._cell(result.agent_id, update.skill_id)
            assert cell is not None and update.competence == pytest.approx(fresh.mean[cell], rel=1e-12, abs=0)
    again = book.record(OutcomeReport(decision_id=decision.decision_id, reward=(i % 3) / 2))
    assert again.duplicate and again.updated == result.updated  # nothing recorded since: the same competence
    other.store.close()
    book.store.close()


def test_a_report_after_this_process_edited_the_handbook_still_returns_the_competence(
    tmp_path: Path, clock: Clock
) -> None:
    """QA: an edit of this server between route_step and record_outcome (even an unrelated mode) made the report's
    competence null, which the README keeps for another process's write: the arrays are derived again instead."""
    book = make_book(tmp_path / "own.db", clock)
    book.arrays()
    decision = book.route(request(skills=[SkillDemand(skill_id="code.sql", weight=1.0)], allowed_agents=["cheap"]))
    book.edit_agent("mid", {"input_per_mtok": 9.0})  # an edit that changes numbers: the cached arrays are stale
    result = book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
    fresh = _rebuilt(book)
    cell = fresh._cell("cheap", "code.sql")
    assert cell is not None and result.updated[0].competence == pytest.approx(fresh.mean[cell], rel=1e-12, abs=0)
    book.store.close()


def test_edits_of_texts_beside_reads_of_the_arrays_never_deadlock(tmp_path: Path, clock: Clock) -> None:
    """An edit runs holding the store's lock; a read holds the handbook's lock and then takes the store's. The
    edit of texts alone once took the handbook's lock inside its transaction: one upsert_skill beside one
    route_step stopped the server."""
    book = make_book(tmp_path / "order.db", clock)
    book.arrays()
    done = {"edits": 0, "reads": 0}

    def edit() -> None:
        for i in range(150):
            book.edit_skill("code.python", {"description": f"text {i}"})
            done["edits"] += 1

    def read() -> None:
        for _ in range(300):
            book.arrays()
            book.consult("write python")
            done["reads"] += 1

    threads = [threading.Thread(target=edit, daemon=True), threading.Thread(target=read, daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)  # a guard against the hang, not a speed check
    assert done == {"edits": 150, "reads": 300}
    assert book.arrays().skill_ids == _rebuilt(book).skill_ids
    book.store.close()


def test_records_queued_while_another_process_writes_are_dropped_for_a_rebuild(tmp_path: Path, clock: Clock) -> None:
    book = make_book(tmp_path / "two.db", clock)
    other = Handbook(HandbookStore(tmp_path / "two.db"), HandbookSettings(decision_ttl_s=TTL), clock=clock)
    mine = [book.route(request()) for _ in range(3)]
    theirs = other.route(request(skills=[SkillDemand(skill_id="code.sql", weight=1.0)]))
    book.arrays()
    book.record(OutcomeReport(decision_id=mine[0].decision_id, success=True, cost_usd=0.01))
    other.record(OutcomeReport(decision_id=theirs.decision_id, success=False, cost_usd=0.02))
    book.record(OutcomeReport(decision_id=mine[1].decision_id, success=True, cost_usd=0.01))
    _same_posteriors(book.arrays(), _rebuilt(book))  # includes the other process's outcome
    other.store.close()
    book.store.close()


def test_an_outcome_of_a_decision_from_an_older_version_is_logged_not_applied(book: Handbook) -> None:
    decision = book.route(request(allowed_agents=["mid"]))
    book.store.create_version(book.store.document(), source="learn", summary="a newer handbook")
    live_before = book.store.document().model_dump()
    result = book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
    assert result.applied is False and result.updated == [] and "version" in (result.note or "")
    assert book.store.document().model_dump() == live_before
    assert [kind for kind, _ in book.store.events(decision.handbook_version)][-1] == "outcome"
    again = book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
    assert again.duplicate is True
    before = book.store.rebuild()
    assert before == book.store.document()


def test_consult_pages_cover_every_row_once_and_a_cursor_serves_only_its_own_question(tmp_path: Path) -> None:
    book = Handbook(HandbookStore(tmp_path / "pages.db"))
    book.upsert_skill(Skill(id="sql", description="write sql queries"))
    for i in range(60):
        book.upsert_agent(Agent(id=f"agent-{i:02d}"))
    first = book.consult("write a sql query", top_k=1)
    assert len(first.agents) == 50 and first.next_cursor is not None
    second = book.consult("write a sql query", top_k=1, cursor=first.next_cursor)
    served = [(r.agent_id, r.skill_id) for r in first.agents + second.agents]
    assert len(served) == len(set(served)) == 60 and second.next_cursor is None
    for other in (
        lambda: book.consult("plan a trip", top_k=1, cursor=first.next_cursor),  # another question
        lambda: book.consult("write a sql query", top_k=2, cursor=first.next_cursor),  # other rows
    ):
        with pytest.raises(InvalidInput, match="same text, mode, top_k"):
            other()
    # an outcome reorders the rows (QA: a page-1 cursor after an edit skipped 9 rows and repeated 4): refused
    routed = book.route(RouteRequest(text="write a sql query", allowed_agents=["agent-07"]))
    book.record(OutcomeReport(decision_id=routed.decision_id, success=True))
    with pytest.raises(InvalidInput, match="same handbook state and skills .an edit or a reported outcome since"):
        book.consult("write a sql query", top_k=1, cursor=first.next_cursor)
    first = book.consult("write a sql query", top_k=1)  # paging again from the start serves every row once
    second = book.consult("write a sql query", top_k=1, cursor=first.next_cursor)
    assert len({(r.agent_id, r.skill_id) for r in first.agents + second.agents}) == 60
    book.upsert_agent(Agent(id="agent-60"))  # an edit
    with pytest.raises(InvalidInput, match="same handbook state"):
        book.consult("write a sql query", top_k=1, cursor=first.next_cursor)
    first = book.consult("write a sql query", top_k=1)
    book.store.create_version(book.store.document(), source="import")  # another handbook: offsets mean nothing
    with pytest.raises(InvalidInput, match="same handbook state"):
        book.consult("write a sql query", top_k=1, cursor=first.next_cursor)


class LoadingMatcher:
    """Infers "sql" until `loaded`, then "plan": as the server's matcher answers lexically while the semantic model
    loads after start, and semantically once it has."""

    def __init__(self) -> None:
        self.loaded = False

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
        return ([("plan", 1.0)], "semantic") if self.loaded else ([("sql", 1.0)], "lexical (semantic model loading)")


def test_a_consult_cursor_is_refused_once_the_matcher_infers_other_skills(tmp_path: Path) -> None:
    """QA: a page-1 cursor issued while the semantic model loaded was served page 2 of the semantic answer, whose
    skills differ: 9 rows of it were never served and 9 served were not in it."""
    matcher = LoadingMatcher()
    book = Handbook(HandbookStore(tmp_path / "pages.db"), matcher=matcher)
    for skill_id in ("sql", "plan"):
        book.upsert_skill(Skill(id=skill_id, description=skill_id))
    for i in range(60):
        book.upsert_agent(Agent(id=f"agent-{i:02d}"))
    first = book.consult("write a sql query", top_k=1)
    assert {r.skill_id for r in first.agents} == {"sql"} and first.next_cursor is not None
    matcher.loaded = True
    with pytest.raises(InvalidInput, match="same handbook state and skills"):
        book.consult("write a sql query", top_k=1, cursor=first.next_cursor)
    first = book.consult("write a sql query", top_k=1)
    second = book.consult("write a sql query", top_k=1, cursor=first.next_cursor)
    assert {r.skill_id for r in first.agents + second.agents} == {"plan"}
    assert len({r.agent_id for r in first.agents + second.agents}) == 60


def test_a_child_added_while_its_parent_is_deleted_never_leaves_an_orphan(book: Handbook) -> None:
    """The parent and children checks run in the edit's own write transaction: checked outside it, a child
    added while its parent was deleted outlived the parent, and the export no longer imported (found by a soak)."""
    import threading

    from skillorchestra.handbook.document_checks import check_document

    for round_ in range(60):
        parent = f"code.p{round_}"
        book.edit_skill(parent, {"mode": "code", "description": "parent"})
        start = threading.Barrier(2)

        def add_child(parent: str = parent, start: threading.Barrier = start) -> None:
            start.wait()
            with contextlib.suppress(HandbookError):
                book.edit_skill(f"{parent}.c", {"parent_id": parent, "description": "child"})

        def delete_parent(parent: str = parent, start: threading.Barrier = start) -> None:
            start.wait()
            with contextlib.suppress(HandbookError):
                book.delete_skill(parent)

        threads = [threading.Thread(target=add_child), threading.Thread(target=delete_parent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        skills = {s.id: s for s in book.store.skills()}
        orphans = [s.id for s in skills.values() if s.parent_id is not None and s.parent_id not in skills]
        assert not orphans, f"round {round_}"
    check_document(book.store.document())  # the export still imports


# -- reads at scale: plain rows, lookups by id and pages in SQL give what the whole tables gave ------------------


def _identical(ours: Any, theirs: Any, where: str = "arrays") -> None:
    """Bit for bit: every array (NaN where NaN), every nested structure, every other field."""
    if isinstance(ours, np.ndarray):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, where
        assert np.array_equal(ours, theirs, equal_nan=ours.dtype.kind in "fc"), where
    elif dataclasses.is_dataclass(ours):
        for item in dataclasses.fields(ours):
            _identical(getattr(ours, item.name), getattr(theirs, item.name), f"{where}.{item.name}")
    else:
        assert ours == theirs, where


def test_arrays_derived_from_plain_rows_are_those_of_the_models_bit_for_bit(tmp_path: Path, clock: Clock) -> None:
    """After an edit the arrays are derived again from unvalidated rows (7.5 s of models at 200 x 2,000)."""
    book = make_book(tmp_path / "rows.db", clock)
    book.upsert_skill(Skill(id="code.sql.joins", mode="code", parent_id="code.sql", description="joins"))
    for step in range(40):
        skills = [SkillDemand(skill_id=["code.python", "code.sql.joins", "search.web"][step % 3], weight=1.0)]
        decision = book.route(
            request(
                text="zebra" if step % 4 == 0 else TEXT,  # no skill matched: evidence of the mode, or the root
                skills=None if step % 4 == 0 else skills,
                mode="search" if step % 8 == 0 else None,
                strategy="thompson",
                seed=step,
            )
        )
        if step % 6 == 5:
            report = OutcomeReport(decision_id=decision.decision_id, error_class="timeout", cost_usd=0.002)
        else:
            report = OutcomeReport(decision_id=decision.decision_id, reward=(step % 5) / 4, cost_usd=1e-4 * step)
        book.record(report)
    book.upsert_agent(Agent(id="late", modes=["search"], input_per_mtok=2.0, output_per_mtok=4.0))  # rebuilds
    columns = {row.skill_id for row in book.store.competence()}
    assert {"*", "@search", "code.sql.joins"} <= columns  # rows of a skill, a mode and the root
    assert any(row.n_step_tokens > 0 for row in book.store.costs())
    _identical(book.arrays(), _rebuilt(book))
    book.store.close()


def _whole_list_page(items: list[Any], cursor: str | None, limit: int, prefix: str) -> tuple[list[Any], str | None]:
    """How list_skills and list_agents paged before the pages were read in SQL: the whole list, filtered."""
    after = cursor[len(prefix) :] if cursor else None
    rest = [item for item in items if after is None or item.id > after]
    return rest[:limit], (prefix + rest[:limit][-1].id if len(rest) > limit else None)


def test_list_pages_read_in_sql_are_the_pages_of_the_whole_list(tmp_path: Path, clock: Clock) -> None:
    """Same items, same order (ids compared by code point, as SQLite compares UTF-8) and the same cursors."""
    book = make_book(tmp_path / "pages.db", clock)
    for skill_id, mode in [("A", "code"), ("a", "search"), ("a.b", "search"), ("a-b", "code"), ("\u00e9", "code")]:
        book.upsert_skill(Skill(id=skill_id, mode=mode))
    book.upsert_skill(Skill(id="\u65e5\u672c", mode="search", parent_id="search.web"))
    for agent_id, modes in [("Z", []), ("b/c", ["search", "code"]), ("\u00e4", ["search"]), ("z~", ["code"])]:
        book.upsert_agent(Agent(id=agent_id, modes=modes))
    skills, agents = book.store.skills(), book.store.agents()
    ids = [item.id for item in [*skills, *agents]]
    tails = ["", *ids, " ", "a.", "\u00e9\u00e9", "\uffff", "code.python.z"]
    for mode in (None, "code", "search"):
        mode_skills = [s for s in skills if mode is None or s.mode == mode]
        mode_agents = [a for a in agents if serves(a.modes, mode)]
        assert 0 < len(mode_agents) < len(agents) or mode is None
        for limit in (1, 2, 3, 200):
            for tail in tails:
                cursor = "ks." + tail if tail else None
                page = book.list_skills(mode, cursor, limit)
                assert (page.items, page.next_cursor) == _whole_list_page(mode_skills, cursor, limit, "ks.")
                cursor = "ka." + tail if tail else None
                served = book.list_agents(mode, cursor, limit)
                assert (served.items, served.next_cursor) == _whole_list_page(mode_agents, cursor, limit, "ka.")
    with pytest.raises(InvalidInput, match="cursor"):  # no cursor holds a lone surrogate: refused, not a crash
        book.list_skills(cursor="ks.\ud800")
    book.store.close()


def test_deletions_count_the_rows_they_remove(tmp_path: Path, clock: Clock) -> None:
    book = make_book(tmp_path / "counts.db", clock)
    for step in range(12):
        decision = book.route(request(skills=[SkillDemand(skill_id="code.sql", weight=1.0)], strategy="thompson"))
        book.record(OutcomeReport(decision_id=decision.decision_id, reward=0.5, cost_usd=0.001 * (step % 2)))
    competence, costs = book.store.competence(), book.store.costs()
    removed = book.delete_skill("code.sql")
    assert removed.competence_rows == sum(r.skill_id == "code.sql" for r in competence) > 0
    assert removed.cost_rows == sum(r.skill_id == "code.sql" for r in costs) > 0
    competence, costs = book.store.competence(), book.store.costs()
    removed = book.delete_agent("mid")
    assert removed.competence_rows == sum(r.agent_id == "mid" for r in competence) > 0
    assert removed.cost_rows == sum(r.agent_id == "mid" for r in costs)
    book.store.close()


def test_a_skills_placement_is_checked_along_its_ancestors_by_id(book: Handbook) -> None:
    book.upsert_skill(Skill(id="code.sql.joins", mode="code", parent_id="code.sql"))
    with pytest.raises(InvalidInput) as caught:  # two levels down: still a cycle
        book.upsert_skill(Skill(id="code", mode="code", parent_id="code.sql.joins"))
    assert "a skill that is not 'code' or below it" in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        book.upsert_skill(Skill(id="code.rust", mode="search", parent_id="code"))
    assert "'code', the mode of its parent 'code'" in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        book.upsert_skill(Skill(id="code", mode="search"))
    assert "'code', the mode of its children code.python, code.sql (give them" in str(caught.value)
    with pytest.raises(NotFound) as caught:
        book.upsert_skill(Skill(id="x", parent_id="code.sq"))
    assert "closest known: code.sql" in str(caught.value)
    book.upsert_skill(Skill(id="code.sql.joins", mode="code", parent_id="code.python"))  # a move is fine
    assert book.skill("code.sql.joins") == Skill(id="code.sql.joins", mode="code", parent_id="code.python")


def test_a_cap_cannot_count_a_step_whose_cost_nobody_knows(tmp_path: Path) -> None:
    """No agent has a price or a recorded cost: c_ref is 0, so an unknown cost was charged $0 and a session budget
    or max_cost_usd let every step through (QA: three steps 'spent' $0 of a $1e-7 budget)."""
    store = HandbookStore(tmp_path / "unpriced.db")
    unpriced = [Agent(id="u1"), Agent(id="u2")]
    store.create_version(DOCUMENT.model_copy(update={"agents": unpriced, "competence": []}), source="test")
    book = Handbook(store)
    assert book.route(request(lambda_=0.1)).candidates[0].expected_cost_usd is None  # uncapped: routed
    for caps in ({"session_id": "s", "budget_usd": 1e-7}, {"max_cost_usd": 1e-7}):
        before = store.counts()
        with pytest.raises(Unroutable, match="u1, u2: cost unknown and no agent's cost is known to charge instead"):
            book.route(request(**caps))
        assert store.counts() == before
    book.upsert_agent(Agent(id="u2", input_per_mtok=1.0, output_per_mtok=2.0))  # one known cost: u1 is charged it
    decision = book.route(request(session_id="s", budget_usd=1.0))
    assert decision.agent_id in {"u1", "u2"}
    store.close()


def test_a_budget_without_a_session_is_refused_not_taken_as_a_cap_of_the_step(book: Handbook) -> None:
    before = book.store.counts()
    with pytest.raises(InvalidInput, match=r"budget_usd=0.5: expected a session_id beside it"):
        book.route(request(budget_usd=0.5))
    assert book.store.counts() == before


def test_consult_shows_the_skill_weights_route_step_uses(tmp_path: Path) -> None:
    """QA: consult (5 skills, renormalised) and route_step (3) gave the same step different weights, and consult
    named a skill route_step dropped. Cards now carry route_step's weights; skills beyond its three show 0."""
    from skillorchestra.handbook.example import seed_example_if_new

    store = HandbookStore(tmp_path / "example.db")
    seed_example_if_new(store)
    book = Handbook(store)
    text = "Which novel did the chemist write? Solve the equation and explain the reaction's history and geography."
    consulted = book.consult(text, top_k=5)
    routed = book.route(RouteRequest(text=text))
    route_weights = {s.skill_id: s.weight for s in routed.skills}
    assert len(consulted.skills) > len(route_weights) == 3  # the step matches more than route_step's three
    card_weights = {c.skill_id: c.weight for c in consulted.skills}
    assert {s: w for s, w in card_weights.items() if w > 0} == pytest.approx(route_weights)
    assert [c.weight for c in consulted.skills[3:]] == [0.0] * (len(consulted.skills) - 3)
    assert {c.skill_id for c in book.consult(text, top_k=3).skills} == set(route_weights)
    store.close()


def test_an_agent_billed_by_the_call_is_charged_its_price_per_call(tmp_path: Path) -> None:
    """QA: an MCP tool agent's cost_per_call_usd was invisible to routing (charged c_ref), so a step with a $0.001
    budget ran a $0.002 call. The handbook holds the price per call now; token prices add to it."""
    store = HandbookStore(tmp_path / "tools.db")
    agents = [
        Agent(id="tool", cost_per_call_usd=0.002),
        Agent(id="llm", input_per_mtok=1.0, output_per_mtok=2.0, cost_per_call_usd=0.0001),
    ]
    store.create_version(DOCUMENT.model_copy(update={"agents": agents, "competence": []}), source="test")
    book = Handbook(store)
    routed = book.route(request(text="x" * 400, lambda_=0.0))
    costs = {c.agent_id: c.expected_cost_usd for c in routed.candidates}
    assert costs["tool"] == pytest.approx(0.002)
    assert costs["llm"] == pytest.approx((100 * 1.0 + 256 * 2.0) / 1e6 + 0.0001)  # 400 characters: 100 tokens
    with pytest.raises(Unroutable, match="tool: expected cost \\$0.002 exceeds the session's remaining budget"):
        book.route(request(session_id="s", budget_usd=0.001, allowed_agents=["tool"]))
    assert {a.id: a.cost_per_call_usd for a in HandbookStore(tmp_path / "tools.db").document().agents} == {
        "tool": 0.002,
        "llm": 0.0001,
    }
    store.close()


def test_a_step_without_skills_keeps_why_the_matcher_found_none() -> None:
    """QA: while the model loaded, a step lexical inference found nothing for read "agent level" alone, where the
    README promises the loading note."""
    from skillorchestra.handbook.demands import source_at_level as _level

    assert _level(None, "lexical (semantic model still loading)") == "agent level (semantic model still loading)"
    assert _level("code", "lexical (no semantic match)") == "mode level (no semantic match)"
    assert (_level(None, "lexical"), _level("code", "semantic")) == ("agent level", "mode level")


def test_a_report_waits_while_delegate_carries_its_decision_out(tmp_path: Path, clock: Clock) -> None:
    """QA: a report sent while delegate(decision_id) called the agent was applied without the cost delegate measured a
    moment later. It is refused in the outcome's own transaction (review: a claim landing between a read and the
    write went unseen), delegate's own report is not, a repeat after delegate's report is a duplicate (review), and
    a claim too old to be in flight (its server stopped) no longer blocks reports."""
    from skillorchestra.handbook.errors import Conflict
    from skillorchestra.handbook.models import CLAIM_IN_FLIGHT_S

    store = HandbookStore(tmp_path / "claim.db")
    store.create_version(DOCUMENT, source="test")
    book = Handbook(store, HandbookSettings(decision_ttl_s=2 * CLAIM_IN_FLIGHT_S), clock=clock)
    carried, uncalled = (book.route(request(skills=python(), allowed_agents=["mid"])) for _ in range(2))
    for decision in (carried, uncalled):
        store.claim_decision(decision.decision_id, lambda row: None, clock.now)
    counts = store.counts()
    with pytest.raises(Conflict, match="is being carried out by delegate"):
        book.record(OutcomeReport(decision_id=carried.decision_id, success=True))
    assert store.counts() == counts  # nothing written
    closed = OutcomeReport(decision_id=uncalled.decision_id, error_class="connection", cost_usd=0.0)
    book.record(closed, by_delegate=True)  # delegate closing a decision whose agent it could not call
    assert book.record(closed).duplicate  # the client's repeat of it
    with pytest.raises(Conflict, match="already reported"):
        book.record(OutcomeReport(decision_id=uncalled.decision_id, success=True))
    clock.now += CLAIM_IN_FLIGHT_S + 1  # the delegate's server stopped mid-call
    assert book.record(OutcomeReport(decision_id=carried.decision_id, success=True)).reward == 1.0
    store.close()


def test_a_servers_first_report_returns_the_competence(tmp_path: Path, clock: Clock) -> None:
    """QA: a server whose first act was a report (of a step another server routed) answered competence null,
    which the README keeps for another process's write meanwhile: it had never read the arrays."""
    first = make_book(tmp_path / "first.db", clock)
    decision = first.route(request(skills=python(), allowed_agents=["mid"]))
    second = Handbook(HandbookStore(tmp_path / "first.db"), HandbookSettings(decision_ttl_s=TTL), clock=clock)
    result = second.record(OutcomeReport(decision_id=decision.decision_id, success=True))
    assert result.updated and all(update.competence is not None for update in result.updated)
    second.store.close()
    first.store.close()


def test_a_delegated_decision_waits_a_full_ttl_after_its_call(tmp_path: Path, clock: Clock) -> None:
    """QA: with a time to live shorter than the agent's answer, delegate handed back a decision that had expired: the
    client learns its id only when delegate returns, so the wait for its outcome starts there."""
    store = HandbookStore(tmp_path / "ttl.db")
    store.create_version(DOCUMENT, source="test")
    book = Handbook(store, HandbookSettings(decision_ttl_s=3.0), clock=clock)
    decision = book.route(request(skills=python(), allowed_agents=["mid"]))
    clock.now += 6.0  # the agent took 6 s
    figures = {"cost_source": "agent_prices", "prompt_tokens": 1, "completion_tokens": 1, "error_class": None}
    book.note_call(decision.decision_id, cost_usd=0.001, latency_s=6.0, **figures)
    clock.now += 1.0
    assert book.record(OutcomeReport(decision_id=decision.decision_id, success=True)).reward == 1.0
    store.close()


def test_a_consult_answer_stays_small_when_its_skills_hold_long_texts(tmp_path: Path) -> None:
    """QA: five skills with 50 indicators and 50 examples of 1,000 characters each (within their bounds) made a
    1.8 MB answer, sent twice (text and structured content): over SSE the client refused the event (1 MiB) and
    closed the session. The cards keep their leading texts within the page budget and count the rest."""
    book = Handbook(HandbookStore(tmp_path / "big.db"))
    long_texts = [f"{i:02d} " + "数据" * 498 for i in range(50)]  # 3 bytes a character in UTF-8
    for k in range(5):
        book.upsert_skill(Skill(id=f"s{k}", description=f"zorblax {k}", indicators=long_texts, examples=long_texts))
    book.upsert_skill(Skill(id="short", description="zorblax short", indicators=["one", "two"], examples=["three"]))
    book.upsert_agent(Agent(id="a"))
    answer = book.consult("zorblax", top_k=6)
    assert len(answer.model_dump_json().encode()) < 300 * 1024
    cards = {card.skill_id: card for card in answer.skills}
    assert set(cards) == {"s0", "s1", "s2", "s3", "s4", "short"}
    for k in range(5):
        card = cards[f"s{k}"]
        assert card.indicators == long_texts[: len(card.indicators)]  # the leading ones
        assert card.examples == long_texts[: len(card.examples)]
        assert len(card.indicators) >= 1 and len(card.examples) >= 1  # each list keeps its half of the budget
        assert card.texts_not_shown == 100 - len(card.indicators) - len(card.examples) > 0
    short = cards["short"]
    assert (short.indicators, short.examples, short.texts_not_shown) == (["one", "two"], ["three"], 0)
    book.delete_skill("short")
    alone = book.consult("zorblax", top_k=1).skills[0]  # one card has the whole budget: more of each list
    assert 0 < alone.texts_not_shown < cards[alone.skill_id].texts_not_shown


def test_a_consult_answer_of_quoted_texts_stays_within_the_sse_clients_limit(tmp_path: Path) -> None:
    """Review: the card budget counted a quote or a newline as one byte; in the JSON the client receives it takes
    two (four in the text block, whose JSON is quoted again), and five such skills made a 1.5 MB answer."""
    from skillorchestra.tools.common import compact_result

    book = Handbook(HandbookStore(tmp_path / "quoted.db"))
    quoted = ['"' * 999] * 50
    for k in range(5):
        book.upsert_skill(Skill(id=f"s{k}", description=f"zorblax {k}", indicators=quoted, examples=quoted))
    book.upsert_agent(Agent(id="a"))
    sent = compact_result(book.consult("zorblax", top_k=5))
    wire = json.dumps({"content": [c.model_dump() for c in sent.content], "structuredContent": sent.structured_content})
    assert len(wire.encode()) < 1024 * 1024  # the SDK's SSE client refuses a larger event
    assert all(card["texts_not_shown"] > 0 for card in sent.structured_content["skills"])
