"""Handbook.route: decide which agent takes a step and write the decision (route_step's and delegate's routing).

The scoring itself is router.py's (pure numpy) and the MCP adapter is tools/routing.py; this module checks the
request, prices the step, applies the caps and the session budget, and stores what was decided so its outcome can
be recorded against it (named for deciding so it reads apart from those two).
"""

from __future__ import annotations

import contextlib
import uuid

import numpy as np

from skillorchestra.handbook import costing
from skillorchestra.handbook.demands import check_mode, check_text, columns, granular, source_at_level, step_demands
from skillorchestra.handbook.eligibility import eligibility, unusable, why_no_agent
from skillorchestra.handbook.errors import InvalidInput, NotFound, Unroutable
from skillorchestra.handbook.handbook_base import HandbookBase
from skillorchestra.handbook.length import step_shift
from skillorchestra.handbook.models import MAX_LAMBDA
from skillorchestra.handbook.request_types import RouteRequest, check_amount
from skillorchestra.handbook.results import Candidate, RouteDecision, UsedSkill
from skillorchestra.handbook.router import route as score_agents  # the method below is route too


class RouteMixin(HandbookBase):
    def route(self, request: RouteRequest) -> RouteDecision:
        check_text(request.text)
        if not 0 <= request.lambda_ <= MAX_LAMBDA:  # NaN fails this too
            raise InvalidInput("lambda_", request.lambda_, f"a number in [0, {MAX_LAMBDA:g}]")
        if request.top_k < 1:
            raise InvalidInput("top_k", request.top_k, "an integer >= 1")
        if request.strategy not in ("mean", "thompson"):
            raise InvalidInput("strategy", request.strategy, "'mean' or 'thompson'")
        for name in ("max_cost_usd", "budget_usd", "seed"):
            check_amount(name, getattr(request, name))
        if request.budget_usd is not None and request.session_id is None:  # it read as a cap of this step alone
            raise InvalidInput(
                "budget_usd",
                request.budget_usd,
                "a session_id beside it (a budget caps a session's total spend; max_cost_usd caps one step)",
            )
        arrays = self.arrays()
        if not arrays.agent_ids:
            raise Unroutable("the handbook has no agents: add one with upsert_agent or import a handbook")
        check_mode(arrays, request.mode)
        if request.allowed_agents is not None:
            for agent_id in request.allowed_agents:
                if agent_id not in arrays.agent_index:
                    raise NotFound("agent (allowed_agents)", agent_id, arrays.agent_ids)
        matched, source = step_demands(self.matcher, arrays, request.text, request.skills, request.mode)
        demands, level_mode, granularity = granular(self.store, arrays, matched, request)
        cols, weights, labels = columns(arrays, demands, level_mode)
        tokens = float(costing.prompt_tokens([request.text])[0]) + request.prompt_extra_chars / costing.CHARS_PER_TOKEN
        cost, known, c_ref = costing.step_costs(arrays, tokens, cols, weights)
        budgeted = request.session_id is not None and request.budget_usd is not None
        # A budgeted step reads the session's spend and writes its decision (its reservation) in one transaction:
        # parallel steps of a session each see the others' reservations, so together they cannot overspend the
        # budget. Everything that takes another lock (arrays() the handbook's, the matchers their own before the
        # file's) ran above: inside, only the file is read and written.
        with self.store.write() if budgeted else contextlib.nullcontext():
            # each earlier step holds what it was charged when admitted (its charged_usd: property QA found long
            # steps of unknown cost, admitted at $0.08 each, held at c_ref's $0.001, so 20 passed a $0.50 budget);
            # c_ref only for a decision older than that column
            spend = self.store.session_spend(request.session_id, self.clock(), c_ref) if request.session_id else None
            unknown_charge = costing.unknown_charge(cost, known, arrays.enabled, c_ref)
            # an agent the caller names (agent_id, or allowed_agents of one) is not second-guessed by a mode only
            # inferred; a broader allowed_agents keeps the rule among them (review: it let a search tool take sums)
            allowed = request.allowed_agents
            one_named = allowed is not None and len(set(allowed)) == 1 and not request.mode
            # the skills matched, not their ancestors, decide the step's modes: coarsening never widens them
            step_modes = frozenset() if one_named else arrays.step_modes(request.mode, matched)
            unusable_agents = unusable(arrays, request.mode, step_modes, any(w > 0 for _, w in matched))
            eligible, excluded = eligibility(arrays, request, unusable_agents, cost, known, spend, c_ref)
            if not eligible.any():
                why = next((e.reason for e in excluded if e.agent_id == request.named_agent), None)
                if why is not None:  # the caller asked for one agent: why it cannot take the step, not the others
                    raise Unroutable(f"agent {request.named_agent} is unavailable: {why}")
                raise Unroutable(why_no_agent(excluded, budgeted))
            shift = step_shift(arrays, request.text)
            scores = score_agents(
                arrays.route_inputs(cols, weights, cost, c_ref, eligible, shift),
                request.lambda_,
                request.strategy,
                # only thompson draws; seeding a generator from OS entropy costs ~15 us per mean route
                np.random.default_rng(request.seed) if request.strategy == "thompson" else None,
            )
            candidates = [
                Candidate(
                    agent_id=arrays.agent_ids[i],
                    utility=float(scores.utility[i]),
                    quality=float(scores.quality[i]),
                    ci90=(float(scores.ci_low[i]), float(scores.ci_high[i])),
                    ci_widened_by=float(arrays.ci_scale[i]),
                    n=float(arrays.evidence[i, cols] @ weights),
                    expected_cost_usd=float(cost[i]) if known[i] else None,
                    contributions={label: float(v) for label, v in zip(labels, scores.contributions[i], strict=True)},
                    length_shift=0.0 if shift is None else float(shift[i]),
                )
                for i in scores.ranking[: request.top_k]
            ]
            now = self.clock()
            decision = RouteDecision(
                decision_id=uuid.uuid4().hex,
                agent_id=arrays.agent_ids[scores.chosen],
                explored=scores.explored,
                propensity=scores.propensity,
                strategy=request.strategy,
                lambda_=request.lambda_,
                skills=[UsedSkill(skill_id=s, weight=w) for s, w in demands],
                skills_source=source if demands else source_at_level(level_mode, source),
                granularity=granularity,
                candidates=candidates,
                excluded=excluded,
                c_ref_usd=c_ref or None,
                session_spend_usd=spend,
                handbook_version=self.store.current_version(),
                expires_at=now + self.settings.decision_ttl_s,
            )
            self.store.insert_decision(
                {
                    "id": decision.decision_id,
                    "version": decision.handbook_version,
                    "created_at": now,
                    "expires_at": decision.expires_at,
                    "session_id": request.session_id,
                    "budget_usd": request.budget_usd,
                    "agent_id": decision.agent_id,
                    # the mode the caller named only: the log is learning data (learning/events.py groups steps by
                    # it), and a step read at an orchestrator's depth 0 shows its record in its candidates (review)
                    "mode": request.mode,
                    "skills": [[s, w] for s, w in demands],
                    "strategy": request.strategy,
                    "lambda": request.lambda_,
                    "propensity": decision.propensity,
                    "explored": int(decision.explored),
                    "expected_cost_usd": float(cost[scores.chosen]) if known[scores.chosen] else None,
                    # what the budget holds for it: an unknown cost as costing.charge_unknown charged it, except a
                    # charge of 0 (no agent's cost known: c_ref 0), which a later reader charges its own c_ref (review)
                    "charged_usd": float(cost[scores.chosen]) if known[scores.chosen] or unknown_charge > 0 else None,
                    "unknown_charge_usd": unknown_charge or None,  # for delegate's fallbacks and judge on this step
                    "text": request.text if self.settings.store_step_text else None,
                    "candidates": [c.model_dump() for c in candidates],
                    "excluded": [e.model_dump() for e in excluded],
                    "session_spend_usd": spend,
                    "step_tokens": tokens,
                    "claimed_at": now if request.claimed else None,
                    "granularity": granularity,
                }
            )
            return decision
