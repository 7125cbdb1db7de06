"""The `orchestrate` prompt: teaches an orchestrator model the loop consult -> route -> delegate -> record."""

from __future__ import annotations

from mcp.server import MCPServer

ORCHESTRATE = """\
You are orchestrating a multi-step task with a pool of backend agents whose competence and cost per skill
are kept in a Skill Handbook (the skillorchestra MCP server). Goal:

{goal}

Work step by step. For every step:
1. Decide the next concrete step (one sub-task an agent can do: a lookup, a calculation, a piece of code...).
2. consult_handbook(text=<the step>) to see which skills it demands and how each agent does on them
   (posterior mean, 90% interval, evidence n, expected cost). Read the mode insights.
3. route_step(text=<the step>, skills=[{{"skill_id": ..., "weight": ...}}] if you know them better than the
   inferred ones, lambda_=<0 for best quality, 0.1 by default, higher to save money>, session_id=<one id for
   this task>, budget_usd=<if there is a budget>). It returns decision_id and agent_id, with the candidates
   and why.
4. Have the chosen agent do the step: delegate(text=..., agent_id=...) when the server is configured with
   backends; otherwise run the step with that agent yourself.
5. record_outcome(decision_id=..., success=true|false or reward=0..1, cost_usd=..., latency_s=...) as soon as
   you can judge the step. If the agent failed for infrastructure reasons (timeout, rate limit, connection),
   report error_class instead of a reward: those never count against its competence.
Never skip step 5: the handbook learns from every report, and that is what keeps routing honest.
Stop when the goal is reached; summarise the answer, the agents used and the total cost.
"""


def register_prompts(server: MCPServer) -> None:
    @server.prompt(name="orchestrate", description="Run a task step by step with the Skill Handbook's routing loop")
    def orchestrate(goal: str) -> str:
        return ORCHESTRATE.format(goal=goal.strip() or "(no goal given)")
