"""What the handbook answers: the result models of consult, route, record and the listings.

They are the MCP tools' output schemas too, so field names follow interface.md. Estimates go out with four
significant digits (`Figure`): the model reads every digit as tokens, and the 17 of a float's repr carry nothing an
estimate has (0.00010480000000000001 -> 0.0001048). Only the JSON is rounded: the service keeps full precision.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, PlainSerializer

from skillorchestra.handbook.models import Agent, ErrorClass, Skill

T = TypeVar("T")


def four_significant(value: float) -> float:
    return float(f"{value:.4g}")


Figure = Annotated[float, PlainSerializer(four_significant, when_used="json")]


SKILLS_SOURCE = (
    "who chose the skills: client (given), semantic, or lexical (and why not semantic); agent or mode level when "
    "no skill was found"
)


class UsedSkill(BaseModel):
    skill_id: str
    weight: Figure


class SkillCard(BaseModel):
    """A skill with how much the step demands it."""

    skill_id: str
    mode: str
    parent_id: str | None = None
    description: str = ""
    indicators: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)
    weight: Figure = Field(description="the share of the step route_step gives this skill (0: a near match it omits)")
    texts_not_shown: int = Field(
        default=0,
        description="indicators and examples left out to keep the answer small; all are at handbook://skills/{id}",
    )


class AgentSkillStat(BaseModel):
    """An agent's competence on one skill: posterior mean, 90% interval, evidence and expected cost."""

    agent_id: str
    skill_id: str
    mean: Figure
    ci90: tuple[Figure, Figure] = Field(
        description="approximate 90% interval: mean -+ 1.645 posterior standard deviations, clipped to [0, 1]"
    )
    n: Figure = Field(
        description="observations behind the estimate (fractional: weighted by skill demand; aged when the server "
        "forgets)"
    )
    expected_cost_usd: Figure | None = Field(
        description="expected cost of a call with this text on this skill; null when the agent's cost is unknown"
    )
    length_shift: Figure = Field(
        default=0.0,
        description="competence the learned length effect adds for this text's length (0 without one); agents are "
        "ranked by mean + length_shift kept in [0, 1], as route_step scores them",
    )


class ConsultResult(BaseModel):
    skills: list[SkillCard]
    agents: list[AgentSkillStat]
    insights: list[str]
    skills_source: str = Field(description=SKILLS_SOURCE)
    granularity: str = Field(description="the handbook depth used (a stored selection for the orchestrator)")
    unavailable: dict[str, str] = Field(default_factory=dict, description="agent_id -> why it cannot be routed to")
    handbook_version: int
    next_cursor: str | None = None
    agents_not_shown: int = Field(
        default=0, description="(agent, skill) rows left out by agents_per_skill: raise it to see them"
    )


class Candidate(BaseModel):
    agent_id: str
    utility: Figure = Field(
        description="quality - lambda * cost / c_ref, which ranks the candidates; with thompson, a posterior draw "
        "stands in for quality here (the `quality` field still shows the mean)"
    )
    quality: Figure = Field(description="sum_s w_s * posterior mean competence, plus length_shift (kept in [0, 1])")
    ci90: tuple[Figure, Figure] = Field(
        description="approximate 90% interval: quality -+ 1.645 * sum_s w_s * posterior sd (the skills' uncertainty "
        "taken as shared, never narrower than theirs; a conservative bound, as thompson draws each skill apart), "
        "clipped to [0, 1]; that sd times ci_widened_by"
    )
    ci_widened_by: Figure = Field(
        default=1.0,
        description="how much wider ci90 is than the posteriors say (left out: not widened): a young learned "
        "handbook's skills were shaped by the outcomes they count, so the learner measured its misses on held-out "
        "tasks; it fades as recorded outcomes outnumber the learning data. quality and the choice never read it",
        exclude_if=lambda value: value < 1.00005,  # 1 at four significant digits: ~100 bytes a result saved
    )
    n: Figure = Field(description="outcomes behind quality, weighted as the step's skills are (aged when forgetting)")
    expected_cost_usd: Figure | None = Field(description="null when unknown (then charged c_ref)")
    contributions: dict[str, Figure] = Field(
        description="skill_id -> w_s * theta(agent, s); '*' is the agent's overall record (a step with no skill), "
        "'@M' its record in mode M (a step of mode M that no skill matched)"
    )
    length_shift: Figure = Field(
        default=0.0, description="competence added for this step's length by the learned length effect (0 without one)"
    )
    delegable: bool | None = Field(
        default=None,
        description="whether delegate can call this agent (it has connection settings); if not, run the step "
        "yourself, or route with allowed_agents",
    )


class Exclusion(BaseModel):
    agent_id: str
    reason: str


def _granularity() -> Any:
    """route_step's and delegate's granularity field (a Field each: pydantic fields are not shared)."""
    return Field(
        default=None,
        description="with orchestrator: the depth its inferred skills were read at (consult_handbook's wording)",
        exclude_if=lambda value: value is None,  # shown to an orchestrator that named itself, no token else
    )


class RouteDecision(BaseModel):
    decision_id: str
    agent_id: str
    explored: bool = Field(description="true when Thompson sampling chose other than the best posterior mean")
    propensity: Figure = Field(description="probability that this strategy picks this agent (1 for mean)")
    strategy: Literal["mean", "thompson"]
    lambda_: float
    skills: list[UsedSkill] = Field(description="the skill weights used (empty: agent or mode level)")
    skills_source: str = Field(description=SKILLS_SOURCE)
    granularity: str | None = _granularity()
    candidates: list[Candidate]
    excluded: list[Exclusion]
    c_ref_usd: Figure | None = Field(description="reference cost that makes lambda dimensionless")
    session_spend_usd: Figure | None = Field(
        default=None, description="USD the session had spent or holds for open decisions, before this step"
    )
    handbook_version: int
    expires_at: float = Field(description="Unix time after which record_outcome refuses this decision")


class CompetenceUpdate(BaseModel):
    """The skill's own evidence for this agent after the outcome (Beta(alpha, beta) counts and their mean), and the
    competence routing now uses. Routing shrinks the counts toward the parent skill, the mode and the agent's
    overall record (kappa pseudo-counts), so with little evidence `competence` moves less than `mean` does."""

    skill_id: str
    alpha: Figure = Field(description="successes + 1 on this skill (fractional: weighted by the step's demand)")
    beta: Figure = Field(description="failures + 1 on this skill")
    mean: Figure = Field(description="alpha / (alpha + beta), before shrinkage toward the parent, mode and agent")
    competence: Figure | None = Field(
        default=None,
        description=(
            "the shrunk posterior mean route_step and consult_handbook now use for this agent and skill (null when"
            " another process changed the handbook meanwhile: consult_handbook shows it)"
        ),
    )


class OutcomeResult(BaseModel):
    decision_id: str
    agent_id: str
    error_class: ErrorClass
    reward: float | None
    cost_usd: Figure | None
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
    latency_s: Figure = 0.0
    cost_usd: Figure | None = None


class RankedAgent(BaseModel):
    """A candidate as delegate shows it; route_step shows the full breakdown (interval, evidence, contributions)."""

    agent_id: str
    utility: Figure
    quality: Figure
    expected_cost_usd: Figure | None


class Routing(BaseModel):
    """How delegate routed the step. Its decision ids are the result's `decision_id` and `tried`: after a fallback
    the answering agent's decision is not the routed one."""

    strategy: Literal["mean", "thompson"]
    lambda_: float
    skills: list[UsedSkill] = Field(description="the skill weights used (empty: agent or mode level)")
    skills_source: str = Field(description=SKILLS_SOURCE)
    granularity: str | None = _granularity()
    candidates: list[RankedAgent]
    excluded: dict[str, list[str]] = Field(description="why -> the agents left out for that reason")
    c_ref_usd: Figure | None = Field(description="reference cost that makes lambda dimensionless")
    session_spend_usd: Figure | None = None
    handbook_version: int

    @classmethod
    def of(cls, decision: RouteDecision) -> Routing:
        excluded: dict[str, list[str]] = defaultdict(list)
        for exclusion in decision.excluded:  # one reason (no connection settings...) often covers many agents
            excluded[exclusion.reason].append(exclusion.agent_id)
        return cls(
            strategy=decision.strategy,
            lambda_=decision.lambda_,
            skills=decision.skills,
            skills_source=decision.skills_source,
            granularity=decision.granularity,
            candidates=[RankedAgent.model_validate(c, from_attributes=True) for c in decision.candidates],
            excluded=dict(excluded),
            c_ref_usd=decision.c_ref_usd,
            session_spend_usd=decision.session_spend_usd,
            handbook_version=decision.handbook_version,
        )


class DelegateResult(BaseModel):
    decision_id: str = Field(description="report the outcome of this answer with record_outcome(decision_id)")
    agent_id: str
    answer: str | None
    error_class: str | None = Field(default=None, description="'task' when the agent could not do the step")
    tried: list[Attempt]
    cost_usd: Figure | None = Field(description="cost of the answering call; null = unknown (never a silent 0)")
    cost_source: str
    total_cost_usd: Figure | None = Field(
        description="all tries and the judge's call together; null when any cost is unknown"
    )
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: Figure
    warnings: list[str] = Field(default_factory=list)
    routing: Routing
    judge_agent_id: str | None = Field(default=None, description="the configured judge (agents.toml [judge]), if any")
    judge_score: Figure | None = Field(default=None, description="the judge's raw score 0..1; null = not judged")
    judged_reward: float | None = Field(
        default=None, description="the reward the judge recorded for decision_id (score, or 0/1 by threshold)"
    )
    judge_cost_usd: Figure | None = Field(default=None, description="the judge's own call (in the session's spend)")
    reported_by: Literal["judge"] | None = Field(
        default=None,
        description="'judge': the outcome is recorded, do not call record_outcome (a different report is a "
        "Conflict); null: report it yourself",
    )
