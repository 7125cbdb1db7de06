"""Handbook files older releases wrote, opened by this one (upgrade QA, session 20).

Migration m004 was edited after releases had applied it: 196d3a0 (the release that added it) wrote
`decisions.step_tokens` and `cost_stats.mean_step_tokens` only; 02ea5e8 added `cost_stats.n_step_tokens` to its body
and e8f78fe `decisions.role`. A file those first releases migrated has m004 recorded as applied, so the edited body
never runs on it, and every read of the cost statistics failed with "no such column: n_step_tokens" (consult_handbook,
route_step, handbook show/export/rebuild/promote/rollback/prune), and handbook://stats with "no such column: role".
The file here is built the way such a release left it, without git: the migrations before m004, then m004's body as
196d3a0 had it (copied below), then rows a current file holds, by the old file's columns."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlite_utils import Database

from skillorchestra.handbook.models import Agent, Competence, CostStats, HandbookDocument, Mode, Skill
from skillorchestra.handbook.schema import migrations, schema_version
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore

DOCUMENT = HandbookDocument(
    modes=[Mode(id="answer", description="answer a question")],
    skills=[
        Skill(id="code", mode="answer", description="programming", indicators=["python", "function"]),
        Skill(id="sql", mode="answer", description="sql queries", indicators=["SELECT", "JOIN"]),
    ],
    agents=[
        Agent(id="big", description="strong", input_per_mtok=5.0, output_per_mtok=15.0),
        Agent(id="small", description="cheap", input_per_mtok=0.1, output_per_mtok=0.3),
    ],
    competence=[
        Competence(agent_id="big", skill_id="code", alpha=8.0, beta=2.0),
        Competence(agent_id="small", skill_id="sql", alpha=6.0, beta=3.0),
    ],
    cost=[CostStats(agent_id="small", skill_id="sql", n=3.0, mean_cost_usd=0.001, m2_cost=1e-8)],
)
SKIPPED = ("_sqlite_migrations", "sqlite_sequence")


def m004_as_first_released(db: Database) -> None:
    """m004_step_tokens as release 196d3a0 applied it (its body before 02ea5e8 and e8f78fe added two columns)."""
    db["decisions"].add_column("step_tokens", float)
    db["cost_stats"].add_column("mean_step_tokens", float, not_null_default=0.0)


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """The columns of `table` in the main file (not an attached one's)."""
    return [row[1] for row in conn.execute(f'PRAGMA main.table_info("{table}")')]


def current_file_with_history(path: Path) -> None:
    """A handbook with routed steps, outcomes (some with costs and tokens) and an open decision."""
    store = HandbookStore(path)
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store)
    rng = random.Random(3)
    for step in range(12):
        text = rng.choice(["write a python function", "SELECT a JOIN b", "what is the time"])
        decision = book.route(RouteRequest(text=f"{text} {step}", strategy="mean", session_id="s1"))
        if step % 4 != 3:  # every fourth step stays open
            book.record(
                OutcomeReport(
                    decision_id=decision.decision_id,
                    success=step % 3 != 0,
                    cost_usd=0.0004 * (step + 1),
                    prompt_tokens=100 + step,
                    completion_tokens=20,
                )
            )
    store.close()


def as_the_first_m004_release_left_it(source: Path, target: Path) -> None:
    """`source`'s rows in a file migrated to m004 by release 196d3a0, each table by its columns then."""
    old = Database(target)
    migrations.apply(old, stop_before="m004_step_tokens")
    m004_as_first_released(old)
    old["_sqlite_migrations"].insert(
        {"migration_set": "skillorchestra", "name": "m004_step_tokens", "applied_at": str(datetime.now(UTC))}
    )
    conn = old.conn
    conn.execute("ATTACH DATABASE ? AS src", [str(source)])
    tables = [row[0] for row in conn.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")]
    with conn:
        for table in tables:
            kept = columns(conn, table)  # the old file's (tables later migrations add: none)
            if table not in SKIPPED and not table.startswith("skills_fts") and kept:  # triggers fill the FTS
                names = ", ".join(f'"{c}"' for c in kept)
                conn.execute(f'INSERT INTO main."{table}" ({names}) SELECT {names} FROM src."{table}"')
    conn.execute("DETACH DATABASE src")
    old.close()


@pytest.fixture
def upgraded(tmp_path: Path) -> tuple[Path, Path]:
    """(a file the first m004 release left, a current file with the same rows)."""
    current = tmp_path / "current.db"
    current_file_with_history(current)
    old = tmp_path / "old.db"
    as_the_first_m004_release_left_it(current, old)
    with sqlite3.connect(old) as conn:  # it is that release's schema
        assert "n_step_tokens" not in columns(conn, "cost_stats") and "role" not in columns(conn, "decisions")
        assert conn.execute("SELECT COUNT(*) FROM cost_stats").fetchone()[0] > 0
    return old, current


def test_a_file_the_first_m004_release_migrated_gets_every_column_a_new_file_has(upgraded: tuple[Path, Path]) -> None:
    old, current = upgraded
    store = HandbookStore(old)
    assert store.schema_version() == schema_version()
    store.close()
    with sqlite3.connect(old) as got, sqlite3.connect(current) as fresh:
        for table in ("decisions", "cost_stats", "outcomes", "competence", "agents", "skills", "versions"):
            assert set(columns(got, table)) == set(columns(fresh, table)), table
        # m017's counts: the first m004 release kept a step-length mean on every call, as a current file counts them
        counts = "SELECT agent_id, skill_id, n_step_tokens FROM cost_stats ORDER BY agent_id, skill_id"
        assert got.execute(counts).fetchall() == fresh.execute(counts).fetchall()
        assert any(row[2] > 0 for row in got.execute(counts))


def test_a_file_the_first_m004_release_migrated_still_routes_records_and_exports(upgraded: tuple[Path, Path]) -> None:
    old, _ = upgraded
    store = HandbookStore(old)
    book = Handbook(store)
    before = {(c.agent_id, c.skill_id): (c.alpha, c.beta) for c in store.competence()}
    assert book.consult("write a python function").skills  # read the cost statistics
    decision = book.route(RouteRequest(text="write a python function", strategy="mean"))
    result = book.record(OutcomeReport(decision_id=decision.decision_id, success=True, cost_usd=0.001))
    assert result.applied and store.competence() != before
    assert store.routing_counts()  # handbook://stats' routing shares read decisions.role
    document = store.document()
    assert {a.id for a in document.agents} == {"big", "small"} and document.cost
    assert store.rebuild().competence == document.competence
    store.close()
