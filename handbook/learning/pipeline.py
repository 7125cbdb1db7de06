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
from skillorchestra.handbook.learning.taxonomy import DEFAULT_MODE, Taxonomy
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
    timings: dict[str, float] = {}
    clock = [started]

    def step(fraction: float, message: str, stage: str | None = None) -> None:
        """A new stage begins (`stage`, if given, names the one that ends: its time goes into the metrics)."""
        now = time.perf_counter()
        if stage:
            timings[stage] = round(now - clock[0], 3)
        clock[0] = now
        say(fraction, message)

    def say(fraction: float, message: str) -> None:
        """Progress within a stage: the stage's clock runs on."""
        if progress is not None:
            progress(fraction, message)

    tasks = learnable(tasks, val_fraction, lambda_)
    prices = dict(prices)
    train_rows, val_rows = split_tasks(tasks, val_fraction, seed)
    train = [tasks[i] for i in train_rows]
    val = [tasks[i] for i in val_rows]
    validated_on = "validation split"
    if not val:
        val, validated_on = train, "training tasks (no validation split)"
    agent_ids = sorted({a for t in tasks for a, o in t.outcomes.items() if o.score is not None})
    out_train = Outcomes.build(train, prices, agent_ids)
    out_val = Outcomes.build(val, prices, agent_ids)
    c_ref = out_train.reference_cost()
    lambdas = sorted({0.0, float(lambda_)})
    norm = out_train.costs / c_ref if c_ref > 0 else np.zeros_like(out_train.costs)

    step(0.05, "features")
    queries = [t.query for t in train]
    space = TfidfSpace.fit(queries)
    cached: CachedEmbedder | None = None
    embeddings = None
    if embedder is not None:
        cached = embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(embedder)
        embeddings = cached.encode(queries + [t.query for t in val])[: len(train)]
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

    step(0.3, "discovering skills", "features")
    if discoverer is None:
        taxonomy, members, proto_modes = discover(corpus, params.discovery)
    else:
        taxonomy, members, proto_modes = discoverer(corpus, train, params.discovery)
    vectors, labeller_space = prototype_vectors(corpus, members, params.discovery.proto_terms)
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
    # the count of the tasks whose outcomes become the mode's evidence (QA: it counted the training split alone
    # beside competence rows profiled on train + validation)
    profiled_tasks = train + val if params.profile_on_all and val is not train else train
    modes = [
        Mode(
            id=m,
            description=f"Learned offline from {sum((t.mode or DEFAULT_MODE) == m for t in profiled_tasks)} tasks.",
        )
        for m in sorted(set(corpus.modes))
    ]
    mode_ids = [m.id for m in modes]
    train_split = Split(
        [t.id for t in train], queries, task_modes(train, mode_ids), out_train, base.similarities(queries)
    )
    val_queries = [t.query for t in val]
    val_split = Split(
        [t.id for t in val], val_queries, task_modes(val, mode_ids), out_val, base.similarities(val_queries)
    )
    evaluator = Evaluator(
        base,
        protos,
        train_split,
        val_split,
        _agents(agent_ids, prices),
        modes,
        lambda_,
        c_ref,
        params.kappa,
        seed,
        params.lambda_panel,
    )

    step(0.45, "building candidate handbooks", "discovery")
    candidates = [evaluator.evaluate("depth0", 0, taxonomy), evaluator.evaluate("depth1", 1, taxonomy)]
    if taxonomy.max_depth == 2:
        candidates.append(evaluator.evaluate("depth2", 2, taxonomy))

    step(0.6, "refining", "candidates")
    start = candidates[-1]
    rounds = params.refine.rounds

    def refining(number: int, done: list[Step]) -> None:
        kept = sum(s.accepted for s in done)
        fraction = 0.6 + 0.25 * (number - 1) / rounds
        say(fraction, f"refining: round {number} of at most {rounds} ({len(done)} changes tried, {kept} kept)")

    refined, log = refine(start, evaluator, corpus, protos, params.refine, on_round=refining)
    if refined.taxonomy.signature(2) not in {c.taxonomy.signature(c.depth) for c in candidates}:
        candidates.append(refined)

    step(0.85, "selecting", "refinement")
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
    chosen = candidates[best]
    depth = reports[best].depth

    has_val = val is not train
    profiled = [train_split, val_split] if params.profile_on_all and has_val else [train_split]
    document = _final_document(chosen, evaluator, corpus, protos, profiled, params.kappa)
    length_report = None
    if params.length_ridge is not None:
        every = Split.joined([train_split, val_split]) if has_val else train_split
        document, length_report = _add_length_effect(
            document, chosen, evaluator, every, profiled, params.length_ridge, params.kappa
        )
    val_labels = [t.task for t in val]
    agreement = _label_agreement(chosen, val_split, val_labels)
    agreement_depth1 = _label_agreement(candidates[1], val_split, val_labels)
    families = sorted({t.task for t in tasks if t.task})
    unsplit = discoverer is None and taxonomy.max_depth < 2 and len(chosen.specs) <= len(mode_ids)
    description = (
        f"Learned offline (no LLM) from {len(tasks)} tasks ({len(train)} train / "
        f"{len(val) if validated_on == 'validation split' else 0} validation) of {len(agent_ids)} agents"
        + (
            f", {len(families)} task families ({', '.join(families[:10])}{', ...' if len(families) > 10 else ''})"
            if families
            else ""
        )
        + f"; {base.kind} features, seed {seed}. Selected '{chosen.name}' ({len(chosen.specs)} skills, depth {depth}) "
        f"at lambda {lambda_:g}: validation accuracy {chosen.val.accuracy:.3f}, avg cost ${chosen.val.avg_cost:.3g}."
    )
    document = document.model_copy(
        update={
            "description": description[:DESCRIPTION_MAX],
            "selections": {DEFAULT_SELECTION: depth},
            "labeller": chosen.labeller.to_json(),
        }
    )
    step(1.0, "handbook learned", "selection")  # not "done": the caller may trial it against the live one next (QA)
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "n_tasks": len(tasks),
        "n_train": len(train),
        "n_val": len(val) if validated_on == "validation split" else 0,
        "validated_on": validated_on,
        # validation can tell handbooks apart only where it saw two or more agents (the replay never credits an
        # agent without an outcome): how many such tasks the selection had. Without a validation split the
        # selection saw its own training tasks, which validate nothing: 0
        "comparable_validation_tasks": (
            sum(1 for t in val if sum(o.score is not None for o in t.outcomes.values()) > 1) if has_val else 0
        ),
        # why the handbook has no skill that splits a mode, when discovery had too few unlabelled tasks (else None)
        "discovery_note": few_tasks_note(corpus, params.discovery) if unsplit else None,
        "agents": agent_ids,
        "features": base.kind,
        "embedding_model": cached.model_name if cached is not None else None,
        "embedded_now": cached.computed if cached is not None else 0,
        "lambda": lambda_,
        "seed": seed,
        "c_ref": c_ref,
        "kappa": params.kappa,
        "selected": chosen.name,
        "depth": depth,
        "n_skills": len(chosen.specs),
        "n_categories": len(chosen.taxonomy.categories),
        "n_prototypes": len(members),
        "temperature": chosen.labeller.temperature,
        "val": {
            "accuracy": chosen.val.accuracy,
            "avg_cost": chosen.val.avg_cost,
            "utility": reports[best].utility,
        },
        "length_effect": length_report,
        "label_agreement_val": agreement,
        "label_agreement_val_depth1": agreement_depth1,
        "refinement": [s.as_dict() for s in log],
        "evaluations": evaluator.evaluations,
        "profiled_on": "train+validation" if len(profiled) == 2 else "train",
        "timings": timings,
    }
    labeller = chosen.labeller
    if cached is not None and cached is not embedder:
        labeller.use_embedder(embedder)  # serve with the caller's embedder, not this run's growing cache
    return LearnResult(
        document=document,
        labeller=labeller,
        candidates=reports,
        selected=chosen.name,
        metrics=metrics,
        seconds=seconds,
        train=train,
        val=val,
    )


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
