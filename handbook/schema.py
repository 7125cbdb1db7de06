"""The store's SQLite schema: its migrations (sqlite-utils `Migrations`, applied in order when a file is opened)
and the canonical JSON the store writes, which the migrations that rewrite stored JSON must write alike."""

from __future__ import annotations

import json
import math
import re
import zlib
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("skillorchestra")


@migrations()
def m001_initial(db: Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["versions"].create(
        {
            "id": int,
            "parent_id": int,
            "created_at": float,
            "source": str,
            "summary": str,
            "metrics": str,
            "snapshot": str,
        },
        pk="id",
    )
    db["modes"].create({"id": str, "description": str, "insights": str}, pk="id")
    db["skills"].create(
        {
            "id": str,
            "mode": str,
            "parent_id": str,
            "description": str,
            "indicators": str,
            "examples": str,
        },
        pk="id",
    )
    db["skills"].enable_fts(
        ["id", "description", "indicators", "examples"],
        fts_version="FTS5",
        create_triggers=True,
        tokenize="porter",
    )
    db["agents"].create(
        {
            "id": str,
            "description": str,
            "modes": str,
            "input_per_mtok": float,
            "output_per_mtok": float,
            "enabled": int,
        },
        pk="id",
    )
    db["competence"].create(
        {"agent_id": str, "skill_id": str, "alpha": float, "beta": float}, pk=("agent_id", "skill_id")
    )
    db["cost_stats"].create(
        {
            "agent_id": str,
            "skill_id": str,
            "n": float,
            "mean_cost_usd": float,
            "m2_cost": float,
            "mean_prompt_tokens": float,
            "mean_completion_tokens": float,
            "mean_latency_s": float,
        },
        pk=("agent_id", "skill_id"),
    )
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, version INTEGER NOT NULL,"
        " kind TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL)"
    )
    db["events"].create_index(["version", "seq"])
    db["decisions"].create(
        {
            "id": str,
            "version": int,
            "created_at": float,
            "expires_at": float,
            "session_id": str,
            "agent_id": str,
            "mode": str,
            "skills": str,
            "strategy": str,
            "lambda": float,
            "propensity": float,
            "explored": int,
            "expected_cost_usd": float,
            "text": str,
            "candidates": str,
        },
        pk="id",
    )
    db["decisions"].create_index(["session_id"])
    db["outcomes"].create(
        {
            "decision_id": str,
            "created_at": float,
            "agent_id": str,
            "session_id": str,
            "reward": float,
            "error_class": str,
            "cost_usd": float,
            "prompt_tokens": int,
            "completion_tokens": int,
            "latency_s": float,
            "payload": str,
            "result": str,
        },
        pk="decision_id",
    )
    db["outcomes"].create_index(["session_id"])


@migrations()
def m002_delegation(db: Database) -> None:
    """Connection settings of agents (from agents.toml only) and what a delegated call cost, recorded at once."""
    db["connections"].create({"agent_id": str, "kind": str, "config": str, "loaded_at": float}, pk="agent_id")
    decisions = db["decisions"]
    for column, kind in (
        ("parent_decision_id", str),
        ("call_cost_usd", float),
        ("call_cost_source", str),
        ("call_prompt_tokens", int),
        ("call_completion_tokens", int),
        ("call_latency_s", float),
        ("call_error_class", str),
    ):
        decisions.add_column(column, kind)


@migrations()
def m003_embeddings(db: Database) -> None:
    """Skill-text embeddings of the semantic matcher, keyed by a hash of model name and text."""
    db["embeddings"].create({"hash": str, "vector": bytes}, pk="hash")


@migrations()
def m004_step_tokens(db: Database) -> None:
    """The router's token estimate of each routed step, and its mean per (agent, skill) beside the cost it explains;
    and each decision's role (NULL: a routed step; "fallback": the next candidate; "judge": a grading call)."""
    db["decisions"].add_column("step_tokens", float)
    db["decisions"].add_column("role", str)
    db["cost_stats"].add_column("mean_step_tokens", float, not_null_default=0.0)
    db["cost_stats"].add_column("n_step_tokens", float, not_null_default=0.0)


@migrations()
def m005_lean_outcome_writes(db: Database) -> None:
    """Fewer b-trees written per recorded outcome: each is one more WAL page per commit and per checkpoint.

    competence and cost_stats become WITHOUT ROWID tables clustered on (agent_id, skill_id) (no separate key index
    to look up and keep), events number rows without AUTOINCREMENT (whose sqlite_sequence row was rewritten by every
    event; a new event still gets a seq above every existing one), and outcomes.session_id loses an index no query
    reads (session_spend filters decisions). Not outcomes: its ~500-byte rows split a WITHOUT ROWID b-tree keyed by
    random decision ids so often that it wrote more pages, not fewer. Rows, columns and their order are unchanged."""
    db.execute("DROP INDEX IF EXISTS idx_outcomes_session_id")
    for table in ("competence", "cost_stats"):
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone()
        # the same definition under the new name, whatever quoting the name had
        _copy_table(db, table, TABLE_NAME.sub('CREATE TABLE "_new"', sql, count=1) + " WITHOUT ROWID")
    _copy_table(
        db,
        "events",
        "CREATE TABLE _new (seq INTEGER PRIMARY KEY, version INTEGER NOT NULL, kind TEXT NOT NULL,"
        " payload TEXT NOT NULL, created_at REAL NOT NULL)",
    )
    db["events"].create_index(["version", "seq"])


@migrations()
def m006_finite_numbers(db: Database) -> None:
    """Non-finite numbers out of the live state and the event log: the models refuse them now, and earlier
    releases stored them (an `upsert_agent` price of 1e999 or Infinity; TOML's inf in `agents load`). A price
    becomes unknown (charged c_ref and flagged, as interface.md says), and evidence rows that are not numbers are
    dropped: they could only come from such input, and the cell goes back to its prior."""
    huge = "abs({0}) > 1.7976931348623157e308"  # only +-inf exceeds the largest double (NaN is stored as NULL)
    for column in ("input_per_mtok", "output_per_mtok"):
        db.execute(f"UPDATE agents SET {column} = NULL WHERE {huge.format(column)}")
    db.execute(f"DELETE FROM competence WHERE {huge.format('alpha')} OR {huge.format('beta')}")
    numbers = ("n", "mean_cost_usd", "m2_cost", "mean_prompt_tokens", "mean_completion_tokens", "mean_latency_s")
    db.execute(f"DELETE FROM cost_stats WHERE {' OR '.join(huge.format(c) for c in numbers)}")
    rows = db.execute(
        "SELECT seq, payload FROM events WHERE payload LIKE '%Infinity%' OR payload LIKE '%NaN%'"
    ).fetchall()
    for seq, payload in rows:
        cleaned = _finite(json.loads(payload))
        db.execute("UPDATE events SET payload = ? WHERE seq = ?", [dumps(cleaned), seq])


@migrations()
def m007_decision_budget(db: Database) -> None:
    """The session budget a step was routed under: delegate(decision_id=...) carries the decision out later, and its
    judge must not overspend that budget either."""
    db["decisions"].add_column("budget_usd", float)


@migrations()
def m008_decision_claim(db: Database) -> None:
    """When a delegate started carrying out a route_step decision: the claim lives in the file, so two servers
    sharing it (two hosts, each starting its own) cannot both call an agent for one decision."""
    db["decisions"].add_column("claimed_at", float)


@migrations()
def m009_decision_context(db: Database) -> None:
    """What route_step returned besides the candidates (the agents it left out and why, the session's spend
    before the step), so delegate(decision_id=...) returns the decision as it was made."""
    db["decisions"].add_column("excluded", str)
    db["decisions"].add_column("session_spend_usd", float)


@migrations()
def m010_decision_agent_deleted(db: Database) -> None:
    """When the decision's agent was deleted while the decision was open: an agent added again under the same id
    is another agent, and the old decision's outcome must not move its competence."""
    db["decisions"].add_column("agent_deleted_at", float)


@migrations()
def m011_backfill_older_files(db: Database) -> None:
    """What files from older releases lack, found by an upgrade QA pass:
    - open decisions whose agent was deleted after they were routed, before m010 marked such decisions: the event
      log's delete_agent events say so, and an agent added again under that id must not take their outcomes;
    - the live description and selections in meta, which the first releases kept only in the version snapshot
      (their export lost the description, and their first rebuild reported a difference)."""
    # the deletions first, indexed: a subquery over the whole log per open decision is quadratic on a large file
    db.execute(
        "CREATE TEMP TABLE deleted_agents AS SELECT json_extract(payload, '$.id') AS agent_id, created_at"
        " FROM events WHERE kind = 'delete_agent'"
    )
    db.execute("CREATE INDEX temp.deleted_agents_by_id ON deleted_agents (agent_id, created_at)")
    db.execute(
        "UPDATE decisions SET agent_deleted_at = (SELECT MIN(d.created_at) FROM temp.deleted_agents d"
        " WHERE d.agent_id = decisions.agent_id AND d.created_at >= decisions.created_at)"
        " WHERE agent_deleted_at IS NULL AND agent_id IN (SELECT agent_id FROM temp.deleted_agents)"
        " AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.decision_id = decisions.id)"
    )
    db.execute("DROP TABLE temp.deleted_agents")
    live = db.execute("SELECT value FROM meta WHERE key = 'current_version'").fetchone()
    row = db.execute("SELECT snapshot FROM versions WHERE id = ?", [int(live[0])]).fetchone() if live else None
    if row is None:  # a new file: its first version writes both
        return
    snapshot = json.loads(unpack_snapshot(row[0]))
    for key, value in (
        ("description", snapshot.get("description") or ""),
        ("selections", dumps(snapshot.get("selections") or {})),
    ):
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", [key, value])


@migrations()
def m012_compressed_snapshots(db: Database) -> None:
    """Version snapshots stored zlib-compressed (pack_snapshot): every learn, promote, rollback and prune stores
    the whole handbook again, 4 MB of JSON at 50 agents x 200 skills and 166 MB at 200 x 2,000; compressed they
    take a fourth (full-precision posteriors) to an eighth (the example handbook). Older files' snapshots are
    compressed here, one at a time. A release from m010 on refuses the file after this (an unknown migration)
    instead of misreading the blobs; earlier ones fail to parse them, writing nothing (upgrade QA)."""
    ids = [row[0] for row in db.execute("SELECT id FROM versions WHERE typeof(snapshot) = 'text'").fetchall()]
    for version in ids:
        (text,) = db.execute("SELECT snapshot FROM versions WHERE id = ?", [version]).fetchone()
        db.execute("UPDATE versions SET snapshot = ? WHERE id = ?", [pack_snapshot(text), version])


@migrations()
def m013_agent_call_price(db: Database) -> None:
    """A price per call for agents billed by the call (MCP tool agents): routing charged them c_ref and a session
    budget missed what delegate billed. Unknown (NULL) for every agent of an older file."""
    db["agents"].add_column("cost_per_call_usd", float)


@migrations()
def m014_measured_counts(db: Database) -> None:
    """The calls behind each mean of cost_stats that only some calls report (tokens, latency): a call that did not
    report one counted as 0 in it. Older rows keep their means, counted as n calls, as they were computed."""
    for column in ("n_prompt_tokens", "n_completion_tokens", "n_latency_s"):
        db["cost_stats"].add_column(column, float, not_null_default=0.0)
        db.execute(f"UPDATE cost_stats SET {column} = n")


@migrations()
def m015_pruned_session_spend(db: Database) -> None:
    """What `handbook prune` deleted of each session's spend, so its budget still counts it (QA: a session pruned
    mid-way could spend its budget again). A decision whose cost nobody knew is counted, to be charged as its
    session's readers charge an unknown cost."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS pruned_session_spend (session_id TEXT PRIMARY KEY, spent_usd REAL NOT NULL,"
        " unknown_costs INTEGER NOT NULL)"
    )


@migrations()
def m016_decision_granularity(db: Database) -> None:
    """The depth a decision was read at for a named orchestrator (route_step's `granularity`), so delegate carrying
    it out by decision_id says the same (transfer QA). Older decisions, and steps without an orchestrator: NULL."""
    db["decisions"].add_column("granularity", str)


@migrations()
def m017_columns_m004_gained_later(db: Database) -> None:
    """The two columns m004's body gained after releases had applied it (upgrade QA): a file those releases
    migrated lacked cost_stats.n_step_tokens (every read of the cost statistics failed) or decisions.role
    (handbook://stats and delegate's fallbacks failed). The release that first applied m004 kept a step-length
    mean on every call it recorded, so its rows count n calls behind it, as m014 counts the other figures.
    Released migrations are never edited again: tests/test_migrations_frozen.py holds their bodies."""
    if "n_step_tokens" not in db["cost_stats"].columns_dict:
        db["cost_stats"].add_column("n_step_tokens", float, not_null_default=0.0)
        db.execute("UPDATE cost_stats SET n_step_tokens = n WHERE mean_step_tokens > 0")
    if "role" not in db["decisions"].columns_dict:
        db["decisions"].add_column("role", str)


@migrations()
def m018_decision_charge(db: Database) -> None:
    """What each decision was charged against its session's budget when it was admitted (its expected cost, or the
    charge of an unknown cost): a session's spend holds every open step at its own charge (review: holding older
    steps of unknown cost at the current step's charge let short steps pass a budget after long ones, and refused
    a long step after short ones). Older decisions: NULL, and readers charge them as before."""
    db["decisions"].add_column("charged_usd", float)


@migrations()
def m019_decision_unknown_charge(db: Database) -> None:
    """What the step charged an agent of unknown cost (c_ref, or the dearest known agent's cost of a step that
    long), so a delegate fallback or judge call of unknown cost on the same step is charged alike (review: charged
    c_ref alone, a fallback passed a budget that route_step refused for the same step). Older decisions: NULL, and a
    fallback of unknown cost is charged c_ref as before."""
    db["decisions"].add_column("unknown_charge_usd", float)


def pack_snapshot(document_json: str) -> bytes:
    """A version's snapshot as stored: its JSON, zlib-compressed. Level 1 costs about what writing the JSON does
    (77 ms at 50 x 200, for 4.2x); level 6 gains 4.7x for twice that."""
    return zlib.compress(document_json.encode("utf-8"), 1)


def unpack_snapshot(stored: bytes | str) -> str:
    """A stored snapshot's JSON (text: written before m012)."""
    return stored if isinstance(stored, str) else zlib.decompress(stored).decode("utf-8")


def _finite(value: Any) -> Any:
    """`value` (parsed JSON) with every infinite or NaN number replaced by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# the name in a CREATE TABLE statement, in any of SQLite's quotings
TABLE_NAME = re.compile(r'^CREATE TABLE\s+("(?:[^"]|"")*"|\[[^\]]*\]|`[^`]*`|\w+)')


def _copy_table(db: Database, table: str, create_new: str) -> None:
    """Replace `table` by the table `create_new` makes (named _new, same columns in the same order), rows kept."""
    db.execute(create_new)
    db.execute(f'INSERT INTO _new SELECT * FROM "{table}"')
    db.execute(f'DROP TABLE "{table}"')
    db.execute(f'ALTER TABLE _new RENAME TO "{table}"')


def unknown_migrations(db: Database) -> list[str]:
    """The migrations of this set the file records as applied that this build does not have: a newer
    skillorchestra wrote it (read only)."""
    known = {migration.name for migration in migrations._migrations}
    return [migration.name for migration in migrations.applied(db) if migration.name not in known]


def schema_version() -> int:
    """The schema version a fully migrated database has (one per migration)."""
    return len(migrations._migrations)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # json.dumps with options builds one per call


def dumps(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values are stored as equal text (the idempotency checks and
    the document comparisons rely on it)."""
    return _ENCODER.encode(value)
