"""A candidate handbook = a skill set, its labeller and its profile; built from scratch and replayed on validation.

The evaluator holds what every candidate shares (prototype similarities of the train and validation queries,
outcome matrices, agents) so that building and replaying one candidate costs a few matrix products: selection
and every refinement step go through `evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from skillorchestra.handbook.arrays import HandbookArrays, document_arrays
from skillorchestra.handbook.learning.labeller import SkillLabeller, calibrate_temperature
from skillorchestra.handbook.learning.length_fit import fit_length_effect
from skillorchestra.handbook.learning.profile import Outcomes, profile
from skillorchestra.handbook.learning.replay import ReplayResult, replay_arrays, skill_quality
from skillorchestra.handbook.learning.taxonomy import Prototypes, SkillSpec, Taxonomy, ownership_problems
from skillorchestra.handbook.models import Agent, HandbookDocument, LengthEffect, Mode, Skill

CALIBRATION_ROWS = 1500


@dataclass
class Split:
    """One side of the data: queries, the modes their steps name, outcomes, and similarities to all prototypes."""

    ids: list[str]
    queries: list[str]
    modes: list[str | None]
    outcomes: Outcomes
    sims: np.ndarray  # (N, P)

    def take(self, rows: np.ndarray) -> Split:
        return Split(
            [self.ids[i] for i in rows],
            [self.queries[i] for i in rows],
            [self.modes[i] for i in rows],
            self.outcomes.take(rows),
            self.sims[rows],
        )

    @classmethod
    def joined(cls, parts: Sequence[Split]) -> Split:
        return cls(
            [x for p in parts for x in p.ids],
            [x for p in parts for x in p.queries],
            [x for p in parts for x in p.modes],
            Outcomes.joined([p.outcomes for p in parts]),
            np.concatenate([p.sims for p in parts]),
        )


@dataclass
class Built:
    name: str
    depth: int
    taxonomy: Taxonomy
    specs: list[SkillSpec]
    labeller: SkillLabeller
    document: HandbookDocument
    arrays: HandbookArrays
    train_weights: np.ndarray  # (N_train, S) in labeller.skill_ids order
    val: ReplayResult
    utility: float
    panel_utility: float  # mean validation utility over the evaluator's lambda panel (breaks ties of `utility`)


class Evaluator:
    def __init__(
        self,
        base: SkillLabeller,
        protos: Prototypes,
        train: Split,
        val: Split,
        agents: Sequence[Agent],
        modes: Sequence[Mode],
        lambda_: float,
        c_ref: float,
        kappa: float,
        seed: int,
        panel: Sequence[float] = (),
    ) -> None:
        self.base, self.protos, self.train, self.val = base, protos, train, val
        # ties of validation utility at lambda_ go to the mean over lambda_ and these lambdas, so skills that
        # change nothing at lambda_ but pay at other prices of cost survive
        self.panel = sorted({float(lambda_), *(float(x) for x in panel)})
        self.agents, self.modes = list(agents), list(modes)
        self.lambda_, self.c_ref, self.kappa, self.seed = lambda_, c_ref, kappa, seed
        rng = np.random.default_rng(seed)
        n = len(train.queries)
        self._calibration_rows = np.sort(rng.permutation(n)[: min(n, CALIBRATION_ROWS)])
        self.evaluations = 0

    def labeller(self, specs: Sequence[SkillSpec], temperature: float | None = None) -> SkillLabeller:
        """The base prototypes mapped to these skills; the temperature is fitted on training queries unless given."""
        owner: dict[int, str] = {p: s.id for s in specs for p in s.protos}
        labelled = [s for s in specs if s.protos]
        skill_modes = {s.id: s.mode for s in labelled}
        if not labelled:
            return self.base.with_skills([], {}, temperature or self.base.temperature)
        if problems := ownership_problems(specs, len(self.protos.members)):
            raise ValueError("skill set does not own the prototypes: " + "; ".join(problems))
        proto_skills = [owner[p] for p in range(len(self.protos.members))]
        labeller = self.base.with_skills(proto_skills, skill_modes, temperature or self.base.temperature)
        if temperature is None:
            index = {s: j for j, s in enumerate(labeller.skill_ids)}
            proto_col = np.array([index[s] for s in proto_skills])
            rows = self._calibration_rows
            target = np.where(self.protos.of_task[rows] >= 0, proto_col[self.protos.of_task[rows]], -1)
            t = calibrate_temperature(self.train.sims[rows], proto_col, target, len(labeller.skill_ids))
            labeller = labeller.with_skills(proto_skills, skill_modes, t)
        return labeller

    def document(
        self,
        specs: Sequence[SkillSpec],
        labeller: SkillLabeller,
        weights: np.ndarray,
        outcomes: Outcomes,
        skills: Sequence[Skill] | None = None,
        description: str = "",
    ) -> HandbookDocument:
        competence, cost = profile(weights, labeller.skill_ids, outcomes)
        if skills is None:
            skills = [Skill(id=s.id, mode=s.mode, parent_id=s.parent) for s in specs]
        return HandbookDocument(
            description=description,
            modes=self.modes,
            skills=list(skills),
            agents=self.agents,
            competence=competence,
            cost=cost,
        )

    def weights(self, labeller: SkillLabeller, split: Split) -> np.ndarray:
        # prototypes added by refinement are appended: a labeller made before them reads its own first columns
        return labeller.weights_matrix(split.sims[:, : len(labeller.prototype_skills)], split.modes)

    def evaluate(self, name: str, depth: int, taxonomy: Taxonomy, temperature: float | None = None) -> Built:
        if depth > 0 and taxonomy.categories:
            taxonomy.check(len(self.protos.members))  # a broken refinement move fails here, naming what it broke
        specs = taxonomy.skills(depth)
        labeller = self.labeller(specs, temperature)
        train_w = self.weights(labeller, self.train)
        document = self.document(specs, labeller, train_w, self.train.outcomes)
        arrays = document_arrays(document, self.kappa)
        result = self.replay(arrays, labeller, self.val)
        self.evaluations += 1
        return Built(
            name=name,
            depth=depth,
            taxonomy=taxonomy,
            specs=specs,
            labeller=labeller,
            document=document,
            arrays=arrays,
            train_weights=train_w,
            val=result,
            utility=result.utility(self.lambda_, self.c_ref),
            panel_utility=self.panel_utility(arrays, labeller, result),
        )

    def panel_utility(
        self, arrays: HandbookArrays, labeller: SkillLabeller, at_lambda: ReplayResult, split: Split | None = None
    ) -> float:
        """Mean utility on `split` (validation by default) over the panel of lambdas (the replay at lambda_,
        `at_lambda`, is reused)."""
        split = self.val if split is None else split
        total = 0.0
        for lam in self.panel:
            res = at_lambda if lam == self.lambda_ else self.replay(arrays, labeller, split, lam)
            total += res.utility(lam, self.c_ref)
        return total / len(self.panel)

    def fit_length_effect(
        self, arrays: HandbookArrays, labeller: SkillLabeller, splits: Sequence[Split], ridge: float
    ) -> LengthEffect:
        """Fit the length effect of handbook `arrays` (profiled with `labeller`) on the tasks of `splits`."""
        weights = np.concatenate(
            [_reorder(self.weights(labeller, s), labeller.skill_ids, arrays.skill_ids) for s in splits]
        )
        quality = skill_quality(arrays, weights, [m for s in splits for m in s.modes])
        scores = np.concatenate([s.outcomes.scores for s in splits])
        return fit_length_effect(quality, scores, [q for s in splits for q in s.queries], arrays.agent_ids, ridge)

    def replay(
        self, arrays: HandbookArrays, labeller: SkillLabeller, split: Split, lambda_: float | None = None
    ) -> ReplayResult:
        w = _reorder(self.weights(labeller, split), labeller.skill_ids, arrays.skill_ids)
        lam = self.lambda_ if lambda_ is None else lambda_
        return replay_arrays(arrays, w, split.queries, split.modes, split.outcomes, split.ids, lam, "mean", self.seed)


def _reorder(weights: np.ndarray, source: Sequence[str], target: Sequence[str]) -> np.ndarray:
    index: Mapping[str, int] = {s: j for j, s in enumerate(source)}
    out = np.zeros((weights.shape[0], len(target)))
    for k, skill in enumerate(target):
        j = index.get(skill)
        if j is not None:
            out[:, k] = weights[:, j]
    return out
