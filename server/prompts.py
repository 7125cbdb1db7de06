"""The `orchestrate` prompt: teaches an orchestrator model the loop (consult) -> delegate or route -> record, with
one decision per step (delegate routes by itself: routing first as well would make two)."""

from __future__ import annotations

import json
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from skillorchestra.handbook.models import ID_MAX

ORCHESTRATE = """\
You are orchestrating a multi-step task with a pool of backend agents whose competence and cost per skill
are kept in a Skill Handbook (the skillorchestra MCP server). Goal:

{goal}

Work step by step. For every step:
1. Decide the next concrete step (one sub-task an agent can do: a lookup, a calculation, a piece of code...).
2. Optional: consult_handbook(text=<the step>) to see or choose the skills yourself (which skills it demands,
   each agent's competence and cost on them, the mode insights). route_step and delegate infer skills anyway.
3. Run the step once, through ONE of these (each makes the step's one decision; never both for one step):
   - delegate(text=<the step>, context=<what the agent needs to know>, session_id=<one id for this task>,
     budget_usd=<if there is a budget>, lambda_=<0 for best quality, 0.1 by default, higher to save money>,
     skills=[{{"skill_id": ..., "weight": ...}}] if you know them better than the inferred ones) when the server
     has backends: it routes the step among the agents it can call, calls the chosen one (falling back on
     failure) and returns the answer, its cost and decision_id. If it answers that no agent has connection
     settings, use route_step instead.
   - route_step(text=<the step>, the same skills/lambda_/session_id/budget_usd) when you run steps yourself:
     it returns decision_id and agent_id, with the candidates and why; then run the step with that agent
     yourself. delegate(text=<the step>, decision_id=<from route_step>) carries it out only when that agent is
     one the server can call: to have the server call an agent, call delegate directly instead.
   While candidates show little evidence (n near 0: a new pool or a new agent), add strategy="thompson":
   the default "mean" does not explore (an untested agent gets a step only while its prior estimate wins).
4. Judge the answer: did it achieve the step?
5. record_outcome(decision_id=<from step 3>, success=true|false or reward=0..1) as soon as you can judge it, once
   per step; after route_step add cost_usd and latency_s if you know them (delegate has recorded its own). If
   delegate's result says reported_by="judge", the outcome is already recorded: skip this step. If the agent
   failed for infrastructure reasons (timeout, rate limit, connection), report error_class instead of a reward:
   those never count against its competence.
Never skip step 5 (unless the judge reported): the handbook learns from every report, and that is what keeps
routing honest.
Stop when the goal is reached; summarise the answer, the agents used and the total cost.
"""

# with the prompt's orchestrator argument: the depth a handbook stores for that model reaches every call
AS_ORCHESTRATOR = """
Pass orchestrator={orchestrator} to consult_handbook, route_step and delegate: they then read each step's skills at
the depth learned for you (their granularity field says which)."""


def register_prompts(server: MCPServer) -> None:
    @server.prompt(name="orchestrate", description="Run a task step by step with the Skill Handbook's routing loop")
    def orchestrate(
        goal: Annotated[str, Field(description="The task to carry out, in your own words (what done looks like)")],
        orchestrator: Annotated[
            str | None, Field(description="The orchestrator model's name, when the handbook stores a depth for it")
        ] = None,
    ) -> str:
        text = ORCHESTRATE.format(goal=goal.strip())  # a blank goal is refused before this (app._check_prompt_request)
        if orchestrator and orchestrator.strip():
            text += AS_ORCHESTRATOR.format(orchestrator=json.dumps(orchestrator.strip()[:ID_MAX], ensure_ascii=False))
        return text
