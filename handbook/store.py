"""SQLite storage of the handbook: versions, the event log, decisions and outcomes (the file, its lock and write
transactions: handbook/sqlite_file.py; the schema and its migrations: handbook/schema.py; a document's referential
checks: handbook/document_checks.py).

Design:
- One file, WAL, synchronous=NORMAL, every write in `BEGIN IMMEDIATE` (handbook/sqlite_file.py says why).
- A handbook *version* is a snapshot (the export document). Every change after it (skill and agent edits,
  outcomes) is an *event* appended against the version it applies to and applied to the live tables in the
  same transaction, by the same functions `rebuild` replays. So live state == snapshot + replay, exactly.
- The rest of the code asks for things in domain terms; SQL stays in the store's modules.

HandbookStore is put together here from one part per job, each a mixin over the parts it calls (no part calls one
above it):
- store_base.py: the attributes every part shares and the meta row; store_sql.py: the SQL and row types they share;
- store_live.py (LiveState): the live tables, read and written row by row;
- store_events.py (EventLog): the event log, appended and applied; evidence_update.py: an outcome's arithmetic;
- store_versions.py (Versions): versions, promote, rollback, and replays onto a snapshot (rebuild, state_of);
- store_decisions.py (Decisions): decisions, outcomes, claims and session spend;
- store_retention.py (Retention): what `handbook prune` folds and forgets.
This module keeps what opening a file checks, the agents' connection settings and the row counts. The names callers
import from here stay importable from here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from skillorchestra.handbook.errors import InvalidInput, named
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.schema import dumps, migrations, schema_version, unknown_migrations
from skillorchestra.handbook.store_decisions import Decisions
from skillorchestra.handbook.store_events import OutcomeEffect
from skillorchestra.handbook.store_retention import Retention
from skillorchestra.handbook.store_sql import (
    AGENT_SQL,
    COMPETENCE_SQL,
    COST_SQL,
    MAX_SEQ,
    SERVES_SQL,
    SKILL_SQL,
    UNCALLED,
    UNREPORTED,
    CompetenceRow,
    CostRow,
    Event,
)
from skillorchestra.handbook.store_versions import BOOKKEEPING_METRICS, NOT_LIVE_MARK, NOT_LIVE_METRICS

__all__ = [
    "AGENT_SQL",
    "BOOKKEEPING_METRICS",
    "COMPETENCE_SQL",
    "COST_SQL",
    "MAX_SEQ",
    "NOT_LIVE_MARK",
    "NOT_LIVE_METRICS",
    "SERVES_SQL",
    "SKILL_SQL",
    "UNCALLED",
    "UNREPORTED",
    "CompetenceRow",
    "CostRow",
    "Event",
    "HandbookStore",
    "OutcomeEffect",
]


class HandbookStore(Decisions, Retention):
    """The handbook file (see SqliteFile for its connection, lock and write transactions)."""

    # -- opening a file (SqliteFile calls these before anything else reads or writes it) -----------------

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """A SQLite file with tables but no handbook migrations is another program's: a command run on it by
        mistake (even `handbook versions`) would add thirty tables to it."""
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
                " ORDER BY name"
            )
        ]
        if not tables:
            return  # a new (or empty) file becomes a handbook
        if "_sqlite_migrations" in tables:
            ours = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM _sqlite_migrations WHERE migration_set = ?)", [migrations.name]
            ).fetchone()[0]
            if ours:
                return
        shown = named(tables, 5)
        raise InvalidInput(
            "db",
            str(self.path),
            f"a skillorchestra handbook or a new file (this SQLite database is another program's: it holds the "
            f"tables {shown}; nothing was written to it)",
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Migrate the file, refusing one a newer skillorchestra wrote before reading or writing anything. A file
        already migrated is only read: opening it (`handbook show`, a server starting) does not wait for another
        process's write lock (QA: show failed after the busy timeout behind a long import, saying it wrote nothing)."""
        self._refuse_newer()
        if not migrations.pending(self.db) and self.db["meta"].exists() and self._meta("current_version") is not None:
            return
        with self.write():
            self._refuse_newer()  # another process may have migrated it meanwhile
            upgrading = bool(migrations.pending(self.db)) and self.db["meta"].exists()
            migrations.apply(self.db)
            if self._meta("current_version") is None:
                self._insert_version(HandbookDocument(), source="init", summary="empty handbook", parent=None)
        if upgrading:  # a migration may have copied whole tables: give the WAL's space back at once
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _refuse_newer(self) -> None:
        """A file a newer skillorchestra wrote: its schema may mean something this build would misread or break."""
        unknown = unknown_migrations(self.db)
        if unknown:
            raise InvalidInput(
                "db",
                str(self.path),
                "a handbook this version can use (it was written by a newer skillorchestra: handbook schema "
                f"{self.schema_version()}, migrations {', '.join(unknown)} unknown to this release, "
                f"which reads schema {schema_version()} at most (see --version); upgrade skillorchestra)",
            )

    def schema_version(self) -> int:
        with self.lock:
            return len(migrations.applied(self.db))

    # -- the agents' connection settings (`agents load`; delegate reads them) -----------------------------

    def save_connections(self, connections: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """Replace the agents' connection settings (agent_id -> (kind, settings)); only the CLI calls this."""
        with self.write():
            self.db.execute("DELETE FROM connections")
            now = time.time()
            for agent_id, (kind, config) in connections.items():
                self.db.table("connections").insert(
                    {"agent_id": agent_id, "kind": kind, "config": dumps(config), "loaded_at": now}, pk="agent_id"
                )

    def connected_agents(self) -> set[str]:
        """Agents with connection settings, without parsing them (delegate skips a row it cannot parse, logged)."""
        with self.lock:
            return {r[0] for r in self.db.conn.execute("SELECT agent_id FROM connections")}

    def connections(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            rows = self.db.conn.execute("SELECT agent_id, config FROM connections ORDER BY agent_id").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    # -- row counts ----------------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self.reading() as conn:
            return {
                table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for table in ("modes", "skills", "agents", "competence", "decisions", "outcomes", "events")
            }
