"""The `delegate` tool: route a step, have the chosen agent do it, and account for the call."""

# Annotations stay evaluated (no `from __future__ import annotations`): the SDK resolves every tool's signature at
# start-up, and string annotations cost an eval each (~8% of the tools' registration).

import inspect
import json
from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from pydantic_core import to_jsonable_python

from skillorchestra.handbook.models import MAX_DELEGATE_S, MIN_TRY_S, TEXT_MAX
from skillorchestra.handbook.results import DelegateResult
from skillorchestra.handbook.service import DelegateRequest, RouteRequest
from skillorchestra.tools.common import OptionalId, app_state, reports_failures, writes
from skillorchestra.tools.routing import (
    AllowedAgents,
    Budget,
    Lambda,
    MaxCost,
    Mode,
    Orchestrator,
    Seed,
    SessionId,
    Skills,
    StepText,
    Strategy,
    TopK,
)


def register(server: MCPServer) -> None:
    server.tool(name="delegate", annotations=writes(destructive=False, idempotent=False, open_world=True))(delegate)


@reports_failures
async def delegate(
    text: StepText,
    ctx: Context,
    context: Annotated[str | None, Field(max_length=TEXT_MAX, description="Background the agent needs")] = None,
    agent_id: Annotated[OptionalId, Field(description="Skip routing: use this agent")] = None,
    skills: Skills = None,
    mode: Mode = None,
    lambda_: Lambda = 0.1,
    strategy: Strategy = "mean",
    allowed_agents: AllowedAgents = None,
    max_cost_usd: MaxCost = None,
    session_id: SessionId = None,
    budget_usd: Budget = None,
    top_k: Annotated[
        TopK, Field(description="How many ranked candidates the result lists (fallbacks are not limited by it)")
    ] = 5,
    seed: Seed = None,
    max_tokens: Annotated[
        int | None,
        Field(ge=1, le=1_000_000, description="Most tokens the agent may answer with (default: the agent's setting)"),
    ] = None,
    timeout_s: Annotated[
        float, Field(ge=MIN_TRY_S, le=MAX_DELEGATE_S, description="Seconds for the whole call, fallbacks included")
    ] = 45.0,
    decision_id: Annotated[
        OptionalId,
        Field(description="Carry out this route_step decision (its agent must be one the server can call)"),
    ] = None,
    orchestrator: Orchestrator = None,
) -> DelegateResult:
    """Route the step (unless agent_id is given), call the agent, return its answer with cost and latency.

    Infrastructure failures fall back to the next-best agent and never count against competence. Report how
    good the answer was with record_outcome(decision_id, success|reward): that is what the handbook learns from;
    when the result says reported_by "judge", the server's judge has reported it already.
    With decision_id (from route_step), that decision is carried out: no second decision for the same step.
    """
    delegator = app_state(ctx).delegator
    routing = {
        "skills": skills,
        "mode": mode,
        "lambda_": lambda_,
        "strategy": strategy,
        "allowed_agents": allowed_agents,
        "max_cost_usd": max_cost_usd,
        "session_id": session_id,
        "budget_usd": budget_usd,
        "top_k": top_k,
        "seed": seed,
        "orchestrator": orchestrator,
    }
    if decision_id is not None:
        _refuse_routing(decision_id, agent_id=agent_id, **routing)

    async def progress(fraction: float, message: str) -> None:
        await ctx.report_progress(fraction, 1.0, message)

    request = DelegateRequest(
        route=RouteRequest(text=text, **routing),  # type: ignore[arg-type]
        context=context,
        agent_id=agent_id,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
        decision_id=decision_id,
    )
    return await delegator.delegate(request, progress)


def _refuse_routing(decision_id: str, **routing: object) -> None:
    """A decision already fixed the agent and everything routing chose by: a routing argument sent with it
    (anything but its default) would contradict it, so it is refused before anything is written."""
    for name, value in routing.items():
        if value != _DEFAULTS[name]:
            # as every refusal shows a value; a list of demands as the JSON the client sent, not as our models' repr
            scalar = value is None or isinstance(value, str | int | float)
            shown = repr(value) if scalar else json.dumps(to_jsonable_python(value), ensure_ascii=False)
            raise ToolError(
                f"{name}={shown}: expected no {name} with decision_id: decision {decision_id} already fixed it "
                "(route_step chose the agent; delegate only carries it out)"
            )


_DEFAULTS = {name: p.default for name, p in inspect.signature(delegate).parameters.items()}
