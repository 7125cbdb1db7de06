"""A file written before m018/m019 (decisions kept no charge), opened by this release: its open decisions of unknown
cost are held at the reader's c_ref, as that release held them, and new steps keep their own charges (review)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from unknown_cost import unknown_cost_document

from skillorchestra.handbook.errors import Unroutable
from skillorchestra.handbook.models import SkillDemand
from skillorchestra.handbook.service import Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore

CLOCK = 1_700_000_000.0
DOCUMENT = unknown_cost_document()  # on a short step c_ref is $0.001, and 'unknown' is chosen


def step(budget_usd: float | None = None) -> RouteRequest:
    """A short step of session S in skill s, routed on quality alone."""
    skills = [SkillDemand(skill_id="s", weight=1.0)]
    return RouteRequest(text="a short step", skills=skills, lambda_=0.0, session_id="S", budget_usd=budget_usd)


def as_before_m018(path: Path) -> None:
    """The file as the release before m018 left it: no charge columns, the two migrations not applied."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE decisions DROP COLUMN unknown_charge_usd")
        conn.execute("ALTER TABLE decisions DROP COLUMN charged_usd")
        conn.execute(
            "DELETE FROM _sqlite_migrations WHERE name IN ('m018_decision_charge', 'm019_decision_unknown_charge')"
        )


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    """A handbook with one open step of unknown cost in session S, written before m018."""
    path = tmp_path / "old.db"
    store = HandbookStore(path)
    try:
        store.create_version(DOCUMENT, source="import")
        decision = Handbook(store, clock=lambda: CLOCK).route(step())
        assert decision.agent_id == "unknown"
    finally:
        store.close()
    as_before_m018(path)
    return path


def test_an_old_open_step_of_unknown_cost_is_held_at_the_readers_c_ref(old_file: Path) -> None:
    store = HandbookStore(old_file)  # migrates: the new columns are NULL in the old rows
    try:
        with contextlib.closing(sqlite3.connect(old_file)) as conn:
            [(old_id, charged, unknown_charge)] = conn.execute(
                "SELECT id, charged_usd, unknown_charge_usd FROM decisions"
            ).fetchall()
        assert (charged, unknown_charge) == (None, None)
        book = Handbook(store, clock=lambda: CLOCK)
        second = book.route(step(budget_usd=0.0025))
        assert second.c_ref_usd == pytest.approx(0.001)
        assert second.session_spend_usd == pytest.approx(0.001)  # the old step, at this reader's c_ref
        third = book.route(step(budget_usd=0.0025))  # $0.0005 left: the unknown agent's $0.001 no longer fits
        assert third.agent_id == "known" and third.session_spend_usd == pytest.approx(0.002)
        # a fallback on the old step (no unknown charge kept) is charged c_ref, as that release charged it
        with pytest.raises(Unroutable, match=r"cost unknown, charged c_ref \$0.001, exceeds"):
            book.fallback_decision(old_id, "unknown", budget_usd=0.0025, c_ref=0.001)
    finally:
        store.close()
