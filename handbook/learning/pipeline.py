"""`learn`: outcome traces in, a Skill Handbook out: offline, no LLM, deterministic for a seed.

split -> features -> discovery (categories from task labels or clusters, leaves where agents differ) ->
identification (the labeller) -> profiling -> refinement (checked on validation) -> selection of the
granularity (each candidate replayed on validation through the real router) -> the selected handbook,
re-profiled on every judged task, with readable skills.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skillorchestra.handbook.arrays import DEFAULT_KAPPA, document_arrays
from skillorchestra.handbook.embedding import Embedder
from skillorchestra.handbook.errors import InvalidInput, counted
from skillorchestra.handbook.learning.candidates import Built, Evaluator, Split
from skillorchestra.handbook.learning.ci_inflation import inflation, measure_selected
from skillorchestra.handbook.learning.discovery import (
    Corpus,
    DiscoveryParams,
    discover,
    few_tasks_note,
    prototype_table,
    prototype_vectors,
)
from skillorchestra.handbook.learning.features import CachedEmbedder, TfidfSpace
from skillorchestra.handbook.learning.grouping import utilities
from skillorchestra.handbook.learning.labeller import SkillLabeller
from skillorchestra.handbook.learning.length_fit import DEFAULT_RIDGE
from skillorchestra.handbook.learning.length_trial import length_trial
from skillorchestra.handbook.learning.naming import describe
from skillorchestra.handbook.learning.profile import Outcomes
from skillorchestra.handbook.learning.refine import RefineParams, Step, refine
from skillorchestra.handbook.learning.replay import task_modes
from skillorchestra.handbook.learning.selection import CandidateReport, report, select
from skillorchestra.handbook.learning.taxonomy import DEFAULT_MODE, Prototypes, Taxonomy
from skillorchestra.handbook.models import DEFAULT_SELECTION, DESCRIPTION_MAX, Agent, HandbookDocument, Mode
from skillorchestra.handbook.traces import AgentPrice, TraceTask

Progress = Callable[[float, str], None]
# Replaces offline discovery (e.g. the LLM learner): (corpus, training tasks, params) -> (taxonomy, prototype
# members, prototype modes); the labeller, profiling, refinement and selection then run as usual.
Discoverer = Callable[[Corpus, Sequence[TraceTask], DiscoveryParams], tuple[Taxonomy, list[np.ndarray], list[str]]]
DEFAULT_TEMPERATURE = 0.05


@dataclass(frozen=True)
class LearnParams:
    discovery: DiscoveryParams = field(default_factory=DiscoveryParams)
    refine: RefineParams = field(default_factory=RefineParams)
    kappa: float = DEFAULT_KAPPA  # must match the server's HandbookSettings.kappa for replay == serving
    profile_on_all: bool = True  # the selected handbook's evidence: train + validation (True) or train only
    # ties at lambda go to mean validation utility over these too (interface.md's default sweep: route_step takes
    # a lambda per call, so of two equal handbooks the one that serves the whole sweep better wins)
    lambda_panel: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    # ridge of the per-agent length slopes (length_fit.py), > 0; None: never learn a length effect
    length_ridge: float | None = DEFAULT_RIDGE

    def __post_init__(self) -> None:
        ridge = self.length_ridge
        if ridge is not None and not (math.isfinite(ridge) and ridge > 0):
            raise InvalidInput("length_ridge", ridge, "a finite number > 0, or None for no length effect")


@dataclass
class LearnResult:
    document: HandbookDocument
    labeller: SkillLabeller
    candidates: list[CandidateReport]
    selected: str
    metrics: dict[str, Any]
    seconds: float
    llm_calls: int = 0
    usd: float = 0.0
    # the split the candidates were profiled on and compared on (validation is `train` when there was no split):
    # a trial of the live handbook's skills (learning/live_trial.py) must see the same tasks
    train: list[TraceTask] = field(default_factory=list)
    val: list[TraceTask] = field(default_factory=list)


def split_tasks(tasks: Sequence[TraceTask], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation rows, stratified by task label (an unlabelled task is its own stratum's member)."""
    rng = np.random.default_rng(seed)
    strata: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        strata.setdefault(task.task or "", []).append(i)
    val: list[int] = []
    for label in sorted(strata):
        rows = np.array(strata[label])
        rows = rows[rng.permutation(rows.size)]
        val.extend(rows[: int(round(rows.size * val_fraction))].tolist())
    val_set = set(val)
    train = [i for i in range(len(tasks)) if i not in val_set]
    if not train:  # tiny data: keep one task to learn from
        train, val = val[:1], val[1:]
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def learnable(
    tasks: Sequence[TraceTask], val_fraction: float, lambda_: float, source: tuple[str, object] | None = None
) -> list[TraceTask]:
    """The judged tasks, once the settings are checked: InvalidInput before any work (and any progress line).
    `source`: the argument and value the tasks came from, which a refusal names (QA: `learn --data` of an empty
    file read "tasks=0")."""
    if not (isinstance(lambda_, int | float) and math.isfinite(lambda_) and lambda_ >= 0):
        raise InvalidInput("lambda", lambda_, "a finite number >= 0")
    if not (0.0 <= val_fraction < 1.0):
        raise InvalidInput("val_fraction", val_fraction, "a fraction in [0, 1)")
    judged = [t for t in tasks if any(o.score is not None for o in t.outcomes.values())]
    if not judged:
        field, value = source or ("tasks", len(tasks))
        expected = f"at least one task with a judged (non-null) score ({counted(len(tasks), 'task')}, none judged)"
        raise InvalidInput(field, value, expected)
    return judged


def _agents(agent_ids: Sequence[str], prices: Mapping[str, AgentPrice]) -> list[Agent]:
    out = []
    for agent_id in agent_ids:
        price = prices.get(agent_id)
        out.append(
            Agent(
                id=agent_id,
                description=((price.description or "") if price else "")[:DESCRIPTION_MAX],
                input_per_mtok=price.input_per_mtok if price else None,
                output_per_mtok=price.output_per_mtok if price else None,
                cost_per_call_usd=price.cost_per_call_usd if price else None,
            )
        )
    return out


class _Stages:
    """The progress lines of one run, and the seconds each stage took (metrics.timings)."""

    def __init__(self, progress: Progress | None, started: float) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.clock = started

    def step(self, fraction: float, message: str, stage: str | None = None) -> None:
        """A new stage begins (`stage`, if given, names the one that ends: its time goes into the metrics)."""
        now = time.perf_counter()
        if stage:
            self.timings[stage] = round(now - self.clock, 3)
        self.clock = now
        self.say(fraction, message)

    def say(self, fraction: float, message: str) -> None:
        """Progress within a stage: the stage's clock runs on."""
        if self.progress is not None:
            self.progress(fraction, message)


@dataclass
class _Data:
    """The judged tasks, split: `val` is `train` itself when there is no validation split (identity is the test)."""

    tasks: list[TraceTask]
    prices: dict[str, AgentPrice]
    train: list[TraceTask]
    val: list[TraceTask]
    validated_on: str
    agent_ids: list[str]
    out_train: Outcomes
    out_val: Outcomes
    c_ref: float

    @property
    def has_val(self) -> bool:
        return self.val is not self.train

    @property
    def n_val(self) -> int:
        """Validation tasks reported: none when the candidates were compared on their own training tasks."""
        return len(self.val) if self.validated_on == "validation split" else 0


@dataclass
class _Discovered:
    """Discovery's taxonomy and prototypes, and the labeller over every prototype (one category per prototype)."""

    taxonomy: Taxonomy
    members: list[np.ndarray]
    protos: Prototypes
    base: SkillLabeller


@dataclass
class _Selection:
    """Every candidate, its report, and which one was selected."""

    candidates: list[Built]
    reports: list[CandidateReport]
    best: int
    log: list[Step]

    @property
    def chosen(self) -> Built:
        return self.candidates[self.best]

    @property
    def depth(self) -> int:
        return self.reports[self.best].depth


def learn(
    tasks: Sequence[TraceTask],
    prices: Mapping[str, AgentPrice],
    *,
    val_fraction: float = 0.2,
    lambda_: float = 0.1,
    seed: int = 0,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
    params: LearnParams | None = None,
    discoverer: Discoverer | None = None,
) -> LearnResult:
    """Learn, refine and select a handbook from outcome traces (see the module docstring)."""
    started = time.perf_counter()
    params = params or LearnParams()
    stages = _Stages(progress, started)
    data = _prepare(tasks, prices, val_fraction, lambda_, seed)

    stages.step(0.05, "features")
    corpus, cached = _features(data, lambda_, seed, embedder)

    stages.step(0.3, "discovering skills", "features")
    found = _discover(corpus, data.train, params.discovery, discoverer, cached)
    evaluator = _evaluator(data, corpus, found, params, lambda_, seed)

    stages.step(0.45, "building candidate handbooks", "discovery")
    candidates = _candidates(evaluator, found.taxonomy)

    stages.step(0.6, "refining", "candidates")
    candidates, log = _refined(candidates, evaluator, corpus, found.protos, params.refine, stages)

    stages.step(0.85, "selecting", "refinement")
    selection = _select(candidates, log, lambda_, data.c_ref, seed)
    document, profiled, length_report = _profiled_document(selection.chosen, evaluator, corpus, found, data, params)
    agreements = _label_agreements(selection, evaluator.val, data.val)
    # no skill splits a mode: the metrics say why when discovery had too few unlabelled tasks
    unsplit = (
        discoverer is None and found.taxonomy.max_depth < 2 and len(selection.chosen.specs) <= len(evaluator.modes)
    )
    document = _described(document, data, selection, found.base.kind, lambda_, seed)
    document, ci_report = _with_ci_inflation(document, selection.chosen, evaluator, data)
    # not "done": the caller may trial it against the live one next (QA)
    stages.step(1.0, "handbook learned", "selection")
    seconds = time.perf_counter() - started
    metrics = {
        **_data_metrics(data, corpus, cached, found.base.kind, params, lambda_, seed, unsplit),
        **_selection_metrics(selection, found, evaluator, length_report, agreements, profiled),
        "ci_inflation": ci_report,
        "timings": stages.timings,
    }
    labeller = selection.chosen.labeller
    if cached is not None and cached is not embedder:
        labeller.use_embedder(embedder)  # serve with the caller's embedder, not this run's growing cache
    return LearnResult(
        document=document,
        labeller=labeller,
        candidates=selection.reports,
        selected=selection.chosen.name,
        metrics=metrics,
        seconds=seconds,
        train=data.train,
        val=data.val,
    )


def _prepare(
    tasks: Sequence[TraceTask], prices: Mapping[str, AgentPrice], val_fraction: float, lambda_: float, seed: int
) -> _Data:
    """The judged tasks (the settings checked first), the seeded split, and each side's outcomes."""
    judged = learnable(tasks, val_fraction, lambda_)
    priced = dict(prices)
    train_rows, val_rows = split_tasks(judged, val_fraction, seed)
    train = [judged[i] for i in train_rows]
    val = [judged[i] for i in val_rows]
    validated_on = "validation split"
    if not val:
        val, validated_on = train, "training tasks (no validation split)"
    agent_ids = sorted({a for t in judged for a, o in t.outcomes.items() if o.score is not None})
    out_train = Outcomes.build(train, priced, agent_ids)
    out_val = Outcomes.build(val, priced, agent_ids)
    return _Data(judged, priced, train, val, validated_on, agent_ids, out_train, out_val, out_train.reference_cost())


def _features(
    data: _Data, lambda_: float, seed: int, embedder: Embedder | None
) -> tuple[Corpus, CachedEmbedder | None]:
    """The training queries as discovery reads them: TF-IDF rows, MiniLM vectors when an embedder is given, and
    each task's utilities at lambda 0 and at `lambda_`. The validation queries are embedded now too (cached)."""
    train, out_train, c_ref = data.train, data.out_train, data.c_ref
    lambdas = sorted({0.0, float(lambda_)})
    norm = out_train.costs / c_ref if c_ref > 0 else np.zeros_like(out_train.costs)
    queries = [t.query for t in train]
    space = TfidfSpace.fit(queries)
    cached: CachedEmbedder | None = None
    embeddings = None
    if embedder is not None:
        cached = embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(embedder)
        embeddings = cached.encode(queries + [t.query for t in data.val])[: len(train)]
    corpus = Corpus(
        queries=queries,
        labels=[t.task for t in train],
        modes=[t.mode or DEFAULT_MODE for t in train],
        outcomes=out_train,
        utilities=utilities(out_train.scores, norm, lambdas),
        space=space,
        rows=space.transform(queries),
        embeddings=embeddings,
        seed=seed,
    )
    return corpus, cached


def _discover(
    corpus: Corpus,
    train: list[TraceTask],
    params: DiscoveryParams,
    discoverer: Discoverer | None,
    cached: CachedEmbedder | None,
) -> _Discovered:
    """The taxonomy (offline discovery unless a discoverer replaces it) and the labeller of its prototypes."""
    if discoverer is None:
        taxonomy, members, proto_modes = discover(corpus, params)
    else:
        taxonomy, members, proto_modes = discoverer(corpus, train, params)
    vectors, labeller_space = prototype_vectors(corpus, members, params.proto_terms)
    protos = prototype_table(members, proto_modes, vectors, len(train))
    category_of = {p: c.id for c in taxonomy.categories for p in c.protos}
    base = SkillLabeller(
        "tfidf" if cached is None else "minilm",
        vectors,
        [category_of[p] for p in range(len(members))],
        {c.id: c.mode for c in taxonomy.categories},
        DEFAULT_TEMPERATURE,
        space=labeller_space,
        embedder=cached,
    )
    return _Discovered(taxonomy, members, protos, base)


def _evaluator(
    data: _Data, corpus: Corpus, found: _Discovered, params: LearnParams, lambda_: float, seed: int
) -> Evaluator:
    """What every candidate is profiled and replayed with: the modes, both splits' similarities to the prototypes,
    the agents and the prices of cost."""
    train, val = data.train, data.val
    # the count of the tasks whose outcomes become the mode's evidence (QA: it counted the training split alone
    # beside competence rows profiled on train + validation)
    profiled_tasks = train + val if params.profile_on_all and data.has_val else train
    modes = [
        Mode(
            id=m,
            description=f"Learned offline from {sum((t.mode or DEFAULT_MODE) == m for t in profiled_tasks)} tasks.",
        )
        for m in sorted(set(corpus.modes))
    ]
    mode_ids = [m.id for m in modes]
    base = found.base
    train_split = Split(
        [t.id for t in train],
        corpus.queries,
        task_modes(train, mode_ids),
        data.out_train,
        base.similarities(corpus.queries),
    )
    val_queries = [t.query for t in val]
    val_split = Split(
        [t.id for t in val], val_queries, task_modes(val, mode_ids), data.out_val, base.similarities(val_queries)
    )
    return Evaluator(
        base,
        found.protos,
        train_split,
        val_split,
        _agents(data.agent_ids, data.prices),
        modes,
        lambda_,
        data.c_ref,
        params.kappa,
        seed,
        params.lambda_panel,
    )


def _candidates(evaluator: Evaluator, taxonomy: Taxonomy) -> list[Built]:
    """The taxonomy's skill sets at each depth it has, profiled and replayed."""
    candidates = [evaluator.evaluate("depth0", 0, taxonomy), evaluator.evaluate("depth1", 1, taxonomy)]
    if taxonomy.max_depth == 2:
        candidates.append(evaluator.evaluate("depth2", 2, taxonomy))
    return candidates


def _refined(
    candidates: list[Built],
    evaluator: Evaluator,
    corpus: Corpus,
    protos: Prototypes,
    params: RefineParams,
    stages: _Stages,
) -> tuple[list[Built], list[Step]]:
    """Refine the finest candidate. Returns the candidates, the refined one last when it is a skill set none of
    them has, and the refinement log."""
    rounds = params.rounds

    def refining(number: int, done: list[Step]) -> None:
        kept = sum(s.accepted for s in done)
        fraction = 0.6 + 0.25 * (number - 1) / rounds
        stages.say(fraction, f"refining: round {number} of at most {rounds} ({len(done)} changes tried, {kept} kept)")

    refined, log = refine(candidates[-1], evaluator, corpus, protos, params, on_round=refining)
    if refined.taxonomy.signature(2) not in {c.taxonomy.signature(c.depth) for c in candidates}:
        return [*candidates, refined], log
    return candidates, log


def _select(candidates: list[Built], log: list[Step], lambda_: float, c_ref: float, seed: int) -> _Selection:
    """Report every candidate's validation replay and pick the best (ties: the lambda panel's mean utility)."""
    reports = report(
        [c.name for c in candidates],
        [c.depth if c.name != "refined" else c.taxonomy.max_depth for c in candidates],
        [len(c.specs) for c in candidates],
        [c.val for c in candidates],
        lambda_,
        c_ref,
        seed,
    )
    best = select(reports, [c.panel_utility for c in candidates])
    reports[best].selected = True
    return _Selection(candidates, reports, best, log)


def _profiled_document(
    chosen: Built, evaluator: Evaluator, corpus: Corpus, found: _Discovered, data: _Data, params: LearnParams
) -> tuple[HandbookDocument, list[Split], dict[str, Any] | None]:
    """The selected skill set profiled for serving, with its length effect when one routes better. Returns the
    document, the splits it was profiled on and the length trial's report."""
    train_split, val_split = evaluator.train, evaluator.val
    profiled = [train_split, val_split] if params.profile_on_all and data.has_val else [train_split]
    document = _final_document(chosen, evaluator, corpus, found.protos, profiled, params.kappa)
    length_report = None
    if params.length_ridge is not None:
        every = Split.joined([train_split, val_split]) if data.has_val else train_split
        document, length_report = _add_length_effect(
            document, chosen, evaluator, every, profiled, params.length_ridge, params.kappa
        )
    return document, profiled, length_report


def _described(
    document: HandbookDocument, data: _Data, selection: _Selection, features: str, lambda_: float, seed: int
) -> HandbookDocument:
    """The document with its description for people, the selected depth and the labeller that serves it."""
    chosen, depth = selection.chosen, selection.depth
    families = sorted({t.task for t in data.tasks if t.task})
    description = (
        f"Learned offline (no LLM) from {len(data.tasks)} tasks ({len(data.train)} train / "
        f"{data.n_val} validation) of {len(data.agent_ids)} agents"
        + (
            f", {len(families)} task families ({', '.join(families[:10])}{', ...' if len(families) > 10 else ''})"
            if families
            else ""
        )
        + f"; {features} features, seed {seed}. Selected '{chosen.name}' ({len(chosen.specs)} skills, depth {depth}) "
        f"at lambda {lambda_:g}: validation accuracy {chosen.val.accuracy:.3f}, avg cost ${chosen.val.avg_cost:.3g}."
    )
    return document.model_copy(
        update={
            "description": description[:DESCRIPTION_MAX],
            "selections": {DEFAULT_SELECTION: depth},
            "labeller": chosen.labeller.to_json(),
        }
    )


def _data_metrics(
    data: _Data,
    corpus: Corpus,
    cached: CachedEmbedder | None,
    features: str,
    params: LearnParams,
    lambda_: float,
    seed: int,
    unsplit: bool,
) -> dict[str, Any]:
    """The metrics of what was learned from: the tasks, the split, the features and the settings."""
    return {
        "n_tasks": len(data.tasks),
        "n_train": len(data.train),
        "n_val": data.n_val,
        "validated_on": data.validated_on,
        # validation can tell handbooks apart only where it saw two or more agents (the replay never credits an
        # agent without an outcome): how many such tasks the selection had. Without a validation split the
        # selection saw its own training tasks, which validate nothing: 0
        "comparable_validation_tasks": (
            sum(1 for t in data.val if sum(o.score is not None for o in t.outcomes.values()) > 1) if data.has_val else 0
        ),
        # why the handbook has no skill that splits a mode, when discovery had too few unlabelled tasks (else None)
        "discovery_note": few_tasks_note(corpus, params.discovery) if unsplit else None,
        "agents": data.agent_ids,
        "features": features,
        "embedding_model": cached.model_name if cached is not None else None,
        "embedded_now": cached.computed if cached is not None else 0,
        "lambda": lambda_,
        "seed": seed,
        "c_ref": data.c_ref,
        "kappa": params.kappa,
    }


def _selection_metrics(
    selection: _Selection,
    found: _Discovered,
    evaluator: Evaluator,
    length_report: dict[str, Any] | None,
    agreements: tuple[float | None, float | None],
    profiled: list[Split],
) -> dict[str, Any]:
    """The metrics of the selected handbook and of how it was found."""
    chosen = selection.chosen
    return {
        "selected": chosen.name,
        "depth": selection.depth,
        "n_skills": len(chosen.specs),
        "n_categories": len(chosen.taxonomy.categories),
        "n_prototypes": len(found.members),
        "temperature": chosen.labeller.temperature,
        "val": {
            "accuracy": chosen.val.accuracy,
            "avg_cost": chosen.val.avg_cost,
            "utility": selection.reports[selection.best].utility,
        },
        "length_effect": length_report,
        "label_agreement_val": agreements[0],
        "label_agreement_val_depth1": agreements[1],
        "refinement": [s.as_dict() for s in selection.log],
        "evaluations": evaluator.evaluations,
        "profiled_on": "train+validation" if len(profiled) == 2 else "train",
    }


def _add_length_effect(
    document: HandbookDocument,
    chosen: Built,
    evaluator: Evaluator,
    every: Split,
    profiled: list[Split],
    ridge: float,
    kappa: float,
) -> tuple[HandbookDocument, dict[str, Any] | None]:
    """Cross-validate a length effect for the selected skill set on every task; when it routes better, fit it to
    the final handbook on the tasks that handbook was profiled on. Returns the document and the trial's report."""
    trial = length_trial(chosen, evaluator, every, ridge)
    if trial is None or not trial.kept:
        return document, None if trial is None else trial.as_dict()
    effect = evaluator.fit_length_effect(document_arrays(document, kappa), chosen.labeller, profiled, ridge)
    return document.model_copy(update={"length_effect": effect}), {**trial.as_dict(), "slopes": effect.slopes}


def _with_ci_inflation(
    document: HandbookDocument, chosen: Built, evaluator: Evaluator, data: _Data
) -> tuple[HandbookDocument, dict[str, Any] | None]:
    """The document with the widening of ci90 its validation misses call for (learning/ci_inflation.py), and the
    measurement (None without a validation split: training tasks cannot measure their own overfit). Nothing else
    of the document changes: routing never reads it."""
    if not data.has_val:
        return document, None
    measured = measure_selected(chosen, evaluator)
    # n0: the train-only profile's evidence, the part the factor was measured on (the deployed document may also
    # count the validation tasks, which are honest evidence: the fading rule then starts below the full factor)
    widened = inflation(measured, chosen.document.competence)
    return document.model_copy(update={"ci_inflation": widened}), measured.as_dict()


def _label_agreements(
    selection: _Selection, split: Split, val: Sequence[TraceTask]
) -> tuple[float | None, float | None]:
    """The label agreement on validation of the selected handbook and of the depth-1 candidate."""
    val_labels = [t.task for t in val]
    return (
        _label_agreement(selection.chosen, split, val_labels),
        _label_agreement(selection.candidates[1], split, val_labels),
    )


def _label_agreement(built: Built, split: Split, labels: Sequence[str | None]) -> float | None:
    """Share of labelled validation tasks whose top skill lies in a category covering the task's label."""
    if not built.specs or not any(labels):
        return None
    weights = built.labeller.weights_matrix(split.sims[:, : len(built.labeller.prototype_skills)], split.modes)
    covers = {s.id: set(s.labels) for s in built.specs}
    hits = total = 0
    for row, label in zip(weights, labels, strict=True):
        if label is None or row.sum() <= 0:
            continue
        total += 1
        hits += label in covers[built.labeller.skill_ids[int(np.argmax(row))]]
    return hits / total if total else None


def _final_document(
    chosen: Built, evaluator: Evaluator, corpus: Corpus, protos: Any, profiled: list[Split], kappa: float
) -> HandbookDocument:
    """The selected skill set, profiled on the tasks of `profiled` (train, then validation unless excluded) and
    described for people."""
    labeller = chosen.labeller
    weights = np.concatenate([evaluator.weights(labeller, split) for split in profiled])
    outcomes = Outcomes.joined([split.outcomes for split in profiled])
    bare = evaluator.document(chosen.specs, labeller, weights, outcomes)
    skills = describe(chosen.specs, chosen.taxonomy, corpus, protos, document_arrays(bare, kappa), profiled[0].sims)
    return bare.model_copy(update={"skills": skills})
