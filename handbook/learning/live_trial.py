"""The live handbook as one more candidate: does the learned version route held-out tasks at least as well?

The learner picks the best of its own candidates on validation, but none of them is the handbook already live.
Comparing with the live posteriors would favour the live handbook, which has usually seen those very outcomes (most
of all when learning from its own event log). So the trial keeps what the live handbook *is* (its skills and the
way steps are matched to them) and gives it what the candidates had: profiled on the learner's training tasks,
replayed on its validation tasks through the real router, at the same lambda and reference cost.

A learned version whose validation utility falls below the live skills' is not made live by itself (learning/gate.py).
Ties go to the learned version: it was chosen on these tasks among its own candidates, and it knows every agent of
the data. Neither side is quite unbiased: the learned one is the best of its candidates on these tasks, and a live
labeller learned earlier from the same data may have seen them; the trial guards against a clear loss, not a close one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from skillorchestra.handbook.arrays import DEFAULT_KAPPA, document_arrays
from skillorchestra.handbook.learning.profile import Outcomes, profile
from skillorchestra.handbook.learning.replay import labeller_matrix, replay_arrays, task_modes
from skillorchestra.handbook.models import Agent, HandbookDocument, Mode, Skill
from skillorchestra.handbook.traces import AgentPrice, TraceTask

# (step text, its mode or None) -> (skill weights among the live skills, which matcher found them)
StepMatcher = Callable[[str, str | None], tuple[list[tuple[str, float]], str]]
TIE = 1e-12  # utilities closer than this are equal


@dataclass(frozen=True)
class LiveTrial:
    live_version: int | None
    skills: int  # the live handbook's skills
    matched_skills: int  # of them, those some training or validation step demanded (with their ancestors)
    tasks: int  # validation tasks replayed (with at least one judged agent)
    matched_by: str  # the matcher that found most of the steps' skills ("lexical", "semantic", "learned (...)")
    accuracy: float
    avg_cost: float
    utility: float  # the live skills' validation utility at the learner's lambda
    learned_utility: float  # the learned version's, on the same tasks
    lambda_: float

    @property
    def live_wins(self) -> bool:
        return self.utility > self.learned_utility + TIE

    def as_dict(self) -> dict[str, Any]:
        """The version's metrics.live_trial: the fields (lambda_ as "lambda") and the verdict."""
        fields = asdict(self)
        fields["lambda"] = fields.pop("lambda_")
        return {**fields, "live_wins": self.live_wins}

    def reason(self) -> str:
        """Why the learned version stays stored only (for not_live_reason)."""
        return (
            f"the live handbook's skills ({self.matched_skills} of its {self.skills} match these tasks) route the "
            f"{self.tasks} validation tasks better: profiled on "
            f"the same training tasks they reach utility {self.utility:.4f} (accuracy {self.accuracy:.3f}, "
            f"avg cost ${self.avg_cost:.3g}) against the learned version's {self.learned_utility:.4f} at "
            f"lambda {self.lambda_:g}"
        )


class _Labeller:
    """labeller_matrix's interface over a step matcher: each step matched once, counting which matcher answered."""

    def __init__(self, match: StepMatcher) -> None:
        self.match = match
        self.sources: Counter[str] = Counter()
        self._found: dict[tuple[str, str | None], list[tuple[str, float]]] = {}

    def weights(self, query: str, mode: str | None = None) -> list[tuple[str, float]]:
        key = (query, mode)
        found = self._found.get(key)
        if found is None:
            found, source = self.match(query, mode)
            self._found[key] = found
            self.sources[source] += 1
        return found

    def matched(self) -> set[str]:
        return {skill_id for found in self._found.values() for skill_id, weight in found if weight > 0}


def _matched_with_ancestors(skills: Sequence[Skill], matched: set[str]) -> list[Skill]:
    """The skills some step demanded, and their ancestors (their posteriors shrink toward them). The others hold
    no evidence in the trial and route none of its steps, and a live handbook of thousands of skills would make the
    (tasks x skills) weight matrices the trial's largest cost."""
    by_id = {s.id: s for s in skills}
    kept: set[str] = set()
    for skill_id in matched:
        while skill_id in by_id and skill_id not in kept:
            kept.add(skill_id)
            skill_id = by_id[skill_id].parent_id or ""
    return [s for s in skills if s.id in kept]


def live_trial(
    modes: Sequence[Mode],
    skills: Sequence[Skill],
    agents: Sequence[Agent],
    match: StepMatcher,
    train: Sequence[TraceTask],
    val: Sequence[TraceTask],
    prices: Mapping[str, AgentPrice],
    *,
    lambda_: float,
    c_ref: float,
    learned_utility: float,
    kappa: float = DEFAULT_KAPPA,
    seed: int = 0,
    live_version: int | None = None,
) -> LiveTrial:
    """Profile the live `skills` (matched to steps by `match`) on `train` for `agents`, replay `val`, and compare
    with the learned version's validation utility (both normalised by the learner's `c_ref`)."""
    agent_ids = sorted(a.id for a in agents)
    mode_ids = [m.id for m in modes]
    labeller = _Labeller(match)
    train_queries, train_modes = [t.query for t in train], task_modes(train, mode_ids)
    queries, val_modes = [t.query for t in val], task_modes(val, mode_ids)
    for query, mode in zip([*train_queries, *queries], [*train_modes, *val_modes], strict=True):
        labeller.weights(query, mode)
    demanded = _matched_with_ancestors(skills, labeller.matched())
    skill_ids = [s.id for s in demanded]
    train_weights = labeller_matrix(labeller, train_queries, train_modes, skill_ids)
    competence, cost = profile(train_weights, skill_ids, Outcomes.build(train, prices, agent_ids))
    document = HandbookDocument(
        modes=list(modes), skills=demanded, agents=list(agents), competence=competence, cost=cost
    )
    arrays = document_arrays(document, kappa)
    val_weights = labeller_matrix(labeller, queries, val_modes, arrays.skill_ids)
    outcomes = Outcomes.build(val, prices, agents=arrays.agent_ids)
    result = replay_arrays(
        arrays, val_weights, queries, val_modes, outcomes, [t.id for t in val], lambda_, "mean", seed
    )
    return LiveTrial(
        live_version=live_version,
        skills=len(skills),
        matched_skills=len(demanded),
        tasks=len(result.task_ids),
        matched_by=labeller.sources.most_common(1)[0][0] if labeller.sources else "none",
        accuracy=result.accuracy,
        avg_cost=result.avg_cost,
        utility=result.utility(lambda_, c_ref),
        learned_utility=learned_utility,
        lambda_=lambda_,
    )
