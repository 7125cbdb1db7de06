"""The handbook as numpy arrays: the shrunk competence posteriors and costs the router scores.

Columns are every skill, then every mode, then the root (the agent as a whole). The posterior of a skill is
its own evidence (its subtree's, for a category) on top of a prior centred on the level above:
skill -> parent skill -> ... -> mode -> agent -> pool, each with strength `kappa` pseudo-observations. So an
unseen skill inherits what the agent showed nearby, and a mean is never exactly 0 or 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from skillorchestra.handbook.models import Agent, Competence, CostStats, Mode, Skill
from skillorchestra.handbook.posterior import beta_mean_var

ROOT_SKILL = "*"  # evidence of steps that named no skill: the agent as a whole
DEFAULT_KAPPA = 2.0
COST_KAPPA = 1.0  # pseudo-calls pulling a thin (agent, skill) cost toward the agent's mean cost


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
    input_price: np.ndarray  # (A,) USD per million tokens, NaN when unknown
    output_price: np.ndarray
    enabled: np.ndarray  # (A,) bool
    agent_modes: list[frozenset[str]]
    kappa: float
    agent_index: dict[str, int] = field(default_factory=dict)
    skill_index: dict[str, int] = field(default_factory=dict)
    mode_index: dict[str, int] = field(default_factory=dict)

    def column_of_skill(self, skill_id: str) -> int:
        return self.skill_index[skill_id]

    def column_of_mode(self, mode_id: str) -> int:
        return len(self.skill_ids) + self.mode_index[mode_id]

    @property
    def root_column(self) -> int:
        return len(self.skill_ids) + len(self.mode_ids)


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
) -> HandbookArrays:
    ordered = _topological(skills)
    skill_ids = [s.id for s in ordered]
    mode_ids = sorted({m.id for m in modes} | {s.mode for s in ordered} | {m for a in agents for m in a.modes})
    agent_list = sorted(agents, key=lambda a: a.id)
    agent_ids = [a.id for a in agent_list]
    a_idx = {a: i for i, a in enumerate(agent_ids)}
    s_idx = {s: i for i, s in enumerate(skill_ids)}
    m_idx = {m: i for i, m in enumerate(mode_ids)}
    n_agents, n_skills, n_modes = len(agent_ids), len(skill_ids), len(mode_ids)

    success = np.zeros((n_agents, n_skills + 1))  # last column: evidence filed under ROOT_SKILL
    failure = np.zeros((n_agents, n_skills + 1))
    for row in competence:
        i = a_idx.get(row.agent_id)
        j = n_skills if row.skill_id == ROOT_SKILL else s_idx.get(row.skill_id)
        if i is None or j is None:
            continue
        success[i, j] = row.alpha - 1.0
        failure[i, j] = row.beta - 1.0
    success = np.maximum(success, 0.0)
    failure = np.maximum(failure, 0.0)

    parent = np.array([s_idx.get(s.parent_id or "", -1) for s in ordered], dtype=np.int64)
    skill_mode = np.array([m_idx[s.mode] for s in ordered], dtype=np.int64)
    # descendant-or-self matrix: subtree[k, j] = 1 when j is k or below it
    subtree = np.eye(n_skills)
    for j in range(n_skills - 1, -1, -1):  # children come after parents, so walk backwards
        p = parent[j]
        if p >= 0:
            subtree[p] += subtree[j]
    subtree = np.minimum(subtree, 1.0)
    own_s, own_f = success[:, :n_skills], failure[:, :n_skills]
    sub_s, sub_f = own_s @ subtree.T, own_f @ subtree.T
    mode_member = np.zeros((n_skills, n_modes))
    if n_skills:
        mode_member[np.arange(n_skills), skill_mode] = 1.0
    mode_s, mode_f = own_s @ mode_member, own_f @ mode_member
    all_s, all_f = success.sum(axis=1), failure.sum(axis=1)

    pool_mean = (all_s.sum() + 1.0) / (all_s.sum() + all_f.sum() + 2.0)
    mu_agent = (all_s + kappa * pool_mean) / (all_s + all_f + kappa)
    mu_mode = (mode_s + kappa * mu_agent[:, None]) / (mode_s + mode_f + kappa)
    prior_skill = np.empty((n_agents, n_skills))
    mu_skill = np.empty((n_agents, n_skills))
    for k in range(n_skills):  # topological order: a parent's mean is ready before its children
        prior_skill[:, k] = mu_mode[:, skill_mode[k]] if parent[k] < 0 else mu_skill[:, parent[k]]
        mu_skill[:, k] = (sub_s[:, k] + kappa * prior_skill[:, k]) / (sub_s[:, k] + sub_f[:, k] + kappa)

    alpha = np.concatenate(
        [
            sub_s + kappa * prior_skill,
            mode_s + kappa * mu_agent[:, None],
            (all_s + kappa * pool_mean)[:, None],
        ],
        axis=1,
    )
    beta = np.concatenate(
        [
            sub_f + kappa * (1.0 - prior_skill),
            mode_f + kappa * (1.0 - mu_agent[:, None]),
            (all_f + kappa * (1.0 - pool_mean))[:, None],
        ],
        axis=1,
    )
    mean, var = beta_mean_var(alpha, beta)
    evidence = np.concatenate([sub_s + sub_f, mode_s + mode_f, (all_s + all_f)[:, None]], axis=1)

    cost_mean, agent_cost = _cost_arrays(costs, a_idx, s_idx, n_agents, n_skills, n_modes)
    return HandbookArrays(
        agent_ids=agent_ids,
        skill_ids=skill_ids,
        mode_ids=mode_ids,
        agents=agent_list,
        skills=ordered,
        alpha=alpha,
        beta=beta,
        mean=mean,
        var=var,
        evidence=evidence,
        cost_mean=cost_mean,
        agent_cost=agent_cost,
        input_price=np.array([np.nan if a.input_per_mtok is None else a.input_per_mtok for a in agent_list]),
        output_price=np.array([np.nan if a.output_per_mtok is None else a.output_per_mtok for a in agent_list]),
        enabled=np.array([a.enabled for a in agent_list], dtype=bool),
        agent_modes=[frozenset(a.modes) for a in agent_list],
        kappa=kappa,
        agent_index=a_idx,
        skill_index=s_idx,
        mode_index=m_idx,
    )


def _cost_arrays(
    costs: Sequence[CostStats],
    a_idx: dict[str, int],
    s_idx: dict[str, int],
    n_agents: int,
    n_skills: int,
    n_modes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-(agent, skill) mean cost shrunk toward the agent's mean; modes and root use the agent's mean."""
    calls = np.zeros((n_agents, n_skills + 1))
    total = np.zeros((n_agents, n_skills + 1))
    for row in costs:
        i = a_idx.get(row.agent_id)
        j = n_skills if row.skill_id == ROOT_SKILL else s_idx.get(row.skill_id)
        if i is None or j is None or row.n <= 0:
            continue
        calls[i, j] = row.n
        total[i, j] = row.n * row.mean_cost_usd
    agent_calls = calls.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        agent_cost = np.where(agent_calls > 0, total.sum(axis=1) / agent_calls, np.nan)
        per_skill = (total[:, :n_skills] + COST_KAPPA * agent_cost[:, None]) / (calls[:, :n_skills] + COST_KAPPA)
    cost_mean = np.concatenate([per_skill, np.repeat(agent_cost[:, None], n_modes + 1, axis=1)], axis=1)
    return cost_mean, agent_cost
