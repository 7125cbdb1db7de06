"""Consistency rules of the handbook (QA review): a skill shares its parent's mode, an agent names only modes the
handbook has, a document of another schema_version is refused, commands on an existing handbook never create
one, and the routing entropy of a single agent is 0.0. Every refusal names the field and writes nothing."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from test_store import DOCUMENT, dump

from skillorchestra.handbook.document_checks import check_document
from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import Agent, HandbookDocument, Mode, Skill
from skillorchestra.handbook.service import Handbook, HandbookSettings, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Handbook]:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")  # modes code, search; code -> code.python, code.sql
    yield Handbook(store)
    store.close()


def files_of(path: Path) -> list[Path]:
    """The database and any WAL or shared-memory file SQLite made beside it."""
    return sorted(path.parent.glob(path.name + "*"))


# -- 1. a skill's mode is its parent's mode -------------------------------------------------------------------


def test_a_child_in_another_mode_than_its_parent_is_refused_and_writes_nothing(book: Handbook) -> None:
    before = dump(book.store)
    with pytest.raises(InvalidInput) as refused:
        book.upsert_skill(Skill(id="code.rust", mode="other", parent_id="code", description="rust"))
    assert refused.value.field == "mode" and refused.value.value == "other"
    assert "'code', the mode of its parent 'code'" in str(refused.value)
    assert dump(book.store) == before  # in particular no mode "other" was created


def test_moving_a_parent_to_another_mode_is_refused_naming_its_children(book: Handbook) -> None:
    before = dump(book.store)
    with pytest.raises(InvalidInput) as refused:
        book.upsert_skill(Skill(id="code", mode="search", description="programming"))
    assert refused.value.field == "mode"
    assert "code.python, code.sql" in str(refused.value) and "'code'" in str(refused.value)
    assert dump(book.store) == before


def test_a_child_in_its_parents_mode_and_a_new_top_level_mode_are_accepted(book: Handbook) -> None:
    book.upsert_skill(Skill(id="code.rust", mode="code", parent_id="code", description="rust"))
    book.upsert_skill(Skill(id="code.python", mode="code", parent_id="code", description="python, edited"))
    # a skill without a parent may still open a new mode (the product and its users rely on it)
    book.upsert_skill(Skill(id="poetry", mode="verse", description="write poems"))
    assert {s.id: s.mode for s in book.store.skills()}["code.rust"] == "code"
    assert "verse" in {m.id for m in book.store.modes()}


def test_an_import_whose_child_sits_in_another_mode_is_refused(
    tmp_path: Path, book: Handbook, capsys: pytest.CaptureFixture[str]
) -> None:
    skills = [s.model_copy(update={"mode": "nomode"}) if s.id == "code" else s for s in DOCUMENT.skills]
    with pytest.raises(
        InvalidInput, match=r"skills\[code\.python\]\.mode='code': expected 'nomode'.*parent skill 'code'"
    ):
        check_document(DOCUMENT.model_copy(update={"skills": skills}))
    path = tmp_path / "moved.json"
    path.write_text(DOCUMENT.model_copy(update={"skills": skills}).model_dump_json())
    before = dump(book.store)
    book.store.close()
    code, _, err = run(["handbook", "import", str(path), "--db", str(tmp_path / "h.db")], capsys)
    assert code == 2 and err.count("\n") == 1 and "code.python" in err and "'code'" in err
    store = HandbookStore(tmp_path / "h.db")
    assert dump(store) == before


# -- 2. an agent names only modes the handbook has -----------------------------------------------------------


def test_an_agent_with_an_unknown_mode_is_refused_listing_the_known_modes(book: Handbook) -> None:
    before = dump(book.store)
    with pytest.raises(InvalidInput) as refused:
        book.upsert_agent(Agent(id="ghost", modes=["code", "ghostmode"]))
    assert refused.value.field == "modes" and refused.value.value == ["ghostmode"]
    assert "(code, search)" in str(refused.value)
    assert dump(book.store) == before
    assert book.upsert_agent(Agent(id="coder", modes=["code"])).modes == ["code"]


@pytest.mark.anyio
async def test_upsert_agent_tool_names_modes_and_writes_nothing(mcp_client: Client, db_path: Path) -> None:
    await mcp_client.call_tool("upsert_mode", {"mode_id": "answer"})
    store = HandbookStore(db_path)
    before = dump(store)
    result = await mcp_client.call_tool("upsert_agent", {"agent_id": "a", "modes": ["ghostmode"]})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert "modes=['ghostmode']" in text and "(answer)" in text
    assert dump(store) == before
    store.close()


def test_an_import_whose_agent_names_an_unknown_mode_is_refused(book: Handbook) -> None:
    agents = [*DOCUMENT.agents, Agent(id="ghost", modes=["ghostmode"])]
    before = dump(book.store)
    with pytest.raises(InvalidInput) as refused:
        book.store.create_version(DOCUMENT.model_copy(update={"agents": agents}), source="import")
    assert refused.value.field == "agents[ghost].modes" and "code, search" in str(refused.value)
    assert dump(book.store) == before


def test_agents_load_adds_the_modes_its_file_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "agents.toml"
    toml.write_text(
        '[agents.cheap]\nmodel = "openai/cheap"\napi_base = "http://127.0.0.1:9/v1"\nmodes = ["answer"]\n'
        '[agents.web]\nkind = "mcp"\nurl = "http://127.0.0.1:9/mcp"\ntool = "search"\nmodes = ["search", "answer"]\n'
    )
    code, out, _ = run(["agents", "load", str(toml), "--db", str(tmp_path / "h.db")], capsys)
    assert code == 0 and "added modes the handbook did not have: answer, search" in out
    store = HandbookStore(tmp_path / "h.db")
    assert [m.id for m in store.modes()] == ["answer", "search"]
    assert {a.id: a.modes for a in store.agents()} == {"cheap": ["answer"], "web": ["search", "answer"]}
    store.close()


def _log_outcomes(book: Handbook, success: dict[str, Callable[[int], bool]]) -> None:
    """60 steps routed to each agent and reported, chemistry and poetry questions in turn."""
    for i in range(60):
        for agent, good in success.items():
            topic = ("chemistry reactions", "poetry rhymes")[i % 2]
            routed = book.route(RouteRequest(text=f"{topic} question {i}", allowed_agents=[agent], lambda_=0.0))
            book.record(OutcomeReport(decision_id=routed.decision_id, success=good(i)))


def _learned_from_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> HandbookStore:
    code, _, err = run(["learn", "--data", "events", "--db", str(tmp_path / "h.db"), "--matcher", "lexical"], capsys)
    assert code == 0, err
    store = HandbookStore(tmp_path / "h.db")
    assert store.versions()[-1]["source"] == "learn"
    return store


def test_learning_from_events_keeps_the_live_modes_its_agents_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = HandbookStore(tmp_path / "h.db")
    book = Handbook(store)
    book.upsert_mode(Mode(id="search", insights=["prefer alpha"]))
    book.upsert_skill(Skill(id="general", description="anything at all"))
    for agent in ("alpha", "beta"):
        book.upsert_agent(Agent(id=agent, modes=["search"], input_per_mtok=1.0, output_per_mtok=1.0))
    # routed without a mode: the learned handbook's only mode is the default one ("answer")
    _log_outcomes(book, {"alpha": lambda i: i % 2 == 0, "beta": lambda i: i % 2 == 1})
    store.close()
    store = _learned_from_events(tmp_path, capsys)
    document = store.document()
    assert {a.id: a.modes for a in document.agents} == {"alpha": ["search"], "beta": ["search"]}
    assert [m.id for m in document.modes] == ["answer", "search"]
    assert Mode(id="search", insights=["prefer alpha"]) in document.modes


def test_learning_from_events_does_not_bring_back_a_deleted_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = HandbookStore(tmp_path / "h.db")
    book = Handbook(store)
    book.upsert_skill(Skill(id="general", description="anything at all"))
    for agent in ("alpha", "beta", "gamma"):
        book.upsert_agent(Agent(id=agent, input_per_mtok=1.0, output_per_mtok=1.0))
    # every step judged for every agent: validation compares them, so the result goes live
    _log_outcomes(book, {"alpha": lambda i: i % 2 == 0, "beta": lambda i: True, "gamma": lambda i: i % 2 == 1})
    book.delete_agent("beta")  # the best agent in the log, deleted on purpose
    store.close()
    store = _learned_from_events(tmp_path, capsys)
    document = store.document()
    assert [a.id for a in document.agents] == ["alpha", "gamma"]
    assert {c.agent_id for c in [*document.competence, *document.cost]} <= {"alpha", "gamma"}
    assert Handbook(store).route(RouteRequest(text="poetry rhymes question 7", lambda_=0.0)).agent_id != "beta"


# -- 3. schema_version -----------------------------------------------------------------------------------------


def test_an_import_of_another_schema_version_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "future.json"
    path.write_text(json.dumps({**json.loads(DOCUMENT.model_dump_json()), "schema_version": 99}))
    fresh = tmp_path / "fresh.db"
    code, _, err = run(["handbook", "import", str(path), "--db", str(fresh)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "schema_version=99" in err and "reads schema_version 1 only; the document has 99" in err
    assert files_of(fresh) == []
    existing = HandbookStore(tmp_path / "h.db")
    existing.create_version(DOCUMENT, source="import")
    before = dump(existing)
    existing.close()
    assert run(["handbook", "import", str(path), "--db", str(tmp_path / "h.db")], capsys)[0] == 2
    assert dump(HandbookStore(tmp_path / "h.db")) == before
    # the same document at schema_version 1 reads: the version alone was refused
    assert HandbookDocument.model_validate({**json.loads(path.read_text()), "schema_version": 1}).skills


# -- 4. commands on an existing handbook never create one ---------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["handbook", "show"],
        ["handbook", "versions"],
        ["handbook", "diff", "1", "2"],
        ["handbook", "export", "-"],
        ["handbook", "rebuild"],
        ["handbook", "promote", "1"],
        ["handbook", "rollback"],
        ["handbook", "prune", "--before", "2026-01-01"],
        ["agents", "show"],
    ],
)
def test_a_command_on_a_missing_handbook_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    db = tmp_path / "brandnew.db"
    code, out, err = run([*argv, "--db", str(db)], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: no handbook at {db} (")
    assert files_of(db) == []


def test_commands_that_make_a_handbook_still_create_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "made.db"
    assert run(["handbook", "import", "--example", "--db", str(db)], capsys)[0] == 0
    code, out, _ = run(["handbook", "versions", "--db", str(db)], capsys)
    assert code == 0 and "import" in out
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 2


# -- 5. routing entropy ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_routing_entropy_of_a_single_agent_is_zero_not_minus_zero(mcp_client: Client) -> None:
    await mcp_client.call_tool("upsert_agent", {"agent_id": "only", "input_per_mtok": 1.0, "output_per_mtok": 1.0})
    routed = await mcp_client.call_tool("route_step", {"text": "add two numbers"})
    assert not routed.is_error
    text: Any = (await mcp_client.read_resource("handbook://stats")).contents[0].text  # type: ignore[union-attr]
    stats = json.loads(text)
    assert stats["routing_shares"] == {"only": 1.0}
    assert stats["routing_entropy_bits"] == 0.0 and math.copysign(1.0, stats["routing_entropy_bits"]) == 1.0


def test_stats_show_the_newest_decisions_shares_beside_the_lifetime_ones(tmp_path: Path) -> None:
    """Drift QA: lifetime shares read 70/30 while the newest 500 steps had all gone to one agent."""
    from skillorchestra.server.resources import RECENT_DECISIONS, handbook_stats

    store = HandbookStore(tmp_path / "h.db")
    book = Handbook(store)
    for agent in ("old", "new"):
        book.upsert_agent(Agent(id=agent))
    for agent in ["old"] * 4 + ["new"] * 3:
        book.route(RouteRequest(text="a step", allowed_agents=[agent]))
    assert store.routing_counts(last=3) == {"new": 3} and store.routing_counts(last=5) == {"new": 3, "old": 2}
    stats: Any = handbook_stats(book)
    assert stats["routing_shares"] == {"old": round(4 / 7, 4), "new": round(3 / 7, 4)}
    assert stats["recent"]["decisions"] == 7 < RECENT_DECISIONS  # fewer made: the recent window holds them all
    assert stats["recent"]["routing_shares"] == stats["routing_shares"]
    assert stats["recent"]["top_agent_share"] == stats["top_agent_share"] == round(4 / 7, 4)
    assert (
        stats["forgetting"] is None
        and handbook_stats(Handbook(store, HandbookSettings(forgetting=0.9)))["forgetting"] == 0.9
    )  # drift QA: n is then aged evidence, and nothing said forgetting was on
    store.close()


def test_agents_load_says_which_agents_delegate_cannot_call_and_that_there_are_no_skills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "agents.toml"
    toml.write_text('[agents.cheap]\nmodel = "openai/cheap"\napi_base = "http://127.0.0.1:9/v1"\n')
    db = tmp_path / "new.db"
    code, _, err = run(["agents", "load", str(toml), "--db", str(db)], capsys)
    assert code == 0 and "no connection settings" not in err
    assert "the handbook has no skills yet" in err and "handbook import --example" in err
    assert "run this `agents load` again after them" in err
    code, _, err = run(["handbook", "import", "--example", "--db", str(db)], capsys)  # brings its own 9 agents
    assert code == 0 and "no longer has 1 agent with connection settings (cheap)" in err
    assert run(["agents", "load", str(toml), "--db", str(db)], capsys)[0] == 0
    assert "cheap" in {a.id for a in HandbookStore(db).agents()}  # loaded again, as the note says
    example = tmp_path / "example.db"
    assert run(["handbook", "import", "--example", "--db", str(example)], capsys)[0] == 0
    code, _, err = run(["agents", "load", str(toml), "--db", str(example)], capsys)
    assert code == 0 and "9 agents in the handbook have no connection settings" in err and "and 4 more" in err
    assert "no skills yet" not in err


def test_cli_path_errors_name_the_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    source = tmp_path / "src"
    source.mkdir()
    code, _, err = run(["data", "convert", "--format", "llmrouter", str(source), str(a_file)], capsys)
    assert code == 2 and "OUTDIR" in err and "a folder" in err
    assert a_file.read_text() == "not a folder"
    code, _, err = run(["handbook", "show", "--db", str(a_file)], capsys)
    assert code == 2 and f"--db {a_file}: not a usable handbook database" in err


def test_serve_accepts_the_sdks_name_for_streamable_http() -> None:
    from skillorchestra.server.cli import build_parser

    assert build_parser().parse_args(["serve", "--transport", "streamable-http"]).transport == "http"
    assert build_parser().parse_args(["serve", "--transport", "sse"]).transport == "sse"


def test_an_import_names_the_row_that_points_at_an_unknown_id() -> None:
    """QA: "unknown agent in competence 'ghost'" named no row, and "unknown parent skill 'nope'" no child."""
    from skillorchestra.handbook.errors import NotFound
    from skillorchestra.handbook.models import Competence

    rows = [Competence(agent_id=a.id, skill_id="code.python", alpha=2.0, beta=1.0) for a in DOCUMENT.agents]
    ghost = [*rows, Competence(agent_id="ghost", skill_id="code.python", alpha=2.0, beta=1.0)]
    with pytest.raises(NotFound, match=rf"unknown agent \(competence\[{len(rows)}\]\.agent_id\) 'ghost'"):
        check_document(DOCUMENT.model_copy(update={"competence": ghost}))
    lost = [*rows[:1], Competence(agent_id=rows[0].agent_id, skill_id="code.rust", alpha=2.0, beta=1.0)]
    with pytest.raises(NotFound, match=r"unknown skill \(competence\[1\]\.skill_id\) 'code.rust'"):
        check_document(DOCUMENT.model_copy(update={"competence": lost}))
    orphan = [*DOCUMENT.skills, Skill(id="code.go", mode="code", parent_id="nope")]
    with pytest.raises(NotFound, match=r"unknown parent skill \(skills\[code\.go\]\.parent_id\) 'nope'"):
        check_document(DOCUMENT.model_copy(update={"skills": orphan}))
