"""Decisions and their outcomes: what route_step and delegate write, claim and note, what a report applies, and what
a session has spent.

Why its own part: these rows are the serving hot path (a decision per routed step, an outcome per report) and the
budget a session holds; they touch the handbook only through record_outcome, which logs and applies its event
(store_events.py) against the version the decision was made under (store_versions.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, cast

from skillorchestra.handbook.errors import Conflict, InvalidInput, NotFound, utc_text
from skillorchestra.handbook.models import CLAIM_IN_FLIGHT_S
from skillorchestra.handbook.schema import dumps
from skillorchestra.handbook.store_events import OutcomeEffect
from skillorchestra.handbook.store_sql import KNOWN_SPEND, REPORTED_STEPS, UNCALLED, UNREPORTED, DecisionRow
from skillorchestra.handbook.store_versions import Versions


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """INSERT INTO table (columns) VALUES (?, ...): the column names are ours (the keys of rows we build)."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


class Decisions(Versions):
    def insert_decision(self, decision: dict[str, Any]) -> None:
        with self.write():
            self._insert_row("decisions", decision)

    def _insert_row(self, table: str, row: dict[str, Any]) -> None:
        """A plain INSERT (the hot path: sqlite-utils' insert re-reads the schema on every call), its SQL built once
        per table and column list."""
        values = [dumps(v) if isinstance(v, list | dict) else v for v in row.values()]
        self.db.conn.execute(_insert_sql(table, tuple(row)), values)

    def _row(self, sql: str, params: list[Any]) -> dict[str, Any] | None:
        with self.lock:
            cursor = self.db.conn.execute(sql, params)
            row = cursor.fetchone()
            return None if row is None else {d[0]: v for d, v in zip(cursor.description, row, strict=True)}

    def decision(self, decision_id: str) -> DecisionRow | None:
        return cast("DecisionRow | None", self._row("SELECT * FROM decisions WHERE id = ?", [decision_id]))

    def outcome(self, decision_id: str) -> dict[str, Any] | None:
        return self._row("SELECT * FROM outcomes WHERE decision_id = ?", [decision_id])

    def claim_decision(self, decision_id: str, check: Callable[[DecisionRow | None], None], now: float) -> DecisionRow:
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
            reported, agent_deleted, current, claimed_at = self.db.conn.execute(  # one trip: the hot path
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
            # each row's fields as model_dump gives them (str and float fields: the same JSON), read without the
            # serializer's per-call cost (dict(model) cost more still: a failed getattr per model)
            result = dumps([c.__dict__ for c in effect.competence])
            self._insert_row("outcomes", dict(outcome_row, result=result))
            return effect

    def reported_steps(self) -> list[dict[str, Any]]:
        """Every graded report of a step whose text was kept, oldest first, with the call's figures (the cost
        delegate measured where the report gave none) and the report's row number (`report`): what learning from
        the event log reads."""
        sql = (
            "SELECT d.id AS id, d.text AS text, d.mode AS mode, d.agent_id AS agent_id, o.reward AS reward,"
            " COALESCE(o.cost_usd, d.call_cost_usd) AS cost_usd, o.prompt_tokens AS prompt_tokens,"
            " o.completion_tokens AS completion_tokens, o.latency_s AS latency_s, d.step_tokens AS step_tokens,"
            f" o.rowid AS report FROM {REPORTED_STEPS} ORDER BY d.created_at, d.id"
        )
        with self.lock:
            return list(self.db.query(sql))

    def reported_steps_after(self, report: int, read_at: float) -> int:
        """How many reported_steps rows came in after row number `report`, read at `read_at` (learning that read up
        to it lacks them); the time catches row numbers given out again after a prune emptied the table."""
        sql = f"SELECT COUNT(*) FROM {REPORTED_STEPS} AND (o.rowid > ? OR o.created_at > ?)"
        with self.lock:
            return int(self.db.conn.execute(sql, [report, read_at]).fetchone()[0])

    def session_spend(self, session_id: str, now: float | None = None, unknown_cost: float = 0.0) -> float:
        """Dollars a session has spent or committed, per decision: its reported cost, else the cost its delegated
        call recorded, else what it was charged when admitted (`unknown_cost` for a decision older than m018 whose
        cost was unknown).
        So a step routed but not yet reported holds its share of the budget (steps routed in parallel cannot all
        spend the same dollars), and a cost nobody knows is not taken as $0; only a decision that expired with
        neither a call nor a report gives its share back."""
        now = time.time() if now is None else now
        with self.lock:  # one statement: a prune committing between two reads would count its rows twice (review)
            row = self.db.conn.execute(
                f"SELECT (SELECT COALESCE(SUM(COALESCE({KNOWN_SPEND}, ?)), 0) FROM decisions d"
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

    def routing_counts(self, last: int | None = None) -> dict[str, int]:
        """Decisions per agent, a judge's grading calls left out (they are not routings of a step); with `last`,
        of the newest that many only (rowid order is insertion order: the table is never vacuumed into another)."""
        routed = "SELECT agent_id FROM decisions WHERE role IS NOT 'judge'"
        if last is not None:
            routed += f" ORDER BY rowid DESC LIMIT {int(last)}"
        with self.reading() as conn:
            rows = conn.execute(f"SELECT agent_id, COUNT(*) FROM ({routed}) GROUP BY agent_id")
            return {agent_id: int(count) for agent_id, count in rows}
