"""The live handbook in the store's tables: reading it (lists, pages, lookups, the evidence rows, the document) and
the row writers every change of it goes through.

Why its own part: the live tables are what routing reads on every step and what every other part of HandbookStore
writes (an event's handler, a new version, a rebuild), always through these writers, so a row is stored one way
whichever path wrote it. It knows nothing of events or versions (store_events.py, store_versions.py).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from skillorchestra.handbook.ci_scale import effective_ci_inflation
from skillorchestra.handbook.models import (
    MAX_SKILL_DEPTH,
    Agent,
    CiInflation,
    Competence,
    CostStats,
    HandbookDocument,
    LengthEffect,
    Mode,
    Skill,
    encodable,
)
from skillorchestra.handbook.schema import dumps
from skillorchestra.handbook.store_base import StoreBase
from skillorchestra.handbook.store_sql import (
    AGENT_SQL,
    COMPETENCE_SQL,
    COST_SQL,
    SERVES_SQL,
    SKILL_SQL,
    CompetenceRow,
    CostRow,
    by_id,
    page_conditions,
)


class LiveState(StoreBase):
    # -- replacing it wholesale (a version going live, a rebuild, a replay in a scratch store) -------------------

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
            self.db.table("competence").insert_all([c.model_dump() for c in document.competence])
        if document.cost:
            self.db.table("cost_stats").insert_all([c.model_dump() for c in document.cost])
        self._compact_skill_index()
        self.generation += 1
        self._set_meta("description", document.description)
        self._set_meta("selections", dumps(document.selections))
        self._set_meta("labeller", dumps(document.labeller))
        self._put_length_effect(document.length_effect, document.version)
        self._put_ci_inflation(document.ci_inflation, document.version)

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
        return by_id(self._skills, skill_id)

    def skill_ids(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.conn.execute("SELECT id FROM skills ORDER BY id")]

    def skill_children(self, skill_id: str) -> list[Skill]:
        """The skills whose parent is `skill_id`, by id."""
        return self._skills("WHERE parent_id = ? ORDER BY id", [skill_id]) if encodable(skill_id) else []

    def skills_page(self, after: str | None, mode: str | None, limit: int) -> list[Skill]:
        """At most `limit` skills (of `mode`, if given) with an id above `after`, by id (a list page, in SQL)."""
        where, params = page_conditions(after, [("mode = ?", mode)] if mode is not None else [])
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
        return by_id(self._agents, agent_id)

    def agents_page(self, after: str | None, mode: str | None, limit: int) -> list[Agent]:
        """At most `limit` agents (serving `mode`, if given: arrays.serves) with an id above `after`, by id."""
        where, params = page_conditions(after, [(SERVES_SQL, mode)] if mode else [])
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
        return by_id(self._modes, mode_id)

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
        if not encodable(value):
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
                ci_inflation=self.ci_inflation(),
            )

    def skill_levels(self) -> int:
        """How deep the deepest skill sits (1: top-level skills only; 0: no skills), read in SQL: `handbook select`
        says so without building the routing arrays (review: 1.6 s at 100 agents x 2,000 skills). A skill whose
        parent is missing is top-level, as the arrays read it; a cycle is cut at MAX_SKILL_DEPTH levels."""
        with self.lock:
            row = self.db.conn.execute(
                "WITH RECURSIVE tree(id, level) AS ("
                " SELECT id, 1 FROM skills WHERE parent_id IS NULL OR parent_id NOT IN (SELECT id FROM skills)"
                " UNION ALL SELECT s.id, t.level + 1 FROM skills s JOIN tree t ON s.parent_id = t.id"
                f" WHERE t.level < {MAX_SKILL_DEPTH}) SELECT COALESCE(MAX(level), 0) FROM tree"
            ).fetchone()
        return int(row[0])

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
        raw = self._live_version_meta("length_effect", "effect")
        return None if raw is None else LengthEffect.model_validate(raw)

    def _put_length_effect(self, effect: LengthEffect | None, version: int) -> None:
        self._put_version_meta("length_effect", "effect", effective_length_effect(effect), version)

    def ci_inflation(self) -> CiInflation | None:
        """The live version's learned widening of ci90 (handbook/ci_scale.py), if it has one. Kept as the length
        effect is: a meta row naming the version it was written for, so a release that replaces the live state
        without knowing the row (import, learn, rollback) leaves no stale widening on the version it made live."""
        raw = self._live_version_meta("ci_inflation", "inflation")
        return None if raw is None else CiInflation.model_validate(raw)

    def _put_ci_inflation(self, inflation: CiInflation | None, version: int) -> None:
        self._put_version_meta("ci_inflation", "inflation", effective_ci_inflation(inflation), version)

    def _live_version_meta(self, key: str, field: str) -> dict[str, Any] | None:
        """A learned part kept in the meta row `key` as {"version": v, field: ...}: its value when v is the live
        version, else None (a release that replaced the live state without knowing the row left it stale)."""
        with self.lock:
            raw = json.loads(self._meta(key) or "null")
            if not isinstance(raw, dict) or raw.get("version") != self.current_version() or not raw.get(field):
                return None
            return dict(raw[field])

    def _put_version_meta(self, key: str, field: str, value: BaseModel | None, version: int) -> None:
        self._set_meta(key, dumps({"version": version, field: value.model_dump() if value is not None else None}))

    def search_skills(self, query: str, mode: str | None, limit: int) -> list[tuple[str, float]]:
        """FTS5 BM25 over skill ids, descriptions, indicators and examples; larger score = better match."""
        sql = (
            "SELECT s.id, -bm25(skills_fts) FROM skills_fts JOIN skills s ON s.rowid = skills_fts.rowid"
            " WHERE skills_fts MATCH ?" + (" AND s.mode = ?" if mode else "") + " ORDER BY bm25(skills_fts) LIMIT ?"
        )
        params: list[Any] = [query] + ([mode] if mode else []) + [limit]
        with self.lock:
            return [(r[0], float(r[1])) for r in self.db.conn.execute(sql, params).fetchall()]

    # -- row writers -------------------------------------------------------------------------------------

    def _ensure_mode(self, mode_id: str) -> None:
        if not self._exists("modes", mode_id):
            self._put_mode(Mode(id=mode_id))

    def _put_mode(self, mode: Mode) -> None:
        self.db.table("modes").upsert(
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
        self.db.table("skills").upsert(
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
        self.db.table("agents").upsert(
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


def effective_length_effect(effect: LengthEffect | None) -> LengthEffect | None:
    """An effect that moves no agent (no slopes left after deletions, or all 0) is no effect, so versions, the live
    state and exports say "none" alike (and an export without the key imports into older releases)."""
    return effect if effect is not None and any(slope != 0.0 for slope in effect.slopes.values()) else None
