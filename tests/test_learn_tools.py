"""learn_handbook / learn_status through the SDK's in-memory client, learning from the server's own event log."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from learning_data import SWAP, query
from mcp import Client

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import Agent, Skill
from skillorchestra.handbook.service import Handbook, HandbookSettings, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.app import create_server
from skillorchestra.server.jobs import STOPPED, JobRegistry
from skillorchestra.server.settings import ServerSettings

pytestmark = pytest.mark.anyio


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    assert result.structured_content is not None
    return result.structured_content


async def error_text(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return result.content[0].text  # type: ignore[union-attr]


def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(db_path=tmp_path / "handbook.db", seed_example=False, matcher="lexical")


def record_swap_traffic(path: Path, n: int = 120, seed: int = 0, forgetting: float | None = None) -> None:
    """A one-skill handbook, then every agent routed and reported on chemistry and poetry steps, where alpha
    and beta swap strengths (through the service, as the server's tools would: the learning source is the log),
    by a server that forgets at `forgetting` (gamma) when given."""
    store = HandbookStore(path)
    handbook = Handbook(store, HandbookSettings(forgetting=forgetting))
    try:
        handbook.upsert_skill(Skill(id="general", description="anything at all"))
        for agent, price in (("alpha", 1.0), ("beta", 1.1), ("gamma", 0.5)):
            handbook.upsert_agent(Agent(id=agent, input_per_mtok=price, output_per_mtok=price))
        handbook.upsert_agent(Agent(id="delta", description="new, never tried", enabled=False))
        rng = np.random.default_rng(seed)
        for i in range(n):
            topic = ("chemistry", "poetry")[i % 2]
            text = query(rng, topic)
            for agent, p in SWAP[topic].items():
                routed = handbook.route(RouteRequest(text=text, allowed_agents=[agent], lambda_=0.0))
                assert routed.agent_id == agent
                handbook.record(OutcomeReport(decision_id=routed.decision_id, reward=float(rng.random() < p)))
    finally:
        store.close()


async def wait_done(client: Client, job_id: str) -> dict[str, Any]:
    seen: list[float] = []
    with anyio.fail_after(30):
        while True:
            status = await call(client, "learn_status", {"job_id": job_id})
            seen.append(status["progress"])
            if status["state"] != "running":
                assert seen == sorted(seen)  # progress never goes backwards
                return status
            await anyio.sleep(0.05)


async def test_learn_from_events_in_the_background_then_route_with_it(tmp_path: Path) -> None:
    record_swap_traffic(tmp_path / "handbook.db")
    async with Client(create_server(settings(tmp_path))) as client:
        before = await call(client, "list_skills", {})
        started = await call(client, "learn_handbook", {"lambda_": 0.0, "seed": 3, "orchestrator": "small"})
        assert started["state"] == "running" and started["job_id"]
        assert started["result"] is None
        status = await wait_done(client, started["job_id"])
        assert status["state"] == "done", status["message"]
        assert status["progress"] == 1.0
        padded = await call(client, "learn_status", {"job_id": f" {started['job_id']} "})  # as every id (QA)
        assert padded == status
        version, metrics = status["result"]["version"], status["result"]["metrics"]
        assert metrics["n_tasks"] == 120
        assert metrics["agents"] == ["alpha", "beta", "gamma"]
        assert metrics["seed"] == 3 and metrics["lambda"] == 0.0
        assert {c["name"] for c in metrics["candidates"]} >= {"depth0", "depth1"}
        assert metrics["pareto_front"]
        assert sum(c["selected"] for c in metrics["candidates"]) == 1

        after = await call(client, "list_skills", {})
        learned = {s["id"] for s in after["items"]}
        assert learned and "general" not in learned
        assert learned != {s["id"] for s in before["items"]}

        store = HandbookStore(tmp_path / "handbook.db")
        try:
            assert store.current_version() == version
            info = store.versions()[-1]
            assert info["source"] == "learn" and "event log" in info["summary"]
            assert store.selections()["small"] == metrics["depth"]
            agents = {a.id: a for a in store.agents()}
            assert set(agents) == {"alpha", "beta", "gamma", "delta"}  # the untried agent is kept...
            assert agents["delta"].enabled is False  # ...with its settings
            assert agents["alpha"].input_per_mtok == 1.0
        finally:
            store.close()

        # the learned handbook routes by topic: alpha on chemistry, beta on poetry
        rng = np.random.default_rng(99)
        for topic, best in (("chemistry", "alpha"), ("poetry", "beta")):
            routed = await call(client, "route_step", {"text": query(rng, topic), "lambda_": 0.0})
            assert routed["handbook_version"] == version
            assert routed["agent_id"] == best, routed["candidates"]


async def test_tool_annotations_and_errors(tmp_path: Path) -> None:
    async with Client(create_server(settings(tmp_path))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["learn_status"].annotations.read_only_hint is True
        assert tools["learn_handbook"].annotations.read_only_hint is False
        assert tools["learn_handbook"].annotations.destructive_hint is False
        assert set(tools["learn_handbook"].input_schema["properties"]) >= {"source", "val_fraction", "lambda_", "seed"}
        assert tools["learn_status"].input_schema["required"] == ["job_id"]

        nothing = await error_text(client, "learn_handbook", {})  # nothing recorded yet
        assert "source" in nothing and "SKILLORCHESTRA_STORE_TEXT=0" in nothing  # says what a log must hold
        assert "val_fraction" in await error_text(client, "learn_handbook", {"val_fraction": 1.0})
        assert "lambda_" in await error_text(client, "learn_handbook", {"lambda_": -1})
        assert "source" in await error_text(client, "learn_handbook", {"source": "/etc/passwd"})
        unknown = await error_text(client, "learn_status", {"job_id": "learn-nope"})
        assert "job_id" in unknown and "jobs live in the server process that started them" in unknown  # QA
    store = HandbookStore(tmp_path / "handbook.db")
    try:
        assert [v["source"] for v in store.versions()] == ["init"]  # rejected calls wrote nothing
    finally:
        store.close()


def test_registry_runs_one_job_at_a_time_and_reports_failures() -> None:
    registry = JobRegistry()
    release = threading.Event()

    class Run:
        version, metrics, summary = 7, {"n_tasks": 1}, "learned"

    def slow(progress: Any) -> Any:
        progress(0.5, "halfway")
        release.wait(10)
        return Run()

    job = registry.start(slow)
    with pytest.raises(InvalidInput, match="job"):
        registry.start(slow)
    release.set()
    deadline = time.monotonic() + 30  # a guard against a hang, not a speed check
    while job.state == "running" and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert (job.state, job.version, job.progress, job.message) == ("done", 7, 1.0, "learned")

    def broken(progress: Any) -> Any:
        raise ValueError("no tasks")

    failed = registry.start(broken)
    deadline = time.monotonic() + 30
    while failed.state == "running" and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert failed.state == "failed" and "no tasks" in failed.message
    assert set(registry.ids()) == {job.id, failed.id}


def test_a_stopping_server_ends_a_running_job_at_its_next_step_without_writing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fuzz QA: a job still running when the server closed the handbook failed on the closed file, logging a
    traceback at ERROR; shutdown now stops it at its next progress step and waits for it."""
    registry = JobRegistry()
    steps: list[int] = []

    def long(progress: Any) -> Any:
        for step in range(10_000):
            progress(step / 10_000, "working")
            steps.append(step)
            threading.Event().wait(0.001)
        raise AssertionError("the job ran to its end")

    job = registry.start(long)
    while not steps:
        threading.Event().wait(0.001)
    with caplog.at_level("INFO", logger="skillorchestra.learn"):
        registry.stop(wait_s=10)
    assert (job.state, job.message) == ("failed", STOPPED) and job.finished_at is not None
    assert len(steps) < 10_000 and not [r for r in caplog.records if r.levelname == "ERROR"]

    def closed_file(progress: Any) -> Any:  # a job between progress steps when the file closed under it
        raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    late = JobRegistry()
    late.stop(wait_s=0)
    failed = late.start(closed_file)
    late.stop(wait_s=10)
    assert (failed.state, failed.message) == ("failed", STOPPED)


async def test_a_client_leaving_during_a_learn_leaves_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record_swap_traffic(tmp_path / "handbook.db")
    with caplog.at_level("INFO", logger="skillorchestra.learn"):
        async with Client(create_server(settings(tmp_path))) as client:
            started = await call(client, "learn_handbook", {"lambda_": 0.0})
        for thread in threading.enumerate():  # the job's thread, if it outlived the wait for it
            if thread.name == started["job_id"]:
                thread.join(30)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    store = HandbookStore(tmp_path / "handbook.db")
    try:
        assert [v["source"] for v in store.versions()] in (["init"], ["init", "learn"])  # all or nothing
    finally:
        store.close()
