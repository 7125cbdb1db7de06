"""The server's own log as training data (`learn --data events`): decisions joined to their reported outcomes.

Each routed step with stored text and a task outcome becomes one agent's outcome on that text; steps with the
same text (and mode) are one task, so an agent tried twice on it gets its mean reward and mean cost.
Infrastructure failures carry no reward and are left out, as they never change competence online either.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from typing import Any, NamedTuple

from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import AgentOutcome, AgentPrice, TraceTask


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rounded_mean(values: list[float]) -> int | None:
    return round(sum(values) / len(values)) if values else None


# what learning from a database's own log needs, said alike by the CLI and the learn_handbook tool
NO_EVENTS = (
    "reported outcomes of routed steps whose text was kept (route_step, then record_outcome; a server run with"
    " SKILLORCHESTRA_STORE_TEXT=0 keeps no step text to learn from)"
)


class EventTasks(NamedTuple):
    """The tasks, and how far the log was read: learning counts the reports that came in after it
    (HandbookStore.reported_steps_after). A tuple of two is always true: test `.tasks` for none read."""

    tasks: list[TraceTask]
    through: int  # the last report's row number read
    read_at: float  # when: a prune that emptied the table lets SQLite give row numbers out again (review)


def tasks_from_events(store: HandbookStore) -> EventTasks:
    """One task per distinct (mode, text), in order of first appearance, with each agent's mean outcome."""
    grouped: dict[tuple[str | None, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    through = 0
    rows = store.reported_steps()
    read_at = time.time()
    for row in rows:
        grouped[(row["mode"], row["text"])][row["agent_id"]].append(row)
        through = max(through, int(row["report"]))
    tasks: list[TraceTask] = []
    for (mode, text), by_agent in grouped.items():
        outcomes = {}
        for agent, rows in by_agent.items():
            costs = [float(r["cost_usd"]) for r in rows if r["cost_usd"] is not None]
            prompt = [float(r["prompt_tokens"]) for r in rows if r["prompt_tokens"] is not None]
            completion = [float(r["completion_tokens"]) for r in rows if r["completion_tokens"] is not None]
            latency = [float(r["latency_s"]) for r in rows if r["latency_s"] is not None]
            steps = [float(r["step_tokens"]) for r in rows if r["step_tokens"] is not None]
            extra: dict[str, Any] = {"step_tokens": _mean(steps)} if steps else {}  # with the context a delegate sent
            outcomes[agent] = AgentOutcome(
                score=min(max(float(_mean([float(r["reward"]) for r in rows]) or 0.0), 0.0), 1.0),
                cost_usd=_mean(costs),
                prompt_tokens=_rounded_mean(prompt),
                completion_tokens=_rounded_mean(completion),
                latency_s=_mean(latency),
                **extra,
            )
        digest = hashlib.sha256(f"{mode}\0{text}".encode()).hexdigest()[:16]
        tasks.append(TraceTask(id=f"event-{digest}", query=text, mode=mode, outcomes=outcomes))
    return EventTasks(tasks, through, read_at)


def prices_from_store(store: HandbookStore) -> dict[str, AgentPrice]:
    """The handbook's own agent prices, for the tasks' cost estimates where an outcome reported no cost."""
    return {
        a.id: AgentPrice(
            input_per_mtok=a.input_per_mtok,
            output_per_mtok=a.output_per_mtok,
            cost_per_call_usd=a.cost_per_call_usd,
            description=a.description,
        )
        for a in store.agents()
        if (a.input_per_mtok is not None and a.output_per_mtok is not None) or a.cost_per_call_usd is not None
    }
