"""The depth selected per orchestrator: consult_handbook and route_step read a step at it, learn keeps the others'
selections, and import, diff and show treat them as part of the handbook (orchestrator-transfer QA)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from mcp import Client
from mcp_calls import call, loaded, refused
from test_learn_cli import labelled, run  # noqa: F401 (a fixture)
from test_service import DOCUMENT, TTL, Clock, reasons

from skillorchestra.handbook.learning.events import tasks_from_events
from skillorchestra.handbook.models import HandbookDocument, SkillDemand
from skillorchestra.handbook.service import Handbook, HandbookSettings, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.app import create_server

DEPTHS = {"default": 2, "coarse": 1, "modal": 0}
PYTHON_STEP = "write python functions and scripts"


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Handbook]:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT.model_copy(update={"selections": DEPTHS}), source="test")
    yield Handbook(store, HandbookSettings(decision_ttl_s=TTL), clock=Clock())
    store.close()


def test_route_step_reads_inferred_skills_at_the_orchestrators_depth_as_consult_shows_them(book: Handbook) -> None:
    full = book.route(RouteRequest(text=PYTHON_STEP, lambda_=0.0))
    assert "code.python" in [s.skill_id for s in full.skills] and full.granularity is None
    assert "granularity" not in full.model_dump(mode="json")  # no token for an orchestrator that did not name itself
    coarse = book.route(RouteRequest(text=PYTHON_STEP, lambda_=0.0, orchestrator="coarse"))
    assert [(s.skill_id, s.weight) for s in coarse.skills] == [("code", 1.0)]
    assert coarse.granularity == "depth 1 for 'coarse'"
    consulted = book.consult(PYTHON_STEP, orchestrator="coarse")
    assert [card.skill_id for card in consulted.skills] == ["code"] and consulted.granularity == coarse.granularity
    named = book.route(RouteRequest(text=PYTHON_STEP, skills=[SkillDemand(skill_id="code.python", weight=1.0)],
                                    lambda_=0.0, orchestrator="coarse"))  # fmt: skip
    assert [s.skill_id for s in named.skills] == ["code.python"]  # the caller's own choice is not coarsened
    assert named.granularity is not None and named.granularity.startswith("as given")


def test_depth_zero_reads_the_steps_mode_record_with_its_insights_and_files_the_outcome_there(
    book: Handbook,
) -> None:
    """QA: depth 0, 'mode level', showed the agents' overall records ('*') and none of the mode's insights."""
    consulted = book.consult(PYTHON_STEP, orchestrator="modal")
    assert consulted.skills == [] and {row.skill_id for row in consulted.agents} == {"@code"}
    assert consulted.insights == ["[code] prefer the cheap model for boilerplate"]
    assert consulted.skills_source.startswith("mode level")
    decision = book.route(RouteRequest(text=PYTHON_STEP, lambda_=0.0, orchestrator="modal"))
    assert decision.skills == [] and decision.skills_source.startswith("mode level")
    assert {label for c in decision.candidates for label in c.contributions} == {"@code"}
    assert "searcher" in reasons(decision.excluded)  # still a code step: the mode rule reads the skills matched
    updated = book.record(OutcomeReport(decision_id=decision.decision_id, success=True)).updated
    assert [u.skill_id for u in updated] == ["@code"]  # the label route_step showed is the record it updates
    # the log keeps only modes a caller named: learning from it sees one task, not the text twice (review)
    plain = book.route(RouteRequest(text=PYTHON_STEP, lambda_=0.0, allowed_agents=["mid"]))
    book.record(OutcomeReport(decision_id=plain.decision_id, success=False))
    assert book.store.decision(decision.decision_id)["mode"] is None  # type: ignore[index]
    assert [(t.mode, t.query) for t in tasks_from_events(book.store).tasks] == [(None, PYTHON_STEP)]


def test_depth_zero_without_a_mode_to_read_says_it_reads_the_agents_records(book: Handbook) -> None:
    """Review: a step no skill matched, at depth 0, routed on '*' while granularity said "mode level"."""
    decision = book.route(RouteRequest(text="zebra marmalade", lambda_=0.0, orchestrator="modal"))
    assert decision.granularity == "depth 0 for 'modal' (no single mode found: agent level)"
    assert {label for c in decision.candidates for label in c.contributions} == {"*"}


def test_a_mode_level_step_is_labelled_as_record_outcome_names_its_record(book: Handbook) -> None:
    """Review: route_step said 'mode:search' of the record record_outcome then called '@search'."""
    decision = book.route(RouteRequest(text="zebra marmalade", mode="search", lambda_=0.0))
    assert {label for c in decision.candidates for label in c.contributions} == {"@search"}
    updated = book.record(OutcomeReport(decision_id=decision.decision_id, success=True)).updated
    assert [u.skill_id for u in updated] == ["@search"]


def test_an_orchestrator_without_a_selection_is_told_the_stored_names(book: Handbook) -> None:
    granularity = book.consult(PYTHON_STEP, orchestrator="Coarse").granularity
    assert granularity.startswith("full (no selection stored for 'Coarse'; closest known: coarse")
    decision = book.route(RouteRequest(text=PYTHON_STEP, lambda_=0.0, orchestrator="Coarse"))
    assert decision.granularity == granularity and "code.python" in [s.skill_id for s in decision.skills]


@pytest.mark.parametrize(
    ("selections", "says"),
    [
        ({"x": -1}, "greater than or equal to 0"),
        ({"x": 33}, "less than or equal to 32"),
        ({"": 1}, "at least 1 character"),
        ({"n" * 201: 1}, "at most 200 characters"),
    ],
)
def test_import_refuses_a_selection_consult_could_never_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], selections: dict[str, int], says: str
) -> None:
    document = json.loads(DOCUMENT.model_dump_json())
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({**document, "selections": selections}), encoding="utf-8")
    code, _, err = run(["handbook", "import", str(path), "--db", str(tmp_path / "h.db")], capsys)
    assert code == 2 and "selections" in err and says in err, err
    assert not (tmp_path / "h.db").exists()
    with pytest.raises(ValueError):  # the model itself, so every way in refuses it
        HandbookDocument.model_validate({**document, "selections": selections})


def test_a_padded_selection_name_is_stored_as_the_tools_will_send_it(tmp_path: Path) -> None:
    document = HandbookDocument.model_validate({**json.loads(DOCUMENT.model_dump_json()), "selections": {" a ": 1}})
    assert document.selections == {"a": 1}


def test_learn_keeps_other_orchestrators_selections_and_diff_and_show_list_them(
    labelled: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """QA: a learn for one orchestrator dropped every other's selection, and nothing listed selections."""
    db = tmp_path / "h.db"
    learn = ["learn", "--data", str(labelled), "--db", str(db), "--matcher", "lexical"]
    code, _, err = run([*learn, "--orchestrator", "  small  "], capsys)  # stripped, as the tools strip it
    assert code == 0, err
    with contextlib.closing(HandbookStore(db)) as opened:
        first = opened.selections()
    assert set(first) == {"default", "small"}
    code, out, err = run([*learn, "--orchestrator", "big", "--lambda", "0.3"], capsys)
    assert code == 0, err
    store = HandbookStore(db)
    try:
        assert store.selections()["small"] == first["small"] and set(store.selections()) == {"default", "small", "big"}
        kept = f"Kept the live handbook's depth selections of 1 other orchestrator: 'small' (depth {first['small']})"
        assert kept in out
        assert "kept the live handbook's depth selections" in store.versions()[-1]["summary"]
        assert store.versions()[-1]["metrics"]["selections_kept"] == {"small": first["small"]}
    finally:
        store.close()
    code, out, _ = run(["handbook", "diff", "2", "3", "--db", str(db)], capsys)
    assert code == 0 and "orchestrator depth selections:" in out
    with contextlib.closing(HandbookStore(db)) as opened:
        big = opened.selections()["big"]
    assert f"  big: none -> depth {big}" in out and "  small:" not in out
    code, out, _ = run(["handbook", "show", "--db", str(db)], capsys)
    assert code == 0 and "depth selected per orchestrator: big " in out and f"small {first['small']}" in out


def test_handbook_select_sets_a_depth_without_learning_as_an_edit_a_serving_handbook_reads(
    book: Handbook, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--db", str(book.store.path)]
    code, out, _ = run(["handbook", "select", " new ", "1", *db], capsys)  # stripped as the tools strip names
    assert code == 0 and out.strip() == "orchestrator 'new': depth 1 (was none)"
    routed = book.route(RouteRequest(text=PYTHON_STEP, lambda_=0.0, orchestrator="new"))  # another connection's edit
    assert [s.skill_id for s in routed.skills] == ["code"] and routed.granularity == "depth 1 for 'new'"
    code, out, _ = run(["handbook", "select", "coarse", "7", *db], capsys)
    assert code == 0 and "(was depth 1); no skill is deeper than depth 2, so its steps read the full skills" in out
    deep = book.route(RouteRequest(text=PYTHON_STEP, lambda_=0.0, orchestrator="coarse"))
    assert "code.python" in [s.skill_id for s in deep.skills]
    assert deep.granularity == "depth 7 for 'coarse' (full: no skill sits deeper than 2)"
    events = book.store.event_count(book.store.current_version())
    code, out, _ = run(["handbook", "select", "coarse", "7", *db], capsys)  # the same depth again: no edit
    assert code == 0 and "depth 7 (unchanged)" in out
    for refused_argv, message in [
        (["handbook", "select", "gone", "--drop", *db], "unknown orchestrator 'gone'"),
        (["handbook", "select", "new", *db], "expected a DEPTH, or --drop"),
        (["handbook", "select", "new", "1", "--drop", *db], "not both"),
        (["handbook", "select", "new", "33", *db], "expected a depth in [0, 32]"),
        (["handbook", "select", "bad\udcff", "1", *db], "expected a name of valid UTF-8 text"),  # review
    ]:
        code, _, err = run(refused_argv, capsys)
        assert code != 0 and message in err
    assert book.store.event_count(book.store.current_version()) == events  # refusals wrote nothing
    code, out, _ = run(["handbook", "select", "modal", "--drop", *db], capsys)
    assert code == 0 and "selection dropped (was depth 0)" in out
    expected = {**DEPTHS, "new": 1, "coarse": 7}
    expected.pop("modal")
    assert book.store.selections() == expected and book.store.document().selections == expected
    book.store.rebuild()  # an edit of the live version: its snapshot plus the replayed events hold it
    assert book.store.selections() == expected
    exported = book.store.path.with_name("e.json")
    exported.write_text(DOCUMENT.model_copy(update={"selections": {"coarse": 1}}).model_dump_json())
    code, out, _ = run(["handbook", "import", str(exported), *db], capsys)  # an import replaces them: said so
    assert code == 0 and "selections the file lacks were dropped: 'default' (depth 2), 'new' (depth 1)" in out


@pytest.mark.anyio
async def test_route_step_and_delegate_read_the_step_at_the_orchestrators_depth_over_mcp(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT.model_copy(update={"selections": DEPTHS}), source="test")
    store.close()
    toml = f'[agents.cheap]\nmodel = "openai/cheap-model"\napi_base = "{fake_openai.api_base}"\n'
    settings = loaded(tmp_path, toml)  # connection settings for the handbook's agent 'cheap'
    async with Client(create_server(settings)) as client:
        routed = await call(client, "route_step", {"text": PYTHON_STEP, "orchestrator": "coarse", "lambda_": 0})
        assert [s["skill_id"] for s in routed["skills"]] == ["code"] and routed["granularity"] == "depth 1 for 'coarse'"
        plain = await call(client, "route_step", {"text": PYTHON_STEP})
        assert "granularity" not in plain  # no orchestrator named: no field
        args = {"text": PYTHON_STEP, "agent_id": "cheap", "orchestrator": "coarse"}
        delegated = await call(client, "delegate", args)
        assert [s["skill_id"] for s in delegated["routing"]["skills"]] == ["code"]
        assert delegated["routing"]["granularity"] == "depth 1 for 'coarse'"
        refusal = await refused(client, "delegate", {"text": "x", "decision_id": routed["decision_id"], **args})
        assert "agent_id" in refusal or "orchestrator" in refusal  # a carried-out decision fixed its routing
        only = {"text": "x", "decision_id": routed["decision_id"], "orchestrator": "coarse"}
        assert "expected no orchestrator with decision_id" in await refused(client, "delegate", only)
        # carrying out a decision read at the orchestrator's depth says the depth it was read at (transfer QA)
        step = {"text": PYTHON_STEP, "allowed_agents": ["cheap"]}
        decided = await call(client, "route_step", {**step, "orchestrator": "coarse"})
        carried = await call(client, "delegate", {"text": PYTHON_STEP, "decision_id": decided["decision_id"]})
        assert carried["routing"]["granularity"] == "depth 1 for 'coarse'"
        undecided = await call(client, "route_step", step)
        carried = await call(client, "delegate", {"text": PYTHON_STEP, "decision_id": undecided["decision_id"]})
        assert "granularity" not in carried["routing"]
