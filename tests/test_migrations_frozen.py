"""A released migration is never edited: a file that already applied it never runs the new body (upgrade QA: m004
gained two columns after release, and the files the first release had migrated failed on every cost read until
m017 added them). A change of schema is a new migration. This test holds each migration's code (its docstring and
comments left out), so an edit fails here first; a new migration adds its line."""

from __future__ import annotations

import ast
import hashlib
import inspect

from skillorchestra.handbook import schema

FROZEN = {
    "m001_initial": "814d58738741f7cd",
    "m002_delegation": "8bb38e744ded576e",
    "m003_embeddings": "a7030f2a1ea2a031",
    "m004_step_tokens": "38c87df22d7c6f56",
    "m005_lean_outcome_writes": "a4905a83c5cea4f7",
    "m006_finite_numbers": "22a0c242d2f6c4c6",
    "m007_decision_budget": "b9476585da141199",
    "m008_decision_claim": "da029108b283e35e",
    "m009_decision_context": "956c5672cb408979",
    "m010_decision_agent_deleted": "2d10c65d906dcf67",
    "m011_backfill_older_files": "9cbfa55d6777df77",
    "m012_compressed_snapshots": "46448d6cd3a810b4",
    "m013_agent_call_price": "70fb00380405778a",
    "m014_measured_counts": "3e24bccf69548790",
    "m015_pruned_session_spend": "ff877f42503e9e09",
    "m016_decision_granularity": "7d9f175eeeae4093",
    "m017_columns_m004_gained_later": "4a2f24f4206cd3ff",
}


def _is_migration(node: ast.stmt) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "migrations"
        for d in node.decorator_list
    )


def code_digest(function: ast.FunctionDef) -> str:
    """The function's statements (without its docstring) as the parser reads them: comments and layout aside."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return hashlib.sha256("\n".join(ast.dump(statement) for statement in body).encode()).hexdigest()[:16]


def test_released_migrations_keep_their_code_and_new_ones_are_listed() -> None:
    module = ast.parse(inspect.getsource(schema))
    found = {node.name: code_digest(node) for node in module.body if _is_migration(node)}  # type: ignore[arg-type]
    assert list(found) == sorted(found), "migrations run in name order: number a new one after the last"
    edited = sorted(name for name in FROZEN if name in found and found[name] != FROZEN[name])
    assert not edited, f"released migrations edited (add a new migration instead): {edited}"
    assert sorted(set(FROZEN) - set(found)) == [], "a released migration was removed"
    assert sorted(set(found) - set(FROZEN)) == [], "a new migration: add its name and digest to FROZEN"
