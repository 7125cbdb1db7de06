"""What the handbook answers: the result models of consult, route, record and the listings.

They are the MCP tools' output schemas too, so field names follow interface.md.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from skillorchestra.handbook.models import Agent, ErrorClass, Skill, SkillDemand

T = TypeVar("T")


class SkillCard(BaseModel):
    """A skill with how much the step demands it."""

    skill_id: str
    mode: str
    parent_id: str | None = None
    description: str = ""
    indicators: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)
    weight: float


class AgentSkillStat(BaseModel):
    """An agent's competence on one skill: posterior mean, 90% interval, evidence and expected cost."""

    agent_id: str
    skill_id: str
    mean: float
    ci90: tuple[float, float]
    n: float = Field(description="observations behind the estimate (fractional: weighted by skill demand)")
    expected_cost_usd: float | None = Field(
        description="expected cost of a call with this text on this skill; null when the agent's cost is unknown"
    )
    length_shift: float = Field(
        default=0.0,
        description="competence the learned length effect adds for this text's length (0 without one); agents are "
        "ranked by mean + length_shift kept in [0, 1], as route_step scores them",
    )


class ConsultResult(BaseModel):
    skills: list[SkillCard]
    agents: list[AgentSkillStat]
    insights: list[str]
    skills_source: str = Field(description="how the skills were found: lexical, semantic, ...")
    granularity: str = Field(description="the handbook depth used (a stored selection for the orchestrator)")
    unavailable: dict[str, str] = Field(default_factory=dict, description="agent_id -> why it cannot be routed to")
    handbook_version: int
    next_cursor: str | None = None


class Candidate(BaseModel):
    agent_id: str
    utility: float
    quality: float = Field(description="sum_s w_s * posterior mean competence, plus length_shift (kept in [0, 1])")
    ci90: tuple[float, float]
    n: float
    expected_cost_usd: float | None = Field(description="null when unknown (then charged c_ref)")
    contributions: dict[str, float] = Field(description="skill_id -> w_s * theta(agent, s)")
    length_shift: float = Field(
        default=0.0, description="competence added for this step's length by the learned length effect (0 without one)"
    )


class Exclusion(BaseModel):
    agent_id: str
    reason: str


class RouteDecision(BaseModel):
    decision_id: str
    agent_id: str
    explored: bool = Field(description="true when Thompson sampling chose other than the best posterior mean")
    propensity: float = Field(description="probability that this strategy picks this agent (1 for mean)")
    strategy: Literal["mean", "thompson"]
    lambda_: float
    skills: list[SkillDemand] = Field(description="the skill weights used (empty: agent or mode level)")
    skills_source: str
    candidates: list[Candidate]
    excluded: list[Exclusion]
    c_ref_usd: float | None = Field(description="reference cost that makes lambda dimensionless")
    session_spend_usd: float | None = None
    handbook_version: int
    expires_at: float


class CompetenceUpdate(BaseModel):
    """The skill's own evidence for this agent after the outcome: Beta(alpha, beta) counts and their mean.

    Routing shrinks this toward the parent skill, the mode and the agent's overall record (kappa pseudo-counts),
    so with little evidence the competence route_step and consult_handbook show moves less than `mean` does."""

    skill_id: str
    alpha: float = Field(description="successes + 1 on this skill (fractional: weighted by the step's demand)")
    beta: float = Field(description="failures + 1 on this skill")
    mean: float = Field(description="alpha / (alpha + beta), before shrinkage toward the parent, mode and agent")


class OutcomeResult(BaseModel):
    decision_id: str
    agent_id: str
    error_class: ErrorClass
    reward: float | None
    cost_usd: float | None
    updated: list[CompetenceUpdate]
    duplicate: bool
    applied: bool = Field(
        default=True,
        description=(
            "false when nothing was applied to the live posteriors: the handbook changed version since the decision,"
            " or its agent was deleted (see note)"
        ),
    )
    note: str | None = None


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class AgentPage(Page[Agent]):
    pass


class SkillPage(Page[Skill]):
    pass


class Removed(BaseModel):
    kind: Literal["agent", "skill"]
    id: str
    competence_rows: int
    cost_rows: int


class Attempt(BaseModel):
    agent_id: str
    decision_id: str | None = None
    error_class: str | None = Field(description="null when this agent answered")
    message: str | None = None
    latency_s: float = 0.0
    cost_usd: float | None = None


class DelegateResult(BaseModel):
    decision_id: str = Field(description="report the outcome of this answer with record_outcome(decision_id)")
    agent_id: str
    answer: str | None
    error_class: str | None = Field(default=None, description="'task' when the agent could not do the step")
    tried: list[Attempt]
    cost_usd: float | None = Field(description="cost of the answering call; null = unknown (never a silent 0)")
    cost_source: str
    total_cost_usd: float | None = Field(description="all tries together; null when any cost is unknown")
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    warnings: list[str] = Field(default_factory=list)
    decision: RouteDecision
    judge_agent_id: str | None = Field(default=None, description="the configured judge (agents.toml [judge]), if any")
    judge_score: float | None = Field(default=None, description="the judge's raw score 0..1; null = not judged")
    judged_reward: float | None = Field(
        default=None, description="the reward the judge recorded for decision_id (score, or 0/1 by threshold)"
    )
    judge_cost_usd: float | None = Field(default=None, description="the judge's own call (in the session's spend)")
    reported_by: Literal["judge"] | None = Field(
        default=None,
        description="'judge': the outcome is recorded, do not call record_outcome (a different report is a "
        "Conflict); null: report it yourself",
    )
