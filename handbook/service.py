"""The Handbook service: consult, route, record and edit, over the store, the arrays and the router.

It owns the in-memory arrays the router scores and keeps them fresh: its own state-changing writes mark them
stale, and SQLite's data_version tells it when another process (the CLI, another server) committed.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from skillorchestra.handbook import costing
from skillorchestra.handbook.arrays import (
    DEFAULT_KAPPA,
    MODE_PREFIX,
    ROOT_SKILL,
    HandbookArrays,
    Patch,
    build_arrays,
    serves_step,
)
from skillorchestra.handbook.errors import (
    Conflict,
    Expired,
    InvalidInput,
    NotFound,
    Unroutable,
    first_problem,
    known_hint,
    named,
    utc_text,
)
from skillorchestra.handbook.inference import Matcher, begin_matcher_warm_up, live_demands, on_live, warm_up_matcher
from skillorchestra.handbook.length import step_shift
from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.models import (
    DEFAULT_MODE,
    INFRASTRUCTURE_ERRORS,
    MAX_LAMBDA,
    MAX_SECONDS,
    MAX_SEED,
    MAX_SKILL_DEPTH,
    MAX_TOKENS,
    MAX_USD,
    TEXT_MAX,
    Agent,
    ErrorClass,
    Mode,
    Skill,
    SkillDemand,
    visible,
)
from skillorchestra.handbook.paging import (
    PAGE_BYTES_MAX,
    decode_offset_cursor,
    encode_offset_cursor,
    json_bytes,
    key_after,
    key_page,
    leading_within,
    query_digest,
)
from skillorchestra.handbook.posterior import normal_ci90
from skillorchestra.handbook.results import (
    AgentPage,
    AgentSkillStat,
    Candidate,
    CompetenceUpdate,
    ConsultResult,
    Exclusion,
    OutcomeResult,
    Removed,
    RouteDecision,
    SkillCard,
    SkillPage,
    UsedSkill,
)
from skillorchestra.handbook.router import Strategy, route, shifted
from skillorchestra.handbook.store import HandbookStore, OutcomeEffect

INFERRED_SKILLS = 3
TEXT_FIELDS = frozenset({"description", "indicators", "examples", "insights"})  # no derived number reads them
EditedT = TypeVar("EditedT", Agent, Skill, Mode)


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


class Handbook:
    def __init__(
        self,
        store: HandbookStore,
        settings: HandbookSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        matcher: Matcher | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or HandbookSettings()
        self.clock = clock
        self.matcher = matcher or LexicalMatcher(store)
        self._lock = threading.RLock()
        self._record_lock = threading.Lock()  # a record's write and its patch of the arrays, in turn (see record)
        # generations of the store made by edits of texts alone (see _edit): no derived number changed in them
        self._texts_only: set[int] = set()
        self._arrays: HandbookArrays | None = None
        self._arrays_key: tuple[int, int] | None = None
        # outcomes recorded since the arrays were derived, applied to a copy of their raw evidence: derived on
        # the next read, so a burst of records derives the posteriors once instead of once per record
        self._pending: Patch | None = None
        self._pending_key: tuple[int, int] | None = None
        # the file's data_version at the last arrays() read: whether another process committed since
        self._read_data_version: int | None = None

    # -- the cached arrays -------------------------------------------------------------------------------

    def arrays(self) -> HandbookArrays:
        with self._lock:
            key = (self.store.data_version(), self.store.generation)
            if self._pending is not None and self._numbers_unchanged(self._pending_key, key):
                self._arrays, self._arrays_key = self._pending.derived(), key
            self._pending = None
            if self._arrays is None or not self._numbers_unchanged(self._arrays_key, key):
                self._arrays = self._derive()
            self._arrays_key, self._read_data_version = key, key[0]
            return self._arrays

    def _numbers_unchanged(self, since: tuple[int, int] | None, now: tuple[int, int]) -> bool:
        """Whether the file went from state `since` to `now` through edits of texts alone, if at all: then the
        arrays of `since` still hold (re-deriving took 3.5 s at 200 agents x 2,000 skills for a new description).
        Another process's commit changes data_version, which is never carried over."""
        if since is None or since[0] != now[0] or since[1] > now[1]:
            return False
        return all(generation in self._texts_only for generation in range(since[1] + 1, now[1] + 1))

    def _derive(self) -> HandbookArrays:
        """The arrays from the live tables, read as plain rows (a validated model per row took 7.5 s at 356,000
        competence rows). The cyclic collector waits meanwhile: the rows are a million new tuples, and each
        collection they set off walked all those made before (it freed nothing, and took a sixth of the time)."""
        with _collector_paused():
            competence, costs = self.store.evidence_rows()
            return build_arrays(
                self.store.modes(),
                self.store.skills(),
                self.store.agents(),
                competence,  # type: ignore[arg-type]  # the fields of Competence, read by name alike
                costs,  # type: ignore[arg-type]  # the fields of CostStats
                kappa=self.settings.kappa,
                length_effect=self.store.length_effect(),
            )

    def _competence_now(self, agent_id: str, skill_ids: list[str], derive: bool = False) -> list[float | None]:
        """The competence routing will use for these cells, outcomes queued in the patch included (the patch
        computes the agent's row alone). When the arrays are not current: derived again after this process's own
        edits (the next read would derive them anyway; QA: an unrelated upsert_mode made it null), else (another
        process wrote since) None unless `derive` (a repeated report: rare): deriving at every record made every
        record of two servers sharing a file re-derive the whole handbook."""
        current = (self.store.data_version(), self.store.generation)
        if self._pending is not None and self._numbers_unchanged(self._pending_key, current):
            return self._pending.competence(agent_id, skill_ids)
        if self._pending is None and self._arrays is not None and self._numbers_unchanged(self._arrays_key, current):
            return self._arrays.competence(agent_id, skill_ids)
        # never read in this process (its first report: QA), or read since no other process wrote
        own_edits_only = self._read_data_version in (None, current[0])
        if derive or own_edits_only:
            return self.arrays().competence(agent_id, skill_ids)
        return [None] * len(skill_ids)

    def _patch_arrays(self, effect: OutcomeEffect) -> None:
        """Apply a recorded outcome to the cached arrays' evidence in place of rereading the whole handbook.

        Valid only when nothing else changed the file's numbers since the arrays (or the last queued outcome)
        were current; otherwise the patch is dropped and the next read rebuilds from the file."""
        last = self._pending_key if self._pending is not None else self._arrays_key
        data_version, generation = self.store.data_version(), self.store.generation
        if self._arrays is None or not self._numbers_unchanged(last, (data_version, generation - 1)):
            self._pending, self._arrays_key = None, None
            return
        if effect.competence or effect.costs:  # an outage that cost nothing changes no cell
            self._pending = self._pending or Patch(self._arrays)
            if not self._pending.add(effect.competence, effect.costs):
                self._pending, self._arrays_key = None, None
                return
        if self._pending is None:
            self._arrays_key = (data_version, generation)
        else:
            self._pending_key = (data_version, generation)

    # -- skill demands -----------------------------------------------------------------------------------

    def _check_text(self, text: str) -> None:
        if not visible(text):  # spaces, NULs or zero-width characters alone describe no step
            raise InvalidInput("text", text, "a non-empty description of the step")
        if len(text) > TEXT_MAX:
            raise InvalidInput("text", f"<{len(text)} characters>", f"at most {TEXT_MAX} characters")

    def _check_mode(self, arrays: HandbookArrays, mode: str | None) -> None:
        if mode is not None and mode not in arrays.mode_index:
            raise NotFound("mode", mode, arrays.mode_ids)

    def validate_demands(self, arrays: HandbookArrays, demands: Sequence[SkillDemand]) -> list[tuple[str, float]]:
        """Known skill ids, non-negative weights with a positive sum; returns weights normalised to 1."""
        for position, demand in enumerate(demands):
            field = f"skills[{position}].skill_id"
            if demand.skill_id == ROOT_SKILL:  # shown in consult's rows and contributions, so a model tries it
                raise InvalidInput(
                    field, demand.skill_id, "a skill id: '*' is an agent's overall record (leave skills out)"
                )
            if demand.skill_id not in arrays.skill_index and demand.skill_id in arrays.mode_index:
                raise InvalidInput(
                    field, demand.skill_id, f"a skill id: {demand.skill_id!r} is a mode (pass it as mode)"
                )
            if demand.skill_id not in arrays.skill_index:
                raise NotFound(f"skill ({field})", demand.skill_id, arrays.skill_ids)
            if not math.isfinite(demand.weight) or demand.weight < 0:
                raise InvalidInput(f"skills[{position}].weight", demand.weight, "a finite number >= 0")
        top = max((demand.weight for demand in demands), default=0.0)
        if top <= 0:
            raise InvalidInput("skills", [d.model_dump() for d in demands], "weights that sum to a positive number")
        merged: dict[str, float] = {}
        for demand in demands:  # scaled by the largest first: weights near the float maximum would sum to inf
            merged[demand.skill_id] = merged.get(demand.skill_id, 0.0) + demand.weight / top
        total = sum(merged.values())
        return [(skill, weight / total) for skill, weight in merged.items() if weight > 0]

    def begin_warm_up(self) -> None:
        """Mark the matcher as loading before warm_up runs on another thread: a step arriving first must not start
        loading the model itself (it waited 4 s) nor see it loaded for consult and not for route_step (QA)."""
        begin_matcher_warm_up(self.matcher)

    def warm_up(self) -> str:
        """Derive the routing arrays and load the skill matcher now (a server just started), not on the first step;
        says what is ready. The matcher first: its warm-up always ends its loading mark, even when it fails, where
        a failed derivation before it left every later step "still loading" (review)."""
        ready = warm_up_matcher(self.matcher)
        self.arrays()
        return ready

    def infer_skills(
        self, text: str, mode: str | None, top_k: int = INFERRED_SKILLS
    ) -> tuple[list[tuple[str, float]], str]:
        """Skill weights for a step, and which matcher found them."""
        return self.matcher.infer(text, mode, top_k)

    def _demands(
        self, arrays: HandbookArrays, text: str, skills: Sequence[SkillDemand] | None, mode: str | None
    ) -> tuple[list[tuple[str, float]], str]:
        if skills is not None:  # given, even empty: validated (an empty list has no positive weight)
            return self.validate_demands(arrays, skills), "client"
        return self._inferred(arrays, text, mode, INFERRED_SKILLS)

    def _inferred(
        self, arrays: HandbookArrays, text: str, mode: str | None, top_k: int
    ) -> tuple[list[tuple[str, float]], str]:
        return live_demands(self.matcher, text, mode, top_k, arrays.skill_index)

    def _columns(
        self, arrays: HandbookArrays, demands: list[tuple[str, float]], mode: str | None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if demands:
            cols = np.array([arrays.column_of_skill(s) for s, _ in demands])
            return cols, np.array([w for _, w in demands]), [s for s, _ in demands]
        if mode is not None:
            # labelled as record_outcome's `updated` and the export name the record: "@<mode>" (review: "mode:M")
            return np.array([arrays.column_of_mode(mode)]), np.ones(1), [f"{MODE_PREFIX}{mode}"]
        return np.array([arrays.root_column]), np.ones(1), [ROOT_SKILL]

    # -- consult -----------------------------------------------------------------------------------------

    def consult(
        self,
        text: str,
        mode: str | None = None,
        top_k: int = 5,
        orchestrator: str | None = None,
        cursor: str | None = None,
        unavailable: dict[str, str] | None = None,
        page_size: int = 50,
        agents_per_skill: int | None = None,
    ) -> ConsultResult:
        """The step's skills and, for each, its agents by competence: at most `agents_per_skill` of them (None:
        all), since every row costs the reading model tokens (11 agents x 4 skills were 70% of a task's)."""
        self._check_text(text)
        version = self.store.current_version()
        stamp = self.store.change_stamp()
        arrays = self.arrays()
        self._check_mode(arrays, mode)
        # one inference for both: each card's weight is the one route_step would give its skill (QA: consult's five
        # skills renormalised read apart from route_step's three), and the skills beyond route_step's show 0
        inferred, source = self.matcher.infer(text, mode, max(top_k, INFERRED_SKILLS))
        routed = dict(on_live(self.matcher, inferred[:INFERRED_SKILLS], arrays.skill_index))
        demands = [(s, routed.get(s, 0.0)) for s, _ in on_live(self.matcher, inferred[:top_k], arrays.skill_index)]
        demands, level_mode, granularity = self._at_depth(arrays, demands, mode, orchestrator)
        # the rows' order follows competence, which an outcome or an edit changes, and the skills inferred, which
        # change when the semantic model finishes loading after start: a cursor of another state or of other skills
        # would skip and repeat rows (QA, both), so they are part of what a cursor must match
        query = query_digest(text, mode, top_k, orchestrator, version, agents_per_skill, stamp, demands)
        offset = decode_offset_cursor(cursor, query)
        cols, weights, labels = self._columns(arrays, demands, level_mode)
        step_modes = arrays.step_modes(mode, routed.items())  # route_step's: `unavailable` reads as its exclusions
        tokens = np.repeat(costing.prompt_tokens([text]), len(cols))
        per_skill_cost = costing.expected_costs(arrays, tokens, cols[:, None], np.ones((len(cols), 1)))
        lo, hi = normal_ci90(arrays.mean, arrays.var)
        shift = step_shift(arrays, text)
        rows: list[AgentSkillStat] = []
        not_shown = 0
        for k, (col, label) in enumerate(zip(cols, labels, strict=True)):
            # ranked as route_step scores competence: with this step's length shift
            order = np.argsort(-shifted(arrays.mean[:, col], shift), kind="stable")
            # route_step's rule; the agents it leaves out are listed in `unavailable`, so "none" and "none usable"
            # read apart
            usable = [i for i in order if arrays.enabled[i] and serves_step(arrays.agent_modes[i], step_modes)]
            not_shown += len(usable) - len(usable[:agents_per_skill])
            for i in usable[:agents_per_skill]:
                agent_cost = None if np.isnan(per_skill_cost[k, i]) else per_skill_cost[k, i]
                rows.append(
                    AgentSkillStat(
                        agent_id=arrays.agent_ids[i],
                        skill_id=label,
                        mean=float(arrays.mean[i, col]),
                        ci90=(float(lo[i, col]), float(hi[i, col])),
                        n=float(arrays.evidence[i, col]),
                        expected_cost_usd=None if agent_cost is None else float(agent_cost),
                        length_shift=0.0 if shift is None else float(shift[i]),
                    )
                )
        page = rows[offset : offset + page_size]
        next_cursor = encode_offset_cursor(offset + page_size, query) if offset + page_size < len(rows) else None
        shown = self._skill_texts(arrays, [s for s, _ in demands])
        cards = [_card(shown[s], w, PAGE_BYTES_MAX // len(demands)) for s, w in demands]
        return ConsultResult(
            skills=cards,
            agents=page,
            insights=self._insights(level_mode, [shown[s].mode for s, _ in demands]),
            skills_source=source if demands else _level(level_mode, source),  # as route_step words it (QA)
            granularity=granularity,
            unavailable={**_unusable(arrays, mode, step_modes, bool(routed)), **(unavailable or {})},
            handbook_version=version,
            next_cursor=next_cursor,
            agents_not_shown=not_shown,
        )

    def _skill_texts(self, arrays: HandbookArrays, skill_ids: list[str]) -> dict[str, Skill]:
        """The skills as stored now: the arrays' copies keep the texts they were derived with, and outlive an edit
        of texts alone (see _edit). Read by id, only those shown (a dict of every skill cost 4 ms at 20,000)."""
        shown = {}
        for skill_id in skill_ids:
            stored = self.store.skill(skill_id)
            shown[skill_id] = stored if stored is not None else arrays.skills[arrays.skill_index[skill_id]]
        return shown

    def _granular(
        self, arrays: HandbookArrays, matched: list[tuple[str, float]], request: RouteRequest
    ) -> tuple[list[tuple[str, float]], str | None, str | None]:
        """route_step's skills at its orchestrator's depth: only inferred ones (skills the caller names are its own
        choice), with the mode the step is read in and the granularity's wording (None: no orchestrator named)."""
        if request.orchestrator is None:
            return matched, request.mode, None
        if request.skills is not None:
            return matched, request.mode, "as given (skills named by the caller are not coarsened)"
        return self._at_depth(arrays, matched, request.mode, request.orchestrator)

    def _at_depth(
        self, arrays: HandbookArrays, demands: list[tuple[str, float]], mode: str | None, orchestrator: str | None
    ) -> tuple[list[tuple[str, float]], str | None, str]:
        """The step's skills at the depth stored for this orchestrator, the mode the step is then read in, and the
        granularity's wording. Depth 0 reads the record of the step's mode (the one named, else the one most of its
        skills' weight is in), not the agents' overall one (QA: it showed '*' rows and no mode insights)."""
        coarse, granularity = self._coarsen(arrays, demands, orchestrator)
        if coarse or mode or not demands:
            return coarse, mode, granularity
        heaviest = arrays.heaviest_modes(demands)
        return [], next(iter(heaviest)) if len(heaviest) == 1 else None, granularity

    def _coarsen(
        self, arrays: HandbookArrays, demands: list[tuple[str, float]], orchestrator: str | None
    ) -> tuple[list[tuple[str, float]], str]:
        """Map skills to their ancestors at the depth selected for this orchestrator (if one was stored)."""
        if orchestrator is None:
            return demands, "full"
        selections = self.store.selections()
        if orchestrator not in selections:
            hint = known_hint(orchestrator, list(selections)) if selections else "the handbook stores none"
            return demands, f"full (no selection stored for {orchestrator!r}; {hint})"
        depth = selections[orchestrator]
        if depth <= 0:
            return [], f"depth 0 for {orchestrator!r} (mode level)"
        by_id = {s.id: s for s in arrays.skills}
        merged: dict[str, float] = {}
        for skill_id, weight in demands:
            chain = [skill_id]
            while by_id[chain[-1]].parent_id in by_id and len(chain) < MAX_SKILL_DEPTH:
                chain.append(by_id[chain[-1]].parent_id)  # type: ignore[arg-type]
            ancestor = chain[max(len(chain) - depth, 0)]
            merged[ancestor] = merged.get(ancestor, 0.0) + weight
        return list(merged.items()), f"depth {depth} for {orchestrator!r}"

    def _insights(self, mode: str | None, skill_modes: list[str]) -> list[str]:
        wanted = [mode] if mode else list(dict.fromkeys(skill_modes))
        modes = {m.id: m for m in self.store.modes()}
        return [f"[{m}] {line}" for m in wanted if m in modes for line in modes[m].insights]

    # -- route -------------------------------------------------------------------------------------------

    def route(self, request: RouteRequest) -> RouteDecision:
        self._check_text(request.text)
        if not 0 <= request.lambda_ <= MAX_LAMBDA:  # NaN fails this too
            raise InvalidInput("lambda_", request.lambda_, f"a number in [0, {MAX_LAMBDA:g}]")
        if request.top_k < 1:
            raise InvalidInput("top_k", request.top_k, "an integer >= 1")
        if request.strategy not in ("mean", "thompson"):
            raise InvalidInput("strategy", request.strategy, "'mean' or 'thompson'")
        for name in ("max_cost_usd", "budget_usd", "seed"):
            _check_amount(name, getattr(request, name))
        if request.budget_usd is not None and request.session_id is None:  # it read as a cap of this step alone
            raise InvalidInput(
                "budget_usd",
                request.budget_usd,
                "a session_id beside it (a budget caps a session's total spend; max_cost_usd caps one step)",
            )
        arrays = self.arrays()
        if not arrays.agent_ids:
            raise Unroutable("the handbook has no agents: add one with upsert_agent or import a handbook")
        self._check_mode(arrays, request.mode)
        if request.allowed_agents is not None:
            for agent_id in request.allowed_agents:
                if agent_id not in arrays.agent_index:
                    raise NotFound("agent (allowed_agents)", agent_id, arrays.agent_ids)
        matched, source = self._demands(arrays, request.text, request.skills, request.mode)
        demands, level_mode, granularity = self._granular(arrays, matched, request)
        cols, weights, labels = self._columns(arrays, demands, level_mode)
        tokens = float(costing.prompt_tokens([request.text])[0]) + request.prompt_extra_chars / costing.CHARS_PER_TOKEN
        cost, known, c_ref = costing.step_costs(arrays, tokens, cols, weights)
        budgeted = request.session_id is not None and request.budget_usd is not None
        # A budgeted step reads the session's spend and writes its decision (its reservation) in one transaction:
        # parallel steps of a session each see the others' reservations, so together they cannot overspend the
        # budget. Everything that takes another lock (arrays() the handbook's, the matchers their own before the
        # file's) ran above: inside, only the file is read and written.
        with self.store.write() if budgeted else contextlib.nullcontext():
            spend = self.store.session_spend(request.session_id, self.clock(), c_ref) if request.session_id else None
            # an agent the caller names (agent_id, or allowed_agents of one) is not second-guessed by a mode only
            # inferred; a broader allowed_agents keeps the rule among them (review: it let a search tool take sums)
            named = request.allowed_agents is not None and len(set(request.allowed_agents)) == 1 and not request.mode
            # the skills matched, not their ancestors, decide the step's modes: coarsening never widens them
            step_modes = frozenset() if named else arrays.step_modes(request.mode, matched)
            unusable = _unusable(arrays, request.mode, step_modes, any(w > 0 for _, w in matched))
            eligible, excluded = self._eligibility(arrays, request, unusable, cost, known, spend)
            if not eligible.any():
                named = next((e.reason for e in excluded if e.agent_id == request.named_agent), None)
                if named is not None:  # the caller asked for one agent: why it cannot take the step, not the others
                    raise Unroutable(f"agent {request.named_agent} is unavailable: {named}")
                raise Unroutable(_why_no_agent(excluded, budgeted))
            shift = step_shift(arrays, request.text)
            scores = route(
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
                skills_source=source if demands else _level(level_mode, source),
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
                    "mode": level_mode,  # a step read at mode level files its outcome under that mode's record
                    "skills": [[s, w] for s, w in demands],
                    "strategy": request.strategy,
                    "lambda": request.lambda_,
                    "propensity": decision.propensity,
                    "explored": int(decision.explored),
                    "expected_cost_usd": float(cost[scores.chosen]) if known[scores.chosen] else None,
                    "text": request.text if self.settings.store_step_text else None,
                    "candidates": [c.model_dump() for c in candidates],
                    "excluded": [e.model_dump() for e in excluded],
                    "session_spend_usd": spend,
                    "step_tokens": tokens,
                    "claimed_at": now if request.claimed else None,
                }
            )
            return decision

    def _eligibility(
        self,
        arrays: HandbookArrays,
        request: RouteRequest,
        unusable: dict[str, str],
        cost: np.ndarray,
        known: np.ndarray,
        spend: float | None,
    ) -> tuple[np.ndarray, list[Exclusion]]:
        allowed = set(request.allowed_agents) if request.allowed_agents is not None else None
        remaining = None if request.budget_usd is None else request.budget_usd - (spend or 0.0)
        unavailable = request.unavailable or {}
        eligible = np.ones(len(arrays.agent_ids), dtype=bool)
        excluded: list[Exclusion] = []

        def reason_against(i: int, agent_id: str) -> str | None:
            if agent_id in unusable:
                return unusable[agent_id]
            if allowed is not None and agent_id not in allowed:  # QA: delegate(agent_id=X) never sent allowed_agents
                return (
                    f"not the agent_id named ({request.named_agent})"
                    if request.named_agent
                    else "not in allowed_agents"
                )
            if agent_id in unavailable:
                return unavailable[agent_id]
            capped = request.max_cost_usd is not None or remaining is not None
            if capped and not known[i] and cost[i] <= 0:  # c_ref is 0 when no enabled agent's cost is known
                return (
                    "cost unknown and no agent's cost is known to charge instead, so no cap can count this step "
                    "(give the agent input_per_mtok/output_per_mtok, or report cost_usd for its steps)"
                )
            if request.max_cost_usd is not None and cost[i] > request.max_cost_usd:
                return f"{_charged(cost[i], known[i])} exceeds max_cost_usd ${request.max_cost_usd:.6g}"
            if remaining is not None and cost[i] > remaining:
                left = max(remaining, 0)
                return f"{_charged(cost[i], known[i])} exceeds the session's remaining budget ${left:.6g}"
            return None

        for i, agent_id in enumerate(arrays.agent_ids):
            reason = reason_against(i, agent_id)
            if reason is not None:
                eligible[i] = False
                excluded.append(Exclusion(agent_id=agent_id, reason=reason))
        return eligible, excluded

    # -- record ------------------------------------------------------------------------------------------

    def record(self, report: OutcomeReport, *, by_delegate: bool = False) -> OutcomeResult:
        """Apply a step's outcome. `by_delegate`: delegate's own report of the decision it is carrying out, which a
        client's report must wait for (see HandbookStore.record_outcome)."""
        reward = _reward(report)
        for name in CALL_FIGURES:
            _check_amount(name, getattr(report, name))
        decision = self.store.decision(report.decision_id)
        if decision is None:
            raise NotFound("decision", report.decision_id, hint="decision ids come from route_step or delegate")
        payload = {
            "reward": reward,
            "error_class": report.error_class,
            "cost_usd": report.cost_usd,
            "prompt_tokens": report.prompt_tokens,
            "completion_tokens": report.completion_tokens,
            "latency_s": report.latency_s,
        }
        if self.clock() > decision["expires_at"]:
            earlier = self._earlier_report(decision, payload)  # a repeated report stays idempotent after expiry
            if earlier is not None:
                return earlier
            raise Expired(
                f"decision {report.decision_id!r} expired at {utc_text(decision['expires_at'])} (its time to live is "
                "SKILLORCHESTRA_DECISION_TTL seconds); route the step again"
            )
        try:
            effective = _with_call_figures(payload, decision)
        except InvalidInput:  # a retry of a report accepted before this rule (or these figures) stays idempotent
            earlier = self._earlier_report(decision, payload)
            if earlier is None:
                raise
            return earlier
        event = {
            "decision_id": report.decision_id,
            "agent_id": decision["agent_id"],
            "skills": _json(decision["skills"]),
            "mode": decision["mode"],
            "gamma": self.settings.forgetting,
            "forget_by_weight": True,  # gamma ** w per skill (older events forgot by gamma whatever the weight)
            "step_tokens": decision.get("step_tokens"),
            **effective,
        }
        row = {
            "decision_id": report.decision_id,
            "created_at": self.clock(),
            "agent_id": decision["agent_id"],
            "session_id": decision["session_id"],
            **effective,
            "payload": _idempotency_key(payload, decision),  # what the client sent, call figures echoed left out
        }
        try:
            # Written without holding self._lock: the write may wait for another process's lock (a CLI import),
            # and every consult and route of this server reads the arrays under self._lock. The patch checks
            # that this write was the only change since the arrays it patches, else it is dropped and the arrays
            # are derived again. Records of this process write and patch in turn (self._record_lock, which no
            # read takes): two records writing before either patched dropped the patch, and the derivation that
            # reports the competence took 75 ms a record with 8 concurrent clients.
            competence: list[float | None] = []
            deadline = time.monotonic() + self.store.busy_timeout_s  # one busy timeout from arrival (see below)
            with self._queued_record(deadline), self.store.waiting_until(deadline):
                effect = self.store.record_outcome(
                    row, event, decided_under=decision["version"], by_delegate=by_delegate
                )
                # an outcome of a deleted agent writes no event (nor a generation): "patching" it would have
                # declared arrays from before the deletion current, and routed the deleted agent again (QA)
                if effect is not None and not effect.agent_deleted:
                    with self._lock:
                        self._patch_arrays(effect)
                        skill_ids = [c.skill_id for c in effect.competence]
                        competence = self._competence_now(decision["agent_id"], skill_ids)
        except InvalidInput:  # already reported (the store checks inside the write): a repeat, or a conflict
            earlier = self._earlier_report(decision, payload)
            if earlier is None:
                raise
            return earlier
        note, applied = None, effect is not None
        if effect is None:
            note = (
                f"decision made under handbook version {decision['version']}, now {self.store.current_version()}: "
                "the outcome is logged against its version and not applied to the live posteriors"
            )
        elif effect.agent_deleted or (
            not effect.competence and reward is not None and self.agent(decision["agent_id"]) is None
        ):
            note = _deleted_agent_note(decision["agent_id"], again=effect.agent_deleted)
            applied = False
        elif effect.competence:
            note = _deleted_skills_note(_json(decision["skills"]), effect)
        return OutcomeResult(
            decision_id=report.decision_id,
            agent_id=decision["agent_id"],
            error_class=report.error_class,
            reward=reward,
            cost_usd=effective["cost_usd"],
            updated=[
                _update(c.skill_id, c.alpha, c.beta, shrunk)
                for c, shrunk in zip(effect.competence if effect else [], competence, strict=True)
            ],
            duplicate=False,
            applied=applied,
            note=note,
        )

    def withdraw(self, decision_id: str) -> None:
        """Close a decision nobody will carry out or report (its client gave up before it got the decision): it
        expires now and holds none of its session's budget. A no-op once the decision was called or reported."""
        self.store.withdraw_decision(decision_id, self.clock())

    @contextlib.contextmanager
    def _queued_record(self, deadline: float) -> Iterator[None]:
        """Hold the record lock, waiting for this process's other records only until `deadline`: behind a record
        that waits out another process's write lock, the rest give up with the same "database is locked" at the
        same busy timeout, not one after another (QA)."""
        if not self._record_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise sqlite3.OperationalError("database is locked")  # what the store's own wait raises: told as busy
        try:
            yield
        finally:
            self._record_lock.release()

    def _earlier_report(self, decision: dict[str, Any], payload: dict[str, Any]) -> OutcomeResult | None:
        stored = self.store.outcome(decision["id"])
        if stored is None:
            return None
        if _idempotency_key(_json(stored["payload"]), decision) != _json_roundtrip(_idempotency_key(payload, decision)):
            raise Conflict(
                f"decision {decision['id']!r} was already reported with {stored['payload']}; "
                "a decision takes one outcome (delegate's result says reported_by 'judge' when the server's judge "
                "reported it)"
            )
        rows = _json(stored["result"])
        repeat: dict[str, Any] = {
            "decision_id": decision["id"],
            "agent_id": decision["agent_id"],
            "error_class": stored["error_class"],
            "reward": stored["reward"],
            "cost_usd": stored["cost_usd"],
            "duplicate": True,
        }
        # marked on decisions still open when their agent was deleted: the first report came after, logged only
        if decision.get("agent_deleted_at") is not None:  # and says so again (QA: the repeat said "applied")
            note = _deleted_agent_note(decision["agent_id"], again=True)
            return OutcomeResult(**repeat, updated=[], applied=False, note=note)
        with self._lock:  # the competence as routing uses it now (the first report's, unless more came since)
            competence = self._competence_now(decision["agent_id"], [u["skill_id"] for u in rows], derive=True)
        updated = [
            _update(row["skill_id"], row["alpha"], row["beta"], shrunk)
            for row, shrunk in zip(rows, competence, strict=True)
        ]
        return OutcomeResult(**repeat, updated=updated)

    # -- delegated calls ---------------------------------------------------------------------------------

    def note_cancelled(self, decision_id: str, latency_s: float) -> None:
        """A delegated call (an agent's or a judge's) cut off by its request's cancellation: recorded as called, cost
        unknown (the agent may have charged for it), so the decision keeps its expected cost in the session's spend
        and is never called again; not the agent's failure (no outcome)."""
        self.note_call(
            decision_id,
            cost_usd=None,
            cost_source="unknown",
            prompt_tokens=None,
            completion_tokens=None,
            latency_s=latency_s,
            error_class="cancelled",
        )

    def note_call(
        self,
        decision_id: str,
        *,
        cost_usd: float | None,
        cost_source: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        latency_s: float,
        error_class: str | None,
    ) -> None:
        """What a delegated call cost, recorded at once (the session budget sees it before any report). The decision
        waits for its outcome a full time to live from now: the client learns its id only when delegate returns (QA:
        with a TTL shorter than the call, delegate handed back a decision that had already expired)."""
        self.store.note_call(
            decision_id,
            {
                "cost_usd": cost_usd,
                "cost_source": cost_source,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "latency_s": latency_s,
                "error_class": error_class,
            },
            waits_until=self.clock() + self.settings.decision_ttl_s,
        )

    def fallback_decision(
        self,
        decision_id: str,
        agent_id: str,
        role: str = "fallback",
        *,
        expected_cost: float | None = None,
        budget_usd: float | None = None,
        c_ref: float = 0.0,
    ) -> str:
        """A decision for the next candidate after an infrastructure failure (or, with role "judge", for the call
        that grades the answer): same step, skills and session. With `budget_usd`, the session's spend is read and
        the decision written in one transaction, as route_step does, so parallel steps' calls cannot together pass
        the budget: a call whose `expected_cost` (unknown: c_ref) does not fit is refused (Unroutable)."""
        with self.store.write():
            return self._fallback_decision(decision_id, agent_id, role, expected_cost, budget_usd, c_ref)

    def _fallback_decision(
        self,
        decision_id: str,
        agent_id: str,
        role: str,
        expected_cost: float | None,
        budget_usd: float | None,
        c_ref: float,
    ) -> str:
        decision = self.store.decision(decision_id)
        if decision is None:
            raise NotFound("decision", decision_id, hint="decision ids come from route_step or delegate")
        now = self.clock()
        if budget_usd is not None and decision["session_id"] is not None:
            left = budget_usd - self.store.session_spend(decision["session_id"], now, c_ref)
            charged = c_ref if expected_cost is None else expected_cost
            if charged > left:
                what = "expected cost" if expected_cost is not None else "cost unknown, charged c_ref"
                raise Unroutable(f"{what} ${charged:.6g} exceeds the session's remaining budget ${max(left, 0):.6g}")
        new_id = uuid.uuid4().hex
        keys = ("version", "session_id", "mode", "strategy", "lambda", "text", "step_tokens")
        row = {key: decision[key] for key in keys}
        row.update(
            id=new_id,
            created_at=now,
            expires_at=now + self.settings.decision_ttl_s,
            agent_id=agent_id,
            skills=_json(decision["skills"]),
            candidates=_json(decision["candidates"]),
            propensity=None,
            explored=0,
            expected_cost_usd=expected_cost,
            parent_decision_id=decision_id,
            role=role,
            claimed_at=now,  # delegate carries it out now, as its own routed decision (see RouteRequest.claimed)
        )
        self.store.insert_decision(row)
        return new_id

    # -- edits -------------------------------------------------------------------------------------------

    def agent(self, agent_id: str) -> Agent | None:
        """The stored agent with this id (None if there is none)."""
        return self.store.agent(agent_id)

    def skill(self, skill_id: str) -> Skill | None:
        """The stored skill with this id (None if there is none)."""
        return self.store.skill(skill_id)

    def mode(self, mode_id: str) -> Mode | None:
        """The stored mode with this id (None if there is none)."""
        return self.store.mode(mode_id)

    # An edit names only what it changes: read, merged and written in one transaction, so two clients editing
    # different fields of one agent at once both land (a read outside it would let the later write undo the other).
    # Every edit's checks (a parent that exists, no children left behind, no cycle) run in its write transaction
    # too: checked outside it, a child added while its parent was deleted outlived the parent.

    def edit_agent(self, agent_id: str, changes: Mapping[str, Any]) -> Agent:
        """Add the agent, or change the fields in `changes` of the stored one (the others keep their values)."""
        with self.store.write():
            return self.upsert_agent(_merged(Agent, self.agent(agent_id), {**changes, "id": agent_id}))

    def edit_skill(self, skill_id: str, changes: Mapping[str, Any]) -> Skill:
        """Add the skill, or change the fields in `changes` (parent_id None: top-level) of the stored one. A new
        skill given a parent and no mode takes its parent's mode (a child must be in it), else the default mode,
        which the handbook adds if it lacks it; a mode given must be one the handbook has (a misspelt one would
        be created, and hide the skill from that mode's steps and agents)."""
        with self.store.write():
            if changes.get("mode") not in (None, DEFAULT_MODE):
                self._known_mode_for("mode", [changes["mode"]])
            current = self.skill(skill_id)
            parent = self.skill(changes["parent_id"]) if changes.get("parent_id") else None
            if current is None and parent is not None and "mode" not in changes:
                changes = {**changes, "mode": parent.mode}
            return self.upsert_skill(_merged(Skill, current, {**changes, "id": skill_id}))

    def edit_mode(self, mode_id: str, changes: Mapping[str, Any]) -> Mode:
        """Add the mode, or change the fields in `changes` of the stored one."""
        with self.store.write():
            return self.upsert_mode(_merged(Mode, self.mode(mode_id), {**changes, "id": mode_id}))

    def upsert_agent(self, agent: Agent) -> Agent:
        """An agent may only name modes the handbook has: a misspelt mode would hide it from that mode's steps."""
        with self.store.write():
            self._known_mode_for("modes", agent.modes)
            self._edit("upsert_agent", agent.model_dump())
        return agent

    def _known_mode_for(self, field: str, modes: Sequence[str]) -> None:
        """Refuse `modes` (the value of `field`) unless the handbook has each: naming the known ones and the
        closest, and how to add a new one."""
        known = sorted(m.id for m in self.store.modes())
        unknown = [m for m in modes if m not in known]
        if unknown:
            listed = ", ".join(known) if known else "none yet"
            close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
            hint = f"; closest known: {close[0]}" if close else ""
            raise InvalidInput(
                field,
                unknown if field == "modes" else unknown[0],
                f"modes the handbook has ({listed}){hint}; add a new mode with upsert_mode first",
            )

    def upsert_mode(self, mode: Mode) -> Mode:
        with self.store.write():
            self._edit("upsert_mode", mode.model_dump())
        return mode

    def upsert_skill(self, skill: Skill) -> Skill:
        if skill.id == ROOT_SKILL:
            raise InvalidInput("skill_id", skill.id, f"any id but the reserved {ROOT_SKILL!r}")
        with self.store.write():
            self._check_skill_placement(skill)
            self._edit("upsert_skill", skill.model_dump())
        return skill

    def _check_skill_placement(self, skill: Skill) -> None:
        """A skill's parent exists, is not the skill or below it, and shares its mode, as its children do.

        Read by id (the parent, its ancestors, the children), in the edit's write transaction: reading the whole
        table took 3.3 s an edit at 20,000 skills."""
        if skill.parent_id is not None:
            parent = self.store.skill(skill.parent_id)
            if parent is None:
                raise NotFound("skill (parent_id)", skill.parent_id, self.store.skill_ids())
            ancestor: Skill | None = parent
            seen: set[str] = set()
            while ancestor is not None and ancestor.id not in seen:  # refuse cycles: not below this skill
                if ancestor.id == skill.id:
                    raise InvalidInput("parent_id", skill.parent_id, f"a skill that is not {skill.id!r} or below it")
                seen.add(ancestor.id)
                ancestor = self.store.skill(ancestor.parent_id) if ancestor.parent_id is not None else None
            if skill.mode != parent.mode:  # a skill refines its parent, so it belongs to the same stage of work
                raise InvalidInput("mode", skill.mode, f"{parent.mode!r}, the mode of its parent {skill.parent_id!r}")
        children = [s for s in self.store.skill_children(skill.id) if s.mode != skill.mode]
        if children:  # moving a parent to another mode would leave its children behind in the old one
            raise InvalidInput(
                "mode",
                skill.mode,
                f"{children[0].mode!r}, the mode of its children {', '.join(s.id for s in children)} (give them"
                ' parent_id "" first, or delete them)',
            )

    def delete_agent(self, agent_id: str) -> Removed:
        with self.store.write():
            if self.agent(agent_id) is None:
                raise NotFound("agent", agent_id, [a.id for a in self.store.agents()])
            competence, cost = self.store.evidence_counts("agent_id", agent_id)
            self._edit("delete_agent", {"id": agent_id})
        return Removed(kind="agent", id=agent_id, competence_rows=competence, cost_rows=cost)

    def delete_skill(self, skill_id: str) -> Removed:
        with self.store.write():
            if self.store.skill(skill_id) is None:
                raise NotFound("skill", skill_id, self.store.skill_ids())
            children = [s.id for s in self.store.skill_children(skill_id)]
            if children:
                raise InvalidInput(
                    "skill_id", skill_id, f"a skill without children (delete {', '.join(children)} first)"
                )
            competence, cost = self.store.evidence_counts("skill_id", skill_id)
            self._edit("delete_skill", {"id": skill_id})
        return Removed(kind="skill", id=skill_id, competence_rows=competence, cost_rows=cost)

    def _edit(self, kind: str, payload: dict[str, Any]) -> None:
        """Append the edit, unless it would leave the entity as it is stored: an unchanged upsert (a host
        re-asserting its agents at every start) would grow the event log and bump the file's data_version,
        making every other server sharing the file reload. An edit of texts alone is noted as such: the derived
        arrays outlive it (noted, not applied here: this runs holding the store's lock, and taking self._lock
        now would invert the order every read takes them in). The texts shown are read from the store."""
        stored = {"upsert_agent": self.agent, "upsert_skill": self.skill, "upsert_mode": self.mode}.get(kind)
        current = stored(payload["id"]) if stored is not None else None
        if current is None:
            self.store.apply(kind, payload)
            return
        stored_fields = current.model_dump()
        if stored_fields == payload:
            return
        self.store.apply(kind, payload)
        if all(stored_fields[k] == v for k, v in payload.items() if k not in TEXT_FIELDS):
            self._texts_only.add(self.store.generation)

    # -- listings ----------------------------------------------------------------------------------------

    def list_agents(self, mode: str | None = None, cursor: str | None = None, limit: int = 50) -> AgentPage:
        self._known_mode(mode)
        after = key_after(cursor, limit, "agents")
        page, next_cursor = key_page(self.store.agents_page(after, mode, limit + 1), limit, "agents")  # in SQL
        return AgentPage(items=page, next_cursor=next_cursor)

    def list_skills(self, mode: str | None = None, cursor: str | None = None, limit: int = 50) -> SkillPage:
        self._known_mode(mode)
        after = key_after(cursor, limit, "skills")
        page, next_cursor = key_page(self.store.skills_page(after, mode, limit + 1), limit, "skills")  # in SQL
        return SkillPage(items=page, next_cursor=next_cursor)

    def _known_mode(self, mode: str | None) -> None:
        """A filter by a mode the handbook lacks is a typo, not an empty answer."""
        if mode is not None:
            known = [m.id for m in self.store.modes()]
            if mode not in known:
                raise NotFound("mode", mode, known)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector (it frees no reference cycles here, only walks the new rows); left as
    found if something else had paused it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_AMOUNT_LIMITS = {
    "max_cost_usd": MAX_USD,
    "budget_usd": MAX_USD,
    "cost_usd": MAX_USD,
    "prompt_tokens": MAX_TOKENS,
    "completion_tokens": MAX_TOKENS,
    "latency_s": MAX_SECONDS,
    "seed": MAX_SEED,
}


def _check_amount(name: str, value: float | None) -> None:
    """Costs, tokens, latencies, budgets and seeds: absent, or a finite number within the bounds the MCP tools
    declare, so a library caller cannot store what a tool call would have been refused (or crash on a huge int)."""
    limit = _AMOUNT_LIMITS[name]
    if value is not None and not (0 <= value <= limit and math.isfinite(value)):
        shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
        raise InvalidInput(name, value, f"a finite number in [0, {shown}]")


def _merged(model: type[EditedT], current: EditedT | None, changes: Mapping[str, Any]) -> EditedT:
    """`current` with `changes` applied (a new record starts from the model's defaults); a value the model refuses
    is the caller's error, named by field."""
    base = current.model_dump() if current is not None else {}
    try:
        return model(**{**base, **changes})
    except ValidationError as exc:
        where, value, expected = first_problem(exc)
        raise InvalidInput(where or model.__name__, value, expected) from None


def _reward(report: OutcomeReport) -> float | None:
    infrastructure = report.error_class in INFRASTRUCTURE_ERRORS
    given = [name for name in ("reward", "success") if getattr(report, name) is not None]
    if len(given) > 1:
        raise InvalidInput("reward/success", (report.reward, report.success), "exactly one of reward or success")
    if not given:
        if infrastructure:
            return None
        raise InvalidInput(
            "reward", None, "reward (0..1) or success (bool) for a completed answer (error_class 'task')"
        )
    if infrastructure:
        raise InvalidInput(
            given[0],
            getattr(report, given[0]),
            f"no {given[0]} with error_class {report.error_class!r}: infrastructure errors never score the agent",
        )
    if report.success is not None:
        return 1.0 if report.success else 0.0
    assert report.reward is not None
    if not 0.0 <= report.reward <= 1.0:  # NaN fails it too
        raise InvalidInput("reward", report.reward, "a number in [0, 1]")
    return float(report.reward)


CALL_FIGURES = ("cost_usd", "prompt_tokens", "completion_tokens", "latency_s")  # a report's figures of the call


def _with_call_figures(payload: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """A report that leaves cost, tokens or latency out takes what the delegated call recorded. One that sends
    another value, or an infrastructure error for a call that answered, is refused: the measured call is what was
    paid, and a model's guess would overwrite it (a model reading the rounded figures of delegate's result may send
    them back: four significant digits match)."""
    effective = dict(payload)
    answered = decision.get("call_latency_s") is not None and decision.get("call_error_class") is None
    if answered and payload["error_class"] in INFRASTRUCTURE_ERRORS:
        raise InvalidInput(
            "error_class",
            payload["error_class"],
            "'task' (or left out): delegate's call to this decision's agent answered, so grade the answer with "
            "reward or success (an infrastructure error would log an answered call as a failed one)",
        )
    for key in CALL_FIGURES:
        measured = decision.get(f"call_{key}")
        if measured is None:
            continue
        sent = effective[key]
        if sent is not None and not _echoes(sent, measured):
            raise InvalidInput(
                key, sent, f"left out: delegate measured this decision's call ({key}={measured:.6g}) and records it"
            )
        effective[key] = measured
    return effective


def _idempotency_key(payload: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """The report as the idempotency key compares it: a cost, token count or latency that repeats what delegate
    measured (as _with_call_figures accepts it) counts as left out, so the report that echoed delegate's cost and
    the plain one are the same report (QA: the plain repeat was refused as a conflict)."""
    key = dict(payload)
    for name in CALL_FIGURES:
        measured, sent = decision.get(f"call_{name}"), key.get(name)
        if measured is not None and sent is not None and _echoes(sent, measured):
            key[name] = None
    return key


def _echoes(sent: float, measured: float) -> bool:
    """A reported figure that repeats a measured one: a model reading delegate's four significant digits sends
    them back, and that is the same figure, not a conflicting one."""
    return math.isclose(sent, measured, rel_tol=1e-3, abs_tol=1e-12)


def _deleted_agent_note(agent_id: str, *, again: bool) -> str:
    also = " (an agent added since under that id is another agent)" if again else ""
    return f"agent {agent_id!r} was deleted since the decision{also}: the outcome is logged only"


def _deleted_skills_note(demanded: list[list[Any]], effect: OutcomeEffect) -> str | None:
    """Skills of the decision deleted since: their share of the outcome went nowhere (or, when none of its skills
    is left, all of it went to the mode or the agent's overall record); say so rather than look fully applied."""
    gone = [(skill, weight) for skill, weight in demanded if weight > 0 and skill in effect.deleted_skills]
    if not gone:
        return None
    names = ", ".join(repr(skill) for skill, _ in gone)
    if len(gone) == len([w for _, w in demanded if w > 0]):
        column = effect.competence[0].skill_id
        where = "the agent's overall record" if column == ROOT_SKILL else f"mode {column.removeprefix(MODE_PREFIX)!r}"
        return f"the decision's skills ({names}) were deleted since: the outcome went to {where} instead"
    share = sum(weight for _, weight in gone) / sum(weight for _, weight in demanded if weight > 0)
    return f"skills deleted since the decision ({names}): their share ({share:.2f}) of the outcome was not applied"


def _why_no_agent(excluded: list[Exclusion], budgeted: bool, shown: int = 6) -> str:
    """Why no agent could take the step, a reason once for all the agents it covers and at most `shown` of them:
    the message grows with the pool otherwise (1 KB at 11 agents when a budget ran out)."""
    groups: dict[str, list[str]] = {}
    for exclusion in excluded:
        groups.setdefault(exclusion.reason, []).append(exclusion.agent_id)
    parts = [f"{named(ids, shown)}: {reason}" for reason, ids in list(groups.items())[:shown]]
    if len(groups) > shown:
        parts.append(f"{len(groups) - shown} more reasons")
    advice = "; raise budget_usd or stop the session" if budgeted and any("budget" in r for r in groups) else ""
    return f"no agent satisfies the step's constraints ({'; '.join(parts)}){advice}"


def _charged(cost: float, known: bool) -> str:
    """What a step is charged: its expected cost, or c_ref for an agent whose cost is unknown (interface.md)."""
    return f"expected cost ${cost:.6g}" if known else f"cost unknown, charged c_ref ${cost:.6g},"


def _unusable(
    arrays: HandbookArrays, mode: str | None, step_modes: frozenset[str], matched: bool = True
) -> dict[str, str]:
    """Agents route_step never picks for a step of `mode` (None: of `step_modes`, HandbookArrays.step_modes: of its
    skills, or of the handbook's skills when none `matched`), and why (consult shows them as unavailable)."""
    reasons = {}
    whose = "from its skills" if matched else "no skill matched: the modes of the handbook's skills"
    for i, agent_id in enumerate(arrays.agent_ids):
        if not arrays.enabled[i]:
            reasons[agent_id] = "disabled"
        elif not serves_step(arrays.agent_modes[i], step_modes):
            reasons[agent_id] = (
                f"does not serve mode {mode!r}"
                if mode
                else f"serves only mode {_quoted(arrays.agent_modes[i])}, and this step is of mode "
                f"{_quoted(step_modes)} ({whose}; a step naming its mode is routed in that mode)"
            )
    return reasons


def _quoted(modes: Collection[str]) -> str:
    return " or ".join(repr(m) for m in sorted(modes))


def _update(skill_id: str, alpha: float, beta: float, competence: float | None = None) -> CompetenceUpdate:
    return CompetenceUpdate(
        skill_id=skill_id, alpha=alpha, beta=beta, mean=alpha / (alpha + beta), competence=competence
    )


def _card(skill: Skill, weight: float, budget: int) -> SkillCard:
    """The skill for a consult answer, its indicators and examples within `budget` bytes (the leading ones; either
    list may take what the other leaves of its half). QA: five skills of 50 long examples each made a 1.8 MB answer,
    which the SSE client refuses (over 1 MiB) and every model pays for in tokens."""
    room = budget - json_bytes(skill.description)
    indicator_sizes = [json_bytes(text) + 1 for text in skill.indicators]  # and its comma
    example_sizes = [json_bytes(text) + 1 for text in skill.examples]
    indicators = leading_within(indicator_sizes, max(room // 2, room - sum(example_sizes)))
    examples = leading_within(example_sizes, room - sum(indicator_sizes[:indicators]))
    return SkillCard(
        skill_id=skill.id,
        mode=skill.mode,
        parent_id=skill.parent_id,
        description=skill.description,
        indicators=skill.indicators[:indicators],
        examples=skill.examples[:examples],
        weight=weight,
        texts_not_shown=len(skill.indicators) - indicators + len(skill.examples) - examples,
    )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _level(mode: str | None, source: str) -> str:
    """The skills_source of a step no skill was found for, keeping why the matcher found none ("agent level
    (semantic model still loading)"; QA: it read "agent level" while the README promised the loading note)."""
    level = "mode level" if mode else "agent level"
    return f"{level} {source[source.index('(') :]}" if "(" in source else level
