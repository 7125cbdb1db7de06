"""learn_handbook and learn_status: learning from the server's own event log as a background job.

Hosts time out a request after about 60 s and learning can take longer, so learn_handbook checks its input,
starts a job on a thread and answers at once with the job's id; learn_status reports progress, then the new
version and its validation metrics. Jobs live in this server process (a restart forgets them, not their results:
a finished job's version is in the database).
"""

# Annotations stay evaluated (no `from __future__ import annotations`): the SDK resolves every tool's signature at
# start-up, and string annotations cost an eval each (~8% of the tools' registration).

from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field, StringConstraints

from skillorchestra.handbook.errors import InvalidInput, NotFound, known_hint
from skillorchestra.handbook.models import MAX_LAMBDA, MAX_SEED
from skillorchestra.server.jobs import Job, MatcherChoice
from skillorchestra.tools.common import READ_ONLY, AppState, OptionalId, app_state, reports_failures, writes

Fraction = Annotated[float, Field(ge=0.0, lt=1.0, description="share of tasks held out to select the handbook")]
Lambda = Annotated[
    float,
    Field(
        ge=0.0,
        le=MAX_LAMBDA,
        description="cost trade-off of the selection: accuracy - lambda * cost / c_ref (0 = accuracy only)",
    ),
]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="seed of the split, clustering and bootstrap")]
JobId = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]  # as every id (QA)


class LearnJobResult(BaseModel):
    version: int = Field(description="the learned handbook version (live when metrics.went_live is true)")
    metrics: dict[str, Any] = Field(description="validation metrics, every candidate with intervals, Pareto front")


class LearnJobStatus(BaseModel):
    job_id: str
    state: Literal["running", "done", "failed"]
    progress: float = Field(ge=0.0, le=1.0)
    message: str = Field(description="the current stage, the summary when done, or the error when failed")
    result: LearnJobResult | None = None


def register(server: MCPServer) -> None:
    server.tool(name="learn_handbook", annotations=writes(destructive=False, idempotent=False))(learn_handbook)
    server.tool(name="learn_status", annotations=READ_ONLY)(learn_status)


def _status(job: Job) -> LearnJobStatus:
    result = None
    if job.state == "done" and job.version is not None:
        result = LearnJobResult(version=job.version, metrics=job.metrics)
    return LearnJobStatus(
        job_id=job.id, state=job.state, progress=round(job.progress, 3), message=job.message, result=result
    )


def _matcher_choice(state: AppState) -> MatcherChoice:
    """Learn in the feature space the server infers skills with (semantic when it is configured and installed)."""
    from skillorchestra.handbook.semantic import SemanticMatcher

    base = getattr(state.handbook.matcher, "base", state.handbook.matcher)
    return "auto" if isinstance(base, SemanticMatcher) else "lexical"


@reports_failures
def learn_handbook(
    ctx: Context,
    source: Literal["events"] = "events",
    val_fraction: Fraction = 0.2,
    lambda_: Lambda = 0.1,
    seed: Seed = 0,
    orchestrator: Annotated[
        OptionalId,
        Field(description="store the selected depth under this name (what the routing tools take as orchestrator)"),
    ] = None,
) -> LearnJobStatus:
    """Start learning a new handbook from this server's recorded steps and outcomes; returns a job id at once.

    Poll learn_status(job_id) until state is "done" or "failed". The new version goes live (result.metrics.went_live)
    only when validation can compare agents, no agent with evidence in the live handbook would go back on the
    prior, the live skills do not route the validation tasks better (metrics.live_trial), and no forgetting aged
    the log (metrics.log_forgetting): a log of steps routed to one agent each cannot show that the new skills route
    better. Otherwise it is stored, the live
    handbook kept, and metrics.not_live_reason says why (`handbook promote` can use it).
    """
    from skillorchestra.handbook.learning.events import NO_EVENTS, prices_from_store, tasks_from_events
    from skillorchestra.server.jobs import learn_into_store, make_embedder

    state = app_state(ctx)
    store = state.handbook.store
    read = tasks_from_events(store)
    tasks = read.tasks
    if not tasks:
        raise InvalidInput("source", source, f"an event log with {NO_EVENTS}")
    prices = prices_from_store(store)
    choice = _matcher_choice(state)
    label = "the server's event log"

    def work(progress: Any) -> Any:
        embedder, features = make_embedder(choice, store)
        return learn_into_store(
            store,
            tasks,
            prices,
            data_label=label,
            price_source="the database's agents" if prices else "none",
            val_fraction=val_fraction,
            lambda_=lambda_,
            seed=seed,
            embedder=embedder,
            features=features,
            orchestrator=orchestrator,
            events_read=read,
            progress=progress,
        )

    return _status(state.jobs.start(work))


@reports_failures
def learn_status(job_id: JobId, ctx: Context) -> LearnJobStatus:
    """Progress of a learn_handbook job: running (with progress 0..1), done (with the version), or failed."""
    registry = app_state(ctx).jobs
    job = registry.get(job_id)
    if job is None:  # QA: a job of another server, or of this one before a restart, read as never started
        known = known_hint(job_id, registry.ids())
        raise NotFound("job_id", job_id, hint=f"{known}; {JOBS_ARE_PER_PROCESS}")
    return _status(job)


JOBS_ARE_PER_PROCESS = (
    "jobs live in the server process that started them: one started by another server on this file, or by this one "
    "before it restarted, is not known here (a finished one is a version in `skillorchestra handbook versions`)"
)
