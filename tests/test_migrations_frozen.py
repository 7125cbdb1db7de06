"""A released migration is never edited: a file that already applied it never runs the new body (upgrade QA: m004
gained two columns after release, and the files the first release had migrated failed on every cost read until
m017 added them). A change of schema is a new migration. This test holds each migration's code (its docstring,
comment lines and blank lines left out), so an edit fails here first; a new migration adds its line."""

from __future__ import annotations

import ast
import hashlib
import inspect

from skillorchestra.handbook import schema

FROZEN = {
    "m001_initial": "0920d0dcef25d339",
    "m002_delegation": "589860a65ffb8b49",
    "m003_embeddings": "de201625d8d62374",
    "m004_step_tokens": "511b6dfd5aac7d6a",
    "m005_lean_outcome_writes": "3ce39bc0188c3716",
    "m006_finite_numbers": "f650df8a01b904c6",
    "m007_decision_budget": "e3fb6cb368f8b77d",
    "m008_decision_claim": "11c893fb2d951a75",
    "m009_decision_context": "a11ea335ebc8285e",
    "m010_decision_agent_deleted": "87510c979fe12014",
    "m011_backfill_older_files": "acc87af2ee9251a3",
    "m012_compressed_snapshots": "6d12ea3c186805b7",
    "m013_agent_call_price": "acf7224c1f740075",
    "m014_measured_counts": "223a40f9fd867996",
    "m015_pruned_session_spend": "d3aafe863c31c9a3",
    "m016_decision_granularity": "b56a844704434d2c",
    "m017_columns_m004_gained_later": "17ceed97e71b3c43",
    "m018_decision_charge": "d65511f3880e5893",
    "m019_decision_unknown_charge": "80fbf68ee056e044",
}


def _is_migration(node: ast.stmt) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "migrations"
        for d in node.decorator_list
    )


def code_digest(function: ast.FunctionDef, source: str) -> str:
    """The text of the function's statements after its docstring, without comment or blank lines, dedented: the
    same on every Python (review: ast.dump's text changed in 3.13, and unparse's in 3.12)."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    lines = source.splitlines()[body[0].lineno - 1 : function.end_lineno] if body else []
    code = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return hashlib.sha256("\n".join(code).encode()).hexdigest()[:16]


def test_released_migrations_keep_their_code_and_new_ones_are_listed() -> None:
    source = inspect.getsource(schema)
    module = ast.parse(source)
    found = {node.name: code_digest(node, source) for node in module.body if _is_migration(node)}  # type: ignore[arg-type]
    assert list(found) == sorted(found), "migrations run in name order: number a new one after the last"
    edited = sorted(name for name in FROZEN if name in found and found[name] != FROZEN[name])
    assert not edited, f"released migrations edited (add a new migration instead): {edited}"
    assert sorted(set(FROZEN) - set(found)) == [], "a released migration was removed"
    assert sorted(set(found) - set(FROZEN)) == [], "a new migration: add its name and digest to FROZEN"
