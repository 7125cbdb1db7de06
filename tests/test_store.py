"""The SQLite store: migrations, versions, import/export, rebuild equality and writers in two processes."""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlite_utils import Database

from skillorchestra.handbook.errors import HandbookError, InvalidInput, NotFound
from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.models import (
    MEASURED_COUNTS,
    Agent,
    Competence,
    CostStats,
    HandbookDocument,
    Mode,
    Skill,
    SkillDemand,
)
from skillorchestra.handbook.schema import migrations, schema_version
from skillorchestra.handbook.service import Handbook, HandbookSettings, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import CompetenceRow, CostRow, HandbookStore

DOCUMENT = HandbookDocument(
    modes=[Mode(id="code", description="write code", insights=["tests first"]), Mode(id="search")],
    skills=[
        Skill(id="code", mode="code", description="programming"),
        Skill(id="code.python", mode="code", parent_id="code", description="python scripts", indicators=["def"]),
        Skill(id="code.sql", mode="code", parent_id="code", description="sql queries", examples=["SELECT 1"]),
        Skill(id="search.web", mode="search", description="web search"),
    ],
    agents=[
        Agent(id="meta/llama-70b", description="big", input_per_mtok=0.9, output_per_mtok=0.9),
        Agent(id="tiny", modes=["code"], input_per_mtok=0.05, output_per_mtok=0.1, enabled=False),
    ],
    competence=[
        Competence(agent_id="meta/llama-70b", skill_id="code.python", alpha=7.5, beta=2.25),
        Competence(agent_id="tiny", skill_id="*", alpha=2.0, beta=3.0),
    ],
    cost=[CostStats(agent_id="tiny", skill_id="code.sql", n=2.5, mean_cost_usd=0.001, m2_cost=1e-7)],
)


def dump(store: HandbookStore) -> dict[str, Any]:
    with store.lock:
        conn = store.db.conn
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    return {"document": store.document().model_dump(), "counts": store.counts(), "rows": rows}


def doc_with(**changes: Any) -> HandbookDocument:
    return DOCUMENT.model_copy(update=changes)


def without_version(document: HandbookDocument) -> dict[str, Any]:
    return document.model_dump(exclude={"version"})


# -- schema and versions ------------------------------------------------------------------------------------


def test_migrations_are_idempotent_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    store = HandbookStore(path)
    assert store.schema_version() == schema_version() >= 1
    store.create_version(DOCUMENT, source="import")
    before = dump(store)
    store.close()
    for _ in range(2):
        again = HandbookStore(path)
        assert again.schema_version() == schema_version()
        assert again.db.conn.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone()[0] == schema_version()
        assert dump(again) == before
        assert [v["source"] for v in again.versions()] == ["init", "import"]
        assert again.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        again.close()


def test_a_new_file_holds_the_empty_initial_version(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "sub" / "dir" / "h.db")
    assert store.current_version() == 1
    assert without_version(store.document()) == without_version(HandbookDocument())
    assert store.document().schema_version == 1 and store.document().format == "skillorchestra-handbook"
    store.close()


def test_create_version_snapshots_the_document(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    version = store.create_version(DOCUMENT, source="learn", summary="first", metrics={"accuracy": 0.5})
    assert version == 2 == store.current_version()
    assert store.versions()[-1] | {"created_at": 0} == {
        "version": 2,
        "parent": 1,
        "created_at": 0,
        "source": "learn",
        "summary": "first",
        "metrics": {"accuracy": 0.5},
    }
    assert store.snapshot(2) == DOCUMENT.model_copy(update={"version": 2})
    assert store.document() == store.snapshot(2)
    store.apply("upsert_mode", Mode(id="answer").model_dump())  # live edits do not touch the snapshot
    assert store.snapshot(2) == DOCUMENT.model_copy(update={"version": 2})
    assert store.document() != store.snapshot(2)
    assert store.create_version(DOCUMENT, source="import") == 3 and store.versions()[-1]["parent"] == 2
    with pytest.raises(NotFound, match="version"):
        store.snapshot(99)
    store.close()


def test_export_import_round_trip_is_equal(tmp_path: Path) -> None:
    source = HandbookStore(tmp_path / "a.db")
    source.create_version(DOCUMENT, source="import")
    book = Handbook(source)
    decision = book.route(RouteRequest(text="sql", skills=[SkillDemand(skill_id="code.sql", weight=1)]))
    book.record(OutcomeReport(decision_id=decision.decision_id, reward=0.3, cost_usd=0.002, latency_s=1.5))
    exported = source.document()
    text = exported.model_dump_json(indent=1)
    target = HandbookStore(tmp_path / "b.db")
    target.create_version(HandbookDocument.model_validate_json(text), source="import")
    assert without_version(target.document()) == without_version(exported)
    assert target.document().competence == exported.competence and target.document().cost == exported.cost
    source.close()
    target.close()


def test_round_trip_keeps_the_orchestrator_selections(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(doc_with(selections={"qwen2.5-3b": 1, "llama-8b": 0}), source="import")
    assert store.document().selections == {"qwen2.5-3b": 1, "llama-8b": 0}
    assert store.snapshot(store.current_version()).selections == {"qwen2.5-3b": 1, "llama-8b": 0}
    store.close()


def test_round_trip_keeps_the_description(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(doc_with(description="learned on QA"), source="import")
    assert store.document().description == "learned on QA"
    store.close()


# -- import validation ---------------------------------------------------------------------------------------


MALFORMED: list[tuple[str, HandbookDocument, type[HandbookError], str]] = [
    (
        "unknown parent",
        doc_with(skills=[*DOCUMENT.skills, Skill(id="code.rust", mode="code", parent_id="code.systems")]),
        NotFound,
        "code.systems",
    ),
    (
        "competence for an unknown agent",
        doc_with(competence=[*DOCUMENT.competence, Competence(agent_id="ghost", skill_id="code")]),
        NotFound,
        "ghost",
    ),
    (
        "competence for an unknown skill",
        doc_with(competence=[Competence(agent_id="tiny", skill_id="code.pythn")]),
        NotFound,
        "closest known: code.python",
    ),
    ("cost for an unknown agent", doc_with(cost=[CostStats(agent_id="tin", skill_id="code")]), NotFound, "tiny"),
    ("duplicate skill ids", doc_with(skills=[*DOCUMENT.skills, DOCUMENT.skills[0]]), InvalidInput, "unique"),
    ("duplicate agent ids", doc_with(agents=[*DOCUMENT.agents, DOCUMENT.agents[1]]), InvalidInput, "unique"),
    ("reserved skill id", doc_with(skills=[*DOCUMENT.skills, Skill(id="*")]), InvalidInput, "reserved"),
    (  # refused by SQLite's key before, worded as a broken database
        "duplicate competence row",
        doc_with(competence=[*DOCUMENT.competence, DOCUMENT.competence[0]]),
        InvalidInput,
        "one row per (agent, skill)",
    ),
    ("duplicate cost row", doc_with(cost=[*DOCUMENT.cost, *DOCUMENT.cost]), InvalidInput, "one row per (agent, skill)"),
    ("dot agent id", doc_with(agents=[*DOCUMENT.agents, Agent(id="..")]), InvalidInput, "other than '.' or '..'"),
]


@pytest.mark.parametrize(("name", "document", "error", "says"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_import_is_rejected_before_anything_is_written(
    tmp_path: Path, name: str, document: HandbookDocument, error: type[HandbookError], says: str
) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    store.apply("upsert_mode", Mode(id="answer").model_dump())
    before = dump(store)
    with pytest.raises(error) as caught:
        store.create_version(document, source="import")
    assert says in str(caught.value)
    assert dump(store) == before
    store.close()


CYCLES = [
    ("self parent", doc_with(skills=[Skill(id="loop", parent_id="loop")])),
    ("two-cycle", doc_with(skills=[Skill(id="a", parent_id="b"), Skill(id="b", parent_id="a")])),
]


@pytest.mark.parametrize(("name", "document"), CYCLES, ids=[c[0] for c in CYCLES])
def test_an_import_with_a_parent_cycle_is_rejected(tmp_path: Path, name: str, document: HandbookDocument) -> None:
    store = HandbookStore(tmp_path / "h.db")
    before = dump(store)
    with pytest.raises(InvalidInput, match="parent"):
        store.create_version(document, source="import")
    assert dump(store) == before
    store.close()


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "other"}',
        '{"skills": [{"id": ""}]}',
        '{"competence": [{"agent_id": "a", "skill_id": "s", "alpha": 0}]}',
        '{"agents": [{"id": "a", "api_key": "sk-123"}]}',  # connection settings never enter the handbook
        '{"skills": [',
    ],
)
def test_malformed_json_is_rejected_by_the_schema(text: str) -> None:
    with pytest.raises(ValidationError):
        HandbookDocument.model_validate_json(text)


# -- transactions and events ---------------------------------------------------------------------------------


def test_a_failed_write_rolls_back(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    before = dump(store)
    with pytest.raises(RuntimeError), store.write():
        store.db["modes"].insert({"id": "half", "description": "", "insights": "[]"})
        raise RuntimeError("boom")
    assert dump(store) == before
    with pytest.raises(InvalidInput, match="event.kind"):
        store.apply("no_such_event", {})  # the event row is inserted first, then rolled back
    assert dump(store) == before
    store.close()


def test_try_write_never_waits_and_writes_nothing_when_it_cannot_start(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    conn = store.db.conn
    settings = [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("busy_timeout", "wal_autocheckpoint")]

    def add(mode_id: str) -> Any:
        return lambda: store.db["modes"].insert({"id": mode_id, "description": "", "insights": "[]"})

    cli = sqlite3.connect(store.path, isolation_level=None)
    cli.execute("BEGIN IMMEDIATE")  # another process holds the file's write lock
    before = dump(store)
    answers: list[bool] = []
    attempt = threading.Thread(target=lambda: answers.append(store.try_write(add("blocked"))))
    attempt.start()
    attempt.join(timeout=10)  # the store's busy timeout is 30 s: waiting it out would leave the thread running
    assert answers == [False]
    cli.execute("COMMIT")
    assert dump(store) == before
    assert store.try_write(add("written")) is True
    assert "written" in {m.id for m in store.modes()}
    with pytest.raises(sqlite3.IntegrityError):  # an error of the work itself is the caller's, and rolls back
        store.try_write(add("written"))
    assert [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("busy_timeout", "wal_autocheckpoint")] == settings
    cli.close()
    store.close()


def test_a_second_outcome_for_a_decision_is_refused_by_the_store(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store)
    decision = book.route(RouteRequest(text="x", skills=[SkillDemand(skill_id="code", weight=1)]))
    row = {"decision_id": decision.decision_id, "agent_id": decision.agent_id, "reward": 1.0, "payload": {}}
    event = {"agent_id": decision.agent_id, "skills": [["code", 1.0]], "reward": 1.0}
    store.record_outcome(row, event)
    before = dump(store)
    with pytest.raises(InvalidInput, match="not yet reported"):
        store.record_outcome(row, event)
    assert dump(store) == before
    store.close()


def test_a_delegated_call_is_noted_on_its_decision_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    decision = Handbook(store).route(RouteRequest(text="x", skills=[SkillDemand(skill_id="code", weight=1)]))
    store.note_call(decision.decision_id, {"cost_usd": 0.25, "latency_s": 1.5, "error_class": None})
    row = store.decision(decision.decision_id)
    assert row is not None and (row["call_cost_usd"], row["call_latency_s"]) == (0.25, 1.5)
    before = dump(store)
    with pytest.raises(NotFound, match="no-such-decision"):
        store.note_call("no-such-decision", {"cost_usd": 0.25})
    assert dump(store) == before
    store.close()


def test_a_decision_claim_is_checked_and_written_at_once_and_given_back_only_if_nothing_was_called(
    tmp_path: Path,
) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    decision = Handbook(store).route(RouteRequest(text="x", skills=[SkillDemand(skill_id="code", weight=1)]))
    before = dump(store)

    def refuse(row: dict[str, Any] | None) -> None:
        raise InvalidInput("decision_id", decision.decision_id, "a decision nobody claimed")

    with pytest.raises(InvalidInput):
        store.claim_decision(decision.decision_id, refuse, now=5.0)
    assert dump(store) == before  # a refused claim writes nothing
    seen: list[Any] = []
    row = store.claim_decision(decision.decision_id, seen.append, now=5.0)
    other = HandbookStore(tmp_path / "h.db")  # another process's connection sees the claim
    assert row["claimed_at"] == 5.0 and seen[0]["claimed_at"] is None
    assert (other.decision(decision.decision_id) or {})["claimed_at"] == 5.0
    store.release_claim(decision.decision_id)
    assert (other.decision(decision.decision_id) or {})["claimed_at"] is None
    store.claim_decision(decision.decision_id, seen.append, now=6.0)
    store.note_call(decision.decision_id, {"cost_usd": 0.25, "latency_s": 1.5, "error_class": None})
    store.release_claim(decision.decision_id)  # the agent was called: the claim stays
    assert (other.decision(decision.decision_id) or {})["claimed_at"] == 6.0
    other.close()
    store.close()


def test_a_new_version_writes_the_skill_index_compactly_and_many_edits_keep_it_sound(tmp_path: Path) -> None:
    def segments(store: HandbookStore) -> int:
        return int(store.db.conn.execute("SELECT COUNT(*) FROM skills_fts_data").fetchone()[0])

    skills = [
        Skill(id=f"s{i}", mode="code", description=f"skill {i} on topic{i % 17} and area{i % 29}", indicators=[f"i{i}"])
        for i in range(200)
    ]
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT.model_copy(update={"skills": skills, "competence": [], "cost": []}), source="x")
    book = Handbook(store)
    loose = HandbookStore(tmp_path / "loose.db")  # the same skills written one by one through the triggers
    loose_book = Handbook(loose)
    loose_book.upsert_mode(DOCUMENT.modes[0])
    for skill in skills:
        loose_book.upsert_skill(skill)
    assert segments(store) < segments(loose) / 2  # one merged structure, not a segment per batch of inserts
    for k in range(1200):  # SQLite 3.40's 'optimize' after each edit corrupted this index at ~1,000 edits
        i = k % 200
        book.upsert_skill(Skill(id=f"s{i}", mode="code", description=f"edit {k} of skill {i} on topic{i % 17}"))
    store.db.conn.execute("INSERT INTO skills_fts(skills_fts, rank) VALUES ('integrity-check', 1)")
    fresh = HandbookStore(tmp_path / "fresh.db")
    fresh.create_version(store.document(), source="import")
    for query in ('"topic3"', '"edit" OR "skill"', '"area5"'):
        ours, theirs = (
            sorted((i, round(score, 9)) for i, score in s.search_skills(query, None, 500)) for s in (store, fresh)
        )
        assert ours == theirs  # same matches and scores (ties may come in another order)
    store.close()
    loose.close()
    fresh.close()


# -- rebuild -------------------------------------------------------------------------------------------------


def busy_history(book: Handbook, rng: random.Random, steps: int) -> None:
    """Routes and outcomes of every kind, interleaved with edits and deletions."""
    skills = [s.id for s in book.store.skills()]
    for step in range(steps):
        chosen = rng.sample(skills, k=rng.randint(1, min(3, len(skills))))
        demands = [SkillDemand(skill_id=s, weight=rng.choice([0.5, 1.0, 2.0, 3.0])) for s in chosen]
        decision = book.route(
            RouteRequest(
                text=f"step {step}",
                skills=demands if step % 7 else None,
                lambda_=rng.choice([0.0, 0.1, 1.0]),
                strategy="thompson" if step % 3 == 0 else "mean",
                seed=step,
                session_id=f"s{step % 4}",
            )
        )
        kind = step % 5
        if kind == 0:
            report = OutcomeReport(decision_id=decision.decision_id, error_class="rate_limit", cost_usd=0.0007)
        elif kind == 1:
            report = OutcomeReport(decision_id=decision.decision_id, success=rng.random() < 0.6)
        else:
            report = OutcomeReport(
                decision_id=decision.decision_id,
                reward=rng.random(),
                cost_usd=rng.uniform(0.0001, 0.01),
                prompt_tokens=rng.randint(10, 2000),
                completion_tokens=rng.randint(1, 500),
                latency_s=rng.uniform(0.1, 5.0),
            )
        if step % 11 != 5:  # some decisions stay unreported
            book.record(report)


def test_rebuild_equals_the_live_state(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store, HandbookSettings(forgetting=0.9))
    rng = random.Random(5)
    busy_history(book, rng, 60)
    book.upsert_skill(Skill(id="code.sql.joins", mode="code", parent_id="code.sql", description="sql joins"))
    book.upsert_agent(Agent(id="new/agent", modes=["code", "search"], input_per_mtok=3.0, output_per_mtok=15.0))
    book.upsert_agent(DOCUMENT.agents[1].model_copy(update={"enabled": True, "input_per_mtok": 0.07}))
    busy_history(book, rng, 60)
    pending = book.route(RouteRequest(text="late", allowed_agents=["new/agent"]))
    book.delete_skill("code.sql.joins")
    book.delete_agent("new/agent")
    book.record(OutcomeReport(decision_id=pending.decision_id, success=True, cost_usd=0.01))  # its agent is gone
    book.upsert_agent(Agent(id="new/agent"))  # the same id again starts from scratch
    book.upsert_mode(Mode(id="search", insights=["prefer fresh sources"]))
    busy_history(book, rng, 40)
    assert store.counts()["outcomes"] > 100 and store.counts()["events"] > 100

    live = store.document()
    replaced = store.rebuild()
    assert replaced == live
    assert store.document() == live  # exactly: every float, every row
    assert store.rebuild() == live  # and rebuilding again changes nothing
    assert LexicalMatcher(store).match("sql queries", None, 3)[0][0] == "code.sql"  # the FTS index survives
    store.close()


def test_evidence_rows_are_the_stored_rows_the_models_validate(tmp_path: Path) -> None:
    """The arrays read plain rows (a model per row took seconds at 356,000): the same fields, values and order."""
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    busy_history(Handbook(store), random.Random(3), 40)
    competence, costs = store.evidence_rows()
    assert CompetenceRow._fields == tuple(Competence.model_fields)
    assert CostRow._fields == tuple(CostStats.model_fields)
    with store.lock:
        raw_competence = store.db.conn.execute("SELECT * FROM competence ORDER BY agent_id, skill_id").fetchall()
        raw_costs = store.db.conn.execute(
            f"SELECT {', '.join(CostRow._fields)} FROM cost_stats ORDER BY agent_id, skill_id"
        ).fetchall()
    assert [tuple(r) for r in competence] == raw_competence and [tuple(r) for r in costs] == raw_costs
    assert len(costs) > 3 and any(r.n_step_tokens > 0 for r in costs)  # a history with every kind of row
    assert [Competence(**r._asdict()) for r in competence] == store.competence()
    assert [CostStats(**r._asdict()) for r in costs] == store.costs()
    store.close()


def test_lookups_by_id_and_row_counts_agree_with_the_whole_tables(tmp_path: Path) -> None:
    """Edits, deletions and their checks read one row by id (the whole table took seconds at 20,000 skills)."""
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store)
    book.upsert_skill(Skill(id="code.sql.joins", mode="code", parent_id="code.sql", description="joins"))
    busy_history(book, random.Random(4), 40)
    for skill in store.skills():
        assert store.skill(skill.id) == skill
        assert store.skill_children(skill.id) == [s for s in store.skills() if s.parent_id == skill.id]
    for agent in store.agents():
        assert store.agent(agent.id) == agent
    for mode in store.modes():
        assert store.mode(mode.id) == mode
    assert store.skill_ids() == [s.id for s in store.skills()]
    assert [s.id for s in store.skill_children("code")] == ["code.python", "code.sql"]
    for missing in ("nope", "", " code", "\ud800"):  # a lone surrogate cannot be bound: found nowhere, no crash
        assert store.skill(missing) is None and store.agent(missing) is None and store.mode(missing) is None
        assert store.skill_children(missing) == [] and store.evidence_counts("skill_id", missing) == (0, 0)
    competence, costs = store.competence(), store.costs()
    keys = {("agent_id", r.agent_id) for r in competence} | {("skill_id", r.skill_id) for r in [*competence, *costs]}
    assert ("skill_id", "*") in keys and len(keys) > 6
    for column, value in keys:
        expected = (
            sum(getattr(r, column) == value for r in competence),
            sum(getattr(r, column) == value for r in costs),
        )
        assert store.evidence_counts(column, value) == expected
    with pytest.raises(ValueError):
        store.evidence_counts("alpha", "1")
    store.close()


def test_rebuild_replays_only_the_current_versions_events(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store)
    busy_history(book, random.Random(1), 20)
    store.create_version(DOCUMENT, source="import", summary="reset")
    busy_history(book, random.Random(2), 20)
    live = store.document()
    assert store.rebuild() == live and store.document() == live
    assert len(store.events(store.current_version())) < store.counts()["events"]
    store.close()


def test_rebuild_repairs_a_live_state_that_drifted(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    busy_history(Handbook(store), random.Random(3), 20)
    truth = store.document()
    with store.write():
        store.db.execute("UPDATE competence SET alpha = alpha + 1")
    drifted = store.document()
    assert drifted != truth
    assert store.rebuild() == drifted
    assert store.document() == truth
    store.close()


# -- migration of the record path (m005) ---------------------------------------------------------------------

OLD_SCHEMA = "m005_lean_outcome_writes"  # the first migration an old-schema file lacks
KEPT = ("_sqlite_migrations", "sqlite_sequence")  # tables whose rows the migration itself changes


def columns_of(conn: sqlite3.Connection, table: str, schema: str = "main") -> list[str]:
    return [r[1] for r in conn.execute(f'PRAGMA {schema}.table_info("{table}")')]


def data_rows(path: Path, like: Path | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the migration bookkeeping, in a stable order; with `like`, only the columns that
    file's tables have (later migrations add columns, whose values an older file cannot have had)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        if like is not None:
            with contextlib.closing(sqlite3.connect(like)) as old:
                wanted = {t: columns_of(old, t) for t in tables}
        rows = {}
        for t in tables:
            if t in KEPT or (like is not None and not wanted[t]):  # a table the older file did not have
                continue
            columns = ", ".join(f'"{c}"' for c in wanted[t]) if like is not None else "*"
            rows[t] = sorted(conn.execute(f'SELECT {columns} FROM "{t}"').fetchall(), key=repr)
        return rows


def old_schema_copy(source: Path, target: Path) -> None:
    """`source` (a current file) written into a file made by the migrations before m005, as an old release left it."""
    old = Database(target)
    migrations.apply(old, stop_before=OLD_SCHEMA)
    conn = old.conn
    conn.execute("ATTACH DATABASE ? AS src", [str(source)])
    tables = [r[0] for r in conn.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")]
    with conn:
        for table in tables:
            old_columns = columns_of(conn, table)  # the old table's: later ones add some (or whole tables: none)
            if table not in KEPT and not table.startswith("skills_fts") and old_columns:  # triggers fill the FTS
                columns = ", ".join(f'"{c}"' for c in old_columns)
                conn.execute(f'INSERT INTO main."{table}" SELECT {columns} FROM src."{table}"')
    conn.execute("DETACH DATABASE src")
    old.close()


def test_an_old_schema_file_migrates_and_keeps_its_data(tmp_path: Path) -> None:
    current = tmp_path / "current.db"
    store = HandbookStore(current)
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store, HandbookSettings(forgetting=0.9))
    busy_history(book, random.Random(7), 40)
    book.upsert_skill(Skill(id="code.sql.joins", mode="code", parent_id="code.sql", description="sql joins"))
    busy_history(book, random.Random(8), 20)
    live = store.document()
    store.close()
    path = tmp_path / "old.db"
    old_schema_copy(current, path)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # it is the old schema: what m005 replaces is there
        schema = dict(conn.execute("SELECT name, sql FROM sqlite_master"))
        (last_seq,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    assert "idx_outcomes_session_id" in schema and "AUTOINCREMENT" in schema["events"]
    assert not schema["competence"].endswith("WITHOUT ROWID")
    before = data_rows(path)
    shutil.copy(path, tmp_path / "old-schema.db")  # its columns, to compare the migrated rows with
    assert len(before["outcomes"]) > 40 and len(before["events"]) > 40 and last_seq == max(before["events"])[0]

    migrated = HandbookStore(path)
    assert migrated.schema_version() == schema_version()
    assert Path(f"{path}-wal").stat().st_size == 0  # the copied tables' pages are checkpointed and the WAL emptied
    assert data_rows(path, like=tmp_path / "old-schema.db") == before  # every row of every table, every old column
    schema = dict(migrated.db.conn.execute("SELECT name, sql FROM sqlite_master"))
    assert "idx_outcomes_session_id" not in schema and "AUTOINCREMENT" not in schema["events"]
    assert schema["competence"].endswith("WITHOUT ROWID") and schema["cost_stats"].endswith("WITHOUT ROWID")
    # m014's counts of the calls that reported tokens and latency: every call, as older releases counted them
    counted_as_before = [c.model_copy(update=dict.fromkeys(MEASURED_COUNTS, c.n)) for c in live.cost]
    migrated_state = live.model_copy(update={"cost": counted_as_before})
    assert migrated.document() == migrated_state
    # the event log replays as before, and to the counts: rebuild recovers them
    assert migrated.rebuild() == migrated_state and migrated.document() == live
    assert LexicalMatcher(migrated).match("sql queries", None, 3)[0][0] == "code.sql"
    book = Handbook(migrated)
    busy_history(book, random.Random(9), 10)  # and it keeps recording: new events after the old ones
    seqs = [r[0] for r in migrated.db.conn.execute("SELECT seq FROM events ORDER BY seq")]
    assert seqs[: len(before["events"])] == sorted(r[0] for r in before["events"]) and seqs[-1] > last_seq
    assert migrated.rebuild() == migrated.document()
    migrated.close()


def test_an_infinite_price_an_earlier_release_stored_becomes_unknown(tmp_path: Path) -> None:
    """Earlier releases accepted a price of 1e999 (or TOML's inf); the models refuse it now, so m006 cleans the
    live state and the event log, or the file could not be read, rebuilt or pruned again."""
    path = tmp_path / "h.db"
    store = HandbookStore(path)
    store.create_version(DOCUMENT, source="import")
    Handbook(store).upsert_agent(Agent(id="weird", input_per_mtok=1.0, output_per_mtok=2.0))
    store.close()
    # what the old release wrote for upsert_agent {"input_per_mtok": 1e999}
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE agents SET input_per_mtok = 9e999 WHERE id = 'weird'")
        (seq, payload) = conn.execute("SELECT seq, payload FROM events WHERE kind = 'upsert_agent'").fetchone()
        conn.execute("UPDATE events SET payload = ? WHERE seq = ?", [payload.replace("1.0", "Infinity"), seq])
        conn.execute("INSERT OR REPLACE INTO competence VALUES ('weird', 'code', 9e999, 1.0)")  # an old import's
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm006_finite_numbers'")
    store = HandbookStore(path)
    weird = {a.id: a for a in store.agents()}["weird"]
    assert weird.input_per_mtok is None and weird.output_per_mtok == 2.0  # unknown: charged c_ref and flagged
    assert all(math.isfinite(c.alpha) for c in store.competence())
    assert store.rebuild() == store.document()  # the event log replays
    store.close()


def as_written_before_m011(path: Path, sql: str) -> None:
    """Make the file what an older release left: `sql` undoes what it lacked, and m011 is not applied yet."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql)
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm011_backfill_older_files'")


def test_an_open_decision_of_an_agent_an_older_release_deleted_is_not_credited_to_its_namesake(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    store = HandbookStore(path)
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store)
    decision = book.route(RouteRequest(text="python", allowed_agents=["meta/llama-70b"])).decision_id
    book.delete_agent("meta/llama-70b")
    book.upsert_agent(Agent(id="meta/llama-70b", description="another model under the old id"))
    store.close()
    as_written_before_m011(path, "UPDATE decisions SET agent_deleted_at = NULL")  # releases before m010 marked none
    store = HandbookStore(path)
    before = store.competence()
    result = Handbook(store).record(OutcomeReport(decision_id=decision, success=True))
    assert not result.applied and store.competence() == before
    store.close()


def test_the_live_description_an_early_release_kept_only_in_its_snapshot_is_restored(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    store = HandbookStore(path)
    store.create_version(DOCUMENT.model_copy(update={"description": "our team's handbook"}), source="import")
    store.close()
    as_written_before_m011(path, "DELETE FROM meta WHERE key IN ('description', 'selections')")
    store = HandbookStore(path)
    assert store.document().description == "our team's handbook"
    assert store.rebuild() == store.document()  # the first rebuild after the upgrade finds nothing to replace
    store.close()


def test_snapshots_are_stored_compressed_and_an_older_files_text_snapshots_are_compressed_on_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    store = HandbookStore(path)
    live = store.create_version(DOCUMENT, source="import")
    expected = store.snapshot(live)
    store.close()
    # as a release before m012 left it: the snapshots as JSON text
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for version, blob in conn.execute("SELECT id, snapshot FROM versions").fetchall():
            conn.execute("UPDATE versions SET snapshot = ? WHERE id = ?", [zlib.decompress(blob).decode(), version])
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm012_compressed_snapshots'")
        text_size = conn.execute("SELECT length(snapshot) FROM versions WHERE id = ?", [live]).fetchone()[0]
    store = HandbookStore(path)
    assert store.snapshot(live) == expected
    assert store.snapshot_skill_parents(live) == {s.id: s.parent_id for s in DOCUMENT.skills}
    assert store.rebuild() == store.document()
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        kinds = {r[0] for r in conn.execute("SELECT typeof(snapshot) FROM versions")}
        packed_size = conn.execute("SELECT length(snapshot) FROM versions WHERE id = ?", [live]).fetchone()[0]
    assert kinds == {"blob"} and packed_size < text_size / 2


def test_recording_an_outcome_writes_few_wal_pages(tmp_path: Path) -> None:
    """Each b-tree an outcome touches is one more WAL page per commit (and per checkpoint, which fsyncs)."""
    path = tmp_path / "h.db"
    store = HandbookStore(path)
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store)
    demands = [SkillDemand(skill_id="code.sql", weight=1.0)]
    decisions = [
        book.route(RouteRequest(text="sql", skills=demands, session_id=f"s{i}")).decision_id for i in range(50)
    ]
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for decision_id in decisions:
        book.record(OutcomeReport(decision_id=decision_id, success=True, cost_usd=0.001))
    frames = (Path(f"{path}-wal").stat().st_size - 32) / (4096 + 24)
    # events + its index, outcomes + its key index, competence, cost_stats, and now and then page 1 as the file
    # grows (the old schema also wrote sqlite_sequence and an index on outcomes.session_id: 8 a record)
    assert 6 <= frames / len(decisions) < 7
    store.close()


# -- several processes ---------------------------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from skillorchestra.handbook.models import SkillDemand
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore

path, n, tag, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
other = "b" if tag == "a" else "a"
book = Handbook(HandbookStore(path))
(folder / f"ready-{tag}").touch()
while not (folder / "go").exists():
    time.sleep(0.002)
for i in range(n):
    if i == n // 2:  # halfway, wait for the other writer's first half: their writes must interleave
        (folder / f"half-{tag}").touch()
        while not (folder / f"half-{other}").exists():
            time.sleep(0.002)
    decision = book.route(
        RouteRequest(text="task", skills=[SkillDemand(skill_id="s", weight=1.0)], allowed_agents=["g"], session_id=tag)
    )
    book.record(OutcomeReport(decision_id=decision.decision_id, success=i % 2 == 0, cost_usd=0.001))
"""

OPENER = """
import sys
from skillorchestra.handbook.store import HandbookStore
HandbookStore(sys.argv[1]).close()
"""


def start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_processes_write_at_once_and_a_third_sees_their_writes(tmp_path: Path) -> None:
    n = 60
    path = tmp_path / "h.db"
    store = HandbookStore(path)
    store.create_version(
        HandbookDocument(skills=[Skill(id="s")], agents=[Agent(id="g")]), source="import", summary="shared"
    )
    book = Handbook(store)
    arrays = book.arrays()
    column = arrays.column_of_skill("s")
    assert arrays.evidence[0, column] == 0.0

    writers = [start(WRITER, str(path), str(n), tag, str(tmp_path)) for tag in ("a", "b")]
    deadline = time.monotonic() + 20
    while not all((tmp_path / f"ready-{tag}").exists() for tag in ("a", "b")):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers), "a writer died at start"
        time.sleep(0.005)
    (tmp_path / "go").touch()
    for writer in writers:
        _, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
        assert "locked" not in err

    competence = {(c.agent_id, c.skill_id): c for c in store.competence()}[("g", "s")]
    assert competence.alpha - 1.0 == n and competence.beta - 1.0 == n  # half successes from each writer
    assert store.counts()["outcomes"] == 2 * n and store.counts()["decisions"] == 2 * n
    assert store.session_spend("a") == pytest.approx(n * 0.001) == store.session_spend("b")
    # this process's Handbook reloads its arrays from data_version, without a restart
    assert book.arrays().evidence[0, column] == 2 * n
    # the writers did overlap (the halfway handshake guarantees it, whatever the scheduler does): events interleave
    tags = [
        row[0]
        for row in store.db.conn.execute(
            "SELECT d.session_id FROM events e JOIN decisions d ON d.id = json_extract(e.payload, '$.decision_id')"
            " WHERE e.kind = 'outcome' ORDER BY e.seq"
        )
    ]
    assert len(tags) == 2 * n
    assert sum(1 for x, y in zip(tags, tags[1:], strict=False) if x != y) > 1
    live = store.document()
    assert store.rebuild() == live and store.document() == live
    store.close()


def test_processes_opening_a_new_file_at_once_create_one_initial_version(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    openers = [start(OPENER, str(path)) for _ in range(4)]
    for opener in openers:
        _, err = opener.communicate(timeout=30)
        assert opener.returncode == 0, err
    store = HandbookStore(path)
    assert [v["source"] for v in store.versions()] == ["init"]
    assert store.schema_version() == schema_version()
    store.close()


@pytest.fixture(scope="module")
def learned_document() -> HandbookDocument:
    from learning_data import PRICES, swapped_and_alike

    from skillorchestra.handbook.learning.pipeline import learn

    return learn(swapped_and_alike(), PRICES, lambda_=0.1, seed=0).document


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda raw: {**raw, "format": "other"}, "not a labeller"),
        (lambda raw: {**raw, "dim": 5}, "labeller"),
        (lambda raw: {**raw, "idf": raw["idf"][: len(raw["idf"]) // 2]}, "labeller"),
        (lambda raw: {k: v for k, v in raw.items() if k != "prototypes"}, "prototypes"),
        (  # another handbook's labeller: it names none of this document's skills
            lambda raw: {
                **raw,
                "skills": [{"id": f"ghost{i}", "mode": "answer"} for i in range(len(raw["skills"]))],
                "prototype_skills": ["ghost0" for _ in raw["prototype_skills"]],
            },
            "names none",
        ),
        (
            lambda raw: (
                {k: v for k, v in raw.items() if k not in ("terms", "idf")}
                | {"kind": "minilm", "model_name": "sentence-transformers/all-MiniLM-L6-v2"}
            ),
            "not MiniLM",
        ),
    ],
)
def test_an_import_whose_labeller_is_damaged_is_refused_before_anything_is_written(
    tmp_path: Path, learned_document: HandbookDocument, damage: Any, says: str
) -> None:
    assert learned_document.labeller is not None and learned_document.labeller["kind"] == "tfidf"
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(learned_document, source="import")  # intact: accepted
    before = dump(store)
    broken = learned_document.model_copy(update={"labeller": damage(learned_document.labeller)})
    with pytest.raises(InvalidInput, match=says):
        store.create_version(broken, source="import")
    assert dump(store) == before
    store.close()


def test_a_step_the_labeller_gives_a_deleted_skill_goes_to_its_parent(
    tmp_path: Path, learned_document: HandbookDocument
) -> None:
    """The learned labeller keeps naming a skill deleted since; its share of a step went to the step's other
    skills (all of it, when it was the only one: 200 chemistry queries went to sports and cooking). The skill's
    parent, as the labeller's version placed it, takes it instead."""
    from learning_data import swapped_and_alike

    from skillorchestra.handbook.inference import HandbookMatcher
    from skillorchestra.handbook.learning.labeller import SkillLabeller
    from skillorchestra.handbook.matcher import LexicalMatcher

    store = HandbookStore(tmp_path / "h.db")
    store.create_version(learned_document, source="import")
    handbook = Handbook(store, matcher=HandbookMatcher(store, LexicalMatcher(store)))
    labeller = SkillLabeller.from_json(learned_document.labeller)  # type: ignore[arg-type]
    parent_of = {s.id: s.parent_id for s in learned_document.skills}
    children = {p for p in parent_of.values() if p}
    step = next(  # a step the labeller gives mostly to a leaf that has a parent
        task.query
        for task in swapped_and_alike()
        if (top := labeller.weights(task.query)[0])[0] not in children and parent_of[top[0]] and top[1] > 0.5
    )
    leaf = labeller.weights(step)[0][0]
    before = dict((d.skill_id, d.weight) for d in handbook.route(RouteRequest(text=step)).skills)
    assert before[leaf] > 0.5
    handbook.delete_skill(leaf)
    after = dict((d.skill_id, d.weight) for d in handbook.route(RouteRequest(text=step)).skills)
    parent = parent_of[leaf]
    assert leaf not in after and after[parent] == pytest.approx(before.get(parent, 0.0) + before[leaf])
    assert {s: w for s, w in after.items() if s != parent} == {
        s: pytest.approx(w) for s, w in before.items() if s not in (leaf, parent)
    }
    store.close()


def test_the_export_of_a_learned_handbook_after_a_delete_skill_imports(
    tmp_path: Path, learned_document: HandbookDocument
) -> None:
    """The labeller still names the deleted skill (its parent takes its share of a step) and `handbook import`
    refused the export (an upgrade QA pass)."""
    from skillorchestra.handbook.document_checks import check_document

    store = HandbookStore(tmp_path / "h.db")
    store.create_version(learned_document, source="import")
    labelled = {s["id"] for s in learned_document.labeller["skills"]}  # type: ignore[index]
    parents = {s.parent_id for s in learned_document.skills}
    leaf = sorted(labelled - parents)[0]
    Handbook(store).delete_skill(leaf)
    exported = store.document()
    check_document(exported)  # what `handbook import` runs first
    restored = HandbookStore(tmp_path / "restored.db")
    restored.create_version(exported, source="import")
    assert restored.document().labeller == exported.labeller
    restored.close()
    store.close()
