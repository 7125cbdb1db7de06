"""The event log: every change after a version's snapshot (skill and agent edits, outcomes) is an event appended
against the version it applies to and applied to the live tables in the same transaction, by the same handlers a
replay runs, so live state == snapshot + replay, exactly.

Why its own part: appending, applying and reading back the log are one contract (an edit is checked on the way in,
never on replay, which must read an older file's events). The arithmetic of an outcome's update is in
evidence_update.py; replaying onto a version's snapshot (rebuild, state_of) is in store_versions.py.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from skillorchestra.handbook.arrays import MODE_PREFIX, ROOT_SKILL
from skillorchestra.handbook.document_checks import check_entering
from skillorchestra.handbook.errors import InvalidInput, NotFound
from skillorchestra.handbook.evidence_update import updated_competence, updated_costs
from skillorchestra.handbook.models import (
    ID_MAX,
    INFRASTRUCTURE_ERRORS,
    MAX_SKILL_DEPTH,
    Agent,
    Competence,
    CostStats,
    Mode,
    Skill,
    encodable,
    without_agents,
)
from skillorchestra.handbook.schema import dumps
from skillorchestra.handbook.store_live import LiveState
from skillorchestra.handbook.store_sql import (
    COMPETENCE_UPSERT,
    COST_COLUMNS,
    COST_NUMBERS,
    COST_UPSERT,
    MAX_SEQ,
    UNREPORTED,
    Event,
)


@dataclass
class OutcomeEffect:
    """The competence and cost rows an outcome changed (the service patches its arrays with them)."""

    competence: list[Competence] = field(default_factory=list)
    costs: list[CostStats] = field(default_factory=list)
    deleted_skills: list[str] = field(default_factory=list)  # demanded by the decision, gone since: not updated
    agent_deleted: bool = False  # the decision's agent was deleted since (perhaps added again): nothing applied


class EventLog(LiveState):
    # -- appending and applying ----------------------------------------------------------------------------------

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

    def select_depth(self, orchestrator: str, depth: int | None) -> int | None:
        """Store the depth consult_handbook, route_step and delegate read for `orchestrator` (None: drop its
        selection, so it reads full depth), as an edit of the live version: rebuild, export and promote keep it and
        the live evidence is untouched (transfer QA: choosing a depth took an export, an edit and an import).
        Returns the depth it replaces."""
        name = orchestrator.strip()
        if not name or len(name) > ID_MAX or not encodable(name):  # review: a surrogate broke every read
            raise InvalidInput(
                "orchestrator", orchestrator, f"a non-empty name of valid Unicode of at most {ID_MAX} characters"
            )
        if depth is not None and not 0 <= depth <= MAX_SKILL_DEPTH:
            raise InvalidInput("depth", depth, f"an integer in [0, {MAX_SKILL_DEPTH}] (0: mode level)")
        with self.write():
            stored = self.selections()
            if depth is None and name not in stored:
                raise NotFound("orchestrator", name, list(stored), hint=None if stored else "the handbook stores none")
            if stored.get(name) != depth:  # the same depth again is no edit
                self.apply("select_depth", {"orchestrator": name, "depth": depth})
            return stored.get(name)

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
        self.db.conn.execute(
            "INSERT INTO events (version, kind, payload, created_at) VALUES (?, ?, ?, ?)",
            [version, kind, dumps(payload), time.time()],
        )

    def _apply_event(self, kind: str, payload: dict[str, Any]) -> Any:
        self.generation += 1
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise InvalidInput("event.kind", kind, "a known event kind")
        return handler(self, payload)

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
            self._put_length_effect(without_agents(effect, "slopes", {agent_id}), self.current_version())
        inflation = self.ci_inflation()
        if inflation is not None and agent_id in inflation.evidence:  # an agent added back later starts unwidened
            self._put_ci_inflation(without_agents(inflation, "evidence", {agent_id}), self.current_version())

    def _event_select_depth(self, payload: dict[str, Any]) -> None:
        selections = self.selections()
        if payload["depth"] is None:
            selections.pop(payload["orchestrator"], None)
        else:
            selections[payload["orchestrator"]] = int(payload["depth"])
        self._set_meta("selections", dumps(selections))

    def _event_outcome(self, payload: dict[str, Any]) -> OutcomeEffect:
        """Fractional Beta updates by skill weight; infrastructure errors only touch cost."""
        effect = OutcomeEffect()
        agent_id = payload["agent_id"]
        named = [s for s, w in payload["skills"] if w > 0]
        competence: dict[str, tuple[Any, ...]] | None  # None: the rows are read where they are updated
        costs: dict[str, tuple[Any, ...]] | None
        agent_known, known, competence, costs = self._skill_rows(agent_id, named)
        if not agent_known:
            return effect
        demands = [(s, w) for s, w in payload["skills"] if s in known and w > 0]
        if not demands:  # its rows are read below: the column is not a skill
            demands, competence, costs = [(self._fallback_column(payload), 1.0)], None, None
        effect.deleted_skills = [s for s in named if s not in known]
        infrastructure = payload.get("error_class") in INFRASTRUCTURE_ERRORS
        if not infrastructure and payload.get("reward") is not None:
            gamma, by_weight = payload.get("gamma"), bool(payload.get("forget_by_weight"))
            effect.competence = self._update_competence(
                agent_id, demands, payload["reward"], gamma, by_weight, competence
            )
        cost = payload.get("cost_usd")
        if cost is not None and not (infrastructure and cost <= 0):
            effect.costs = self._update_costs(agent_id, demands, payload, infrastructure, costs)
        return effect

    def _skill_rows(
        self, agent_id: str, named: list[str]
    ) -> tuple[bool, set[str], dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
        """Whether the agent exists, which of the `named` skills exist, and the agent's competence and cost rows of
        those, in one statement (four statements were a fifth of a record's SQL; the rows are the ones _rows_for
        reads)."""
        if not named:
            return self._exists("agents", agent_id), set(), {}, {}
        marks = ",".join("?" for _ in named)
        agent_known = False
        known: set[str] = set()
        competence: dict[str, tuple[Any, ...]] = {}
        costs: dict[str, tuple[Any, ...]] = {}
        sql = f"{_SKILL_ROWS_SQL[0]}{marks}{_SKILL_ROWS_SQL[1]}"
        for row in self.db.conn.execute(sql, [agent_id, *named, agent_id, agent_id]):
            agent_known = bool(row[0])  # the same on every row (at least one: the agent's row is left-joined)
            if row[1] is None:  # none of the named skills exists
                continue
            known.add(row[1])
            if row[2]:  # the agent has a competence row of the skill
                competence[row[1]] = row[3:5]
            if row[5]:  # and a cost row
                costs[row[1]] = row[6:]
        return agent_known, known, competence, costs

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
        self,
        agent_id: str,
        demands: list[tuple[str, float]],
        reward: float,
        gamma: float | None,
        by_weight: bool,
        current: dict[str, tuple[Any, ...]] | None = None,
    ) -> list[Competence]:
        """The agent's competence rows of the demanded skills (`current`: as read already, else read here),
        updated by evidence_update.updated_competence."""
        if current is None:
            current = self._rows_for("competence", "alpha, beta", agent_id, [s for s, _ in demands])
        updated = updated_competence(agent_id, demands, current, reward, gamma, by_weight)
        self.db.conn.executemany(COMPETENCE_UPSERT, [(c.agent_id, c.skill_id, c.alpha, c.beta) for c in updated])
        return updated

    def _update_costs(
        self,
        agent_id: str,
        demands: list[tuple[str, float]],
        payload: dict[str, Any],
        infrastructure: bool,
        current: dict[str, tuple[Any, ...]] | None = None,
    ) -> list[CostStats]:
        """The agent's cost rows of the demanded skills (`current`: as read already, else read here), updated by
        evidence_update.updated_costs."""
        if current is None:
            current = self._rows_for("cost_stats", COST_COLUMNS, agent_id, [s for s, _ in demands])
        updated = updated_costs(agent_id, demands, current, payload, infrastructure)
        self.db.conn.executemany(COST_UPSERT, [_COST_ROW(c) for c in updated])
        return updated

    # -- reading the log -----------------------------------------------------------------------------------------

    def events(self, version: int) -> list[Event]:
        with self.lock:
            return list(self._streamed_events(version))

    def forgetting_in_log(self) -> float | None:
        """The forgetting factor (gamma) of the newest outcome the log holds that was aged by one, None when none
        was: learning from the log weighs every outcome alike, undoing what forgetting let go of (drift QA)."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT json_extract(payload, '$.gamma') FROM events WHERE kind = 'outcome'"
                " AND json_extract(payload, '$.gamma') < 1 ORDER BY seq DESC LIMIT 1"  # 1: forgets nothing
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
        time (QA: a learn never went live beside a server), nor with depth selections, which a learned version
        takes as they are when it is stored (review). change_stamp, which consult cursors use, counts them all."""
        with self.lock:  # newest first: it stops at the first edit behind the run of outcomes
            row = self.db.conn.execute(
                "SELECT seq FROM events WHERE kind NOT IN ('outcome', 'select_depth') ORDER BY seq DESC LIMIT 1"
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


# a CostStats as COST_UPSERT's parameters
_COST_ROW = operator.attrgetter("agent_id", "skill_id", *COST_NUMBERS)

# whether the outcome's agent exists, and the skills of the outcome that exist, with the agent's competence and cost
# rows of each: the SQL before and after the skills' placeholders (parameters: agent_id, the skills, agent_id twice);
# one row with a NULL skill when none exists
_SKILL_ROWS_SQL = (
    "SELECT a.known, s.id, c.skill_id IS NOT NULL, c.alpha, c.beta, k.skill_id IS NOT NULL, "
    + ", ".join(f"k.{name}" for name in COST_NUMBERS)
    + " FROM (SELECT EXISTS (SELECT 1 FROM agents WHERE id = ?) AS known) a LEFT JOIN skills s ON s.id IN (",
    ") LEFT JOIN competence c ON c.agent_id = ? AND c.skill_id = s.id"
    " LEFT JOIN cost_stats k ON k.agent_id = ? AND k.skill_id = s.id",
)

# what applies each kind of event to the live tables (apply, record_outcome and every replay)
_HANDLERS: dict[str, Callable[[EventLog, dict[str, Any]], Any]] = {
    "upsert_mode": EventLog._event_upsert_mode,
    "upsert_skill": EventLog._event_upsert_skill,
    "delete_skill": EventLog._event_delete_skill,
    "upsert_agent": EventLog._event_upsert_agent,
    "delete_agent": EventLog._event_delete_agent,
    "outcome": EventLog._event_outcome,
    "select_depth": EventLog._event_select_depth,
}

# the edit events that add or change an entity: its model and how the store reads the one stored under an id
_EDITED: dict[str, tuple[type[Mode] | type[Skill] | type[Agent], Callable[[LiveState, str], Any]]] = {
    "upsert_mode": (Mode, LiveState.mode),
    "upsert_skill": (Skill, LiveState.skill),
    "upsert_agent": (Agent, LiveState.agent),
}
