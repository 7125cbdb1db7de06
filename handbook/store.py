"""SQLite storage of the handbook: versions, the event log, decisions and outcomes (the file, its lock and write
transactions: handbook/sqlite_file.py; the schema and its migrations: handbook/schema.py; a document's referential
checks: handbook/document_checks.py).

Design:
- One file, WAL, synchronous=NORMAL, every write in `BEGIN IMMEDIATE` (handbook/sqlite_file.py says why).
- A handbook *version* is a snapshot (the export document). Every change after it (skill and agent edits,
  outcomes) is an *event* appended against the version it applies to and applied to the live tables in the
  same transaction, by the same functions `rebuild` replays. So live state == snapshot + replay, exactly.
- The rest of the code asks for things in domain terms; SQL stays in this module.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from skillorchestra.handbook.arrays import MODE_PREFIX, ROOT_SKILL
from skillorchestra.handbook.document_checks import check_document, check_entering
from skillorchestra.handbook.errors import Conflict, InvalidInput, NotFound, named, utc_text
from skillorchestra.handbook.models import (
    CLAIM_IN_FLIGHT_S,
    INFRASTRUCTURE_ERRORS,
    Agent,
    Competence,
    CostStats,
    HandbookDocument,
    LengthEffect,
    Mode,
    Skill,
)
from skillorchestra.handbook.posterior import forget, fractional_update, weighted_mean_update
from skillorchestra.handbook.schema import (
    dumps,
    migrations,
    pack_snapshot,
    schema_version,
    unknown_migrations,
    unpack_snapshot,
)
from skillorchestra.handbook.sqlite_file import BUSY_TIMEOUT_S, SqliteFile, bindable

# how a learned version's summary says it was stored without going live; promoting it drops the remark
NOT_LIVE_MARK = " (stored, not live:"
# Keys of a version's metrics that record how it went live (promote adds the first four to the metrics it copies
# from the version it restores; learn sets the others), not figures a learning run measured.
NOT_LIVE_METRICS = ("went_live", "not_live_reason", "agents_back_on_prior")  # of a learned version stored only
BOOKKEEPING_METRICS = frozenset({"promoted_from", "replaced", "with_events", "rollback", *NOT_LIVE_METRICS})


# SQL conditions on a row of `decisions`: no outcome reported for it; delegate noted no call of its agent
UNREPORTED = "NOT EXISTS (SELECT 1 FROM outcomes WHERE outcomes.decision_id = decisions.id)"
UNCALLED = "call_latency_s IS NULL AND call_error_class IS NULL"


class CompetenceRow(NamedTuple):
    """A competence row as stored, not validated: the arrays read every row after each edit, and a model per row
    took 3.7 s at 356,000 rows (build_arrays reads these fields by name, as it reads Competence)."""

    agent_id: str
    skill_id: str
    alpha: float
    beta: float


class CostRow(NamedTuple):
    """A cost_stats row as stored, not validated (see CompetenceRow); the fields of CostStats, in its order."""

    agent_id: str
    skill_id: str
    n: float
    mean_cost_usd: float
    m2_cost: float
    mean_prompt_tokens: float
    mean_completion_tokens: float
    mean_latency_s: float
    mean_step_tokens: float
    n_step_tokens: float
    n_prompt_tokens: float
    n_completion_tokens: float
    n_latency_s: float


T = TypeVar("T")
Event = tuple[str, dict[str, Any]]  # (kind, payload) of the event log
MAX_SEQ = 2**63 - 1  # above every event's seq (SQLite's largest integer)

COMPETENCE_SQL = "SELECT agent_id, skill_id, alpha, beta FROM competence ORDER BY agent_id, skill_id"
COST_SQL = f"SELECT {', '.join(CostRow._fields)} FROM cost_stats ORDER BY agent_id, skill_id"
# a cost row's numbers, as an outcome updates them (built once: record_outcome is the hot path)
_COST_NUMBERS = CostRow._fields[2:]
_COST_COLUMNS = ", ".join(_COST_NUMBERS)
_NO_COSTS = (0.0,) * len(_COST_NUMBERS)
_COST_UPSERT = (
    f"INSERT INTO cost_stats (agent_id, skill_id, {_COST_COLUMNS}) VALUES ({', '.join('?' * len(CostRow._fields))})"
    " ON CONFLICT (agent_id, skill_id) DO UPDATE SET " + ", ".join(f"{n} = excluded.{n}" for n in _COST_NUMBERS)
)
SKILL_SQL = "SELECT id, mode, parent_id, description, indicators, examples FROM skills"
AGENT_SQL = "SELECT id, description, modes, input_per_mtok, output_per_mtok, enabled, cost_per_call_usd FROM agents"
# an agent serves a mode when it names it or names none (arrays.serves, in SQL); CASE, as OR may not short-circuit
SERVES_SQL = (
    "CASE WHEN COALESCE(modes, '') IN ('', '[]') THEN 1"
    " ELSE EXISTS (SELECT 1 FROM json_each(agents.modes) WHERE json_each.value = ?) END"
)


@dataclass
class OutcomeEffect:
    """The competence and cost rows an outcome changed (the service patches its arrays with them)."""

    competence: list[Competence] = field(default_factory=list)
    costs: list[CostStats] = field(default_factory=list)
    deleted_skills: list[str] = field(default_factory=list)  # demanded by the decision, gone since: not updated
    agent_deleted: bool = False  # the decision's agent was deleted since (perhaps added again): nothing applied


_REPORTED_STEPS = (  # graded reports of steps whose text was kept: learning from the event log reads these
    "decisions d JOIN outcomes o ON o.decision_id = d.id WHERE d.text IS NOT NULL AND d.text != ''"
    " AND o.reward IS NOT NULL AND COALESCE(o.error_class, 'task') = 'task'"
)
# what a decision has spent or holds of its session's budget (session_spend): its reported cost, else its delegated
# call's, else (expired with neither a call nor a report) nothing, else its expected cost; NULL when that is unknown
# too (the reader charges its own figure). One parameter: now.
_KNOWN_SPEND = (
    "COALESCE(o.cost_usd, d.call_cost_usd, CASE WHEN o.decision_id IS NULL AND d.call_latency_s IS NULL"
    " AND d.expires_at <= ? THEN 0 ELSE d.expected_cost_usd END)"
)


class HandbookStore(SqliteFile):
    """The handbook file (see SqliteFile for its connection, lock and write transactions)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.generation = 0  # bumped by every change of the live state made through this object
        super().__init__(path, busy_timeout_s=busy_timeout_s)

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

    # -- meta and versions -------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self.db.conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self.db["meta"].upsert({"key": key, "value": value}, pk="key")

    def current_version(self) -> int:
        with self.lock:
            return int(self._meta("current_version") or 0)

    def schema_version(self) -> int:
        with self.lock:
            return len(migrations.applied(self.db))

    def versions(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.conn.execute(
                "SELECT id, parent_id, created_at, source, summary, metrics FROM versions ORDER BY id"
            ).fetchall()
        return [
            {
                "version": r[0],
                "parent": r[1],
                "created_at": r[2],
                "source": r[3],
                "summary": r[4],
                "metrics": json.loads(r[5] or "{}"),
            }
            for r in rows
        ]

    def snapshot(self, version: int) -> HandbookDocument:
        with self.lock:
            row = self.db.conn.execute("SELECT snapshot FROM versions WHERE id = ?", [version]).fetchone()
        if row is None:
            raise self._unknown_version(version)
        return HandbookDocument.model_validate_json(unpack_snapshot(row[0]))

    def snapshot_skill_parents(self, version: int) -> dict[str, str | None]:
        """skill id -> parent id as the version's snapshot placed them (parsed as plain JSON: validating the whole
        snapshot, MBs of competence rows, as a HandbookDocument would take seconds)."""
        with self.lock:
            row = self.db.conn.execute("SELECT snapshot FROM versions WHERE id = ?", [version]).fetchone()
        skills = json.loads(unpack_snapshot(row[0])).get("skills", []) if row is not None else []
        return {skill["id"]: skill.get("parent_id") for skill in skills}

    def _unknown_version(self, version: int) -> NotFound:
        numbers = [v["version"] for v in self.versions()]
        listed = f"this handbook has versions {min(numbers)} to {max(numbers)}" if numbers else "it has none yet"
        return NotFound("version", str(version), hint=f"{listed} (`skillorchestra handbook versions` lists them)")

    def create_version(
        self,
        document: HandbookDocument,
        *,
        source: str,
        summary: str | Callable[[int], str] = "",
        metrics: dict[str, Any] | None = None,
        live: bool = True,
    ) -> int:
        """Replace the live handbook by `document` and make it a new version (import, learn, refine); with
        live=False the version is only stored (its parent is still the live one), for `promote` to make live.
        `summary` may be a function of the new version's number (a summary that names it)."""
        with self.lock:  # ids the live state holds are not refused again (its entities only: no evidence rows)
            held = HandbookDocument(modes=self.modes(), skills=self.skills(), agents=self.agents())
        check_document(document, live=held, texts=False)  # texts: see check_document
        with self.write():
            parent = self.current_version() or None
            return self._insert_version(
                document, source=source, summary=summary, parent=parent, metrics=metrics, live=live
            )

    def _insert_version(
        self,
        document: HandbookDocument,
        *,
        source: str,
        summary: str | Callable[[int], str],
        parent: int | None,
        metrics: dict[str, Any] | None = None,
        live: bool = True,
    ) -> int:
        row = self.db.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM versions").fetchone()
        version = int(row[0])
        summary = summary(version) if callable(summary) else summary
        document = document.model_copy(update={"version": version, "length_effect": _effective(document.length_effect)})
        if live:
            self._replace_live_state(document)
        self.db["versions"].insert(
            {
                "id": version,
                "parent_id": parent,
                "created_at": time.time(),
                "source": source,
                "summary": summary,
                "metrics": dumps(metrics or {}),
                "snapshot": pack_snapshot(document.model_dump_json()),
            },
            pk="id",
        )
        if live:
            self._set_meta("current_version", str(version))
        return version

    def _replace_live_state(self, document: HandbookDocument) -> None:
        for table in ("modes", "skills", "agents", "competence", "cost_stats"):
            self.db.execute(f"DELETE FROM {table}")
        for mode in document.modes:
            self._put_mode(mode)
        for skill in document.skills:
            self._ensure_mode(skill.mode)
            self._put_skill(skill)
        for agent in document.agents:
            self._put_agent(agent)
        if document.competence:
            self.db["competence"].insert_all([c.model_dump() for c in document.competence])
        if document.cost:
            self.db["cost_stats"].insert_all([c.model_dump() for c in document.cost])
        self._compact_skill_index()
        self.generation += 1
        self._set_meta("description", document.description)
        self._set_meta("selections", dumps(document.selections))
        self._set_meta("labeller", dumps(document.labeller))
        self._put_length_effect(document.length_effect, document.version)

    # -- reads -------------------------------------------------------------------------------------------

    def modes(self) -> list[Mode]:
        return self._modes("ORDER BY id", [])

    def _modes(self, condition: str, params: list[Any]) -> list[Mode]:
        with self.lock:
            rows = self.db.conn.execute(f"SELECT id, description, insights FROM modes {condition}", params).fetchall()
        return [Mode(id=r[0], description=r[1] or "", insights=json.loads(r[2] or "[]")) for r in rows]

    def skills(self) -> list[Skill]:
        return self._skills("ORDER BY id", [])

    def skill(self, skill_id: str) -> Skill | None:
        """The stored skill with this id, None if there is none (an edit reads one skill, not the table)."""
        return _by_id(self._skills, skill_id)

    def skill_ids(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.conn.execute("SELECT id FROM skills ORDER BY id")]

    def skill_children(self, skill_id: str) -> list[Skill]:
        """The skills whose parent is `skill_id`, by id."""
        return self._skills("WHERE parent_id = ? ORDER BY id", [skill_id]) if bindable(skill_id) else []

    def skills_page(self, after: str | None, mode: str | None, limit: int) -> list[Skill]:
        """At most `limit` skills (of `mode`, if given) with an id above `after`, by id (a list page, in SQL)."""
        where, params = _page_conditions(after, [("mode = ?", mode)] if mode is not None else [])
        return self._skills(f"{where} ORDER BY id LIMIT ?", [*params, limit])

    def _skills(self, condition: str, params: list[Any]) -> list[Skill]:
        with self.lock:
            rows = self.db.conn.execute(f"{SKILL_SQL} {condition}", params).fetchall()
        return [
            Skill(
                id=r[0],
                mode=r[1],
                parent_id=r[2],
                description=r[3] or "",
                indicators=json.loads(r[4] or "[]"),
                examples=json.loads(r[5] or "[]"),
            )
            for r in rows
        ]

    def agents(self) -> list[Agent]:
        return self._agents("ORDER BY id", [])

    def agent(self, agent_id: str) -> Agent | None:
        """The stored agent with this id, None if there is none."""
        return _by_id(self._agents, agent_id)

    def agents_page(self, after: str | None, mode: str | None, limit: int) -> list[Agent]:
        """At most `limit` agents (serving `mode`, if given: arrays.serves) with an id above `after`, by id."""
        where, params = _page_conditions(after, [(SERVES_SQL, mode)] if mode else [])
        return self._agents(f"{where} ORDER BY id LIMIT ?", [*params, limit])

    def _agents(self, condition: str, params: list[Any]) -> list[Agent]:
        with self.lock:
            rows = self.db.conn.execute(f"{AGENT_SQL} {condition}", params).fetchall()
        return [
            Agent(
                id=r[0],
                description=r[1] or "",
                modes=json.loads(r[2] or "[]"),
                input_per_mtok=r[3],
                output_per_mtok=r[4],
                enabled=bool(r[5]),
                cost_per_call_usd=r[6],
            )
            for r in rows
        ]

    def mode(self, mode_id: str) -> Mode | None:
        """The stored mode with this id, None if there is none."""
        return _by_id(self._modes, mode_id)

    def competence(self) -> list[Competence]:
        return [Competence(**row._asdict()) for row in self.evidence_rows()[0]]

    def costs(self) -> list[CostStats]:
        return [CostStats(**row._asdict()) for row in self.evidence_rows()[1]]

    def evidence_rows(self) -> tuple[list[CompetenceRow], list[CostRow]]:
        """Every competence and cost row as stored, by (agent, skill), as plain named tuples: what the routing
        arrays are derived from after each edit (a validated model per row cost 7.5 s at 200 x 2,000)."""
        with self.lock:
            competence = list(map(CompetenceRow._make, self.db.conn.execute(COMPETENCE_SQL).fetchall()))
            costs = list(map(CostRow._make, self.db.conn.execute(COST_SQL).fetchall()))
        return competence, costs

    def evidence_counts(self, column: str, value: str) -> tuple[int, int]:
        """How many competence and cost rows an agent (column "agent_id") or a skill ("skill_id") has."""
        if column not in ("agent_id", "skill_id"):
            raise ValueError(f"not an evidence key: {column!r}")
        if not bindable(value):
            return 0, 0
        with self.lock:
            row = self.db.conn.execute(
                f"SELECT (SELECT COUNT(*) FROM competence WHERE {column} = ?),"
                f" (SELECT COUNT(*) FROM cost_stats WHERE {column} = ?)",
                [value, value],
            ).fetchone()
        return int(row[0]), int(row[1])

    def document(self) -> HandbookDocument:
        """The live handbook as the transferable artifact."""
        with self.lock:
            return HandbookDocument(
                version=self.current_version(),
                modes=self.modes(),
                skills=self.skills(),
                agents=self.agents(),
                competence=self.competence(),
                cost=self.costs(),
                description=self._meta("description") or "",
                selections=self.selections(),
                labeller=self.labeller(),
                length_effect=self.length_effect(),
            )

    def selections(self) -> dict[str, int]:
        """Orchestrator name -> the handbook depth selected for it."""
        with self.lock:
            return json.loads(self._meta("selections") or "{}")

    def labeller(self) -> dict[str, Any] | None:
        """The live version's learned skill identifier (JSON), if it has one."""
        with self.lock:
            return json.loads(self._meta("labeller") or "null")

    def length_effect(self) -> LengthEffect | None:
        """The live version's learned length effect (handbook/length.py), if it has one.

        The row names the version it was written for: a release from before length effects replaces the live
        state (import, learn, rollback) without knowing the row, and must not leave a stale effect routing the
        version it made live. (Such a release cannot read a version that carries an effect at all: its models
        refuse the unknown key, so it fails rather than drops the effect when it rolls back to or diffs one.)"""
        with self.lock:
            raw = json.loads(self._meta("length_effect") or "null")
            if not isinstance(raw, dict) or raw.get("version") != self.current_version() or raw["effect"] is None:
                return None
            return LengthEffect.model_validate(raw["effect"])

    def _put_length_effect(self, effect: LengthEffect | None, version: int) -> None:
        kept = _effective(effect)
        self._set_meta(
            "length_effect", dumps({"version": version, "effect": kept.model_dump() if kept is not None else None})
        )

    def search_skills(self, query: str, mode: str | None, limit: int) -> list[tuple[str, float]]:
        """FTS5 BM25 over skill ids, descriptions, indicators and examples; larger score = better match."""
        sql = (
            "SELECT s.id, -bm25(skills_fts) FROM skills_fts JOIN skills s ON s.rowid = skills_fts.rowid"
            " WHERE skills_fts MATCH ?" + (" AND s.mode = ?" if mode else "") + " ORDER BY bm25(skills_fts) LIMIT ?"
        )
        params: list[Any] = [query] + ([mode] if mode else []) + [limit]
        with self.lock:
            return [(r[0], float(r[1])) for r in self.db.conn.execute(sql, params).fetchall()]

    # -- events ------------------------------------------------------------------------------------------

    def apply(self, kind: str, payload: dict[str, Any]) -> Any:
        """Append an event against the live version and apply it, in one transaction. An edit is checked here
        (not in the replay, which must read an older file's events) for what it would add (check_entering)."""
        with self.write():
            if kind in _EDITED:
                self._check_edit(kind, payload)
            self._log_event(self.current_version(), kind, payload)
            if kind == "delete_agent":  # here, not in the event: a rebuild's replay must not mark later decisions
                self._mark_agent_deleted(payload["id"])
            return self._apply_event(kind, payload)

    def _check_edit(self, kind: str, payload: dict[str, Any]) -> None:
        """Every edit (tools, agents.toml, the service) ends here: refuse a new id, mode or text that could not be
        addressed or shown safely, naming the field as the tools do (skill_id, description, indicators[0])."""
        model, stored_of = _EDITED[kind]
        entity = model.model_validate(payload)
        stored = stored_of(self, entity.id)
        check_entering(entity, stored, id_field=f"{kind.removeprefix('upsert_')}_id")

    def _mark_agent_deleted(self, agent_id: str) -> None:
        """The agent's open decisions: their outcomes will be stored but not applied (see record_outcome)."""
        self.db.execute(
            "UPDATE decisions SET agent_deleted_at = ? WHERE agent_id = ? AND agent_deleted_at IS NULL"
            f" AND {UNREPORTED}",
            [time.time(), agent_id],
        )

    def _log_event(self, version: int, kind: str, payload: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO events (version, kind, payload, created_at) VALUES (?, ?, ?, ?)",
            [version, kind, dumps(payload), time.time()],
        )

    def _apply_event(self, kind: str, payload: dict[str, Any]) -> Any:
        self.generation += 1
        handler = getattr(self, f"_event_{kind}", None)
        if handler is None:
            raise InvalidInput("event.kind", kind, "a known event kind")
        return handler(payload)

    def _event_upsert_mode(self, payload: dict[str, Any]) -> None:
        self._put_mode(Mode.model_validate(payload))

    def _event_upsert_skill(self, payload: dict[str, Any]) -> None:
        skill = Skill.model_validate(payload)
        self._ensure_mode(skill.mode)
        self._put_skill(skill)

    def _event_delete_skill(self, payload: dict[str, Any]) -> None:
        skill_id = payload["id"]
        for table in ("competence", "cost_stats"):
            self.db.execute(f"DELETE FROM {table} WHERE skill_id = ?", [skill_id])
        self.db.execute("DELETE FROM skills WHERE id = ?", [skill_id])

    def _event_upsert_agent(self, payload: dict[str, Any]) -> None:
        self._put_agent(Agent.model_validate(payload))

    def _event_delete_agent(self, payload: dict[str, Any]) -> None:
        agent_id = payload["id"]
        for table in ("competence", "cost_stats"):
            self.db.execute(f"DELETE FROM {table} WHERE agent_id = ?", [agent_id])
        self.db.execute("DELETE FROM agents WHERE id = ?", [agent_id])
        effect = self.length_effect()
        if effect is not None and agent_id in effect.slopes:  # what was learned of it goes with its evidence
            slopes = {a: s for a, s in effect.slopes.items() if a != agent_id}
            self._put_length_effect(effect.model_copy(update={"slopes": slopes}), self.current_version())

    def _event_outcome(self, payload: dict[str, Any]) -> OutcomeEffect:
        """Fractional Beta updates by skill weight; infrastructure errors only touch cost."""
        effect = OutcomeEffect()
        agent_id = payload["agent_id"]
        if not self._exists("agents", agent_id):
            return effect
        named = [s for s, w in payload["skills"] if w > 0]
        marks = ",".join("?" for _ in named)
        known = {r[0] for r in self.db.conn.execute(f"SELECT id FROM skills WHERE id IN ({marks})", named)}
        demands = [(s, w) for s, w in payload["skills"] if s in known and w > 0] or [
            (self._fallback_column(payload), 1.0)
        ]
        effect.deleted_skills = [s for s in named if s not in known]
        infrastructure = payload.get("error_class") in INFRASTRUCTURE_ERRORS
        if not infrastructure and payload.get("reward") is not None:
            gamma, by_weight = payload.get("gamma"), bool(payload.get("forget_by_weight"))
            effect.competence = self._update_competence(agent_id, demands, payload["reward"], gamma, by_weight)
        cost = payload.get("cost_usd")
        if cost is not None and not (infrastructure and cost <= 0):
            effect.costs = self._update_costs(agent_id, demands, payload, infrastructure)
        return effect

    def _fallback_column(self, payload: dict[str, Any]) -> str:
        """A step with no (surviving) skill is evidence for its mode when it had one, else for the agent."""
        mode = payload.get("mode")
        return f"{MODE_PREFIX}{mode}" if mode and self._exists("modes", mode) else ROOT_SKILL

    def _rows_for(self, table: str, columns: str, agent_id: str, skills: list[str]) -> dict[str, tuple[Any, ...]]:
        marks = ",".join("?" for _ in skills)
        rows = self.db.conn.execute(
            f"SELECT skill_id, {columns} FROM {table} WHERE agent_id = ? AND skill_id IN ({marks})",
            [agent_id, *skills],
        ).fetchall()
        return {r[0]: tuple(r[1:]) for r in rows}

    def _update_competence(
        self, agent_id: str, demands: list[tuple[str, float]], reward: float, gamma: float | None, by_weight: bool
    ) -> list[Competence]:
        """alpha += w * reward, beta += w * (1 - reward) for each demanded skill, after optional forgetting by
        gamma ** w (`by_weight`): a step that barely needs a skill barely ages its evidence (QA: at gamma 0.95, 60
        steps giving a skill 0.02 each cut its 17.4 observations to 1.2, while adding 1.2). Events logged before
        forgot by gamma whatever the weight, and a rebuild replays them so."""
        current = self._rows_for("competence", "alpha, beta", agent_id, [s for s, _ in demands])
        updated = []
        for skill_id, weight in demands:
            alpha, beta = current.get(skill_id, (1.0, 1.0))
            aged = forget(alpha, beta, gamma**weight if gamma is not None and by_weight else gamma)
            alpha, beta = fractional_update(*aged, weight, reward)
            updated.append(Competence(agent_id=agent_id, skill_id=skill_id, alpha=alpha, beta=beta))
        self.db.conn.executemany(
            "INSERT INTO competence (agent_id, skill_id, alpha, beta) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (agent_id, skill_id) DO UPDATE SET alpha = excluded.alpha, beta = excluded.beta",
            [(c.agent_id, c.skill_id, c.alpha, c.beta) for c in updated],
        )
        return updated

    def _update_costs(
        self, agent_id: str, demands: list[tuple[str, float]], payload: dict[str, Any], infrastructure: bool
    ) -> list[CostStats]:
        """Weighted running cost statistics; a failed call's latency says nothing about the agent's speed, and a
        figure the call did not report leaves its mean alone."""
        current = self._rows_for("cost_stats", _COST_COLUMNS, agent_id, [s for s, _ in demands])
        measured = (  # (outcomes logged before m004 carry no step tokens)
            ("mean_prompt_tokens", "n_prompt_tokens", payload.get("prompt_tokens")),
            ("mean_completion_tokens", "n_completion_tokens", payload.get("completion_tokens")),
            ("mean_latency_s", "n_latency_s", None if infrastructure else payload.get("latency_s")),
            ("mean_step_tokens", "n_step_tokens", payload.get("step_tokens")),
        )
        reported = [(mean, count, value) for mean, count, value in measured if value is not None]
        updated = []
        for skill_id, weight in demands:
            row = dict(zip(_COST_NUMBERS, current.get(skill_id, _NO_COSTS), strict=True))
            row["n"], row["mean_cost_usd"], row["m2_cost"] = weighted_mean_update(
                row["n"], row["mean_cost_usd"], row["m2_cost"], weight, payload["cost_usd"]
            )
            for mean, count, value in reported:
                row[count] += weight
                row[mean] += (value - row[mean]) * weight / row[count]
            updated.append(CostStats(agent_id=agent_id, skill_id=skill_id, **row))
        self.db.conn.executemany(
            _COST_UPSERT, [(c.agent_id, c.skill_id, *(getattr(c, name) for name in _COST_NUMBERS)) for c in updated]
        )
        return updated

    # -- row helpers -------------------------------------------------------------------------------------

    def _exists(self, table: str, row_id: str) -> bool:
        return self.db.conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", [row_id]).fetchone() is not None

    def _ensure_mode(self, mode_id: str) -> None:
        if not self._exists("modes", mode_id):
            self._put_mode(Mode(id=mode_id))

    def _put_mode(self, mode: Mode) -> None:
        self.db["modes"].upsert(
            {"id": mode.id, "description": mode.description, "insights": dumps(mode.insights)}, pk="id"
        )

    def _compact_skill_index(self) -> None:
        """Rebuild the FTS index from the skills table as one compact structure, once per new live state.

        Each skill written through the triggers adds a segment, and a step's lexical match reads them all: 250 us
        a query on 200 freshly imported skills, 100 us after. Single edits later are left to FTS5's own
        automerge. Not 'optimize': SQLite 3.40's optimize, run after every edit, corrupted the index of a
        200-skill handbook after ~1,000 edits (tests/test_store.py keeps that sequence)."""
        self.db.execute("INSERT INTO skills_fts(skills_fts) VALUES ('rebuild')")

    def _put_skill(self, skill: Skill) -> None:
        self.db["skills"].upsert(
            {
                "id": skill.id,
                "mode": skill.mode,
                "parent_id": skill.parent_id,
                "description": skill.description,
                "indicators": dumps(skill.indicators),
                "examples": dumps(skill.examples),
            },
            pk="id",
        )

    def _put_agent(self, agent: Agent) -> None:
        self.db["agents"].upsert(
            {
                "id": agent.id,
                "description": agent.description,
                "modes": dumps(agent.modes),
                "input_per_mtok": agent.input_per_mtok,
                "output_per_mtok": agent.output_per_mtok,
                "enabled": int(agent.enabled),
                "cost_per_call_usd": agent.cost_per_call_usd,
            },
            pk="id",
        )

    # -- decisions and outcomes --------------------------------------------------------------------------

    def insert_decision(self, decision: dict[str, Any]) -> None:
        with self.write():
            self._insert_row("decisions", decision)

    def _insert_row(self, table: str, row: dict[str, Any]) -> None:
        """A plain INSERT (the hot path: sqlite-utils' insert re-reads the schema on every call)."""
        values = [dumps(v) if isinstance(v, list | dict) else v for v in row.values()]
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)

    def _row(self, sql: str, params: list[Any]) -> dict[str, Any] | None:
        with self.lock:
            cursor = self.db.conn.execute(sql, params)
            row = cursor.fetchone()
            return None if row is None else {d[0]: v for d, v in zip(cursor.description, row, strict=True)}

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        return self._row("SELECT * FROM decisions WHERE id = ?", [decision_id])

    def outcome(self, decision_id: str) -> dict[str, Any] | None:
        return self._row("SELECT * FROM outcomes WHERE decision_id = ?", [decision_id])

    def claim_decision(
        self, decision_id: str, check: Callable[[dict[str, Any] | None], None], now: float
    ) -> dict[str, Any]:
        """The decision's row, checked by `check` (which raises to refuse: nothing is written then) and marked
        claimed at `now` in the same write transaction, so of two delegates carrying out one decision, in this
        process or another sharing the file, the second sees the first's claim."""
        with self.write():
            row = self.decision(decision_id)
            check(row)
            assert row is not None  # `check` refuses an unknown decision
            self.db.execute("UPDATE decisions SET claimed_at = ? WHERE id = ?", [now, decision_id])
        return {**row, "claimed_at": now}

    def withdraw_decision(self, decision_id: str, now: float) -> None:
        """Close an uncalled, unreported decision that can no longer be carried out (its agent was disabled or
        deleted since): it expires now, so it holds none of its session's budget (session_spend)."""
        with self.write():
            self.db.execute(
                f"UPDATE decisions SET expires_at = MIN(expires_at, ?) WHERE id = ? AND {UNCALLED} AND {UNREPORTED}",
                [now, decision_id],
            )

    def release_claim(self, decision_id: str) -> None:
        """Give a claim back when carrying the decision out stopped before its agent was called or skipped."""
        with self.write():
            self.db.execute(
                f"UPDATE decisions SET claimed_at = NULL WHERE id = ? AND {UNCALLED} AND {UNREPORTED}",
                [decision_id],
            )

    def record_outcome(
        self,
        outcome_row: dict[str, Any],
        event: dict[str, Any],
        *,
        decided_under: int | None = None,
        by_delegate: bool = False,
    ) -> OutcomeEffect | None:
        """Store the outcome and apply its event atomically; a second report of one decision is refused.

        An outcome of a decision made under another version than the live one is logged against that version
        and not applied (None): the live posteriors stay equal to their snapshot plus their own events. One whose
        agent was deleted while it was open is stored and not applied (an agent added again is another agent).
        A report of a decision delegate(decision_id) is still carrying out (claimed, no call noted, for at most
        CLAIM_IN_FLIGHT_S) is refused unless it is `by_delegate`: applied first, it left out the cost delegate
        measured a moment later (QA). Checked in this transaction, where no claim can land unseen (review)."""
        with self.write():
            decision_id = outcome_row["decision_id"]
            reported, agent_deleted, current, claimed_at = self.db.execute(  # one trip: record_outcome's hot path
                "SELECT EXISTS (SELECT 1 FROM outcomes WHERE decision_id = ?),"
                " (SELECT agent_deleted_at FROM decisions WHERE id = ?) IS NOT NULL,"
                " (SELECT value FROM meta WHERE key = 'current_version'),"
                f" (SELECT claimed_at FROM decisions WHERE id = ? AND {UNCALLED})",
                [decision_id, decision_id, decision_id],
            ).fetchone()
            if reported:
                raise InvalidInput("decision_id", decision_id, "a decision not yet reported")
            in_flight = claimed_at is not None and outcome_row["created_at"] - claimed_at < CLAIM_IN_FLIGHT_S
            if in_flight and not by_delegate:
                raise Conflict(
                    f"decision {decision_id!r} is being carried out by delegate (since {utc_text(claimed_at)}): "
                    "report it after delegate returns, which records the call's measured cost first (if that "
                    f"server stopped, reports are taken again from {utc_text(claimed_at + CLAIM_IN_FLIGHT_S)})"
                )
            live = int(current or 0)  # as current_version() reads it
            if decided_under is not None and decided_under != live and not self._pruned_since(decided_under, live):
                self._log_event(decided_under, "outcome", event)
                self._insert_row("outcomes", dict(outcome_row, result="[]"))
                return None
            if agent_deleted:  # no event: it changes nothing, now or on a rebuild
                self._insert_row("outcomes", dict(outcome_row, result="[]"))
                return OutcomeEffect(agent_deleted=True)
            self._log_event(live, "outcome", event)
            effect: OutcomeEffect = self._apply_event("outcome", event)
            result = dumps([c.model_dump() for c in effect.competence])
            self._insert_row("outcomes", dict(outcome_row, result=result))
            return effect

    def _pruned_since(self, version: int, live: int) -> bool:
        """Whether `live` was made from `version` by prunes alone (each leaves the live state as it was): a
        decision routed under `version` and reported after a prune (or while one ran) is applied as usual."""
        while live != version:
            row = self.db.conn.execute("SELECT source, parent_id FROM versions WHERE id = ?", [live]).fetchone()
            if row is None or row[0] != "prune" or row[1] is None:
                return False
            live = int(row[1])
        return True

    def reported_steps(self) -> list[dict[str, Any]]:
        """Every graded report of a step whose text was kept, oldest first, with the call's figures (the cost
        delegate measured where the report gave none) and the report's row number (`report`): what learning from
        the event log reads."""
        sql = (
            "SELECT d.id AS id, d.text AS text, d.mode AS mode, d.agent_id AS agent_id, o.reward AS reward,"
            " COALESCE(o.cost_usd, d.call_cost_usd) AS cost_usd, o.prompt_tokens AS prompt_tokens,"
            " o.completion_tokens AS completion_tokens, o.latency_s AS latency_s, d.step_tokens AS step_tokens,"
            f" o.rowid AS report FROM {_REPORTED_STEPS} ORDER BY d.created_at, d.id"
        )
        with self.lock:
            return list(self.db.query(sql))

    def reported_steps_after(self, report: int, read_at: float) -> int:
        """How many reported_steps rows came in after row number `report`, read at `read_at` (learning that read up
        to it lacks them); the time catches row numbers given out again after a prune emptied the table."""
        sql = f"SELECT COUNT(*) FROM {_REPORTED_STEPS} AND (o.rowid > ? OR o.created_at > ?)"
        with self.lock:
            return int(self.db.conn.execute(sql, [report, read_at]).fetchone()[0])

    def session_spend(self, session_id: str, now: float | None = None, unknown_cost: float = 0.0) -> float:
        """Dollars a session has spent or committed, per decision: its reported cost, else the cost its delegated
        call recorded, else its expected cost (`unknown_cost`, the c_ref routing charges, where that is unknown).
        So a step routed but not yet reported holds its share of the budget (steps routed in parallel cannot all
        spend the same dollars), and a cost nobody knows is not taken as $0; only a decision that expired with
        neither a call nor a report gives its share back."""
        now = time.time() if now is None else now
        with self.lock:  # one statement: a prune committing between two reads would count its rows twice (review)
            row = self.db.conn.execute(
                f"SELECT (SELECT COALESCE(SUM(COALESCE({_KNOWN_SPEND}, ?)), 0) FROM decisions d"
                " LEFT JOIN outcomes o ON o.decision_id = d.id WHERE d.session_id = ?)"
                " + COALESCE((SELECT spent_usd + unknown_costs * ? FROM pruned_session_spend WHERE session_id = ?), 0)",
                [now, unknown_cost, session_id, unknown_cost, session_id],  # what prune deleted of it: m015
            ).fetchone()
        return float(row[0])

    def note_call(self, decision_id: str, call: dict[str, Any], waits_until: float | None = None) -> None:
        """Record what a delegated call cost and how long it took, as soon as it returns; `waits_until`: the decision
        expires no earlier (an unreported one: its outcome is still to come)."""
        columns = {f"call_{k}": v for k, v in call.items()}
        assignments = ", ".join(f"{column} = ?" for column in columns)  # column names are ours, never input
        values: list[Any] = list(columns.values())
        if waits_until is not None:
            assignments += f", expires_at = CASE WHEN {UNREPORTED} THEN MAX(expires_at, ?) ELSE expires_at END"
            values.append(waits_until)
        with self.write():
            sql = f"UPDATE decisions SET {assignments} WHERE id = ?"
            updated = self.db.execute(sql, [*values, decision_id])
            if updated.rowcount == 0:
                raise NotFound("decision", decision_id, hint="decision ids come from route_step or delegate")

    def save_connections(self, connections: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """Replace the agents' connection settings (agent_id -> (kind, settings)); only the CLI calls this."""
        with self.write():
            self.db.execute("DELETE FROM connections")
            now = time.time()
            for agent_id, (kind, config) in connections.items():
                self.db["connections"].insert(
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

    def counts(self) -> dict[str, int]:
        with self.reading() as conn:
            return {
                table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for table in ("modes", "skills", "agents", "competence", "decisions", "outcomes", "events")
            }

    def routing_counts(self, last: int | None = None) -> dict[str, int]:
        """Decisions per agent, a judge's grading calls left out (they are not routings of a step); with `last`,
        of the newest that many only (rowid order is insertion order: the table is never vacuumed into another)."""
        routed = "SELECT agent_id FROM decisions WHERE role IS NOT 'judge'"
        if last is not None:
            routed += f" ORDER BY rowid DESC LIMIT {int(last)}"
        with self.reading() as conn:
            rows = conn.execute(f"SELECT agent_id, COUNT(*) FROM ({routed}) GROUP BY agent_id")
            return {agent_id: int(count) for agent_id, count in rows}

    # -- rebuild -----------------------------------------------------------------------------------------

    def events(self, version: int) -> list[Event]:
        with self.lock:
            return list(self._streamed_events(version))

    def forgetting_in_log(self) -> float | None:
        """The forgetting factor (gamma) of the newest outcome the log holds that was aged by one, None when none
        was: learning from the log weighs every outcome alike, undoing what forgetting let go of (drift QA)."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT json_extract(payload, '$.gamma') FROM events WHERE kind = 'outcome'"
                " AND json_extract(payload, '$.gamma') IS NOT NULL ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return None if row is None else float(row[0])

    def change_stamp(self) -> int:
        """The newest event's number: it grows with every edit and applied outcome (of any version), so a paged
        answer can tell that the handbook changed between its pages (rowid lookup: O(1))."""
        with self.lock:
            return int(self.db.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def edit_stamp(self) -> int:
        """The newest edit's event number (outcomes left out): what a learned version was compared with (the live
        skills, modes, agents) changes with edits, not with outcomes, which a serving handbook records all the
        time (QA: a learn never went live beside a server). change_stamp, which consult cursors use, counts both."""
        with self.lock:  # newest first: it stops at the first edit behind the run of outcomes
            row = self.db.conn.execute(
                "SELECT seq FROM events WHERE kind != 'outcome' ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return int(row[0]) if row else 0

    def event_count(self, version: int) -> int:
        with self.lock:
            return int(self.db.conn.execute("SELECT COUNT(*) FROM events WHERE version = ?", [version]).fetchone()[0])

    def _streamed_events(self, version: int, from_seq: int = 0, to_seq: int | None = None) -> Iterator[Event]:
        """The version's events in append order, read one row at a time (callers hold `self.lock`): a replay
        holding the whole log as parsed dicts took 870 MB at 340,000 events. Applying them as they come is safe:
        an event writes the live tables, never `events`, which the open statement reads."""
        cursor = self.db.conn.execute(
            "SELECT kind, payload FROM events WHERE version = ? AND seq >= ? AND seq < ? ORDER BY seq",
            [version, from_seq, MAX_SEQ if to_seq is None else to_seq],
        )
        for kind, payload in cursor:
            yield kind, json.loads(payload)

    def rebuild(self) -> HandbookDocument:
        """Restore the live version's snapshot and replay its events; returns the state it replaced.

        The skill index is rebuilt from the skills first: it is derived data, and when it is what was damaged,
        clearing the skills (whose triggers update it) failed before it could be rebuilt."""
        with self.write():
            self._compact_skill_index()
            before = self.document()
            version = self.current_version()
            self._replace_live_state(self.snapshot(version))
            for kind, payload in self._streamed_events(version):
                self._apply_event(kind, payload)
            return before

    # -- retention (used by handbook/retention.py; `skillorchestra handbook prune`) ---------------------

    def fold_events_before(self, cutoff: float, *, summary: str) -> tuple[int | None, int, int]:
        """Fold the live version's oldest events into a new version's snapshot and move the rest onto it.

        The folded events are the longest prefix of the log (in append order) created before `cutoff`, so the
        replay order never changes and the live state is unchanged. The old version keeps its snapshot but no
        longer its events (they live on in the new snapshot). Decisions awaiting their report move onto the new
        version, so a prune beside a running server loses no outcome. Returns (new version or None, folded, moved).
        """
        with self.write():
            version = self.current_version()
            conn = self.db.conn
            first_kept = conn.execute(  # the first event at or after the cutoff: it and all after it stay
                "SELECT MIN(seq) FROM events WHERE version = ? AND created_at >= ?", [version, cutoff]
            ).fetchone()[0]
            first_kept = MAX_SEQ if first_kept is None else int(first_kept)
            split, total = conn.execute(
                "SELECT COALESCE(SUM(seq < ?), 0), COUNT(*) FROM events WHERE version = ?", [first_kept, version]
            ).fetchone()
            if split == 0:
                return None, 0, int(total)
            self._replace_live_state(self.snapshot(version))
            for kind, payload in self._streamed_events(version, to_seq=first_kept):
                self._apply_event(kind, payload)
            new = self._insert_version(self.document(), source="prune", summary=summary, parent=version)
            conn.execute(  # the kept events move onto the new version, in their order
                "INSERT INTO events (version, kind, payload, created_at) SELECT ?, kind, payload, created_at"
                " FROM events WHERE version = ? AND seq >= ? ORDER BY seq",
                [new, version, first_kept],
            )
            for kind, payload in self._streamed_events(new):
                self._apply_event(kind, payload)
            self.db.execute("DELETE FROM events WHERE version = ?", [version])
            # the state they were decided under is the new version's: their outcomes must still be applied
            self.db.execute(
                f"UPDATE decisions SET version = ? WHERE version = ? AND {UNREPORTED}",
                [new, version],
            )
            return new, int(split), int(total) - int(split)

    def delete_decisions_before(self, cutoff: float, now: float) -> tuple[int, int]:
        """Forget decisions and outcomes older than `cutoff`; returns (decisions, outcomes) deleted.

        A decision still awaiting its report (unexpired, unreported) stays, and so does one whose outcome
        came after the cutoff, so every kept outcome keeps its decision (idempotent re-reports still work).
        """
        old_enough = (
            "SELECT id FROM decisions WHERE created_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.decision_id = decisions.id AND o.created_at >= ?)"
            " AND (expires_at <= ? OR EXISTS (SELECT 1 FROM outcomes o WHERE o.decision_id = decisions.id))"
        )
        with self.write():
            # their sessions keep what they spent (QA: a session pruned mid-way could spend its budget again)
            self.db.execute(
                f"INSERT INTO pruned_session_spend (session_id, spent_usd, unknown_costs)"
                f" SELECT d.session_id, COALESCE(SUM({_KNOWN_SPEND}), 0), SUM({_KNOWN_SPEND} IS NULL)"
                f" FROM decisions d LEFT JOIN outcomes o ON o.decision_id = d.id"
                f" WHERE d.session_id IS NOT NULL AND d.id IN ({old_enough}) GROUP BY d.session_id"
                " ON CONFLICT (session_id) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd,"
                " unknown_costs = unknown_costs + excluded.unknown_costs",
                [now, now, cutoff, cutoff, now],  # the spend (twice), then which decisions
            )
            decisions = self.db.execute(
                f"DELETE FROM decisions WHERE id IN ({old_enough})", [cutoff, cutoff, now]
            ).rowcount
            outcomes = self.db.execute("DELETE FROM outcomes WHERE created_at < ?", [cutoff]).rowcount
            return int(decisions), int(outcomes)

    # -- promotion and rollback (`skillorchestra handbook promote V` / `rollback`; owner: learn CLI) ------------
    # A promotion never rewrites history: it adds a NEW version whose parent is the promoted one, so the log
    # of versions reads as what happened. Events recorded against the replaced live version stay in the log
    # against it (they are that version's history and can be promoted back with it).

    def state_of(self, version: int) -> HandbookDocument:
        """Version `version` as it was when last live: its snapshot plus a replay of its own events.

        For the live version this is the live state. Events folded away by `prune` are in a newer snapshot, not
        here. The replay runs in a scratch in-memory store, so this file is only read.
        """
        snapshot = self.snapshot(version)  # NotFound for an unknown version
        if version == self.current_version():
            return self.document()
        if not self.event_count(version):
            return snapshot
        scratch = HandbookStore(":memory:")
        try:
            with self.lock, scratch.write():
                scratch._set_meta("current_version", str(version))  # the scratch's live state is this version's
                scratch._replace_live_state(snapshot)
                for kind, payload in self._streamed_events(version):
                    scratch._apply_event(kind, payload)
            return scratch.document().model_copy(update={"version": version})
        finally:
            scratch.close()

    def version_info(self, version: int) -> dict[str, Any]:
        """One row of `versions()` (NotFound for an unknown version)."""
        for row in self.versions():
            if row["version"] == version:
                return row
        raise self._unknown_version(version)

    def promote(
        self, version: int, *, with_events: bool = True, summary: str | None = None, rollback: bool = False
    ) -> int:
        """Make `version` live again as a new version (parent = `version`); returns the new version's number.

        with_events=True (default) restores the version as it was when last live (snapshot + its events), so
        outcomes recorded while it served are not lost; False restores its snapshot exactly as created.
        """
        with self.write():
            live = self.current_version()
            info = self.version_info(version)
            if version == live:
                raise InvalidInput("version", version, f"a version other than the live one ({live})")
            document = self.state_of(version) if with_events else self.snapshot(version)
            metrics = dict(info["metrics"], promoted_from=version, replaced=live, with_events=with_events)
            metrics["rollback"] = rollback  # a rollback walks on back; an explicit promote is undone instead
            for key in NOT_LIVE_METRICS:  # a learned version stored without going live: live now
                metrics.pop(key, None)
            was = str(info["summary"]).split(NOT_LIVE_MARK)[0]  # live now, whatever it was when stored
            text = summary or f"promoted version {version} (replacing {live}): {was}"
            return self._insert_version(document, source="promote", summary=text, parent=version, metrics=metrics)

    def rollback_target(self) -> int:
        """The version `rollback` would promote: undo the last change.

        After an explicit `promote`, that is the version the promotion replaced. Otherwise it is the live version's
        parent, looking through promotions made by rollbacks (and prunes): a rolled-back version stands for the
        version it restored, so two rollbacks in a row walk two steps back. The initial handbook is never a target
        while it holds no agent (routing on it fails): `promote 1` empties the live handbook on purpose. Agents loaded
        into it (`agents load`, then an `import` or `learn`: QA) make it one like any other."""
        with self.lock:
            info = self.version_info(self.current_version())
            target: int | None
            while True:
                if info["source"] == "promote" and not _made_by_rollback(info):
                    target = info["metrics"].get("replaced")  # undo the promotion
                    break
                if info["source"] in ("promote", "prune") and info["parent"] is not None:
                    info = self.version_info(int(info["parent"]))  # it stands for the version it restored or folded
                    continue
                target = info["parent"]
                break
            if target is None:
                raise InvalidInput("version", info["version"], "a live version with a parent to roll back to")
            if self.is_empty_initial(int(target)):
                live = self.version_info(self.current_version())
                pruned = (  # QA: `rollback` right after `prune` read as if rollback were broken
                    f"; the live version {live['version']} is a prune, which left the live state as it was, so there"
                    " is nothing of it to undo"
                    if live["source"] == "prune"
                    else ""
                )
                raise InvalidInput(
                    "version",
                    int(target),
                    "a version other than the empty initial handbook to roll back to (to empty the live handbook on"
                    f" purpose: `handbook promote {target}`){pruned}",
                )
            return int(target)

    def is_empty_initial(self, version: int) -> bool:
        """Whether `version` is the initial handbook with no agent in it as it was when last live (see
        rollback_target). Its agent events alone tell (review: replaying every outcome of a version that served
        for months, state_of took seconds, twice per rollback)."""
        if self.version_info(version)["source"] != "init" or self.snapshot(version).agents:
            return False
        agents: set[str] = set()
        with self.lock:
            rows = self.db.conn.execute(
                "SELECT kind, payload FROM events WHERE version = ? AND kind IN ('upsert_agent', 'delete_agent')"
                " ORDER BY seq",
                [version],
            )
            for kind, payload in rows:
                agent_id = json.loads(payload)["id"]
                if kind == "upsert_agent":
                    agents.add(agent_id)
                else:
                    agents.discard(agent_id)
        return not agents

    def rollback(self) -> int:
        """Promote the live version's parent (see `rollback_target`); returns the new version's number."""
        with self.write():
            live = self.current_version()
            target = self.rollback_target()
            return self.promote(target, summary=f"rollback from version {live} to version {target}", rollback=True)


# the edit events that add or change an entity: its model and how the store reads the one stored under an id
_EDITED: dict[str, tuple[type[Mode] | type[Skill] | type[Agent], Callable[[HandbookStore, str], Any]]] = {
    "upsert_mode": (Mode, HandbookStore.mode),
    "upsert_skill": (Skill, HandbookStore.skill),
    "upsert_agent": (Agent, HandbookStore.agent),
}


def _page_conditions(after: str | None, filters: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """The WHERE clause of a key-cursor page: ids above `after`, and each (condition, parameter) of `filters`."""
    pairs = ([("id > ?", after)] if after is not None else []) + filters
    if not pairs:
        return "", []
    return "WHERE " + " AND ".join(condition for condition, _ in pairs), [param for _, param in pairs]


def _effective(effect: LengthEffect | None) -> LengthEffect | None:
    """An effect that moves no agent (no slopes left after deletions, or all 0) is no effect, so versions, the live
    state and exports say "none" alike (and an export without the key imports into older releases)."""
    return effect if effect is not None and any(slope != 0.0 for slope in effect.slopes.values()) else None


def _by_id(read: Callable[[str, list[Any]], list[T]], entity_id: str) -> T | None:
    """The one row `read` finds under this id (a lookup of an id SQLite cannot bind finds none)."""
    found = read("WHERE id = ?", [entity_id]) if bindable(entity_id) else []
    return found[0] if found else None


def _made_by_rollback(info: dict[str, Any]) -> bool:
    """Versions promoted by `rollback` say so in their metrics (older ones only in their summary)."""
    return bool(info["metrics"].get("rollback")) or str(info["summary"]).startswith("rollback from")
