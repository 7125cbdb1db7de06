"""Hypothesis strategies for the routing property tests: router inputs and whole handbook documents.

Kept apart from the tests so the pure-router file and the service file draw the same kinds of pools (few agents,
few skills, prices from a short list so equal costs and exact ties come up often, some agents of unknown cost).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from skillorchestra.handbook.models import Agent, Competence, CostStats, HandbookDocument, Mode, Skill
from skillorchestra.handbook.posterior import beta_mean_var
from skillorchestra.handbook.router import RouteInputs

MODES = ("m0", "m1")
LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # interface.md's default sweep
# few distinct values: equal costs and equal posteriors (exact ties) must come up, not only in one draw of a million
PRICES = (None, 0.0, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0)
EVIDENCE = st.sampled_from((1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 20.0, 60.0)) | st.floats(1.0, 200.0)


@st.composite
def route_inputs(draw: st.DrawFn, min_agents: int = 1, max_agents: int = 6) -> RouteInputs:
    """Router inputs as the service builds them: Beta posteriors, weights summing to 1, costs >= 0 (some equal),
    c_ref the largest cost or 0 (no known cost), at least one eligible agent, sometimes a length shift."""
    n_agents = draw(st.integers(min_agents, max_agents))
    n_cols = draw(st.integers(1, 4))
    alpha = np.array(draw(st.lists(EVIDENCE, min_size=n_agents * n_cols, max_size=n_agents * n_cols)))
    beta = np.array(draw(st.lists(EVIDENCE, min_size=n_agents * n_cols, max_size=n_agents * n_cols)))
    alpha, beta = alpha.reshape(n_agents, n_cols), beta.reshape(n_agents, n_cols)
    raw = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=n_cols, max_size=n_cols)))
    weights = raw / raw.sum()
    costs = st.sampled_from((0.0, 0.0001, 0.001, 0.002, 0.01, 0.05)) | st.floats(0.0, 0.1)
    cost = np.array(draw(st.lists(costs, min_size=n_agents, max_size=n_agents)))
    c_ref = float(cost.max()) if draw(st.booleans()) or cost.max() == 0 else 0.0
    eligible = np.array(draw(st.lists(st.booleans(), min_size=n_agents, max_size=n_agents)))
    eligible[draw(st.integers(0, n_agents - 1))] = True
    shift = None
    if draw(st.booleans()):
        shift = np.array(draw(st.lists(st.floats(-0.5, 0.5), min_size=n_agents, max_size=n_agents)))
    mean, var = beta_mean_var(alpha, beta)
    return RouteInputs(
        mean=mean,
        var=var,
        alpha=alpha,
        beta=beta,
        weights=weights,
        cost=cost,
        c_ref=c_ref,
        eligible=eligible,
        shift=shift,
    )


def permuted(inputs: RouteInputs, order: np.ndarray) -> RouteInputs:
    """The same pool with its agents (rows) in another order: row i of the result is row order[i]."""
    fields: dict[str, Any] = dict(inputs.__dict__)
    for name in ("mean", "var", "alpha", "beta", "cost", "eligible", "shift", "ci_scale"):
        if fields[name] is not None:
            fields[name] = fields[name][order]
    return RouteInputs(**fields)


@st.composite
def documents(
    draw: st.DrawFn,
    max_agents: int = 5,
    max_skills: int = 5,
    scoped: bool = True,
    costs: bool = True,
) -> HandbookDocument:
    """A valid handbook: two modes, a small skill tree, agents with prices from PRICES (None: unknown), some
    disabled or scoped to a mode, competence on skills, "@mode" and "*" cells, and some recorded costs."""
    skills: list[Skill] = []
    for k in range(draw(st.integers(1, max_skills))):
        mode = draw(st.sampled_from(MODES))
        parents = [s.id for s in skills if s.mode == mode]
        parent = draw(st.none() | st.sampled_from(parents)) if parents else None
        skills.append(Skill(id=f"s{k}", mode=mode, parent_id=parent, description=f"skill {k}"))
    agents = []
    for i in range(draw(st.integers(1, max_agents))):
        modes = draw(st.sampled_from(([], ["m0"], ["m1"], ["m0", "m1"]))) if scoped else []
        unpriced = draw(st.integers(0, 3)) == 0  # an agent of unknown cost unless it has cost records
        agents.append(
            Agent(
                id=f"a{i}",
                modes=modes,
                input_per_mtok=None if unpriced else draw(st.sampled_from(PRICES)),
                output_per_mtok=None if unpriced else draw(st.sampled_from(PRICES)),
                enabled=i == 0 or draw(st.booleans()) or not scoped,
            )
        )
    columns = [s.id for s in skills] + [f"@{m}" for m in MODES] + ["*"]
    competence = [
        Competence(agent_id=a.id, skill_id=c, alpha=draw(EVIDENCE), beta=draw(EVIDENCE))
        for a in agents
        for c in columns
        if draw(st.integers(0, 2)) == 0
    ]
    cost = []
    if costs:
        for a in agents:
            recorded = draw(st.booleans())  # half the agents have cost records (some on several columns)
            for c in columns:
                if recorded and draw(st.integers(0, 2)) == 0:
                    n = draw(st.sampled_from((1.0, 3.0, 10.0)))
                    mean_cost = draw(st.sampled_from((0.0001, 0.001, 0.004, 0.02)))
                    step_n = draw(st.sampled_from((0.0, n)))
                    cost.append(
                        CostStats(
                            agent_id=a.id,
                            skill_id=c,
                            n=n,
                            mean_cost_usd=mean_cost,
                            mean_step_tokens=draw(st.sampled_from((0.0, 50.0, 400.0))) if step_n else 0.0,
                            n_step_tokens=step_n,
                        )
                    )
    return HandbookDocument(
        modes=[Mode(id=m) for m in MODES], skills=skills, agents=agents, competence=competence, cost=cost
    )


@st.composite
def demands(draw: st.DrawFn, document: HandbookDocument) -> list[tuple[str, float]]:
    """A step's skills and weights (not normalised; at least one positive)."""
    ids = [s.id for s in document.skills]
    chosen = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=min(3, len(ids)), unique=True))
    weights = draw(st.lists(st.sampled_from((0.1, 0.25, 0.5, 1.0, 3.0)), min_size=len(chosen), max_size=len(chosen)))
    return list(zip(chosen, weights, strict=True))


TEXTS = st.sampled_from(("fix the bug", "summarise this report " * 10, "q" * 4000, "a short step"))
