"""What callers hand the Handbook: its settings, a step to route, a call to delegate, an outcome to record.

Plain frozen dataclasses, kept apart from the service so the server, the tools and the evaluation can build them
without reading how they are served; check_amount bounds the amounts they carry as the MCP tools declare them.
(Not named requests.py: a folder on sys.path holding that name would shadow the HTTP library litellm imports.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from skillorchestra.handbook.arrays import DEFAULT_KAPPA
from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import MAX_SECONDS, MAX_SEED, MAX_TOKENS, MAX_USD, ErrorClass, SkillDemand
from skillorchestra.handbook.router import Strategy


@dataclass(frozen=True)
class HandbookSettings:
    kappa: float = DEFAULT_KAPPA  # shrinkage strength toward the parent level, in pseudo-observations
    forgetting: float | None = None  # gamma in (0, 1): exponential forgetting per update, None = off
    decision_ttl_s: float = 86_400.0
    store_step_text: bool = True


@dataclass(frozen=True)
class RouteRequest:
    text: str
    skills: Sequence[SkillDemand] | None = None
    mode: str | None = None
    lambda_: float = 0.1
    strategy: Strategy = "mean"
    allowed_agents: Sequence[str] | None = None
    max_cost_usd: float | None = None
    session_id: str | None = None
    budget_usd: float | None = None
    top_k: int = 5
    seed: int | None = None
    unavailable: dict[str, str] | None = None  # agent_id -> reason (open circuit breakers)
    prompt_extra_chars: int = 0  # sent to the agent beside the text (delegate's context): billed, so costed
    named_agent: str | None = None  # delegate(agent_id=...): refusals are worded around it, not the others
    orchestrator: str | None = None  # inferred skills are read at the depth stored for it, as consult shows them
    # delegate's own routing: the decision is written claimed, so a server killed mid-call leaves a decision nobody
    # can carry out again (QA: a new server called the agent a second time) and reports wait as for any claim
    claimed: bool = False


@dataclass(frozen=True)
class DelegateRequest:
    route: RouteRequest
    context: str | None = None
    agent_id: str | None = None
    max_tokens: int | None = None
    timeout_s: float = 45.0
    decision_id: str | None = None  # carry out this route_step decision instead of routing again


@dataclass(frozen=True)
class OutcomeReport:
    decision_id: str
    reward: float | None = None
    success: bool | None = None
    error_class: ErrorClass = "task"
    cost_usd: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None


AMOUNT_LIMITS = {
    "max_cost_usd": MAX_USD,
    "budget_usd": MAX_USD,
    "cost_usd": MAX_USD,
    "prompt_tokens": MAX_TOKENS,
    "completion_tokens": MAX_TOKENS,
    "latency_s": MAX_SECONDS,
    "seed": MAX_SEED,
}


def check_amount(name: str, value: float | None) -> None:
    """Costs, tokens, latencies, budgets and seeds: absent, or a finite number within the bounds the MCP tools
    declare, so a library caller cannot store what a tool call would have been refused (or crash on a huge int)."""
    limit = AMOUNT_LIMITS[name]
    if value is not None and not (0 <= value <= limit and math.isfinite(value)):
        shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
        raise InvalidInput(name, value, f"a finite number in [0, {shown}]")
