"""The handbook as numpy arrays: the shrunk competence posteriors and costs the router scores.

Columns are every skill, then every mode, then the root (the agent as a whole). The posterior of a skill is
its own evidence (its subtree's, for a category) on top of a prior centred on the level above:
skill -> parent skill -> ... -> mode -> agent -> pool, each with strength `kappa` pseudo-observations. So an
unseen skill inherits what the agent showed nearby, and a mean is never exactly 0 or 1.

Going down a column's chain, each level's estimate uses only the evidence of that level that is not in the next
level down (its siblings' evidence), so one observation counts once, however deep its skill sits.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property

import numpy as np

from skillorchestra.handbook.ci_scale import ci_scales
from skillorchestra.handbook.models import (
    Agent,
    CiInflation,
    Competence,
    CostStats,
    HandbookDocument,
    LengthEffect,
    Mode,
    Skill,
)
from skillorchestra.handbook.posterior import beta_mean_var
from skillorchestra.handbook.router import RouteInputs

ROOT_SKILL = "*"  # evidence of steps that named no skill and no mode: the agent as a whole
MODE_PREFIX = "@"  # evidence of steps routed at mode level (no skill matched) is filed under "@<mode>"
DEFAULT_KAPPA = 2.0
COST_KAPPA = 1.0  # pseudo-calls pulling a thin (agent, skill) cost toward the agent's mean cost
MIN_LENGTH_COVERAGE = 0.5  # share of a cost's calls with a known step length before the cost follows length
CHAIN_KEPT_MAX = 64  # Structure.chain_sums keeps a skill's indices when its chain's subtrees hold at most this many


@dataclass
class Structure:
    """Who is where: indices and the skill hierarchy as matrices (changes only when skills or agents change)."""

    parent: np.ndarray  # (K,) index of the parent skill, -1 for a top-level skill
    skill_mode: np.ndarray  # (K,) index of the skill's mode
    chain: np.ndarray  # (K, D+1) chain[k, t] = k's ancestor at depth t, then k itself, then -1
    mode_member: np.ndarray  # (K, M)
    # what chain_sums adds for a skill: (how many nodes its chain has, each skill's bin, the skills), when small
    _chains: dict[int, tuple[int, np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)
    # node -> the skills below it (itself included) in index order: a wide category's are found once (review: under
    # a category of over CHAIN_KEPT_MAX skills no skill was kept above, and each record searched the whole tree)
    _members: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def levels(self) -> int:
        """How deep the deepest skill sits (1: top-level skills only; 0: no skills)."""
        return self.chain.shape[1] if len(self.chain) else 0

    def ancestor_at(self, skill: int, depth: int) -> int:
        """`skill`'s ancestor at `depth` >= 1 (1: its top-level skill), or the skill itself when it sits no deeper.
        Depth 0 (mode level) has no skill to name: callers read the mode record instead."""
        if depth < 1:
            raise ValueError(f"a skill depth >= 1, not {depth}")
        if depth > self.chain.shape[1]:
            return skill
        node = int(self.chain[skill, depth - 1])
        return skill if node < 0 else node

    def subtree_sums(self, own: np.ndarray) -> np.ndarray:
        """(R, K) each skill's own evidence plus everything below it: every skill's column added to each node of
        its chain, in one bincount over the (skill, node) pairs. A (K, K) membership matrix did this as one
        product, but it grows with the square of the skills (3.3 GB at 20,000); this is K x depth additions."""
        n_rows, n_skills = own.shape
        skill = np.repeat(np.arange(n_skills), self.chain.shape[1])
        node = self.chain.ravel()
        skill, node = skill[node >= 0], node[node >= 0]
        cells = (np.arange(n_rows)[:, None] * n_skills + node).ravel()
        sums = np.bincount(cells, weights=own[:, skill].ravel(), minlength=n_rows * n_skills)
        return sums.reshape(n_rows, n_skills)

    def _below(self, node: int) -> np.ndarray:
        found = self._members.get(node)
        if found is None:
            found = self._members[node] = np.flatnonzero((self.chain == node).any(axis=1))
        return found

    def chain_sums(self, success: np.ndarray, failure: np.ndarray, skill: int) -> tuple[int, np.ndarray, np.ndarray]:
        """How many nodes `skill`'s chain has (its ancestors, then itself), and subtree_sums' values at each of them
        for one agent's row of evidence (success, failure: (K,) or longer): the same additions in the same order (a
        node's skills in index order), so the same numbers, without summing the whole row (Patch.competence asks
        for the few cells a record changed)."""
        found = self._chains.get(skill)
        if found is None:
            nodes = [int(node) for node in self.chain[skill] if node >= 0]
            below = [self._below(node) for node in nodes]
            bins = np.repeat(np.arange(len(nodes)), [len(skills) for skills in below])
            found = len(nodes), bins, np.concatenate(below)
            if len(bins) <= CHAIN_KEPT_MAX:
                self._chains[skill] = found
        n_nodes, bins, members = found
        sums = [np.bincount(bins, weights=own[members], minlength=n_nodes) for own in (success, failure)]
        return n_nodes, sums[0], sums[1]


@dataclass
class RawEvidence:
    """What was observed per agent and column (skills, then "@mode" rows, then ROOT_SKILL): the state a recorded
    outcome patches."""

    success: np.ndarray  # (A, K+M+1) alpha - 1
    failure: np.ndarray  # (A, K+M+1) beta - 1
    calls: np.ndarray  # (A, K+M+1) weighted calls with a recorded cost
    cost_total: np.ndarray  # (A, K+M+1) calls * mean cost
    prompt_calls: np.ndarray  # (A, K+M+1) weighted calls whose step-token estimate is known
    prompt_total: np.ndarray  # (A, K+M+1) prompt_calls * mean step tokens (CostStats.mean_step_tokens)

    def copy(self) -> RawEvidence:
        return RawEvidence(*(np.array(getattr(self, f.name)) for f in fields(self)))

    def set_competence(self, cell: tuple[int, int], row: Competence) -> None:
        """A competence row's evidence: its counts above the Beta(1, 1) prior."""
        self.success[cell], self.failure[cell] = max(row.alpha - 1.0, 0.0), max(row.beta - 1.0, 0.0)

    def set_cost(self, cell: tuple[int, int], cost: CostStats) -> None:
        """A cost row's evidence, with the calls whose step length is known (CostStats.n_step_tokens)."""
        self.calls[cell], self.cost_total[cell] = cost.n, cost.n * cost.mean_cost_usd
        prompt_n = min(cost.n_step_tokens, cost.n)
        self.prompt_calls[cell], self.prompt_total[cell] = prompt_n, prompt_n * cost.mean_step_tokens


@dataclass
class Sums:
    """Evidence summed up the hierarchy, per agent: what a patch recomputes for the changed agents only."""

    sub_s: np.ndarray  # (A, K) subtree successes
    sub_f: np.ndarray
    mode_s: np.ndarray  # (A, M)
    mode_f: np.ndarray

    @classmethod
    def of(cls, raw: RawEvidence, st: Structure, rows: np.ndarray | slice = slice(None)) -> Sums:
        n_skills, n_modes = st.mode_member.shape
        own_s, own_f = raw.success[rows, :n_skills], raw.failure[rows, :n_skills]
        return cls(
            st.subtree_sums(own_s),
            st.subtree_sums(own_f),
            own_s @ st.mode_member + raw.success[rows, n_skills : n_skills + n_modes],
            own_f @ st.mode_member + raw.failure[rows, n_skills : n_skills + n_modes],
        )

    def with_rows(self, raw: RawEvidence, st: Structure, rows: np.ndarray) -> Sums:
        fresh = Sums.of(raw, st, rows)
        copies = [np.array(m) for m in (self.sub_s, self.sub_f, self.mode_s, self.mode_f)]
        for whole, part in zip(copies, (fresh.sub_s, fresh.sub_f, fresh.mode_s, fresh.mode_f), strict=True):
            whole[rows] = part
        return Sums(*copies)


@dataclass
class HandbookArrays:
    agent_ids: list[str]
    skill_ids: list[str]
    mode_ids: list[str]
    agents: list[Agent]
    skills: list[Skill]
    alpha: np.ndarray  # (A, C) shrunk posterior, C = skills + modes + root
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    evidence: np.ndarray  # (A, C) observations behind each column (subtree sums)
    cost_mean: np.ndarray  # (A, C) expected cost per call, NaN where the agent has no cost record
    agent_cost: np.ndarray  # (A,) mean recorded cost per call, NaN when none
    prompt_mean: np.ndarray  # (A, C) mean step tokens (the router's estimate) behind cost_mean, NaN where unknown
    input_price: np.ndarray  # (A,) USD per million tokens, NaN when unknown
    output_price: np.ndarray
    call_price: np.ndarray  # (A,) USD per call on top of the token prices (MCP tool agents), NaN when unknown
    enabled: np.ndarray  # (A,) bool
    agent_modes: list[frozenset[str]]
    length_slope: np.ndarray  # (A,) learned change of success per unit of ln(characters) (0 = none; handbook/length.py)
    length_range: tuple[float, float, float]  # (low, center, high) ln(characters) of the steps the slopes came from
    kappa: float
    structure: Structure
    raw: RawEvidence
    sums: Sums
    agent_index: dict[str, int] = field(default_factory=dict)
    skill_index: dict[str, int] = field(default_factory=dict)
    mode_index: dict[str, int] = field(default_factory=dict)
    # the learned widening of ci90 (handbook/ci_scale.py); never read by quality or any routing choice
    ci_inflation: CiInflation | None = None

    @cached_property
    def ci_scale(self) -> np.ndarray:
        """(A,) each agent's ci90 half-width multiplier (1.0 without a learned inflation)."""
        return ci_scales(self.ci_inflation, self.agent_ids, self.evidence[:, self.root_column])

    def column_of_skill(self, skill_id: str) -> int:
        return self.skill_index[skill_id]

    def column_of_mode(self, mode_id: str) -> int:
        return len(self.skill_ids) + self.mode_index[mode_id]

    @property
    def root_column(self) -> int:
        return len(self.skill_ids) + len(self.mode_ids)

    def route_inputs(
        self,
        cols: np.ndarray,
        weights: np.ndarray,
        cost: np.ndarray,
        c_ref: float,
        eligible: np.ndarray,
        shift: np.ndarray | None = None,
    ) -> RouteInputs:
        """What the router scores for a step demanding columns `cols` with `weights` (summing to 1), with the
        step's length shift when the handbook learned one."""
        return RouteInputs(
            mean=self.mean[:, cols],
            var=self.var[:, cols],
            alpha=self.alpha[:, cols],
            beta=self.beta[:, cols],
            weights=weights,
            cost=cost,
            c_ref=c_ref,
            eligible=eligible,
            shift=shift,
            ci_scale=self.ci_scale if self.ci_inflation is not None else None,
        )

    @property
    def has_length_effect(self) -> bool:
        return bool(np.any(self.length_slope != 0.0))

    def with_length_effect(self, effect: LengthEffect | None) -> HandbookArrays:
        """The same posteriors (shared, not copied) scoring with `effect` instead."""
        slope, length_range = _length_fields(self.agent_ids, effect)
        return replace(self, length_slope=slope, length_range=length_range)

    def step_modes(self, mode: str | None, demands: Iterable[tuple[str, float]]) -> frozenset[str]:
        """The modes a step is of: the one it names; else the mode of the skills carrying most of its weight (all
        modes tied for it), so a minor skill of another mode does not open the step to that mode's agents; else,
        no skill matched, the modes the handbook has skills in (a judge or a tool scoped to a mode without skills
        is not sent whatever the matcher could not place; QA). Modes that no agent names, with no enabled agent
        unscoped, count as none: the step is then of unknown mode and every agent serves it, so it is routed
        rather than refused (a skill added without a mode lands in 'general', which scoped agents do not name).
        An agent naming the modes keeps the rule even when it is disabled or its breaker is open: the step waits
        for a specialist rather than going to an agent of another mode (review)."""
        if mode:
            return frozenset((mode,))
        modes = self.heaviest_modes(demands) or self.skilled_modes
        named = any(not modes.isdisjoint(m) for m in self.agent_modes)
        unscoped = any(on and not m for on, m in zip(self.enabled, self.agent_modes, strict=True))
        return modes if named or unscoped else frozenset()

    def heaviest_modes(self, demands: Iterable[tuple[str, float]]) -> frozenset[str]:
        """The mode(s) whose skills carry most of the step's weight (all modes tied for it; none without weight)."""
        weight_of: dict[str, float] = {}
        for skill_id, weight in demands:
            if weight > 0:
                of = self.mode_ids[self.structure.skill_mode[self.skill_index[skill_id]]]
                weight_of[of] = weight_of.get(of, 0.0) + weight
        if not weight_of:
            return frozenset()
        top = max(weight_of.values())
        return frozenset(m for m, w in weight_of.items() if w >= top - 1e-9)

    @cached_property
    def skilled_modes(self) -> frozenset[str]:
        """The modes that have at least one skill."""
        return frozenset(self.mode_ids[i] for i in np.unique(self.structure.skill_mode))

    def competence(self, agent_id: str, skill_ids: Sequence[str]) -> list[float | None]:
        """The shrunk posterior means of one agent on `skill_ids` (skills, "@mode" or the root)."""
        cells = [self._cell(agent_id, s) for s in skill_ids]
        return [None if cell is None else float(self.mean[cell]) for cell in cells]

    def _cell(self, agent_id: str, skill_id: str) -> tuple[int, int] | None:
        i = self.agent_index.get(agent_id)
        j = raw_column(skill_id, self.skill_index, self.mode_index)
        return None if i is None or j is None else (i, j)


class Patch:
    """Recorded outcomes applied to a private copy of the arrays' raw evidence, derived into new arrays once,
    when they are read: a burst of records costs one derivation, and memory stays that of one copy."""

    def __init__(self, base: HandbookArrays) -> None:
        self.base = base
        self.raw = base.raw.copy()
        self.rows: set[int] = set()
        # each agent's success and failure summed over its row (_pool_rate's first step), kept as rows change:
        # the pool rate of every record without summing every agent's row again
        self._totals: tuple[np.ndarray, np.ndarray] | None = None
        self._stale: set[int] = set()

    def add(self, competence: Sequence[Competence], costs: Sequence[CostStats]) -> bool:
        """Apply one outcome's rows; False (and nothing trustworthy left) when a row names an unknown cell."""
        for row in competence:
            cell = self.base._cell(row.agent_id, row.skill_id)
            if cell is None:
                return False
            self.raw.set_competence(cell, row)
            self.rows.add(cell[0])
            self._stale.add(cell[0])
        for cost in costs:
            cell = self.base._cell(cost.agent_id, cost.skill_id)
            if cell is None:
                return False
            self.raw.set_cost(cell, cost)
        return True

    def competence(self, agent_id: str, skill_ids: Sequence[str]) -> list[float | None]:
        """The shrunk posterior means of one agent on `skill_ids` (skills, "@mode" or the root) with the outcomes
        applied so far: what the next derivation gives that agent, computed for its row alone (an agent's row
        depends on its own evidence and the pool's rate only), so a record need not derive every agent."""
        row = self.base.agent_index.get(agent_id)
        if row is None:
            return [None] * len(skill_ids)
        all_s, all_f = self._agent_totals()
        pool = _pool_rate_of(all_s, all_f)  # of the kept totals
        columns = [raw_column(s, self.base.skill_index, self.base.mode_index) for s in skill_ids]
        means = _column_means(self.base.structure, self.raw, row, (all_s[row], all_f[row]), pool, self.base.kappa)
        return [None if j is None else means(j) for j in columns]

    def _agent_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """(A,) each agent's raw success and failure summed over its row, as _pool_rate and _posteriors sum them."""
        if self._totals is None:
            self._totals = self.raw.success.sum(axis=1), self.raw.failure.sum(axis=1)
            self._stale.clear()
        for row in self._stale:  # a row summed alone gives the whole array's sum(axis=1) at that row, bit for bit
            self._totals[0][row] = self.raw.success[row].sum()
            self._totals[1][row] = self.raw.failure[row].sum()
        self._stale.clear()
        return self._totals

    def derived(self) -> HandbookArrays:
        base = self.base
        sums = base.sums.with_rows(self.raw, base.structure, np.array(sorted(self.rows), dtype=np.int64))
        length = (base.length_slope, base.length_range)
        # the ci widening's scales follow the new evidence (ci_scale is derived anew)
        return _derive(
            base.agents,
            base.skills,
            base.mode_ids,
            base.structure,
            self.raw,
            base.kappa,
            length,
            sums,
            ci_inflation=base.ci_inflation,
        )


def serves(agent_modes: Collection[str], mode: str | None) -> bool:
    """An agent serves a mode when it names it, or names no mode at all (then it serves every mode): list_agents'
    filter, and route_step's rule for a step that names its mode (see serves_step)."""
    return serves_step(agent_modes, frozenset((mode,)) if mode else frozenset())


def serves_step(agent_modes: Collection[str], step_modes: Collection[str]) -> bool:
    """An agent serves a step when it names no mode, or one of the step's modes (HandbookArrays.step_modes): the one
    rule of route_step, consult_handbook and replay. A step that names no mode is of its skills' modes (QA: a search
    tool scoped with modes = ["search"] was sent arithmetic, and a judge its answer steps, since steps rarely name a
    mode); one of unknown mode may go to any agent."""
    return not step_modes or not agent_modes or any(m in agent_modes for m in step_modes)


def raw_column(skill_id: str, skill_index: dict[str, int], mode_index: dict[str, int]) -> int | None:
    """Where a competence or cost row's evidence goes: its skill, its mode ("@mode"), or the root."""
    if skill_id == ROOT_SKILL:
        return len(skill_index) + len(mode_index)
    if skill_id.startswith(MODE_PREFIX) and skill_id[1:] in mode_index and skill_id not in skill_index:
        return len(skill_index) + mode_index[skill_id[1:]]
    return skill_index.get(skill_id)


def _topological(skills: Sequence[Skill]) -> list[Skill]:
    """Parents before children; a parent outside the handbook (or a cycle) makes a skill a root."""
    by_id = {skill.id: skill for skill in skills}
    ordered: list[Skill] = []
    placed: set[str] = set()

    def place(skill: Skill, trail: frozenset[str]) -> None:
        if skill.id in placed:
            return
        parent = by_id.get(skill.parent_id or "")
        if parent is not None and parent.id not in trail:
            place(parent, trail | {skill.id})
        placed.add(skill.id)
        ordered.append(skill)

    for skill in sorted(skills, key=lambda s: s.id):
        place(skill, frozenset({skill.id}))
    return ordered


def build_arrays(
    modes: Sequence[Mode],
    skills: Sequence[Skill],
    agents: Sequence[Agent],
    competence: Sequence[Competence],
    costs: Sequence[CostStats],
    kappa: float = DEFAULT_KAPPA,
    length_effect: LengthEffect | None = None,
    ci_inflation: CiInflation | None = None,
) -> HandbookArrays:
    ordered = _topological(skills)
    mode_ids = sorted({m.id for m in modes} | {s.mode for s in ordered} | {m for a in agents for m in a.modes})
    agent_list = sorted(agents, key=lambda a: a.id)
    a_idx = {a.id: i for i, a in enumerate(agent_list)}
    s_idx = {s.id: i for i, s in enumerate(ordered)}
    m_idx = {m: i for i, m in enumerate(mode_ids)}
    n_agents, n_columns = len(agent_list), len(ordered) + len(mode_ids) + 1
    structure = _structure(ordered, s_idx, m_idx)

    raw = RawEvidence(*(np.zeros((n_agents, n_columns)) for _ in fields(RawEvidence)))
    for row in competence:
        i = a_idx.get(row.agent_id)
        j = raw_column(row.skill_id, s_idx, m_idx)
        if i is not None and j is not None:
            raw.set_competence((i, j), row)
    for cost in costs:
        i = a_idx.get(cost.agent_id)
        j = raw_column(cost.skill_id, s_idx, m_idx)
        if i is not None and j is not None and cost.n > 0:
            raw.set_cost((i, j), cost)
    length = _length_fields([a.id for a in agent_list], length_effect)
    return _derive(agent_list, ordered, mode_ids, structure, raw, kappa, length, ci_inflation=ci_inflation)


def document_arrays(document: HandbookDocument, kappa: float = DEFAULT_KAPPA) -> HandbookArrays:
    """The arrays of a whole handbook document (learning, replay and the eval score documents, not stores)."""
    return build_arrays(
        document.modes,
        document.skills,
        document.agents,
        document.competence,
        document.cost,
        kappa=kappa,
        length_effect=document.length_effect,
        ci_inflation=document.ci_inflation,
    )


def _length_fields(
    agent_ids: Sequence[str], effect: LengthEffect | None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(A,) slopes in agent order (0 for an agent the effect does not name) and (low, center, high)."""
    if effect is None:
        return np.zeros(len(agent_ids)), (0.0, 0.0, 0.0)
    slope = np.array([effect.slopes.get(agent_id, 0.0) for agent_id in agent_ids])
    return slope, (effect.low, effect.center, effect.high)


def _structure(ordered: Sequence[Skill], s_idx: dict[str, int], m_idx: dict[str, int]) -> Structure:
    n_skills, n_modes = len(ordered), len(m_idx)
    # a parent placed after its child closes a cycle (the topological order broke it there): treat as top level
    parent = np.array([s_idx.get(s.parent_id or "", -1) for s in ordered], dtype=np.int64)
    parent = np.where(parent < np.arange(n_skills), parent, -1)
    chains: list[list[int]] = []
    for k in range(n_skills):  # parents come first, so their chains are ready
        chains.append([*chains[parent[k]], int(parent[k])] if parent[k] >= 0 else [])
    depth = max((len(c) for c in chains), default=0)
    chain_nodes = np.full((n_skills, depth + 1), -1, dtype=np.int64)
    for k, chain in enumerate(chains):
        chain_nodes[k, : len(chain) + 1] = [*chain, k]
    skill_mode = np.array([m_idx[s.mode] for s in ordered], dtype=np.int64)
    mode_member = np.zeros((n_skills, n_modes))
    if n_skills:
        mode_member[np.arange(n_skills), skill_mode] = 1.0
    return Structure(parent, skill_mode, chain_nodes, mode_member)


def _derive(
    agents: Sequence[Agent],
    skills: Sequence[Skill],
    mode_ids: list[str],
    st: Structure,
    raw: RawEvidence,
    kappa: float,
    length: tuple[np.ndarray, tuple[float, float, float]],
    sums: Sums | None = None,
    *,
    ci_inflation: CiInflation | None = None,
) -> HandbookArrays:
    """Shrunk posteriors and expected costs from the raw evidence (vectorised over skills)."""
    n_skills, n_modes = len(skills), len(mode_ids)
    sums = sums if sums is not None else Sums.of(raw, st)
    pool = np.full(raw.success.shape[0], _pool_rate(raw))
    alpha, beta = _posteriors(st, raw.success, raw.failure, sums, pool, kappa)
    sub_n, mode_n = sums.sub_s + sums.sub_f, sums.mode_s + sums.mode_f
    all_n = raw.success.sum(axis=1) + raw.failure.sum(axis=1)
    mean, var = beta_mean_var(alpha, beta)
    evidence = np.concatenate([sub_n, mode_n, all_n[:, None]], axis=1)
    cost_mean, agent_cost = _shrunk_means(raw.calls, raw.cost_total, n_skills, n_modes)
    prompt_mean, _ = _shrunk_means(raw.prompt_calls, raw.prompt_total, n_skills, n_modes)
    # a cost moves with the step's length only where most of the calls behind it have a known length (a handbook
    # upgraded from before step tokens keeps its recorded means until new records outweigh the old ones)
    covered, _ = _shrunk_means(raw.calls, raw.prompt_calls, n_skills, n_modes)
    prompt_mean = np.where(covered >= MIN_LENGTH_COVERAGE, prompt_mean, np.nan)
    agent_list = list(agents)
    return HandbookArrays(
        agent_ids=[a.id for a in agent_list],
        skill_ids=[s.id for s in skills],
        mode_ids=mode_ids,
        agents=agent_list,
        skills=list(skills),
        alpha=alpha,
        beta=beta,
        mean=mean,
        var=var,
        evidence=evidence,
        cost_mean=cost_mean,
        agent_cost=agent_cost,
        prompt_mean=prompt_mean,
        input_price=np.array([np.nan if a.input_per_mtok is None else a.input_per_mtok for a in agent_list]),
        output_price=np.array([np.nan if a.output_per_mtok is None else a.output_per_mtok for a in agent_list]),
        call_price=np.array([np.nan if a.cost_per_call_usd is None else a.cost_per_call_usd for a in agent_list]),
        enabled=np.array([a.enabled for a in agent_list], dtype=bool),
        agent_modes=[frozenset(a.modes) for a in agent_list],
        length_slope=length[0],
        length_range=length[1],
        kappa=kappa,
        structure=st,
        raw=raw,
        sums=sums,
        agent_index={a.id: i for i, a in enumerate(agent_list)},
        ci_inflation=ci_inflation,
        skill_index={s.id: i for i, s in enumerate(skills)},
        mode_index={m: i for i, m in enumerate(mode_ids)},
    )


def _column_means(
    st: Structure,
    raw: RawEvidence,
    row: int,
    totals: tuple[np.floating, np.floating],
    pool: np.floating,
    kappa: float,
) -> Callable[[int], float]:
    """The shrunk mean of one agent's row at a column, as _posteriors and beta_mean_var give it for that row (its
    `totals`: the row's success and failure summed), computed for that column alone: the same floating-point
    operations in the same order on numpy scalars, so the same numbers (and warnings), where the whole row cost
    80 us of each record's 420 (a record asks for the few cells it changed)."""
    n_skills, n_modes = st.mode_member.shape
    all_s, all_f = totals
    all_n = all_s + all_f
    zero = all_n.dtype.type(0.0)
    modes: list[tuple[np.ndarray, np.ndarray]] = []  # the row's mode sums, as Sums.of adds them, once asked for

    def mode_sums() -> tuple[np.ndarray, np.ndarray]:
        if not modes:
            rows = np.array([row])  # a (1, K) product of a copied row, as Sums.of multiplies one agent's
            mode_s = raw.success[rows, :n_skills] @ st.mode_member + raw.success[rows, n_skills : n_skills + n_modes]
            mode_f = raw.failure[rows, :n_skills] @ st.mode_member + raw.failure[rows, n_skills : n_skills + n_modes]
            modes.append((mode_s[0], mode_f[0]))
        return modes[0]

    def level(s_level: np.floating, n_level: np.floating, prior: np.floating) -> np.floating:
        # np.maximum(x, 0.0): x unless it is below 0 (NaN and -0.0 kept)
        s_level = s_level if not s_level < 0.0 else zero
        n_level = n_level if not n_level < 0.0 else zero
        return (s_level + kappa * prior) / (n_level + kappa)

    def mean(column: int) -> float:
        if column == n_skills + n_modes:  # the root
            alpha, beta = all_s + kappa * pool, all_f + kappa * (1.0 - pool)
        elif column >= n_skills:  # a mode
            mode_s, mode_f = mode_sums()
            s, f = mode_s[column - n_skills], mode_f[column - n_skills]
            prior = level(all_s - s, all_n - (s + f), pool)
            alpha, beta = s + kappa * prior, f + kappa * (1.0 - prior)
        else:  # a skill: down its chain, agent -> mode -> ancestors, each level without the next one's evidence
            mode_s, mode_f = mode_sums()
            m = st.skill_mode[column]
            in_mode_s, in_mode_n = mode_s[m], mode_s[m] + mode_f[m]
            n_nodes, sub_s, sub_f = st.chain_sums(raw.success[row], raw.failure[row], column)
            sub_n = sub_s + sub_f
            prior = level(all_s - in_mode_s, all_n - in_mode_n, pool)
            prior = level(in_mode_s - sub_s[0], in_mode_n - sub_n[0], prior)
            for t in range(n_nodes - 1):
                prior = level(sub_s[t] - sub_s[t + 1], sub_n[t] - sub_n[t + 1], prior)
            alpha, beta = sub_s[-1] + kappa * prior, sub_f[-1] + kappa * (1.0 - prior)
        return float(alpha / (alpha + beta))

    return mean


def _pool_rate(raw: RawEvidence) -> np.floating:
    """The pool (every agent) as a population rate: it seeds a new agent at what agents here usually achieve.
    Summed per agent first, as it always was: another order rounds differently, and the eval tables are pinned."""
    return _pool_rate_of(raw.success.sum(axis=1), raw.failure.sum(axis=1))


def _pool_rate_of(all_s: np.ndarray, all_f: np.ndarray) -> np.floating:
    """The pool rate from each agent's total successes and failures."""
    return (all_s.sum() + 1.0) / ((all_s + all_f).sum() + 2.0)


def _posteriors(
    st: Structure, success: np.ndarray, failure: np.ndarray, sums: Sums, pool: np.ndarray, kappa: float
) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) over every column of the rows given (raw success/failure (R, C), their sums, the pool rate
    per row): each agent's row depends on its own evidence and the pool only, so one agent's can be computed alone
    (Patch.competence)."""
    n_skills = st.mode_member.shape[0]
    sub_s, sub_f, mode_s, mode_f = sums.sub_s, sums.sub_f, sums.mode_s, sums.mode_f
    sub_n = sub_s + sub_f
    mode_n = mode_s + mode_f
    all_s, all_f = success.sum(axis=1), failure.sum(axis=1)
    all_n = all_s + all_f

    def level(s_level: np.ndarray, n_level: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """The mean at a level from its evidence (own column's already taken out) and the level above."""
        return (np.maximum(s_level, 0.0) + kappa * prior) / (np.maximum(n_level, 0.0) + kappa)

    root_prior = pool
    # mode columns: on the agent level without that mode's evidence
    mode_prior = level(all_s[:, None] - mode_s, all_n[:, None] - mode_n, pool[:, None])
    # skill columns: down the chain agent -> mode -> ancestors; each level counts only what the next one lacks
    in_mode_s, in_mode_n = mode_s[:, st.skill_mode], mode_n[:, st.skill_mode]
    chain = level(all_s[:, None] - in_mode_s, all_n[:, None] - in_mode_n, pool[:, None])
    top = st.chain[:, 0] if n_skills else np.zeros(0, dtype=np.int64)
    chain = level(in_mode_s - sub_s[:, top], in_mode_n - sub_n[:, top], chain)
    for t in range(st.chain.shape[1] - 1):
        node, below = st.chain[:, t], st.chain[:, t + 1]
        is_ancestor = below >= 0
        node, below = np.maximum(node, 0), np.maximum(below, 0)
        step = level(sub_s[:, node] - sub_s[:, below], sub_n[:, node] - sub_n[:, below], chain)
        chain = np.where(is_ancestor[None, :], step, chain)
    skill_prior = chain

    alpha = np.concatenate(
        [sub_s + kappa * skill_prior, mode_s + kappa * mode_prior, (all_s + kappa * root_prior)[:, None]], axis=1
    )
    beta = np.concatenate(
        [
            sub_f + kappa * (1.0 - skill_prior),
            mode_f + kappa * (1.0 - mode_prior),
            (all_f + kappa * (1.0 - root_prior))[:, None],
        ],
        axis=1,
    )
    return alpha, beta


def _shrunk_means(calls: np.ndarray, totals: np.ndarray, n_skills: int, n_modes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-(agent, skill) means (of cost, or of prompt tokens) shrunk toward the agent's mean, which modes and
    the root use; NaN for an agent with no record."""
    agent_calls = calls.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        agent_mean = np.where(agent_calls > 0, totals.sum(axis=1) / agent_calls, np.nan)
        per_skill = (totals[:, :n_skills] + COST_KAPPA * agent_mean[:, None]) / (calls[:, :n_skills] + COST_KAPPA)
    return np.concatenate([per_skill, np.repeat(agent_mean[:, None], n_modes + 1, axis=1)], axis=1), agent_mean
