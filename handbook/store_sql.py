"""The SQL the handbook store's parts share, and the plain rows it reads: constants only, no connection.

Several parts of HandbookStore (store.py) say the same thing in SQL (which decisions are unreported, what a session
has spent, a cost row's columns): written once here, each part imports what it uses, and this module imports
nothing of the store, so any part may.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypedDict, TypeVar

from skillorchestra.handbook.models import encodable

# One row of the decisions table as HandbookStore.decision reads it (JSON columns as their text; columns later
# migrations added are NULL in older rows). Its functional form: `lambda` is a column and a Python keyword.
DecisionRow = TypedDict(
    "DecisionRow",
    {
        "id": str,
        "version": int,
        "created_at": float,
        "expires_at": float,
        "session_id": str | None,
        "agent_id": str,
        "mode": str | None,  # the mode the caller named (learning reads it as the step's own)
        "skills": str,  # JSON [[skill_id, weight], ...]
        "strategy": Literal["mean", "thompson"],  # the only values route writes
        "lambda": float,
        "propensity": float | None,
        "explored": int,
        "expected_cost_usd": float | None,
        "text": str | None,  # None when the server keeps no step texts
        "candidates": str,  # JSON, as route_step returned them
        "parent_decision_id": str | None,  # a fallback's or a judge's routed decision
        "call_cost_usd": float | None,  # what delegate measured of its call
        "call_cost_source": str | None,
        "call_prompt_tokens": int | None,
        "call_completion_tokens": int | None,
        "call_latency_s": float | None,
        "call_error_class": str | None,
        "step_tokens": float | None,
        "role": str | None,  # None: a routed step; "fallback" or "judge": delegate's own
        "budget_usd": float | None,
        "claimed_at": float | None,  # delegate carrying it out since then
        "excluded": str | None,  # JSON
        "session_spend_usd": float | None,
        "agent_deleted_at": float | None,
        "granularity": str | None,
        "charged_usd": float | None,  # what the session's budget held for it when admitted (None before m018)
        "unknown_charge_usd": float | None,  # what its step charged an agent of unknown cost (None before m019)
    },
)


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

# SQL conditions on a row of `decisions`: no outcome reported for it; delegate noted no call of its agent
UNREPORTED = "NOT EXISTS (SELECT 1 FROM outcomes WHERE outcomes.decision_id = decisions.id)"
UNCALLED = "call_latency_s IS NULL AND call_error_class IS NULL"

COMPETENCE_SQL = "SELECT agent_id, skill_id, alpha, beta FROM competence ORDER BY agent_id, skill_id"
COST_SQL = f"SELECT {', '.join(CostRow._fields)} FROM cost_stats ORDER BY agent_id, skill_id"
# a cost row's numbers, as an outcome updates them (built once: record_outcome is the hot path)
COST_NUMBERS = CostRow._fields[2:]
COST_COLUMNS = ", ".join(COST_NUMBERS)
NO_COSTS = (0.0,) * len(COST_NUMBERS)
COST_UPSERT = (
    f"INSERT INTO cost_stats (agent_id, skill_id, {COST_COLUMNS}) VALUES ({', '.join('?' * len(CostRow._fields))})"
    " ON CONFLICT (agent_id, skill_id) DO UPDATE SET " + ", ".join(f"{n} = excluded.{n}" for n in COST_NUMBERS)
)
COMPETENCE_UPSERT = (
    "INSERT INTO competence (agent_id, skill_id, alpha, beta) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (agent_id, skill_id) DO UPDATE SET alpha = excluded.alpha, beta = excluded.beta"
)
SKILL_SQL = "SELECT id, mode, parent_id, description, indicators, examples FROM skills"
AGENT_SQL = "SELECT id, description, modes, input_per_mtok, output_per_mtok, enabled, cost_per_call_usd FROM agents"
# an agent serves a mode when it names it or names none (arrays.serves, in SQL); CASE, as OR may not short-circuit
SERVES_SQL = (
    "CASE WHEN COALESCE(modes, '') IN ('', '[]') THEN 1"
    " ELSE EXISTS (SELECT 1 FROM json_each(agents.modes) WHERE json_each.value = ?) END"
)

REPORTED_STEPS = (  # graded reports of steps whose text was kept: learning from the event log reads these
    "decisions d JOIN outcomes o ON o.decision_id = d.id WHERE d.text IS NOT NULL AND d.text != ''"
    " AND o.reward IS NOT NULL AND COALESCE(o.error_class, 'task') = 'task'"
)
# what a decision has spent or holds of its session's budget (session_spend): its reported cost, else its delegated
# call's, else (expired with neither a call nor a report) nothing, else what it was charged when admitted (its
# expected cost, or the charge of an unknown one: m018); NULL for an older decision of unknown cost (the reader
# charges its own figure). One parameter: now.
KNOWN_SPEND = (
    "COALESCE(o.cost_usd, d.call_cost_usd, CASE WHEN o.decision_id IS NULL AND d.call_latency_s IS NULL"
    " AND d.expires_at <= ? THEN 0 ELSE COALESCE(d.charged_usd, d.expected_cost_usd) END)"
)


def page_conditions(after: str | None, filters: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """The WHERE clause of a key-cursor page: ids above `after`, and each (condition, parameter) of `filters`."""
    pairs = ([("id > ?", after)] if after is not None else []) + filters
    if not pairs:
        return "", []
    return "WHERE " + " AND ".join(condition for condition, _ in pairs), [param for _, param in pairs]


def by_id(read: Callable[[str, list[Any]], list[T]], entity_id: str) -> T | None:
    """The one row `read` finds under this id (a lookup of an id SQLite cannot bind finds none)."""
    found = read("WHERE id = ?", [entity_id]) if encodable(entity_id) else []
    return found[0] if found else None
