"""Learning runs shared by `skillorchestra learn` and the `learn_handbook` MCP tool, and the registry of the
tool's background jobs (hosts time out a request after 60 s, so the tool returns a job id at once).

One learning run: outcome tasks + prices -> `learn()` -> a new handbook version (source "learn"), live unless
replacing the live handbook could lose what it knows (not_live_reasons: validation could not compare agents,
agents with live evidence would go back on the prior or be left out, or the live handbook's skills route the
validation tasks better: try_live_skills), whose summary says what was learned from where,
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
from skillorchestra.handbook.models import DEFAULT_SELECTION, Agent, Competence, HandbookDocument, Mode
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


def _without_agents(document: HandbookDocument, gone: set[str]) -> HandbookDocument:
    effect = document.length_effect
    if effect is not None:
        slopes = {a: s for a, s in effect.slopes.items() if a not in gone}
        effect = effect.model_copy(update={"slopes": slopes}) if slopes else None
    return document.model_copy(
        update={
            "agents": [a for a in document.agents if a.id not in gone],
            "competence": [c for c in document.competence if c.agent_id not in gone],
            "cost": [c for c in document.cost if c.agent_id not in gone],
            "length_effect": effect,
        }
    )


def keep_live_agents(
    document: HandbookDocument, live: Sequence[Agent], live_modes: Sequence[Mode] = ()
) -> HandbookDocument:
    """Learning from the database's own log: keep each agent's settings (enabled, modes, description, prices)
    and keep agents that have no outcomes yet (they route on the prior) instead of dropping them. An agent the log
    holds but the live handbook no longer does was deleted (or replaced by an import) since: it does not come back,
    nor do its competence, cost and length slope. The live modes the agents serve stay too (an agent may only name
    modes the handbook has), when the learned ones lack them. A kept agent that has evidence in the live handbook
    loses it here: agents_back_on_prior finds those, and such a version is not made live by itself."""
    by_id = {a.id: a for a in live}
    gone = {a.id for a in document.agents} - set(by_id)
    if gone:
        document = _without_agents(document, gone)
    agents: list[Agent] = []
    for agent in document.agents:
        old = by_id.pop(agent.id)
        agents.append(
            agent.model_copy(
                update={
                    "description": agent.description or old.description,
                    "modes": old.modes,
                    "enabled": old.enabled,
                    "input_per_mtok": agent.input_per_mtok if agent.input_per_mtok is not None else old.input_per_mtok,
                    "output_per_mtok": (
                        agent.output_per_mtok if agent.output_per_mtok is not None else old.output_per_mtok
                    ),
                    "cost_per_call_usd": (  # agents.json may price by the call
                        agent.cost_per_call_usd if agent.cost_per_call_usd is not None else old.cost_per_call_usd
                    ),
                }
            )
        )
    agents.extend(by_id.values())
    learned = {m.id for m in document.modes} | {s.mode for s in document.skills}
    served = {m for a in agents for m in a.modes}
    kept = [m for m in live_modes if m.id in served and m.id not in learned]
    return document.model_copy(update={"agents": agents, "modes": [*document.modes, *kept]})


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
    with store.write():  # the gate reads the live state this version would replace, and its number, at once
        live_competence = store.competence()
        back = agents_back_on_prior(document, metrics["agents"], live_competence)
        # learning from the log keeps every live agent (keep_live_agents): only traces can leave agents out
        dropped = [] if events_read is not None else agents_dropped(document, store.agents(), live_competence)
        reasons = not_live_reasons(
            comparable, str(result.metrics["validated_on"]), back, store.counts(), trial, dropped
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


# Validation compares two handbooks only on tasks where it saw two or more agents (the replay never credits an
# agent without an outcome). A log of routed steps has one agent per step: with fewer comparable tasks than this,
# the learner's choice of skills is unvalidated, so it must not silently replace a live handbook that has skills.
MIN_COMPARABLE_TASKS = 10
PRIOR_MASS = 2.0  # alpha + beta of Beta(1, 1): a competence row with more holds evidence
AGENTS_NAMED = 3  # agents named in a one-line reason, the rest counted
DROPPED_NAMED = 6  # agents named in the reason a learned version would leave them out, the rest counted


def agents_back_on_prior(
    document: HandbookDocument, learned: Sequence[str], live_competence: Sequence[Competence]
) -> list[str]:
    """Agents the new version keeps without any outcome in the learning data although the live handbook holds
    competence evidence for them: the new version would route them on the prior, throwing that evidence away
    (learning from the event log keeps every live agent, the log usually covers a few). A disabled agent takes no
    steps, so the log never gets its outcomes: it does not hold the version back (enabled again, it starts over)."""
    evidence = {c.agent_id for c in live_competence if c.alpha + c.beta > PRIOR_MASS + 1e-9}
    outcomes = set(learned)
    return sorted(a.id for a in document.agents if a.enabled and a.id not in outcomes and a.id in evidence)


def agents_dropped(
    document: HandbookDocument, live_agents: Sequence[Agent], live_competence: Sequence[Competence]
) -> list[str]:
    """Enabled live agents holding competence evidence that the new version leaves out altogether (traces of other
    agents): making it live would throw that evidence away, as putting them back on the prior would (QA: a trace of
    3 other agents went live and dropped 9 agents with evidence). A disabled agent does not hold it back, as in
    agents_back_on_prior. The shipped example's own evidence does not count: learning one's traces in place of the
    example, whose agents go, is the first use; outcomes recorded on the example since make it evidence."""
    kept = {a.id for a in document.agents}
    candidates = {a.id for a in live_agents if a.enabled and a.id not in kept}
    rows = [c for c in live_competence if c.agent_id in candidates and c.alpha + c.beta > PRIOR_MASS + 1e-9]
    if not rows:
        return []
    from skillorchestra.server.example import example_document

    shipped = {(c.agent_id, c.skill_id, c.alpha, c.beta) for c in example_document().competence}
    return sorted({c.agent_id for c in rows if (c.agent_id, c.skill_id, c.alpha, c.beta) not in shipped})


def try_live_skills(
    store: HandbookStore,
    result: LearnResult,
    prices: Mapping[str, AgentPrice],
    embedder: Embedder | None,
    version: int,
) -> LiveTrial | None:
    """The live handbook's skills as a candidate (learning/live_trial.py), matched to the steps as a server with
    the learner's matcher choice would match them: the live version's learned labeller when it has one, else the
    semantic matcher on the learner's embedder (its vectors are cached by now), else the lexical one; `version` is
    the live version it stands for. None when
    the live handbook has no skills (the learned candidates include one without skills)."""
    from skillorchestra.handbook.inference import HandbookMatcher, live_demands
    from skillorchestra.handbook.learning.live_trial import live_trial
    from skillorchestra.handbook.matcher import LexicalMatcher
    from skillorchestra.handbook.semantic import SemanticMatcher
    from skillorchestra.handbook.service import INFERRED_SKILLS

    skills = store.skills()
    if not skills:
        return None
    base: LexicalMatcher | SemanticMatcher = LexicalMatcher(store)
    if embedder is not None:
        base = SemanticMatcher(store, load=lambda: (embedder, ""), fallback=base)
    matcher = HandbookMatcher(store, base)
    live = {s.id for s in skills}

    def match(text: str, mode: str | None) -> tuple[list[tuple[str, float]], str]:
        return live_demands(matcher, text, mode, INFERRED_SKILLS, live)

    metrics = result.metrics
    return live_trial(
        store.modes(),
        skills,
        result.document.agents,
        match,
        result.train,
        result.val,
        prices,
        lambda_=float(metrics["lambda"]),
        c_ref=float(metrics["c_ref"]),
        learned_utility=float(metrics["val"]["utility"]),
        kappa=float(metrics["kappa"]),
        seed=int(metrics["seed"]),
        live_version=version or None,
    )


def not_live_reasons(
    comparable: int,
    validated_on: str,
    back_on_prior: Sequence[str],
    live: Mapping[str, int],
    trial: LiveTrial | None = None,
    dropped: Sequence[str] = (),
) -> list[str]:
    """Why a learned version must not replace the live handbook by itself (empty: it may).

    It may when validation compared agents on enough held-out tasks, or when the live handbook is empty (nothing
    to lose), and only if no agent with live evidence would be put back on the prior and the live handbook's
    skills, given the same training tasks, do not route the validation tasks better (`trial`), and no agent with
    live evidence would be left out (`dropped`: agents_dropped)."""
    reasons: list[str] = []
    if comparable < MIN_COMPARABLE_TASKS and (live["skills"] or live["competence"]):
        if validated_on != "validation split":
            reasons.append(
                "it was validated on its own training tasks (no validation split), which cannot show that it routes "
                "better than the live handbook (hold out a validation share of enough tasks)"
            )
        else:
            reasons.append(
                f"only {comparable} validation tasks have outcomes of two or more agents (at least "
                f"{MIN_COMPARABLE_TASKS} are needed to show that it routes better than the live handbook; "
                "a log of routed steps has one agent per step: route some steps to several agents with "
                "allowed_agents, or learn from traces that run every agent)"
            )
    if back_on_prior:
        reasons.append(
            f"it would put {len(back_on_prior)} agents that have evidence in the live handbook back on the prior "
            f"({named(back_on_prior, AGENTS_NAMED)}), as the learning data has no outcomes of theirs"
        )
    if dropped:
        reasons.append(
            f"it would drop {counted(len(dropped), 'agent')} with evidence in the live handbook "
            f"({named(dropped, DROPPED_NAMED)}) and their evidence, as the learning data has no outcomes of theirs "
            "(learn from traces that include them, or disable them first)"
        )
    if trial is not None and trial.live_wins:
        reasons.append(trial.reason())
    return reasons


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
