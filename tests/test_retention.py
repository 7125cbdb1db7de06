"""Retention: `handbook prune --before DATE` folds old events into a new snapshot without changing the live state,
and SKILLORCHESTRA_STORE_TEXT=0 keeps step texts out of the database."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mcp import Client

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.example import example_document
from skillorchestra.handbook.models import Agent, HandbookDocument
from skillorchestra.handbook.retention import parse_cutoff, prune
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.app import create_server
from skillorchestra.server.cli import main
from skillorchestra.server.settings import ServerSettings

STEPS = [
    "prove that the sum of two even numbers is even",
    "write a python function to merge two sorted lists",
    "who won the 1998 football world cup",
    "summarise this article in three sentences",
    "solve the logic puzzle about knights and knaves",
]


def _seeded(tmp_path: Path) -> tuple[HandbookStore, Handbook]:
    store = HandbookStore(tmp_path / "handbook.db")
    store.create_version(example_document(), source="import", summary="example")
    return store, Handbook(store)


def _steps(handbook: Handbook, rng: random.Random, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        decision = handbook.route(RouteRequest(text=rng.choice(STEPS), strategy="thompson", seed=rng.randrange(1000)))
        handbook.record(OutcomeReport(decision_id=decision.decision_id, reward=rng.random(), cost_usd=rng.random()))
        ids.append(decision.decision_id)
    return ids


def _state(document: HandbookDocument) -> dict[str, object]:
    """The document without its version number (a prune changes the version, never the state)."""
    return document.model_dump(exclude={"version"})


def _cutoff_now() -> float:
    time.sleep(0.01)  # strictly after everything written so far, strictly before what follows
    cutoff = time.time()
    time.sleep(0.01)
    return cutoff


def _ids(store: HandbookStore, table: str, column: str) -> set[str]:
    with store.lock:
        return {row[0] for row in store.db.conn.execute(f"SELECT {column} FROM {table}").fetchall()}


def test_prune_folds_old_events_and_keeps_the_live_state(tmp_path: Path) -> None:
    rng = random.Random(7)
    store, handbook = _seeded(tmp_path)
    old_ids = _steps(handbook, rng, 25)
    handbook.upsert_agent(Agent(id="newcomer", input_per_mtok=0.1, output_per_mtok=0.2))
    pending_old = handbook.route(RouteRequest(text=STEPS[0])).decision_id  # not yet reported
    state_at_cutoff = _state(store.document())
    cutoff = _cutoff_now()
    new_ids = _steps(handbook, rng, 10)
    handbook.upsert_agent(Agent(id="newcomer", description="edited after the cutoff"))
    old_version = store.current_version()
    events_before = store.events(old_version)
    live = _state(store.document())

    result = prune(store, cutoff)

    assert result.old_version == old_version and result.new_version == old_version + 1
    assert (result.folded_events, result.moved_events) == (26, 11)
    assert result.folded_events + result.moved_events == len(events_before)
    assert store.current_version() == result.new_version
    latest = store.versions()[-1]
    assert (latest["source"], latest["parent"]) == ("prune", old_version)
    assert _state(store.snapshot(result.new_version)) == state_at_cutoff  # the folded events live in the snapshot
    assert store.events(result.new_version) == events_before[26:]  # the newer events, same order and payloads
    assert store.events(old_version) == []
    assert _state(store.document()) == live
    store.rebuild()
    assert _state(store.document()) == live  # snapshot + replay == live state
    decisions, outcomes = _ids(store, "decisions", "id"), _ids(store, "outcomes", "decision_id")
    assert (result.deleted_decisions, result.deleted_outcomes) == (25, 25)
    assert not decisions & set(old_ids) and not outcomes & set(old_ids)
    assert set(new_ids) <= decisions and set(new_ids) <= outcomes
    assert pending_old in decisions  # still awaiting its report: kept, and it can still be reported
    recorded = handbook.record(OutcomeReport(decision_id=pending_old, success=True))
    assert recorded.applied and recorded.updated and recorded.note is None  # applied, as it would have been
    after = _state(store.document())
    assert after != live
    store.rebuild()
    assert _state(store.document()) == after


def test_a_kept_outcome_stays_idempotent_after_prune(tmp_path: Path) -> None:
    store, handbook = _seeded(tmp_path)
    _steps(handbook, random.Random(1), 3)
    cutoff = _cutoff_now()
    decision = handbook.route(RouteRequest(text=STEPS[1]))
    first = handbook.record(OutcomeReport(decision_id=decision.decision_id, reward=0.25))
    prune(store, cutoff)
    again = handbook.record(OutcomeReport(decision_id=decision.decision_id, reward=0.25))
    assert again.duplicate is True and again.updated == first.updated


def test_a_pruned_session_keeps_what_it_spent(tmp_path: Path) -> None:
    """QA: prune deleted a live session's reported decisions, and the session could spend its budget again. Its
    reported costs, a cost nobody knew (charged as the reader charges it) and an expired, uncalled step (nothing)
    are kept apart from the rows; a step still awaiting its report stays as a row."""
    store, handbook = _seeded(tmp_path)
    session = {"session_id": "s", "allowed_agents": ["gemma-2-9b-it"]}
    reported = handbook.route(RouteRequest(text=STEPS[0], **session))  # type: ignore[arg-type]
    handbook.record(OutcomeReport(decision_id=reported.decision_id, success=True, cost_usd=0.25))
    unknown = handbook.route(RouteRequest(text=STEPS[1], **session))  # type: ignore[arg-type]
    with store.write():  # a decision of an agent whose cost nobody knew, reported without one, written before m018
        sql = "UPDATE decisions SET expected_cost_usd = NULL, charged_usd = NULL WHERE id = ?"  # kept no charge
        store.db.execute(sql, [unknown.decision_id])
    handbook.record(OutcomeReport(decision_id=unknown.decision_id, success=True))
    other = handbook.route(RouteRequest(text=STEPS[2], session_id="other"))
    handbook.record(OutcomeReport(decision_id=other.decision_id, success=True, cost_usd=0.5))
    cutoff = _cutoff_now()
    waiting = handbook.route(RouteRequest(text=STEPS[3], **session))  # type: ignore[arg-type]
    before = (store.session_spend("s", unknown_cost=2.0), store.session_spend("other", unknown_cost=2.0))
    result = prune(store, cutoff)
    assert result.deleted_decisions == 3 and waiting.decision_id in _ids(store, "decisions", "id")
    after = (store.session_spend("s", unknown_cost=2.0), store.session_spend("other", unknown_cost=2.0))
    assert after == pytest.approx(before) and after[1] == pytest.approx(0.5)
    assert store.session_spend("s", unknown_cost=3.0) - after[0] == pytest.approx(1.0)  # the unknown one at 3, not 2
    more = handbook.route(RouteRequest(text=STEPS[4], session_id="other"))
    handbook.record(OutcomeReport(decision_id=more.decision_id, success=True, cost_usd=0.25))
    prune(store, _cutoff_now())  # a second prune adds to what the first kept (review: it never had to)
    assert more.decision_id not in _ids(store, "decisions", "id")
    assert store.session_spend("other", unknown_cost=2.0) == pytest.approx(0.75)


def test_prune_without_old_events_changes_nothing(tmp_path: Path) -> None:
    store, handbook = _seeded(tmp_path)
    cutoff = _cutoff_now()
    _steps(handbook, random.Random(3), 4)
    version, document = store.current_version(), store.document()
    result = prune(store, cutoff)
    assert result.new_version is None and result.folded_events == 0 and result.moved_events == 4
    assert (result.deleted_decisions, result.deleted_outcomes) == (0, 0)
    assert store.current_version() == version and store.document() == document
    assert "version unchanged" in result.summary()


def test_parse_cutoff() -> None:
    assert parse_cutoff("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC).timestamp()
    assert parse_cutoff("2026-01-31T12:00:00+02:00") == datetime(2026, 1, 31, 10, tzinfo=UTC).timestamp()
    assert parse_cutoff("2026-01-31 12:00") == datetime(2026, 1, 31, 12, tzinfo=UTC).timestamp()
    with pytest.raises(InvalidInput, match="--before"):
        parse_cutoff("last tuesday")


def test_cli_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, handbook = _seeded(tmp_path)
    _steps(handbook, random.Random(5), 6)
    store.close()
    tomorrow = datetime.fromtimestamp(time.time() + 86_400, UTC).date().isoformat()
    with pytest.raises(SystemExit) as done:
        main(["handbook", "prune", "--before", tomorrow, "--db", str(tmp_path / "handbook.db")])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "folded 6 events" in out and "deleted 6 decisions and 6 outcomes" in out
    assert "learn --data events" in out  # what the deleted rows meant for learning from the log
    with pytest.raises(SystemExit) as done:
        main(["handbook", "prune", "--before", "soon", "--db", str(tmp_path / "handbook.db")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--before" in err[0]
    with contextlib.closing(sqlite3.connect(tmp_path / "handbook.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 0
        assert conn.execute("SELECT source FROM versions ORDER BY id DESC LIMIT 1").fetchone()[0] == "prune"


def test_cli_prune_vacuum_gives_the_freed_pages_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, handbook = _seeded(tmp_path)
    _steps(handbook, random.Random(6), 300)
    live = _state(store.document())
    store.close()
    db = tmp_path / "handbook.db"
    tomorrow = datetime.fromtimestamp(time.time() + 86_400, UTC).date().isoformat()
    with pytest.raises(SystemExit) as done:
        main(["handbook", "prune", "--before", tomorrow, "--db", str(db)])
    assert done.value.code == 0
    assert "MB of free pages stay in the file for reuse (--vacuum gives them back)" in capsys.readouterr().out
    with contextlib.closing(sqlite3.connect(db)) as conn:
        free_before = conn.execute("PRAGMA freelist_count").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_before = db.stat().st_size
    with pytest.raises(SystemExit) as done:
        main(["handbook", "prune", "--before", tomorrow, "--db", str(db), "--vacuum"])
    assert done.value.code == 0 and "vacuumed: the file shrank by" in capsys.readouterr().out
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0 < free_before
    assert db.stat().st_size < size_before
    reopened = HandbookStore(db)
    assert _state(reopened.document()) == live  # nothing but free space went
    reopened.close()


def test_a_vacuum_beside_a_reader_says_the_space_comes_back_later(tmp_path: Path) -> None:
    store, handbook = _seeded(tmp_path)
    _steps(handbook, random.Random(7), 100)
    reader = sqlite3.connect(tmp_path / "handbook.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM decisions").fetchone()  # a server's read, in the middle of it
    try:
        result = prune(store, time.time() + 1, vacuum=True)
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    assert result.vacuum_pending and "the space returns at its next checkpoint" in result.summary()
    store.close()


# -- SKILLORCHESTRA_STORE_TEXT -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "stored"), [("0", False), ("", True), ("1", True)])
async def test_store_text_env_over_mcp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, stored: bool
) -> None:
    monkeypatch.setenv("SKILLORCHESTRA_STORE_TEXT", value)
    settings = ServerSettings.from_env(db_path=tmp_path / "h.db", seed_example=True, matcher="lexical")
    assert settings.store_step_text is stored
    async with Client(create_server(settings)) as client:
        routed = await client.call_tool("route_step", {"text": STEPS[1]})
        assert not routed.is_error, routed.content
    with contextlib.closing(sqlite3.connect(tmp_path / "h.db")) as conn:
        rows = conn.execute("SELECT text FROM decisions").fetchall()
    assert rows == [(STEPS[1] if stored else None,)]


def test_store_text_env_rejects_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKILLORCHESTRA_STORE_TEXT", "maybe")
    with pytest.raises(InvalidInput, match="SKILLORCHESTRA_STORE_TEXT"):
        ServerSettings.from_env()


def test_an_outcome_decided_before_prunes_is_applied_even_if_it_read_the_old_version(tmp_path: Path) -> None:
    """A record that read its decision's version just before a prune committed (the prune ran beside the server)
    compares it with the live version after: prunes leave the state as it was, so it is applied; a version made
    any other way (an import) still is not (found by the final review)."""
    store, handbook = _seeded(tmp_path)
    _steps(handbook, random.Random(5), 3)
    old = store.current_version()
    raced = handbook.route(RouteRequest(text=STEPS[2])).decision_id
    for _ in range(2):  # a chain of prunes
        _steps(handbook, random.Random(6), 1)
        assert prune(store, _cutoff_now()).new_version is not None
    with store.write():  # where the race left it: read under the old version before the prune moved it
        store.db.execute("UPDATE decisions SET version = ? WHERE id = ?", [old, raced])
    recorded = handbook.record(OutcomeReport(decision_id=raced, success=True))
    assert recorded.applied and recorded.updated and recorded.note is None
    live = _state(store.document())
    store.rebuild()
    assert _state(store.document()) == live
    stale = handbook.route(RouteRequest(text=STEPS[3])).decision_id
    store.create_version(store.document(), source="import", summary="another handbook")
    assert not handbook.record(OutcomeReport(decision_id=stale, success=True)).applied


def test_after_a_prune_promote_and_rollback_say_what_prune_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: `promote` of the pruned version said its outcomes came back (prune had folded them into its own version),
    and `rollback` right after a prune refused as if rollback were broken."""
    store, handbook = _seeded(tmp_path)
    pruned_version = store.current_version()
    _steps(handbook, random.Random(5), 6)
    store.close()
    db = str(tmp_path / "handbook.db")
    tomorrow = datetime.fromtimestamp(time.time() + 86_400, UTC).date().isoformat()
    with pytest.raises(SystemExit):
        main(["handbook", "prune", "--before", tomorrow, "--db", db])
    prune_version = pruned_version + 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["handbook", "rollback", "--db", db])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"the live version {prune_version} is a prune, which left the live state" in err
    with pytest.raises(SystemExit) as done:
        main(["handbook", "promote", str(pruned_version), "--db", db])
    out = capsys.readouterr().out
    assert done.value.code == 0
    folded = f"except those `prune` folded into version {prune_version} (promote {prune_version} to have them back)"
    assert folded in out
