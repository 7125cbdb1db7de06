"""The go-live gate of a learned version: whether it may replace the live handbook by itself, or would lose what
the live handbook knows (validation could not compare agents, agents with live evidence would go back on the prior
or be left out, or the live handbook's skills route the validation tasks better), and how a version learned from
the server's own log keeps the live agents. Domain rules only: server/jobs.py runs the learning and applies them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from skillorchestra.handbook.errors import counted, named
from skillorchestra.handbook.models import Agent, Competence, HandbookDocument, Mode, without_agents

if TYPE_CHECKING:
    from skillorchestra.handbook.embedding import Embedder
    from skillorchestra.handbook.learning.live_trial import LiveTrial
    from skillorchestra.handbook.learning.pipeline import LearnResult
    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.handbook.traces import AgentPrice


# Validation compares two handbooks only on tasks where it saw two or more agents (the replay never credits an
# agent without an outcome). A log of routed steps has one agent per step: with fewer comparable tasks than this,
# the learner's choice of skills is unvalidated, so it must not silently replace a live handbook that has skills.
MIN_COMPARABLE_TASKS = 10
PRIOR_MASS = 2.0  # alpha + beta of Beta(1, 1): a competence row with more holds evidence
AGENTS_NAMED = 3  # agents named in a one-line reason, the rest counted
DROPPED_NAMED = 6  # agents named in the reason a learned version would leave them out, the rest counted


def agents_back_on_prior(
    document: HandbookDocument, learned: Sequence[str], live_competence: Sequence[Competence]
) -> list[str]:
    """Agents the new version keeps without any outcome in the learning data although the live handbook holds
    competence evidence for them: the new version would route them on the prior, throwing that evidence away
    (learning from the event log keeps every live agent, the log usually covers a few). A disabled agent takes no
    steps, so the log never gets its outcomes: it does not hold the version back (enabled again, it starts over)."""
    evidence = {c.agent_id for c in live_competence if c.alpha + c.beta > PRIOR_MASS + 1e-9}
    outcomes = set(learned)
    return sorted(a.id for a in document.agents if a.enabled and a.id not in outcomes and a.id in evidence)


def agents_dropped(
    document: HandbookDocument, live_agents: Sequence[Agent], live_competence: Sequence[Competence]
) -> list[str]:
    """Enabled live agents holding competence evidence that the new version leaves out altogether (traces of other
    agents): making it live would throw that evidence away, as putting them back on the prior would (QA: a trace of
    3 other agents went live and dropped 9 agents with evidence). A disabled agent does not hold it back, as in
    agents_back_on_prior. The shipped example's own evidence does not count: learning one's traces in place of the
    example, whose agents go, is the first use; outcomes recorded on the example since make it evidence."""
    kept = {a.id for a in document.agents}
    candidates = {a.id for a in live_agents if a.enabled and a.id not in kept}
    rows = [c for c in live_competence if c.agent_id in candidates and c.alpha + c.beta > PRIOR_MASS + 1e-9]
    if not rows:
        return []
    from skillorchestra.handbook.example import example_document

    shipped = {(c.agent_id, c.skill_id, c.alpha, c.beta) for c in example_document().competence}
    return sorted({c.agent_id for c in rows if (c.agent_id, c.skill_id, c.alpha, c.beta) not in shipped})


def try_live_skills(
    store: HandbookStore,
    result: LearnResult,
    prices: Mapping[str, AgentPrice],
    embedder: Embedder | None,
    version: int,
) -> LiveTrial | None:
    """The live handbook's skills as a candidate (learning/live_trial.py), matched to the steps as a server with
    the learner's matcher choice would match them: the live version's learned labeller when it has one, else the
    semantic matcher on the learner's embedder (its vectors are cached by now), else the lexical one; `version` is
    the live version it stands for. None when
    the live handbook has no skills (the learned candidates include one without skills)."""
    from skillorchestra.handbook.inference import HandbookMatcher, live_demands
    from skillorchestra.handbook.learning.live_trial import live_trial
    from skillorchestra.handbook.matcher import LexicalMatcher
    from skillorchestra.handbook.semantic import SemanticMatcher
    from skillorchestra.handbook.service import INFERRED_SKILLS

    skills = store.skills()
    if not skills:
        return None
    lexical = LexicalMatcher(store)
    base: LexicalMatcher | SemanticMatcher = lexical
    if embedder is not None:
        base = SemanticMatcher(store, load=lambda: (embedder, ""), fallback=lexical)
    matcher = HandbookMatcher(store, base)
    live = {s.id for s in skills}

    def match(text: str, mode: str | None) -> tuple[list[tuple[str, float]], str]:
        return live_demands(matcher, text, mode, INFERRED_SKILLS, live)

    metrics = result.metrics
    return live_trial(
        store.modes(),
        skills,
        result.document.agents,
        match,
        result.train,
        result.val,
        prices,
        lambda_=float(metrics["lambda"]),
        c_ref=float(metrics["c_ref"]),
        learned_utility=float(metrics["val"]["utility"]),
        kappa=float(metrics["kappa"]),
        seed=int(metrics["seed"]),
        live_version=version or None,
    )


def not_live_reasons(
    comparable: int,
    validated_on: str,
    back_on_prior: Sequence[str],
    live: Mapping[str, int],
    trial: LiveTrial | None = None,
    dropped: Sequence[str] = (),
    log_forgetting: float | None = None,
) -> list[str]:
    """Why a learned version must not replace the live handbook by itself (empty: it may).

    It may when validation compared agents on enough held-out tasks, or when the live handbook is empty (nothing
    to lose), and only if no agent with live evidence would be put back on the prior and the live handbook's
    skills, given the same training tasks, do not route the validation tasks better (`trial`), no agent with
    live evidence would be left out (`dropped`: agents_dropped), and the server's log it was learned from was not
    recorded with forgetting (`log_forgetting`: a server following drifting agents)."""
    reasons: list[str] = []
    if comparable < MIN_COMPARABLE_TASKS and (live["skills"] or live["competence"]):
        if validated_on != "validation split":
            reasons.append(
                "it was validated on its own training tasks (no validation split), which cannot show that it routes "
                "better than the live handbook (hold out a validation share of enough tasks)"
            )
        else:
            reasons.append(
                f"only {comparable} validation tasks have outcomes of two or more agents (at least "
                f"{MIN_COMPARABLE_TASKS} are needed to show that it routes better than the live handbook; "
                "a log of routed steps has one agent per step: route some steps to several agents with "
                "allowed_agents, or learn from traces that run every agent)"
            )
    if back_on_prior:
        reasons.append(
            f"it would put {len(back_on_prior)} agents that have evidence in the live handbook back on the prior "
            f"({named(back_on_prior, AGENTS_NAMED)}), as the learning data has no outcomes of theirs"
        )
    if dropped:
        reasons.append(
            f"it would drop {counted(len(dropped), 'agent')} with evidence in the live handbook "
            f"({named(dropped, DROPPED_NAMED)}) and their evidence, as the learning data has no outcomes of theirs "
            "(learn from traces that include them, or disable them first)"
        )
    if log_forgetting is not None:
        reasons.append(
            f"the log's outcomes were recorded with forgetting (gamma {log_forgetting:g}) and learning weighs them all "
            "alike, so an agent whose quality changed is judged on its old record again (promote it if the agents "
            "have not changed)"
        )
    if trial is not None and trial.live_wins:
        reasons.append(trial.reason())
    return reasons


def _without_agents(document: HandbookDocument, gone: set[str]) -> HandbookDocument:
    return document.model_copy(
        update={
            "agents": [a for a in document.agents if a.id not in gone],
            "competence": [c for c in document.competence if c.agent_id not in gone],
            "cost": [c for c in document.cost if c.agent_id not in gone],
            "length_effect": without_agents(document.length_effect, "slopes", gone),
            "ci_inflation": without_agents(document.ci_inflation, "evidence", gone),
        }
    )


def keep_live_agents(
    document: HandbookDocument, live: Sequence[Agent], live_modes: Sequence[Mode] = ()
) -> HandbookDocument:
    """Learning from the database's own log: keep each agent's settings (enabled, modes, description, prices)
    and keep agents that have no outcomes yet (they route on the prior) instead of dropping them. An agent the log
    holds but the live handbook no longer does was deleted (or replaced by an import) since: it does not come back,
    nor do its competence, cost and length slope. The live modes the agents serve stay too (an agent may only name
    modes the handbook has), when the learned ones lack them. A kept agent that has evidence in the live handbook
    loses it here: agents_back_on_prior finds those, and such a version is not made live by itself."""
    by_id = {a.id: a for a in live}
    gone = {a.id for a in document.agents} - set(by_id)
    if gone:
        document = _without_agents(document, gone)
    agents: list[Agent] = []
    for agent in document.agents:
        old = by_id.pop(agent.id)
        agents.append(
            agent.model_copy(
                update={
                    "description": agent.description or old.description,
                    "modes": old.modes,
                    "enabled": old.enabled,
                    "input_per_mtok": agent.input_per_mtok if agent.input_per_mtok is not None else old.input_per_mtok,
                    "output_per_mtok": (
                        agent.output_per_mtok if agent.output_per_mtok is not None else old.output_per_mtok
                    ),
                    "cost_per_call_usd": (  # agents.json may price by the call
                        agent.cost_per_call_usd if agent.cost_per_call_usd is not None else old.cost_per_call_usd
                    ),
                }
            )
        )
    agents.extend(by_id.values())
    learned = {m.id for m in document.modes} | {s.mode for s in document.skills}
    served = {m for a in agents for m in a.modes}
    kept = [m for m in live_modes if m.id in served and m.id not in learned]
    return document.model_copy(update={"agents": agents, "modes": [*document.modes, *kept]})
