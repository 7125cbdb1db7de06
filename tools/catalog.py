"""Editing and listing the handbook's agents, skills and modes (no connection settings: those come only
from agents.toml, so a prompt-injected orchestrator cannot redirect an agent's endpoint)."""

from __future__ import annotations

from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import Field, StringConstraints

from skillorchestra.handbook.models import (
    DEFAULT_MODE,
    DESCRIPTION_MAX,
    ID_MAX,
    ITEM_MAX,
    LIST_MAX,
    MAX_USD,
    Agent,
    Mode,
    Skill,
)
from skillorchestra.handbook.results import AgentPage, Removed, SkillPage
from skillorchestra.handbook.service import PAGE_LIMIT_MAX
from skillorchestra.tools.common import READ_ONLY, Id, OptionalId, app_state, from_arguments, reports_failures, writes

Description = Annotated[str, Field(max_length=DESCRIPTION_MAX)]
Lines = Annotated[
    list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=ITEM_MAX)]],
    Field(max_length=LIST_MAX),
]
Price = Annotated[float | None, Field(ge=0.0, le=MAX_USD, allow_inf_nan=False, description="USD per million tokens")]
Limit = Annotated[int, Field(ge=1, le=PAGE_LIMIT_MAX)]
Cursor = Annotated[str | None, Field(max_length=ID_MAX + 1)]  # 'k' and the last id served
ModeFilter = Annotated[str | None, Field(max_length=ID_MAX)]


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
    description: Description = "",
    modes: Annotated[list[Id], Field(max_length=LIST_MAX)] | None = None,
    enabled: bool = True,
    input_per_mtok: Price = None,
    output_per_mtok: Price = None,
) -> Agent:
    """Add or replace an agent the router may choose (prices in USD per million tokens)."""
    agent = from_arguments(
        Agent,
        id=agent_id,
        description=description,
        modes=modes or [],
        enabled=enabled,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
    )
    return app_state(ctx).handbook.upsert_agent(agent)


@reports_failures
def upsert_skill(
    skill_id: Id,
    ctx: Context,
    description: Description = "",
    mode: Id = DEFAULT_MODE,
    parent_id: OptionalId = None,
    indicators: Lines | None = None,
    examples: Lines | None = None,
) -> Skill:
    """Add or replace a skill; indicators are cues in a step that signal it, examples are sample steps."""
    skill = from_arguments(
        Skill,
        id=skill_id,
        mode=mode,
        parent_id=parent_id,
        description=description,
        indicators=indicators or [],
        examples=examples or [],
    )
    return app_state(ctx).handbook.upsert_skill(skill)


@reports_failures
def upsert_mode(mode_id: Id, ctx: Context, description: Description = "", insights: Lines | None = None) -> Mode:
    """Add or replace a mode (a stage of work) and its routing insights for the orchestrator."""
    mode = from_arguments(Mode, id=mode_id, description=description, insights=insights or [])
    return app_state(ctx).handbook.upsert_mode(mode)


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
