"""The routing loop's tools: consult_handbook, route_step, record_outcome."""

# Annotations stay evaluated (no `from __future__ import annotations`): the SDK resolves every tool's signature at
# start-up, and string annotations cost an eval each (~8% of the tools' registration).

from typing import Annotated, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import BeforeValidator, ConfigDict, Field

from skillorchestra.handbook.models import (
    MAX_LAMBDA,
    MAX_SECONDS,
    MAX_SEED,
    MAX_TOKENS,
    MAX_USD,
    TEXT_MAX,
    ErrorClass,
    SkillDemand,
)
from skillorchestra.handbook.results import ConsultResult, OutcomeResult, RouteDecision
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.tools.common import READ_ONLY, Id, OptionalId, app_state, reports_failures, writes

StepText = Annotated[str, Field(min_length=1, max_length=TEXT_MAX, description="What this step must achieve")]
Mode = Annotated[
    OptionalId,
    Field(description="Restrict to one mode (stage) of work; left out, the step is of its skills' modes"),
]
# consult_handbook's top_k limits the skills it infers (service.consult); route_step's and delegate's the candidates
# their result lists (delegate's fallbacks are not limited by it: server/delegation.py routes wider)
SkillsShown = Annotated[
    int, Field(ge=1, le=50, description="At most this many inferred skills (agents are listed for each)")
]
TopK = Annotated[int, Field(ge=1, le=50, description="How many ranked candidates the result lists")]
Lambda = Annotated[
    float,
    Field(
        ge=0.0,
        le=MAX_LAMBDA,
        description="Cost aversion: 0 = quality only, 0.1 default, ~1 = strongly cost-averse (lambda of quality is "
        "worth one call of the priciest agent)",
    ),
]
Strategy = Annotated[
    Literal["mean", "thompson"],
    Field(description='"mean" = best expected utility, no exploring; "thompson" samples, trying untested agents'),
]
AllowedAgents = Annotated[list[Id] | None, Field(max_length=500, description="Choose only among these agents")]
SessionId = Annotated[OptionalId, Field(description="One id for all steps of a task: their spend counts to budget_usd")]
Seed = Annotated[
    int | None,
    Field(
        ge=0,
        le=MAX_SEED,
        description="Thompson's seed: it repeats its draw (vary it per step)",
    ),
]
Orchestrator = Annotated[
    OptionalId,
    Field(description="Name a depth was learned under: skills inferred at it (else full)"),
]


# A demand as a client sends it: strict like every top-level argument (see schemas.strict_arguments), so "0.5" or
# true is refused as a weight, not coerced. The description (not a docstring) is what the calling model reads.
class StrictDemand(SkillDemand):
    model_config = ConfigDict(
        strict=True,
        title="SkillDemand",
        json_schema_extra={"description": "{skill_id, weight}; weights are normalised to sum to 1"},
    )


Skills = Annotated[
    list[StrictDemand] | None,
    Field(
        max_length=50,
        description="Skill demands [{skill_id, weight}]; omitted = inferred from the text",
    ),
]
Usd = Annotated[float | None, Field(ge=0.0, le=MAX_USD, allow_inf_nan=False)]
MaxCost = Annotated[Usd, Field(description="US dollars: cap on this step's expected cost; pricier agents are skipped")]
Budget = Annotated[
    Usd, Field(description="US dollars: total spend cap of the session (with session_id), not of a step")
]
Tokens = Annotated[int | None, Field(ge=0, le=MAX_TOKENS)]


MEASURED_BY_DELEGATE = "Leave out after delegate: it recorded the call's own figure (another is refused)"


def register(server: MCPServer) -> None:
    server.tool(name="consult_handbook", annotations=READ_ONLY)(consult_handbook)
    server.tool(name="route_step", annotations=writes(destructive=False, idempotent=False))(route_step)
    server.tool(name="record_outcome", annotations=writes(destructive=False, idempotent=True))(record_outcome)


@reports_failures
def consult_handbook(
    text: StepText,
    ctx: Context,
    mode: Mode = None,
    top_k: SkillsShown = 5,
    orchestrator: Orchestrator = None,
    cursor: Annotated[str | None, Field(max_length=64)] = None,
    agents_per_skill: Annotated[
        int, Field(ge=1, le=500, description="At most this many agents per skill, the most competent first")
    ] = 5,
) -> ConsultResult:
    """Which skills does this step demand, and how good and costly is each agent at them?

    Returns skill cards with weights, per-agent competence (posterior mean, 90% interval, evidence n,
    expected cost) for each skill, and the mode's routing insights. Read-only.
    """
    state = app_state(ctx)
    return state.handbook.consult(
        text,
        mode=mode,
        top_k=top_k,
        agents_per_skill=agents_per_skill,
        orchestrator=orchestrator,
        cursor=cursor,
        unavailable=state.unavailable_agents(),
    )


@reports_failures
async def route_step(
    text: StepText,
    ctx: Context,
    skills: Skills = None,
    mode: Mode = None,
    lambda_: Lambda = 0.1,
    strategy: Strategy = "mean",
    allowed_agents: AllowedAgents = None,
    max_cost_usd: MaxCost = None,
    session_id: SessionId = None,
    budget_usd: Budget = None,
    top_k: TopK = 5,
    seed: Seed = None,
    orchestrator: Orchestrator = None,
) -> RouteDecision:
    """Choose the agent for one step: argmax of sum_s w_s * competence (+ the learned length shift, when the
    handbook has one) - lambda * cost / c_ref.

    Records the decision; report how the step went with record_outcome(decision_id, ...).
    """
    state = app_state(ctx)
    request = RouteRequest(
        text=text,
        skills=skills,
        mode=mode,
        lambda_=lambda_,
        strategy=strategy,
        allowed_agents=allowed_agents,
        max_cost_usd=max_cost_usd,
        session_id=session_id,
        budget_usd=budget_usd,
        top_k=top_k,
        seed=seed,
        unavailable=state.unavailable_agents(),
        orchestrator=orchestrator,
    )
    decision = await anyio.to_thread.run_sync(_route_marking_delegable, state.handbook, request)
    try:  # the thread ran shielded: a cancellation that came meanwhile is raised here, where the decision is known
        await anyio.lowlevel.checkpoint_if_cancelled()
    except anyio.get_cancelled_exc_class():
        # the client gave up, so it never gets this decision_id (the SDK drops the answer): the decision must not
        # hold its session's budget until it expires (protocol QA: the session's next step was refused)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(state.handbook.withdraw, decision.decision_id)
        raise
    return decision


def _route_marking_delegable(handbook: Handbook, request: RouteRequest) -> RouteDecision:
    """The decision, each candidate marked with whether delegate can call it (LLM-surface QA: routing recommended
    agents without connection settings, and only a delegate call found out)."""
    connected = handbook.store.connected_agents()  # first: a failed read after the decision's write would leave
    decision = handbook.route(request)  # the decision, never seen by the client, holding its session's budget
    marked = [c.model_copy(update={"delegable": c.agent_id in connected}) for c in decision.candidates]
    return decision.model_copy(update={"candidates": marked})


def _fraction(value: object) -> object:
    """A reward above 1 is most often a grade on another scale (QA: a model sent 7 for 7/10): say how to convert."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 1:
        raise ValueError("a fraction in [0, 1]: a grade of 7 out of 10 is 0.7")
    return value


@reports_failures
def record_outcome(
    decision_id: Id,
    ctx: Context,
    reward: Annotated[
        Annotated[float, Field(ge=0.0, le=1.0)] | None,  # bounds on the number: the schema's minimum and maximum
        BeforeValidator(_fraction),
        Field(description="Graded outcome in [0, 1] (a grade of 7 out of 10 is 0.7)"),
    ] = None,
    success: Annotated[bool | None, Field(description="Pass/fail outcome (instead of reward)")] = None,
    cost_usd: Annotated[
        Usd,
        Field(description="US dollars the call cost; leave out after delegate: delegate recorded the measured cost"),
    ] = None,
    prompt_tokens: Annotated[Tokens, Field(description=MEASURED_BY_DELEGATE)] = None,
    completion_tokens: Annotated[Tokens, Field(description=MEASURED_BY_DELEGATE)] = None,
    latency_s: Annotated[
        float | None, Field(ge=0.0, le=MAX_SECONDS, allow_inf_nan=False, description=MEASURED_BY_DELEGATE)
    ] = None,
    error_class: ErrorClass = "task",
) -> OutcomeResult:
    """Report how a routed step went; the agent's competence on the step's skills moves at once.

    error_class 'task' (a completed answer, scored by reward or success) or an infrastructure class
    (timeout, rate_limit, connection, auth, server_error), which never changes competence. Reporting the
    same payload twice returns the first result with duplicate=true. In `updated`, `competence` is what routing
    and consult_handbook's `mean` use; `updated[].mean` is the skill's raw alpha / (alpha + beta), unshrunk.
    """
    return app_state(ctx).handbook.record(
        OutcomeReport(
            decision_id=decision_id,
            reward=reward,
            success=success,
            error_class=error_class,
            cost_usd=cost_usd,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency_s,
        )
    )
