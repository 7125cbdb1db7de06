"""`explore`: run every agent of a pool on tasks, grade against the references, write generic outcome traces.

Why this shape:
* Each agent is called through the delegation backends (`delegation.call_agent`: litellm for LLMs, the MCP
  client for tool agents), so exploration measures exactly what `delegate` would get: same messages, same
  timeouts, same prices, same error classes.
* Resumable: the output is appended one task (all agents) per line and flushed; a rerun skips the task ids
  already there. A line cut short by a kill is dropped (its task runs again).
* An infrastructure failure (timeout, rate limit, connection, auth, server error) is not the agent's fault:
  the outcome gets `score: null` and its `error_class`, never a 0. A `task` error (the agent could not do
  the request, e.g. context too long) scores 0 when there is a reference.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skillorchestra.handbook.errors import InvalidInput, not_utf8
from skillorchestra.handbook.models import ID_MAX, MAX_USD, TEXT_MAX
from skillorchestra.handbook.traces import refuse_misspelt, unique_ids, validated_lines
from skillorchestra.server.agent_config import AgentConnection
from skillorchestra.server.llm_backend import INFRASTRUCTURE_ERRORS, BackendResult

log = logging.getLogger("skillorchestra.explore")

Grader = Literal["exact", "contains", "numeric"]
GRADERS: tuple[str, ...] = ("exact", "contains", "numeric")
Caller = Callable[[AgentConnection, str, list[dict[str, Any]], float, int | None], Awaitable[BackendResult]]
OUTPUT_MAX = 8_000  # characters of an answer kept in the trace
_MESSAGE_MAX = 300


class ExploreTask(BaseModel):
    """A line of tasks.jsonl: {"id", "query", "reference"?, "grader"?} (task, mode and others are kept)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=ID_MAX)
    query: str = Field(min_length=1, max_length=TEXT_MAX)
    reference: str | None = None
    grader: Grader | None = None
    task: str | None = None
    mode: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_keys(cls, data: Any) -> Any:
        return refuse_misspelt(data, ("id", "query", "reference", "grader"))  # QA: "refrence" graded nothing

    @field_validator("reference", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        return str(value) if isinstance(value, int | float) else value


def read_explore_tasks(path: str | Path) -> list[ExploreTask]:
    """Tasks of a JSONL file; a bad line or a repeated id is an error naming the file, line and field."""
    try:
        handle = Path(path).open(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput("--tasks", str(path), f"a readable tasks JSONL file ({exc.strerror or exc})") from None
    tasks = [task for _, task in unique_ids(validated_lines(handle, path, ExploreTask, "explore tasks"), path)]
    if not tasks:
        raise InvalidInput("--tasks", str(path), "at least one task")
    return tasks


# ---------------------------------------------------------------------------------------------- grading

# a fraction first (QA: "3/4" was read as its denominator, so "1/4" and "4" scored 1 and "0.75" 0), then a decimal
_NUMBER = re.compile(r"[-+]?\d+\s*/\s*\d+|[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case, surrounding quotes and punctuation, and runs of whitespace do not count."""
    return _SPACES.sub(" ", text.casefold()).strip().strip("\"'`").strip().rstrip(".!").strip()


def last_number(text: str) -> float | None:
    """The value of the text's last number: 1,234.5 is 1234.5 and 3/4 is 0.75 (a zero denominator: none)."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    numerator, slash, denominator = found[-1].replace(",", "").partition("/")
    try:
        if slash:
            return float(numerator) / float(denominator) if float(denominator) else None
        return float(numerator)
    except ValueError:
        return None


def resolve_grader(reference: str, grader: str | None, default: str = "auto") -> Grader:
    """The task's grader, else the default; `auto` = numeric when the reference is a number, else exact."""
    chosen = grader or default
    if chosen == "auto":
        return "numeric" if _NUMBER.fullmatch(reference.strip()) else "exact"
    return chosen  # type: ignore[return-value]


def grade(answer: str, reference: str, grader: Grader) -> float:
    """1.0 or 0.0. numeric compares the last number of each, a fraction by its value (relative tolerance 1e-6)."""
    if grader == "numeric":
        got, want = last_number(answer), last_number(reference)
        if got is None or want is None:
            return 0.0
        return float(math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))
    if grader == "contains":
        return float(normalise(reference) in normalise(answer))
    return float(normalise(answer) == normalise(reference))


# ---------------------------------------------------------------------------------------------- output


def done_ids(out: Path) -> set[str]:
    """Task ids already in the output; a final line cut short by a kill is removed from the file, once the complete
    lines have been checked (a file explore did not write is refused untouched)."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise not_utf8(out) from None
    ids: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InvalidInput(
                f"{out}:{number}", line[:60], "a trace line written by explore (JSON with an id)"
            ) from None
    if end < len(data):  # a partial last line: truncate it, its task runs again
        with out.open("r+b") as handle:
            handle.truncate(end)
    return ids


def outcome(result: BackendResult, reference: str | None, grader: Grader | None) -> dict[str, Any]:
    """One agent's entry of the generic format (extra fields: error_class, error, cost_source)."""
    entry: dict[str, Any] = {"score": None}
    if result.ok:
        if reference is not None and grader is not None:
            entry["score"] = grade(result.answer, reference, grader)
        entry["output"] = result.answer[:OUTPUT_MAX]
    else:
        if result.error_class not in INFRASTRUCTURE_ERRORS and reference is not None:
            entry["score"] = 0.0  # the agent could not do this task: a failure on the task, not of the network
        entry["error_class"] = result.error_class
        entry["error"] = (result.message or "")[:_MESSAGE_MAX]
    entry["cost_source"] = result.cost_source
    if result.cost_usd is not None and result.cost_usd <= MAX_USD:
        entry["cost_usd"] = result.cost_usd
    elif result.cost_usd is not None:  # past the trace reader's bound the whole file would no longer read (review)
        entry["cost_source"] = "unknown"
        log.warning(
            "a cost of $%g is past $%g a call, which traces do not take: written as unknown", result.cost_usd, MAX_USD
        )
    if result.prompt_tokens is not None:
        entry["prompt_tokens"] = result.prompt_tokens
    if result.completion_tokens is not None:
        entry["completion_tokens"] = result.completion_tokens
    entry["latency_s"] = round(result.latency_s, 4)
    return entry


# ------------------------------------------------------------------------------------------------ running


@dataclass
class ExploreSummary:
    tasks: int = 0
    skipped: int = 0  # already in the output
    run: int = 0
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error_class -> count
    cost_usd: float = 0.0  # known part
    unpriced_calls: int = 0
    unpriced_agents: set[str] = field(default_factory=set)
    solved: dict[str, list[float]] = field(default_factory=dict)  # agent -> scores of this run
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "seconds": self.seconds,
            "skipped": self.skipped,
            "run": self.run,
            "calls": self.calls,
            "errors": dict(sorted(self.errors.items())),
            "cost_usd": None if self.unpriced_calls else round(self.cost_usd, 8),
            "cost_usd_known": round(self.cost_usd, 8),
            "unpriced_agents": sorted(self.unpriced_agents),
            "accuracy": {a: round(sum(s) / len(s), 4) for a, s in sorted(self.solved.items()) if s},
        }


class _Bar:
    """tqdm on stderr (it comes with openai, which litellm needs), with calls, errors and cost beside it."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, initial=initial, unit="task", desc="explore", file=sys.stderr, disable=not enabled, leave=True
        )

    def update(self, summary: ExploreSummary) -> None:
        errors = sum(summary.errors.values())
        self.bar.set_postfix(calls=summary.calls, errors=errors, usd=f"{summary.cost_usd:.4g}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


async def _default_caller(
    conn: AgentConnection, text: str, messages: list[dict[str, Any]], timeout_s: float, max_tokens: int | None
) -> BackendResult:
    from skillorchestra.server.delegation import call_agent

    return await call_agent(conn, text, messages, timeout_s, max_tokens)


async def explore(
    tasks: Sequence[ExploreTask],
    pool: Mapping[str, AgentConnection],
    out: str | Path,
    *,
    concurrency: int = 4,
    grader: str = "auto",
    timeout_s: float | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
    caller: Caller | None = None,
) -> ExploreSummary:
    """Run every agent on every task not yet in `out`, appending one trace line per finished task."""
    if concurrency < 1:
        raise InvalidInput("--concurrency", concurrency, "an integer >= 1")
    if grader not in (*GRADERS, "auto"):
        raise InvalidInput("--grader", grader, "auto, exact, contains or numeric")
    if not pool:
        raise InvalidInput("--pool", "no agents", "at least one agent")
    call = caller or _default_caller
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    todo = [t for t in tasks if t.id not in done]
    summary = ExploreSummary(tasks=len(tasks), skipped=len(tasks) - len(todo))
    bar = _Bar(len(tasks), summary.skipped, progress)
    limiter = anyio.CapacityLimiter(concurrency)
    agents = list(pool.values())

    async def one_agent(task: ExploreTask, conn: AgentConnection, into: dict[str, BackendResult]) -> None:
        timeout = min(timeout_s, conn.timeout_s) if timeout_s is not None else conn.timeout_s
        messages = [{"role": "user", "content": task.query}]  # what delegate sends for a step without context
        into[conn.id] = await call(conn, task.query, messages, timeout, max_tokens)

    async def one_task(task: ExploreTask, handle: Any) -> None:
        async with limiter:
            results: dict[str, BackendResult] = {}
            async with anyio.create_task_group() as group:
                for conn in agents:
                    group.start_soon(one_agent, task, conn, results)
        which = resolve_grader(task.reference, task.grader, grader) if task.reference is not None else None
        outcomes = {conn.id: outcome(results[conn.id], task.reference, which) for conn in agents}
        line = task.model_dump(exclude_none=True)
        if which is not None:
            line["grader"] = which
        line["outcomes"] = outcomes
        handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        summary.run += 1
        for agent_id, entry in outcomes.items():
            summary.calls += 1
            if entry.get("error_class"):
                summary.errors[entry["error_class"]] = summary.errors.get(entry["error_class"], 0) + 1
            if "cost_usd" in entry:
                summary.cost_usd += entry["cost_usd"]
            elif results[agent_id].ok:
                summary.unpriced_calls += 1
                summary.unpriced_agents.add(agent_id)
            if entry["score"] is not None:
                summary.solved.setdefault(agent_id, []).append(entry["score"])
        bar.update(summary)

    started = time.perf_counter()
    try:
        with out.open("a", encoding="utf-8") as handle:
            async with anyio.create_task_group() as group:
                for task in todo:
                    group.start_soon(one_task, task, handle)
    finally:
        bar.close()
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
