"""The routing loop's tools: consult_handbook, route_step, record_outcome."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import ConfigDict, Field

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
from skillorchestra.handbook.service import OutcomeReport, RouteRequest
from skillorchestra.tools.common import READ_ONLY, Id, OptionalId, app_state, reports_failures, writes

StepText = Annotated[str, Field(min_length=1, max_length=TEXT_MAX, description="What this step must achieve")]
Mode = Annotated[OptionalId, Field(description="Restrict to one mode (stage) of work")]
TopK = Annotated[int, Field(ge=1, le=50, description="How many skills / candidates to return")]
Lambda = Annotated[
    float,
    Field(
        ge=0.0,
        le=MAX_LAMBDA,
        description="Cost trade-off: give up lambda of quality to avoid one call of the pool's most expensive agent",
    ),
]


class StrictDemand(SkillDemand):
    """A demand as a client sends it: strict like every top-level argument (see schemas.strict_arguments), so
    "0.5" or true is refused as a weight, not coerced."""

    model_config = ConfigDict(strict=True, title="SkillDemand")


Skills = Annotated[
    list[StrictDemand] | None,
    Field(
        max_length=50,
        description="Skill demands [{skill_id, weight}]; omitted = inferred from the text",
    ),
]
Usd = Annotated[float | None, Field(ge=0.0, le=MAX_USD, allow_inf_nan=False, description="US dollars")]
Tokens = Annotated[int | None, Field(ge=0, le=MAX_TOKENS)]


def register(server: MCPServer) -> None:
    server.tool(name="consult_handbook", annotations=READ_ONLY)(consult_handbook)
    server.tool(name="route_step", annotations=writes(destructive=False, idempotent=False))(route_step)
    server.tool(name="record_outcome", annotations=writes(destructive=False, idempotent=True))(record_outcome)


@reports_failures
def consult_handbook(
    text: StepText,
    ctx: Context,
    mode: Mode = None,
    top_k: TopK = 5,
    orchestrator: OptionalId = None,
    cursor: Annotated[str | None, Field(max_length=64)] = None,
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
        orchestrator=orchestrator,
        cursor=cursor,
        unavailable=state.unavailable_agents(),
    )


@reports_failures
def route_step(
    text: StepText,
    ctx: Context,
    skills: Skills = None,
    mode: Mode = None,
    lambda_: Lambda = 0.1,
    strategy: Literal["mean", "thompson"] = "mean",
    allowed_agents: Annotated[list[Id] | None, Field(max_length=500)] = None,
    max_cost_usd: Usd = None,
    session_id: OptionalId = None,
    budget_usd: Usd = None,
    top_k: TopK = 5,
    seed: Annotated[
        int | None, Field(ge=0, le=MAX_SEED, description="Seed for thompson sampling (reproducible choices)")
    ] = None,
) -> RouteDecision:
    """Choose the agent for one step: argmax of sum_s w_s * competence (+ the learned length shift, when the
    handbook has one) - lambda * cost / c_ref.

    Records the decision; report how the step went with record_outcome(decision_id, ...).
    """
    state = app_state(ctx)
    return state.handbook.route(
        RouteRequest(
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
        )
    )


@reports_failures
def record_outcome(
    decision_id: Id,
    ctx: Context,
    reward: Annotated[float | None, Field(ge=0.0, le=1.0, description="Graded outcome in [0, 1]")] = None,
    success: Annotated[bool | None, Field(description="Pass/fail outcome (instead of reward)")] = None,
    cost_usd: Usd = None,
    prompt_tokens: Tokens = None,
    completion_tokens: Tokens = None,
    latency_s: Annotated[float | None, Field(ge=0.0, le=MAX_SECONDS, allow_inf_nan=False)] = None,
    error_class: ErrorClass = "task",
) -> OutcomeResult:
    """Report how a routed step went; the agent's competence on the step's skills moves at once.

    error_class 'task' (a completed answer, scored by reward or success) or an infrastructure class
    (timeout, rate_limit, connection, auth, server_error), which never changes competence. Reporting the
    same payload twice returns the first result with duplicate=true.
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
