"""Learning runs shared by `skillorchestra learn` and the `learn_handbook` MCP tool, and the registry of the
tool's background jobs (hosts time out a request after 60 s, so the tool returns a job id at once).

One learning run: outcome tasks + prices -> `learn()` -> a new handbook version (source "learn"), live unless
replacing the live handbook could lose what it knows (the gate of handbook/learning/gate.py), whose summary says
what was learned from where,
and whose metrics hold the validation figures, every candidate with its intervals and the accuracy/cost Pareto
front.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from skillorchestra.handbook.errors import InvalidInput, counted, named
from skillorchestra.handbook.learning.gate import (
    DROPPED_NAMED,
    MIN_COMPARABLE_TASKS,
    agents_back_on_prior,
    agents_dropped,
    keep_live_agents,
    not_live_reasons,
    try_live_skills,
)
from skillorchestra.handbook.models import DEFAULT_SELECTION
from skillorchestra.handbook.store import NOT_LIVE_MARK, HandbookStore

if TYPE_CHECKING:  # numpy and the learning stack load only when something is learned
    from skillorchestra.handbook.embedding import Embedder
    from skillorchestra.handbook.learning.events import EventTasks
    from skillorchestra.handbook.learning.pipeline import LearnResult, Progress
    from skillorchestra.handbook.traces import AgentPrice, TraceTask

log = logging.getLogger("skillorchestra.learn")

MatcherChoice = Literal["auto", "lexical", "semantic"]


@dataclass
class LearnRun:
    """What a learning run produced and where it went."""

    version: int
    parent: int | None
    result: LearnResult
    metrics: dict[str, Any]
    summary: str


def cost_basis(tasks: Sequence[TraceTask], prices: Mapping[str, AgentPrice]) -> tuple[str, list[str]]:
    """('cost_usd' | 'estimated' | 'mixed' | 'unknown', agents whose cost is unknown on some judged task)."""
    recorded = estimated = 0
    unknown: set[str] = set()
    for task in tasks:
        for agent, outcome in task.outcomes.items():
            if outcome.score is None:
                continue
            if outcome.cost_usd is not None:
                recorded += 1
            elif agent in prices:
                estimated += 1
            else:
                unknown.add(agent)
    if not recorded and not estimated:
        return "unknown", sorted(unknown)
    basis = "cost_usd" if not estimated else "estimated" if not recorded else "mixed"
    return basis, sorted(unknown)


def make_embedder(choice: MatcherChoice, store: HandbookStore | None) -> tuple[Embedder | None, str]:
    """The feature space for learning: MiniLM (vectors cached in the database) or TF-IDF; (embedder, why)."""
    if choice == "lexical":
        return None, "lexical (TF-IDF) features"
    from skillorchestra.handbook.embedding import load_default_embedder

    model, reason = load_default_embedder()
    if model is None:
        if choice == "semantic":
            raise InvalidInput("--matcher", choice, f"the MiniLM weights installed ({reason})")
        return None, f"lexical (TF-IDF) features (MiniLM unavailable: {reason})"
    from skillorchestra.handbook.learning.features import CachedEmbedder

    if store is None:
        return CachedEmbedder(model), f"semantic ({model.model_name}) features"
    from skillorchestra.handbook.semantic import SqliteVectorCache

    return CachedEmbedder(model, SqliteVectorCache(store)), f"semantic ({model.model_name}) features, cached in the db"


EMBED_BATCH = 256


def warm_embeddings(embedder: Embedder, texts: Sequence[str], progress: Progress | None) -> int:
    """Embed the texts the cache lacks in batches, reporting progress (the first run's long step); returns
    how many were embedded. Learning then finds every vector cached."""
    cache = getattr(embedder, "cache", None)
    if cache is None:
        return 0
    from skillorchestra.handbook.embedding import InMemoryVectorCache, text_hash

    unique = list(dict.fromkeys(texts))
    keys = [text_hash(t, embedder.model_name) for t in unique]
    found: set[str] = set()
    for start in range(0, len(keys), 1000):  # bounded: SQLite limits the parameters of one query
        found.update(cache.get(keys[start : start + 1000]))
    missing = [t for t, k in zip(unique, keys, strict=True) if k not in found]
    kept = "" if isinstance(cache, InMemoryVectorCache) else " (cached for next time)"  # QA: eval without --db said so
    for start in range(0, len(missing), EMBED_BATCH):
        if progress is not None:
            progress(0.5 * start / len(missing), f"embedding {start}/{len(missing)} new texts{kept}")
        embedder.encode(missing[start : start + EMBED_BATCH])
    return len(missing)


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars become plain numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def learn_into_store(
    store: HandbookStore,
    tasks: Sequence[TraceTask],
    prices: Mapping[str, AgentPrice],
    *,
    data_label: str,
    price_source: str,
    val_fraction: float = 0.2,
    lambda_: float = 0.1,
    seed: int = 0,
    embedder: Embedder | None = None,
    features: str = "lexical (TF-IDF) features",
    orchestrator: str | None = None,
    events_read: EventTasks | None = None,
    progress: Progress | None = None,
    learner: Mapping[str, Any] | None = None,
) -> LearnRun:
    """Learn from `tasks` into a new version of `store`, made live unless not_live_reasons gives a reason (then
    stored only; metrics went_live and not_live_reason, and the summary, say why and how to promote it).

    `learner`: learn_with_llm's settings (model, api_base, api_key_env, prices) for LLM skill discovery.
    `events_read`: the tasks are this store's event log as tasks_from_events read it; reports that came in while
    learning ran are not in the new version, and its metrics and summary say how many.
    """
    embedding_started = time.perf_counter()
    embedded = warm_embeddings(embedder, [t.query for t in tasks], progress) if embedder is not None else 0
    embedding_seconds = time.perf_counter() - embedding_started
    if embedded and progress:
        outer = progress

        def progress(fraction: float, message: str) -> None:  # the pipeline's 0..1 after embedding's 0..0.5
            outer(0.5 + fraction / 2, message)

    options: dict[str, Any] = {
        "val_fraction": val_fraction,
        "lambda_": lambda_,
        "seed": seed,
        "embedder": embedder,
        "progress": progress,
    }
    if learner is None:
        from skillorchestra.handbook.learning.pipeline import learn

        result = learn(tasks, prices, **options)
    else:  # skill discovery by an LLM (server/llm_learner.py); the rest of the pipeline is the same
        from skillorchestra.server.llm_learner import learn_with_llm

        result = learn_with_llm(tasks, prices, **learner, **options)
    document = result.document
    depth = int(result.metrics["depth"])
    # the live handbook's selections for other orchestrators are kept, and said so: a learn for one orchestrator
    # had dropped every other's silently (QA)
    kept = {name: d for name, d in store.selections().items() if name not in (DEFAULT_SELECTION, orchestrator)}
    selections = {**kept, **document.selections, **({orchestrator: depth} if orchestrator else {})}
    document = document.model_copy(update={"selections": selections})
    if events_read is not None:
        document = keep_live_agents(document, store.agents(), store.modes())
    basis, unknown = cost_basis(tasks, prices)
    candidates = [c.as_dict() for c in result.candidates]
    metrics = _plain(
        {
            **result.metrics,
            "data": data_label,
            "prices": price_source,
            "cost_basis": basis,
            "cost_unknown_agents": unknown,
            "orchestrator": orchestrator,
            "selections_kept": kept,
            "candidates": candidates,
            "pareto_front": [c["name"] for c in candidates if c["pareto"]],
            "seconds": round(result.seconds, 3),
            "embedded_queries": embedded,  # queries the cache lacked, embedded before learning (first run only)
            "embedding_seconds": round(embedding_seconds, 3),
            "llm_calls": result.llm_calls,
            "usd": result.metrics.get("usd", result.usd),  # the LLM learner's None = a price was unknown
        }
    )
    metrics["features_used"] = features
    # where route_step will send the steps with the version as stored (learning/deployment.py): the validation
    # replay lets an agent compete only where it was judged, which hides a dear agent of thin evidence
    from skillorchestra.handbook.learning.deployment import deployment_report

    metrics["deployed_share"], metrics["collapse_note"] = deployment_report(
        document, result.labeller, result.val, tasks, prices, lambda_, float(result.metrics["kappa"])
    )
    # priced agents the data has no outcomes of are not in the new version (the log's keep_live_agents keeps them)
    metrics["priced_without_outcomes"] = [] if events_read is not None else sorted(set(prices) - set(metrics["agents"]))
    summary = (
        f"learned from {data_label}: {metrics['n_tasks']} tasks, {len(metrics['agents'])} agents -> "
        f"{metrics['n_skills']} skills ('{result.selected}', depth {depth}) at lambda {lambda_:g}, seed {seed}"
        + (", with a length effect" if document.length_effect is not None else "")
        + (f", selection stored for orchestrator {orchestrator!r}" if orchestrator else "")
        + (f"; {selections_kept(kept)}" if kept else "")
    )
    note = result.metrics.get("discovery_note")
    if note:
        summary += f" ({note})"
    if metrics["collapse_note"]:
        summary += f"; warning: {metrics['collapse_note']}"
    if metrics["priced_without_outcomes"]:  # QA: left out silently
        summary += f"; {priced_without_outcomes(metrics['priced_without_outcomes'], price_source)}"
    comparable = int(result.metrics["comparable_validation_tasks"])  # on the learner's own validation split
    trial = None
    # the live state the trial compares against: its version and its edits (outcomes a server records meanwhile
    # change neither the live skills nor the labeller; QA: counting them, no learn beside a server went live)
    trialled = (store.current_version(), store.edit_stamp())
    if comparable >= MIN_COMPARABLE_TASKS:  # fewer: validation can tell no two handbooks apart, and says so below
        if progress:
            progress(1.0, "comparing with the live handbook's skills on the validation tasks")
        trial = try_live_skills(store, result, prices, embedder, trialled[0])
    metrics["live_trial"] = None if trial is None else trial.as_dict()
    metrics["log_forgetting"] = store.forgetting_in_log() if events_read is not None else None
    with store.write():  # the gate reads the live state this version would replace, and its number, at once
        live_competence = store.competence()
        back = agents_back_on_prior(document, metrics["agents"], live_competence)
        # learning from the log keeps every live agent (keep_live_agents): only traces can leave agents out
        dropped = [] if events_read is not None else agents_dropped(document, store.agents(), live_competence)
        reasons = not_live_reasons(
            comparable,
            str(result.metrics["validated_on"]),
            back,
            store.counts(),
            trial,
            dropped,
            metrics["log_forgetting"],
        )
        if trial is not None and (store.current_version(), store.edit_stamp()) != trialled:  # (review)
            reasons.append(
                "the live handbook changed while it was compared with the live skills (an edit, a promote or another "
                "learning run), so the comparison no longer holds (learn again)"
            )
        went_live = not reasons
        if events_read is not None:  # QA: 73 failures reported while it learned were silently left out
            late = store.reported_steps_after(events_read.through, events_read.read_at)
            metrics["reported_while_learning"] = late
            summary += f"; {reported_while_learning(late, went_live)}" if late else ""
        metrics["went_live"] = went_live
        metrics["agents_back_on_prior"] = back
        metrics["agents_dropped"] = dropped
        metrics["not_live_reason"] = "; ".join(reasons) if reasons else None
        parent = store.current_version() or None

        def stored_summary(number: int) -> str:
            if went_live:
                return summary
            # the file named: run elsewhere, the bare command promoted in the default handbook (QA)
            promote = f"to use it: skillorchestra handbook promote {number} --db {shlex.quote(str(store.path))}"
            return f"{summary}{NOT_LIVE_MARK} {metrics['not_live_reason']}; {promote})"

        version = store.create_version(
            document, source="learn", summary=stored_summary, metrics=metrics, live=went_live
        )
    return LearnRun(version=version, parent=parent, result=result, metrics=metrics, summary=stored_summary(version))


def priced_without_outcomes(agents: Sequence[str], price_source: str) -> str:
    """What the summary and the CLI say of priced agents the data has no outcomes of ("" for none)."""
    if not agents:
        return ""
    return (
        f"{counted(len(agents), 'agent')} with prices (from {price_source}) but no outcomes in the data left out "
        f"({named(agents, DROPPED_NAMED)})"
    )


def selections_kept(kept: Mapping[str, int]) -> str:
    """The live handbook's depth selections for other orchestrators that a learned version carries on."""
    shown = ", ".join(f"{name!r} (depth {depth})" for name, depth in sorted(kept.items()))
    return f"kept the live handbook's depth selections of {counted(len(kept), 'other orchestrator')}: {shown}"


def reported_while_learning(late: int, went_live: bool) -> str:
    """What the summary says of the reports that came in while learning from the log ran ("" for none)."""
    if not late:
        return ""
    if went_live:
        return (
            f"{counted(late, 'outcome')} reported while it learned stay with the versions they were reported under,"
            " not in this one (the next learning from the event log includes them)"
        )
    return (
        f"{counted(late, 'outcome')} reported while it learned are in the live version, not in this one: promoting"
        " it leaves them out (learn again to include them)"
    )


# -- background jobs of the MCP tool --------------------------------------------------------------------------

JobState = Literal["running", "done", "failed"]


@dataclass
class Job:
    id: str
    started_at: float
    state: JobState = "running"
    progress: float = 0.0
    message: str = "starting"
    version: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    finished_at: float | None = None


class JobRegistry:
    """Background learning jobs of one server process; one runs at a time (each writes the live version)."""

    def __init__(self, keep: int = 20) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._keep = keep

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def start(self, work: Callable[[Callable[[float, str], None]], LearnRun], name: str = "learn") -> Job:
        """Run `work(progress)` on a daemon thread; the job records its progress, then its version or error."""
        with self._lock:
            busy = next((j for j in self._jobs.values() if j.state == "running"), None)
            if busy is not None:
                raise InvalidInput("job", busy.id, "no learning job running (poll learn_status until it ends)")
            job = Job(id=f"{name}-{uuid.uuid4().hex[:12]}", started_at=time.time())
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.state != "running"]
            for old in finished[: max(0, len(finished) - self._keep)]:
                del self._jobs[old.id]

        def progress(fraction: float, message: str) -> None:
            job.progress, job.message = min(max(float(fraction), 0.0), 0.99), message

        def run() -> None:
            try:
                outcome = work(progress)
            except Exception as exc:  # the job's caller polls for this; nothing else would see it
                log.exception("learning job %s failed", job.id)
                from skillorchestra.handbook.sqlite_file import busy_text

                busy = busy_text(exc, "file")
                job.message, job.state = busy or f"{type(exc).__name__}: {exc}", "failed"
            else:
                job.version, job.metrics = outcome.version, outcome.metrics
                job.progress, job.message, job.state = 1.0, outcome.summary, "done"
            job.finished_at = time.time()

        threading.Thread(target=run, name=job.id, daemon=True).start()
        return job
