"""Editing and listing the handbook's agents, skills and modes (no connection settings: those come only
from agents.toml, so a prompt-injected orchestrator cannot redirect an agent's endpoint)."""

# Annotations stay evaluated (no `from __future__ import annotations`): the SDK resolves every tool's signature at
# start-up, and string annotations cost an eval each (~8% of the tools' registration).

from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import Field, StringConstraints

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import (
    DESCRIPTION_MAX,
    ID_MAX,
    ITEM_MAX,
    LIST_MAX,
    MAX_USD,
    Agent,
    Mode,
    Skill,
)
from skillorchestra.handbook.paging import PAGE_LIMIT_MAX
from skillorchestra.handbook.results import AgentPage, Removed, SkillPage
from skillorchestra.tools.common import READ_ONLY, Id, OptionalId, app_state, given, reports_failures, writes

Description = Annotated[str, Field(max_length=DESCRIPTION_MAX)]
Lines = Annotated[
    list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=ITEM_MAX)]],
    Field(max_length=LIST_MAX),
]
Price = Annotated[float | None, Field(ge=0.0, le=MAX_USD, allow_inf_nan=False, description="USD per million tokens")]
CallPrice = Annotated[
    float | None, Field(ge=0.0, le=MAX_USD, allow_inf_nan=False, description="USD per call (billed by the call)")
]
Limit = Annotated[int, Field(ge=1, le=PAGE_LIMIT_MAX)]
Cursor = Annotated[str | None, Field(max_length=ID_MAX + 1)]  # 'k' and the last id served
ModeFilter = OptionalId
# a skill's parent: an id, "" for none (a top-level skill), or left out to keep the current one
ParentId = Annotated[
    str | None,
    StringConstraints(max_length=ID_MAX),  # not stripped here: " " is a blank id (refused), only "" means none
    Field(description='the parent skill\'s id; "" makes it a top-level skill'),
]


def register(server: MCPServer) -> None:
    upsert = writes(destructive=False, idempotent=True)
    delete = writes(destructive=True, idempotent=False)
    server.tool(name="upsert_agent", annotations=upsert)(upsert_agent)
    server.tool(name="upsert_skill", annotations=upsert)(upsert_skill)
    server.tool(name="upsert_mode", annotations=upsert)(upsert_mode)
    server.tool(name="delete_agent", annotations=delete)(delete_agent)
    server.tool(name="delete_skill", annotations=delete)(delete_skill)
    server.tool(name="list_agents", annotations=READ_ONLY)(list_agents)
    server.tool(name="list_skills", annotations=READ_ONLY)(list_skills)


@reports_failures
def upsert_agent(
    agent_id: Id,
    ctx: Context,
    description: Description | None = None,
    modes: Annotated[list[Id], Field(max_length=LIST_MAX)] | None = None,
    enabled: bool | None = None,
    input_per_mtok: Price = None,
    output_per_mtok: Price = None,
    cost_per_call_usd: CallPrice = None,
    clear_prices: bool = False,
) -> Agent:
    """Add an agent the router may choose, or change an existing one: only the fields you pass change, the others
    keep their values (null = left out). Prices in USD per million tokens, or per call (a tool billed by the
    call); `modes`: the only modes whose steps it takes ([] = every mode). clear_prices: forget all prices (a
    wrong price is worse than none: an agent of unknown cost is charged the pool's reference cost until its calls
    are recorded)."""
    changes = given(
        description=description,
        modes=modes,
        enabled=enabled,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        cost_per_call_usd=cost_per_call_usd,
    )
    if clear_prices:
        if input_per_mtok is not None or output_per_mtok is not None or cost_per_call_usd is not None:
            raise InvalidInput(
                "clear_prices", True, "no input_per_mtok, output_per_mtok or cost_per_call_usd in the same call"
            )
        changes.update(input_per_mtok=None, output_per_mtok=None, cost_per_call_usd=None)
    return app_state(ctx).handbook.edit_agent(agent_id, changes)


@reports_failures
def upsert_skill(
    skill_id: Id,
    ctx: Context,
    description: Description | None = None,
    mode: OptionalId = None,
    parent_id: ParentId = None,
    indicators: Lines | None = None,
    examples: Lines | None = None,
) -> Skill:
    """Add a skill, or change an existing one: only the fields you pass change (null = left out). Indicators are
    cues in a step that signal it, examples are sample steps; parent_id "" makes it a top-level skill; a new
    skill's mode defaults to its parent's, else 'general'."""
    changes = given(mode=mode, parent_id=parent_id, description=description, indicators=indicators, examples=examples)
    if parent_id == "":
        changes["parent_id"] = None  # explicitly none, where a left-out parent_id keeps the current one
    return app_state(ctx).handbook.edit_skill(skill_id, changes)


@reports_failures
def upsert_mode(
    mode_id: Id, ctx: Context, description: Description | None = None, insights: Lines | None = None
) -> Mode:
    """Add a mode (a stage of work) with its routing insights for the orchestrator, or change the fields you pass."""
    return app_state(ctx).handbook.edit_mode(mode_id, given(description=description, insights=insights))


@reports_failures
def delete_agent(agent_id: Id, ctx: Context) -> Removed:
    """Remove an agent and its competence and cost records (past decisions stay in the log)."""
    return app_state(ctx).handbook.delete_agent(agent_id)


@reports_failures
def delete_skill(skill_id: Id, ctx: Context) -> Removed:
    """Remove a skill without children, and every agent's competence and cost records on it."""
    return app_state(ctx).handbook.delete_skill(skill_id)


@reports_failures
def list_agents(ctx: Context, mode: ModeFilter = None, cursor: Cursor = None, limit: Limit = 50) -> AgentPage:
    """Agents in the handbook, optionally only those serving a mode; paginated by next_cursor."""
    return app_state(ctx).handbook.list_agents(mode=mode, cursor=cursor, limit=limit)


@reports_failures
def list_skills(ctx: Context, mode: ModeFilter = None, cursor: Cursor = None, limit: Limit = 50) -> SkillPage:
    """Skills in the handbook, optionally of one mode; paginated by next_cursor."""
    return app_state(ctx).handbook.list_skills(mode=mode, cursor=cursor, limit=limit)
