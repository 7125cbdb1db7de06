"""Throughput of record_outcome: at the store layer (Handbook.record on a file DB, WAL, synchronous=NORMAL;
target >= 5,000/s; also grouped 100 per transaction, and the bare HandbookStore.record_outcome) and through MCP
(streamable HTTP, 8 concurrent SDK clients, calls/s; lexical matcher). The service queues each outcome for its
cached routing arrays and re-derives them once on the next read; that read is timed too. Every variant checks
that the final counts equal the number of calls: outcome rows, and the evidence added to the competence table
(each outcome adds its skill weights, summing to 1, to alpha + beta).
Usage: .venv/bin/python bench/record_throughput.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import anyio
from common import http_server, machine_line, step_texts, synthetic_document, verdict
from mcp import Client

from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore

QUICK = "--quick" in sys.argv
STORE_CALLS = 1000 if QUICK else 3000
GROUP = 100
BUDGET_S = 8.0 if QUICK else 20.0  # per store variant, so the script stays well under 3 minutes
CLIENTS = 8
CALLS_PER_CLIENT = 25 if QUICK else 60


def counts(db: Path) -> tuple[int, float]:
    with sqlite3.connect(db) as conn:
        outcomes = conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0]
        evidence = conn.execute("SELECT COALESCE(SUM(alpha + beta - 2), 0) FROM competence").fetchone()[0]
    return int(outcomes), float(evidence)


def check(db: Path, before: tuple[int, float], calls: int) -> str:
    outcomes, evidence = counts(db)
    added, gained = outcomes - before[0], evidence - before[1]
    ok = added == calls and abs(gained - calls) < 1e-6 * max(calls, 1)
    if not ok:
        raise SystemExit(f"LOST UPDATES: {calls} calls, {added} outcome rows, evidence +{gained:.6f}")
    return f"final counts OK: {added} outcome rows, evidence +{gained:.3f} for {calls} calls"


def _decisions(handbook: Handbook, texts: list[str], n: int) -> list[str]:
    return [handbook.route(RouteRequest(text=texts[i % len(texts)])).decision_id for i in range(n)]


def store_layer(seed_db: Path, tmp: Path, texts: list[str]) -> None:
    """Three ways of recording STORE_CALLS outcomes on a file DB, each on a fresh copy of the handbook."""
    rng = random.Random(0)

    def report(decision_id: str) -> OutcomeReport:
        return OutcomeReport(decision_id=decision_id, reward=rng.random(), cost_usd=0.001)

    def per_call(handbook: Handbook, ids: list[str], deadline: float) -> int:
        for done, decision_id in enumerate(ids):
            if time.perf_counter() > deadline:
                return done
            handbook.record(report(decision_id))
        return len(ids)

    def grouped(handbook: Handbook, ids: list[str], deadline: float) -> int:
        for start in range(0, len(ids), GROUP):
            if time.perf_counter() > deadline:
                return start
            with handbook.store.write():  # records nest in one transaction: one commit per GROUP outcomes
                for decision_id in ids[start : start + GROUP]:
                    handbook.record(report(decision_id))
        return len(ids)

    def store_only(handbook: Handbook, ids: list[str], deadline: float) -> int:
        store = handbook.store
        for done, decision_id in enumerate(ids):
            if time.perf_counter() > deadline:
                return done
            decision = store.decision(decision_id)
            assert decision is not None
            payload = {"reward": rng.random(), "error_class": "task", "cost_usd": 0.001}
            event = {"decision_id": decision_id, "agent_id": decision["agent_id"], "gamma": None, **payload}
            event["skills"] = json.loads(decision["skills"])
            row = {"decision_id": decision_id, "created_at": time.time(), "agent_id": decision["agent_id"], **payload}
            store.record_outcome(dict(row, payload=payload), event)
        return len(ids)

    variants = (
        ("Handbook.record, 1 txn/call", per_call),
        (f"Handbook.record, {GROUP}/txn", grouped),
        ("HandbookStore.record_outcome", store_only),
    )
    for label, job in variants:
        db = tmp / f"store-{len(label)}.db"
        shutil.copy(seed_db, db)
        store = HandbookStore(db)
        handbook = Handbook(store, matcher=LexicalMatcher(store))
        ids = _decisions(handbook, texts, STORE_CALLS)
        before = counts(db)
        t = time.perf_counter()
        done = job(handbook, ids, t + BUDGET_S)
        elapsed = time.perf_counter() - t
        t = time.perf_counter()
        handbook.arrays()  # the service defers re-deriving the posteriors to the next read: once per burst
        derive_ms = (time.perf_counter() - t) * 1e3
        store.close()
        rate = done / elapsed
        target = verdict(rate, 5000, lower_is_better=False)
        cut = f" (stopped after {BUDGET_S:.0f} s)" if done < STORE_CALLS else ""
        print(
            f"store  {label:<30} {rate:7.0f} /s  ({elapsed / done * 1e6:5.0f} us each){cut}  target 5000/s: "
            f"{target};  {check(db, before, done)}"
        )
        if job is not store_only:
            print(f"       then the next route re-derives the routing arrays once: {derive_ms:.2f} ms")


async def over_mcp(db: Path, texts: list[str], matcher: str) -> None:
    """8 SDK clients over streamable HTTP: all route, then (timed apart) all record their decisions at once."""
    print(f"MCP http  server SKILLORCHESTRA_MATCHER={matcher}")
    with http_server(db, SKILLORCHESTRA_MATCHER=matcher) as base:
        url = f"{base}/mcp"
        before = counts(db)
        routed = anyio.Event()
        done_routing = 0
        marks: dict[str, float] = {}

        async def client(index: int) -> None:
            nonlocal done_routing
            async with Client(url) as session:
                decisions = []
                for call in range(CALLS_PER_CLIENT):
                    text = texts[(index * CALLS_PER_CLIENT + call) % len(texts)]
                    result = await session.call_tool("route_step", {"text": text})
                    assert not result.is_error, result.content
                    decisions.append(result.structured_content["decision_id"])
                done_routing += 1
                if done_routing == CLIENTS:
                    marks["routed"] = time.perf_counter()
                    routed.set()
                await routed.wait()
                for call, decision_id in enumerate(decisions):
                    args = {"decision_id": decision_id, "reward": (index + call) % 2, "cost_usd": 0.001}
                    result = await session.call_tool("record_outcome", args)
                    assert not result.is_error, result.content

        marks["start"] = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(CLIENTS):
                tg.start_soon(client, index)
        marks["recorded"] = time.perf_counter()
        calls = CLIENTS * CALLS_PER_CLIENT
        for name, elapsed in (
            ("route_step", marks["routed"] - marks["start"]),
            ("record_outcome", marks["recorded"] - marks["routed"]),
        ):
            print(
                f"MCP http  {name:<15} {calls / elapsed:6.0f} calls/s  ({CLIENTS} clients x {CALLS_PER_CLIENT}, "
                f"{elapsed:.2f} s)"
            )
        print(f"          {check(db, before, calls)}")


def main() -> int:
    print(machine_line())
    document = synthetic_document()
    texts = step_texts(document, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        seed_db = Path(tmp) / "seed.db"
        store = HandbookStore(seed_db)
        store.create_version(document, source="import", summary="synthetic 50x200")
        store.close()
        mcp_db = Path(tmp) / "mcp.db"
        shutil.copy(seed_db, mcp_db)
        run = "quick" if QUICK else "full"
        print(f"handbook: {len(document.agents)} agents x {len(document.skills)} skills; {run} run")
        store_layer(seed_db, Path(tmp), texts)
        asyncio.run(over_mcp(mcp_db, texts, "lexical"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
