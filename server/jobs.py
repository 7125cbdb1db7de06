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
from skillorchestra.handbook.models import DEFAULT_SELECTION, HandbookDocument
from skillorchestra.handbook.store import NOT_LIVE_MARK, HandbookStore

if TYPE_CHECKING:  # numpy and the learning stack load only when something is learned
    from skillorchestra.handbook.embedding import Embedder
    from skillorchestra.handbook.learning.events import EventTasks
    from skillorchestra.handbook.learning.live_trial import LiveTrial
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


@dataclass(frozen=True)
class _Asked:
    """What one learn_into_store call was asked to learn from and for, as its later steps read it."""

    tasks: Sequence[TraceTask]
    prices: Mapping[str, AgentPrice]
    data_label: str
    price_source: str
    lambda_: float
    seed: int
    orchestrator: str | None
    events_read: EventTasks | None


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
    asked = _Asked(tasks, prices, data_label, price_source, lambda_, seed, orchestrator, events_read)
    embedded, embedding_seconds, progress = _embed_first(embedder, tasks, progress)
    options: dict[str, Any] = {
        "val_fraction": val_fraction,
        "lambda_": lambda_,
        "seed": seed,
        "embedder": embedder,
        "progress": progress,
    }
    result = _run_learner(tasks, prices, learner, options)
    document, kept = _shaped_document(store, result, asked)
    metrics = _learn_metrics(asked, result, document, kept, (embedded, embedding_seconds), features)
    summary = _learn_summary(asked, result, document, metrics, kept)
    trial, trialled = _trial_live_skills(store, result, embedder, asked, progress)
    metrics["live_trial"] = None if trial is None else trial.as_dict()
    metrics["log_forgetting"] = store.forgetting_in_log() if events_read is not None else None
    return _store_version(store, document, result, metrics, summary, trial, trialled, asked)


def _embed_first(
    embedder: Embedder | None, tasks: Sequence[TraceTask], progress: Progress | None
) -> tuple[int, float, Progress | None]:
    """Embed the queries the cache lacks before learning (the first run's long step). Returns how many, the
    seconds it took, and the progress the pipeline reports to: its 0..1 after embedding's 0..0.5, if it embedded."""
    embedding_started = time.perf_counter()
    embedded = warm_embeddings(embedder, [t.query for t in tasks], progress) if embedder is not None else 0
    embedding_seconds = time.perf_counter() - embedding_started
    if not (embedded and progress):
        return embedded, embedding_seconds, progress
    outer = progress

    def second_half(fraction: float, message: str) -> None:
        outer(0.5 + fraction / 2, message)

    return embedded, embedding_seconds, second_half


def _run_learner(
    tasks: Sequence[TraceTask],
    prices: Mapping[str, AgentPrice],
    learner: Mapping[str, Any] | None,
    options: dict[str, Any],
) -> LearnResult:
    """The offline learner, or the LLM learner when its settings are given."""
    if learner is None:
        from skillorchestra.handbook.learning.pipeline import learn

        return learn(tasks, prices, **options)
    # skill discovery by an LLM (server/llm_learner.py); the rest of the pipeline is the same
    from skillorchestra.server.llm_learner import learn_with_llm

    return learn_with_llm(tasks, prices, **learner, **options)


def _shaped_document(
    store: HandbookStore, result: LearnResult, asked: _Asked
) -> tuple[HandbookDocument, dict[str, int]]:
    """The learned document with the live handbook's other selections, and (learning from the log) its agents.
    Returns the document and the selections kept."""
    document = result.document
    depth = int(result.metrics["depth"])
    orchestrator = asked.orchestrator
    # the live handbook's selections for other orchestrators are kept, and said so: a learn for one orchestrator
    # had dropped every other's silently (QA)
    selections, kept = _selections(store, document.selections, orchestrator, depth)
    document = document.model_copy(update={"selections": selections})
    if asked.events_read is not None:
        document = keep_live_agents(document, store.agents(), store.modes())
    return document, kept


def _selections(
    store: HandbookStore, learned: Mapping[str, int], orchestrator: str | None, depth: int
) -> tuple[dict[str, int], dict[str, int]]:
    """The learned version's selections: the live ones of other orchestrators kept, then the learner's own (its
    `default`, and `orchestrator`'s depth); and the kept ones."""
    kept = {name: d for name, d in store.selections().items() if name not in (DEFAULT_SELECTION, orchestrator)}
    return {**kept, **learned, **({orchestrator: depth} if orchestrator else {})}, kept


def _learn_metrics(
    asked: _Asked,
    result: LearnResult,
    document: HandbookDocument,
    kept: dict[str, int],
    embedding: tuple[int, float],
    features: str,
) -> dict[str, Any]:
    """The version's metrics as far as learning goes: the learner's, the data's, and where the version would send
    the steps. `embedding`: the queries embedded before learning, and the seconds that took."""
    tasks, prices = asked.tasks, asked.prices
    embedded, embedding_seconds = embedding
    basis, unknown = cost_basis(tasks, prices)
    candidates = [c.as_dict() for c in result.candidates]
    metrics = _plain(
        {
            **result.metrics,
            "data": asked.data_label,
            "prices": asked.price_source,
            "cost_basis": basis,
            "cost_unknown_agents": unknown,
            "orchestrator": asked.orchestrator,
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
        document, result.labeller, result.val, tasks, prices, asked.lambda_, float(result.metrics["kappa"])
    )
    # priced agents the data has no outcomes of are not in the new version (the log's keep_live_agents keeps them)
    from_log = asked.events_read is not None
    metrics["priced_without_outcomes"] = [] if from_log else sorted(set(prices) - set(metrics["agents"]))
    return metrics


def _learn_summary(
    asked: _Asked, result: LearnResult, document: HandbookDocument, metrics: dict[str, Any], kept: dict[str, int]
) -> str:
    """The version's summary as far as learning goes (the gate and the late reports may add to it)."""
    orchestrator = asked.orchestrator
    depth = int(result.metrics["depth"])
    summary = (
        f"learned from {asked.data_label}: {metrics['n_tasks']} tasks, {len(metrics['agents'])} agents -> "
        f"{metrics['n_skills']} skills ('{result.selected}', depth {depth}) at lambda {asked.lambda_:g}, "
        f"seed {asked.seed}"
        + (", with a length effect" if document.length_effect is not None else "")
        + (
            f", ci90 widened x{document.ci_inflation.factor:.2f} (validation misses)"
            if document.ci_inflation is not None
            else ""
        )
        + (f", selection stored for orchestrator {orchestrator!r}" if orchestrator else "")
        + (f"; {selections_kept(kept)}" if kept else "")
    )
    note = result.metrics.get("discovery_note")
    if note:
        summary += f" ({note})"
    if metrics["collapse_note"]:
        summary += f"; warning: {metrics['collapse_note']}"
    if metrics["priced_without_outcomes"]:  # QA: left out silently
        summary += f"; {priced_without_outcomes(metrics['priced_without_outcomes'], asked.price_source)}"
    return summary


def _comparable(result: LearnResult) -> int:
    """The learner's validation tasks that saw two or more agents (on its own validation split)."""
    return int(result.metrics["comparable_validation_tasks"])


def _trial_live_skills(
    store: HandbookStore, result: LearnResult, embedder: Embedder | None, asked: _Asked, progress: Progress | None
) -> tuple[LiveTrial | None, tuple[int, int]]:
    """The live handbook's skills replayed on the learner's validation tasks, when those can tell handbooks apart.
    Returns the trial (None: not run) and the live state it compared against."""
    trial = None
    # the live state the trial compares against: its version and its edits (outcomes a server records meanwhile
    # change neither the live skills nor the labeller; QA: counting them, no learn beside a server went live)
    trialled = (store.current_version(), store.edit_stamp())
    # fewer: validation can tell no two handbooks apart (the gate says so)
    if _comparable(result) >= MIN_COMPARABLE_TASKS:
        if progress:
            progress(1.0, "comparing with the live handbook's skills on the validation tasks")
        trial = try_live_skills(store, result, asked.prices, embedder, trialled[0])
    return trial, trialled


def _store_version(
    store: HandbookStore,
    document: HandbookDocument,
    result: LearnResult,
    metrics: dict[str, Any],
    summary: str,
    trial: LiveTrial | None,
    trialled: tuple[int, int],
    asked: _Asked,
) -> LearnRun:
    """Store the version, live unless the gate gives a reason; its metrics hold the gate's figures, and its summary
    (when it is stored only) says why and how to promote it."""
    events_read = asked.events_read
    with store.write():  # the gate reads the live state this version would replace, and its number, at once
        # the live selections again, as they are now: a `handbook select` made while it learned is kept (review)
        selections, metrics["selections_kept"] = _selections(
            store, result.document.selections, asked.orchestrator, int(result.metrics["depth"])
        )
        document = document.model_copy(update={"selections": selections})
        reasons, back, dropped = _gate(store, document, result, metrics, trial, trialled, asked)
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


def _gate(
    store: HandbookStore,
    document: HandbookDocument,
    result: LearnResult,
    metrics: dict[str, Any],
    trial: LiveTrial | None,
    trialled: tuple[int, int],
    asked: _Asked,
) -> tuple[list[str], list[str], list[str]]:
    """The go-live gate (handbook/learning/gate.py), inside the store's write transaction: why the version must
    not go live (none: it goes live), the agents it would put back on their prior, and the live agents it drops."""
    live_competence = store.competence()
    back = agents_back_on_prior(document, metrics["agents"], live_competence)
    # learning from the log keeps every live agent (keep_live_agents): only traces can leave agents out
    dropped = [] if asked.events_read is not None else agents_dropped(document, store.agents(), live_competence)
    reasons = not_live_reasons(
        _comparable(result),
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
    return reasons, back, dropped


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


class JobStopped(Exception):
    """Raised by a job's progress callback once the server is stopping: the job ends before it writes anything."""


STOPPED = "stopped: the server shut down before the job finished (nothing was stored)"


class JobRegistry:
    """Background learning jobs of one server process; one runs at a time (each writes the live version)."""

    def __init__(self, keep: int = 20) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def stop(self, wait_s: float) -> None:
        """Ask running jobs to end at their next progress step and wait up to `wait_s` for them, before the server
        closes the handbook (fuzz QA: a job still running then failed on the closed file with a traceback)."""
        self._stopping.set()
        deadline = time.monotonic() + wait_s
        for thread in list(self._threads):
            thread.join(max(deadline - time.monotonic(), 0.0))

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
            if self._stopping.is_set():
                raise JobStopped(STOPPED)
            job.progress, job.message = min(max(float(fraction), 0.0), 0.99), message

        def run() -> None:
            try:
                outcome = work(progress)
            except Exception as exc:
                if self._stopping.is_set():  # stopped at a progress step, or the closed file stopped it first
                    log.info("learning job %s %s", job.id, STOPPED)
                    job.message, job.state = STOPPED, "failed"
                else:  # the job's caller polls for this; nothing else would see it
                    log.exception("learning job %s failed", job.id)
                    from skillorchestra.handbook.sqlite_file import busy_text

                    busy = busy_text(exc, "file")
                    job.message, job.state = busy or f"{type(exc).__name__}: {exc}", "failed"
            else:
                job.version, job.metrics = outcome.version, outcome.metrics
                job.progress, job.message, job.state = 1.0, outcome.summary, "done"
            job.finished_at = time.time()

        thread = threading.Thread(target=run, name=job.id, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return job
