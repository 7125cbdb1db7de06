"""`skillorchestra eval` end to end: learn on train, pick the operating lambda on a validation split of train,
replay the unseen test tasks through every policy, and assemble interface.md's JSON.

The learner and the replay evaluator come from handbook/learning (injectable, so tests can pass stand-ins).
Nothing here reads the test outcomes before choosing: the operating point, best-single and cheapest come from
train; only the `oracle` row and the metrics read test outcomes.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from skillorchestra.handbook import metrics
from skillorchestra.handbook.embedding import Embedder
from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.evaluation import DEFAULT_EPISODES, sweep
from skillorchestra.handbook.evaluation import data as d
from skillorchestra.handbook.evaluation import policies as p
from skillorchestra.handbook.evaluation.episodes import build_episodes, episode_rule, evaluate_episodes
from skillorchestra.handbook.evaluation.online import regret_of, replay_online
from skillorchestra.handbook.evaluation.scorer import CachedLabeller, HandbookScorer, Labeller
from skillorchestra.handbook.knn import KnnRouter
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.traces import AgentPrice, TraceTask

log = logging.getLogger("skillorchestra.eval")
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_KNN_K = 20
COLLAPSE_SHARE = 0.6


class Learned(Protocol):
    """What the eval reads of a learner's result (read-only, so the offline learner's LearnResult, whose labeller
    is a SkillLabeller, is one)."""

    @property
    def document(self) -> HandbookDocument: ...
    @property
    def labeller(self) -> Labeller: ...
    @property
    def seconds(self) -> float: ...
    @property
    def llm_calls(self) -> int: ...
    @property
    def usd(self) -> float: ...


LearnFn = Callable[[list[TraceTask], Mapping[str, AgentPrice], float, int], Learned]
ReplayFn = Callable[[HandbookDocument, Labeller, list[TraceTask], Mapping[str, AgentPrice], float, int, float], Any]


def default_learn(
    tasks: list[TraceTask],
    prices: Mapping[str, AgentPrice],
    lambda_: float,
    seed: int,
    embedder: Embedder | None = None,
) -> Learned:
    """The offline learner; `embedder` (MiniLM) gives it semantic features, None TF-IDF (bind it with partial)."""
    from skillorchestra.handbook.learning.pipeline import learn

    return learn(tasks, dict(prices), lambda_=lambda_, seed=seed, embedder=embedder)


def default_replay(
    document: HandbookDocument,
    labeller: Labeller,
    tasks: list[TraceTask],
    prices: Mapping[str, AgentPrice],
    lambda_: float,
    seed: int,
    c_ref: float,
) -> Any:
    from skillorchestra.handbook.learning.replay import replay

    return replay(document, labeller, tasks, dict(prices), lambda_, strategy="mean", seed=seed, c_ref=c_ref)


@dataclass
class EvalConfig:
    lambdas: Sequence[float] = sweep.DEFAULT_LAMBDAS
    seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    knn_k: int = DEFAULT_KNN_K
    episodes: int = DEFAULT_EPISODES
    db_path: Path | None = None  # where the online replay's handbook lives; None = a temporary database
    narrow_budget: bool = True  # bisect the grid step where validation cost crosses the budget (sweep.budget_bracket)
    learn_fn: LearnFn = field(default=default_learn)
    replay_fn: ReplayFn = field(default=default_replay)


def _check(config: EvalConfig) -> list[float]:
    lambdas = sorted(dict.fromkeys(float(x) for x in config.lambdas))
    if not lambdas or any(not math.isfinite(x) or x < 0 for x in lambdas):
        raise InvalidInput("--lambda", list(config.lambdas), "finite numbers >= 0")
    if config.seed < 0:
        raise InvalidInput("--seed", config.seed, "an integer >= 0")
    return lambdas


def _picks(choices: Sequence[Any], agents: list[str]) -> np.ndarray:
    """Replay's choices (agent ids or column indices) as column indices of the eval's agent order."""
    column = {agent: j for j, agent in enumerate(agents)}
    out = np.empty(len(choices), dtype=np.int64)
    for i, choice in enumerate(choices):
        if isinstance(choice, str):
            if choice not in column:
                raise ValueError(f"replay chose {choice!r}, an agent without train outcomes")
            out[i] = column[choice]
        else:
            out[i] = int(choice)
    return out


def _replayed(result: Any, table: d.OutcomeTable, agents: list[str]) -> np.ndarray:
    """Replay's picks, one per table task (replay skips tasks none of the handbook's agents was judged on)."""
    if len(result.choices) != len(table.tasks):
        raise ValueError(
            f"replay returned {len(result.choices)} choices for {len(table.tasks)} tasks: the learned handbook "
            "lacks agents that the data judged"
        )
    return _picks(result.choices, agents)


@dataclass
class _EvalData:
    """The test tasks as a table, and what the policies may know, all of it from train: the agents, their costs,
    c_ref, the best single and the cheapest agent."""

    train: list[TraceTask]
    kept: list[TraceTask]  # the test tasks whose query is not in train
    dropped: int
    agents: list[str]
    test_only: list[str]
    train_scores: np.ndarray
    agent_costs: dict[str, float]
    c_ref: float
    unknown_cost: list[str]
    table: d.OutcomeTable
    best_col: int
    cheap_col: int


@dataclass
class _Handbook:
    """The handbook learned on all of train at the operating lambda, and its expected utilities on the test tasks."""

    learned: Learned
    wall_seconds: float
    labeller: CachedLabeller
    scorer: HandbookScorer
    expected: Any


@dataclass
class _Policies:
    """Every policy's rows on the test tasks, and what the result's other parts read of them."""

    rows: list[dict[str, Any]]
    curves: dict[str, dict[float, np.ndarray]]
    agreement: list[float]
    online: list[dict[str, Any]]
    knn: KnnRouter
    knn_pred: Any


def run_eval(
    train: list[TraceTask], test: list[TraceTask], prices: Mapping[str, AgentPrice], config: EvalConfig | None = None
) -> dict[str, Any]:
    """Everything `skillorchestra eval --json` writes (interface.md), plus diagnostics under extra keys."""
    config = config or EvalConfig()
    lambdas = _check(config)
    data = _eval_data(train, test, prices)
    operating, selection = _operating_point(train, prices, data.agents, data.c_ref, lambdas, config)
    lambdas = sorted({*lambdas, operating})  # an operating point found between grid values gets its own rows
    handbook = _learn_handbook(data, prices, operating, config)
    policies = _policy_rows(handbook, data, prices, lambdas, operating, config)
    return _result_document(data, handbook, policies, operating, selection, lambdas, config)


def _eval_data(train: list[TraceTask], test: list[TraceTask], prices: Mapping[str, AgentPrice]) -> _EvalData:
    """Check the data and read what the policies may know from train; refuses test data with nothing to compare on
    before any learning."""
    if not train:
        raise InvalidInput("--train", 0, "at least one task")
    kept, dropped = d.drop_seen(train, test)
    if not kept:
        raise InvalidInput("--test", len(test), "at least one test task whose query is not in train")
    agents = d.judged_agents(train)
    # QA: an agent of test alone was left out without a word; the summary names them
    test_only = sorted({a for t in kept for a, o in t.outcomes.items() if o.score is not None} - set(agents))
    train_scores, train_costs = d.raw_matrices(train, agents, prices)
    agent_costs = d.mean_costs(train_costs, agents)
    d.require_a_known_cost(agents, agent_costs)
    c_ref = d.reference_cost(agent_costs)
    unknown_cost = [a for a in agents if a not in agent_costs]
    table = d.build_table(kept, agents, prices, c_ref)
    if not table.tasks:  # before any learning: nothing to compare on
        raise InvalidInput("--test", len(kept), d.SCORABLE_TEST)
    best_col = p.best_single_column(train_scores)
    cheap_col = p.cheapest_column(agent_costs, agents)
    log.info(
        "eval: %d train, %d test (%d dropped as seen), %d agents", len(train), len(table.tasks), dropped, len(agents)
    )
    return _EvalData(
        train,
        kept,
        dropped,
        agents,
        test_only,
        train_scores,
        agent_costs,
        c_ref,
        unknown_cost,
        table,
        best_col,
        cheap_col,
    )


def _learn_handbook(
    data: _EvalData, prices: Mapping[str, AgentPrice], operating: float, config: EvalConfig
) -> _Handbook:
    """The handbook every handbook policy serves with: learned on all of train at the operating lambda."""
    started = time.perf_counter()
    learned = config.learn_fn(list(data.train), prices, operating, config.seed)
    learn_wall = time.perf_counter() - started
    labeller = CachedLabeller(learned.labeller)
    scorer = HandbookScorer(learned.document, labeller, data.agents, data.c_ref)
    return _Handbook(learned, learn_wall, labeller, scorer, scorer.score(data.table.queries))


def _policy_rows(
    handbook: _Handbook,
    data: _EvalData,
    prices: Mapping[str, AgentPrice],
    lambdas: list[float],
    operating: float,
    config: EvalConfig,
) -> _Policies:
    """The rows of every policy, in the order the result lists them: the swept policies at every lambda, Thompson
    at the operating lambda, then the fixed policies."""
    table = data.table
    best_single = p.best_single_choices(table, data.train_scores)
    baseline = sweep.Baseline(
        best_single_accuracy=metrics.accuracy(table.chosen(best_single)[0]),
        # the gap's ceiling is the best score per task: the thrifty oracle row (cheapest agent scoring >= 0.5) is
        # it on 0/1 scores, but on graded ones may score below best-single, and then the cheapest policy "closed
        # the whole gap" (contract QA)
        oracle_accuracy=metrics.oracle_accuracy(table.scores),
        # an unknown cost is charged c_ref: it counts
        agent_costs=d.charged_costs(data.agent_costs, data.agents, data.c_ref),
    )
    rows, ours, agreement = _skillorchestra_rows(handbook, data, prices, lambdas, config, baseline)
    knn = KnnRouter(config.knn_k).fit(data.train, prices, data.c_ref)
    knn_pred = p.knn_scored(knn, table)
    theirs: dict[float, np.ndarray] = {}
    for lam in lambdas:
        picks = p.knn_choose(knn, knn_pred, lam, table.judged)
        rows.append(sweep.row(p.KNN, lam, picks, table, baseline))
        theirs[lam] = picks
    curves = {p.SKILLORCHESTRA: ours, p.KNN: theirs}
    document, labeller = handbook.learned.document, handbook.labeller
    online, thompson_row = _online(document, labeller, table, operating, data.c_ref, config, baseline, curves)
    rows.append(thompson_row)
    fixed = {
        p.PAPER_RULE: p.paper_rule_choices(handbook.scorer, table, handbook.expected),
        p.BEST_SINGLE: best_single,
        p.CHEAPEST: p.cheapest_choices(table, data.agent_costs),
        p.RANDOM: p.random_choices(table, config.seed),
        p.ORACLE: p.oracle_choices(table),
    }
    rows.extend(sweep.row(name, None, picks, table, baseline) for name, picks in fixed.items())
    return _Policies(rows, curves, agreement, online, knn, knn_pred)


def _skillorchestra_rows(
    handbook: _Handbook,
    data: _EvalData,
    prices: Mapping[str, AgentPrice],
    lambdas: list[float],
    config: EvalConfig,
    baseline: sweep.Baseline,
) -> tuple[list[dict[str, Any]], dict[float, np.ndarray], list[float]]:
    """The handbook replayed on the test tasks at every lambda: its rows, its picks per lambda, and how often the
    replay agreed with the scorer's choices (a check that the two read the handbook alike)."""
    table, c_ref = data.table, data.c_ref
    rows, curve, agreement = [], {}, []
    for lam in lambdas:
        result = config.replay_fn(
            handbook.learned.document, handbook.labeller, list(table.tasks), prices, lam, config.seed, c_ref
        )
        picks = _replayed(result, table, data.agents)
        agreement.append(float(np.mean(picks == handbook.expected.choose(lam, c_ref, table.judged))))
        rows.append(sweep.row(p.SKILLORCHESTRA, lam, picks, table, baseline))
        curve[lam] = picks
    return rows, curve, agreement


def _result_document(
    data: _EvalData,
    handbook: _Handbook,
    policies: _Policies,
    operating: float,
    selection: dict[str, Any],
    lambdas: list[float],
    config: EvalConfig,
) -> dict[str, Any]:
    """interface.md's eval JSON, with the diagnostics (and, for two agents, APGR and CPT) under extra keys."""
    table, agents, c_ref, learned = data.table, data.agents, data.c_ref, handbook.learned
    scorer, expected, knn = handbook.scorer, handbook.expected, policies.knn
    train_means = metrics.column_means(data.train_scores)
    episodes = build_episodes(table, config.episodes, config.seed)
    result: dict[str, Any] = {
        "dataset": _dataset(data),
        "rows": policies.rows,
        "operating_point": {"policy": p.SKILLORCHESTRA, "lambda": operating, **selection},
        "online": policies.online,
        "episodes": evaluate_episodes(table, episodes, scorer, expected, knn, operating, c_ref, train_means),
        "episodes_detail": {
            "lambda": operating,
            "n_episodes": len(episodes),
            "rule": f"{episode_rule(table)}, success = every step scores >= 0.5",
            "at_lambda_0": evaluate_episodes(table, episodes, scorer, expected, knn, 0.0, c_ref, train_means),
        },
        "learning": {
            "seconds": float(learned.seconds),
            "llm_calls": int(learned.llm_calls),
            "usd": float(learned.usd),
            "wall_seconds": handbook.wall_seconds,
            "features": getattr(learned, "metrics", {}).get("features"),
            "skills": len(learned.document.skills),
            "length_effect": _length_effect(learned.document),
            "selection": selection.get("learning"),
        },
        "single_agents": _single_agents(table),
        "replay_agreement": {"min": min(policies.agreement), "lambdas": lambdas},
        "diagnostics": _diagnostics(table, policies.rows, policies.curves, operating, agents, data.cheap_col),
    }
    if len(agents) == 2:
        result["two_agent"] = _two_agent(
            table, data.agent_costs, agents, expected, policies.knn_pred, scorer, config.seed, policies.rows
        )
    return result


def _dataset(data: _EvalData) -> dict[str, Any]:
    """The result's `dataset`: what was compared on, and what the policies knew from train."""
    agents, table = data.agents, data.table
    return {
        "train": len(data.train),
        "test": len(table.tasks),
        "dropped_seen_in_train": data.dropped,
        "dropped_unjudged": len(data.kept) - len(table.tasks),
        "agents": agents,
        "test_only_agents": data.test_only,
        "cost_basis": d.cost_basis(list(data.train) + data.kept),
        "recorded_cost_share": d.recorded_cost_share(list(data.train) + data.kept),
        "c_ref": data.c_ref,
        "unknown_cost_agents": data.unknown_cost,
        "best_single_agent": agents[data.best_col],
        "cheapest_agent": agents[data.cheap_col],
        "oracle_best_score_accuracy": metrics.oracle_accuracy(table.scores),
    }


def _length_effect(document: HandbookDocument) -> dict[str, Any] | None:
    """The learned length effect (center, range and slopes per agent), null when the learner did not keep one."""
    return document.length_effect.model_dump() if document.length_effect is not None else None


def _operating_point(
    train: list[TraceTask],
    prices: Mapping[str, AgentPrice],
    agents: list[str],
    c_ref: float,
    lambdas: list[float],
    config: EvalConfig,
) -> tuple[float, dict[str, Any]]:
    """Learn on train minus a validation split, replay the split at every lambda, apply the budget rule."""
    fit, val = d.split_by_query(train, config.val_fraction, config.seed)
    val_table = d.build_table(val, agents, prices, c_ref)
    fit_scores, _ = d.raw_matrices(fit, agents, prices)
    learned = config.learn_fn(fit, prices, sweep.REFERENCE_LAMBDA, config.seed)
    labeller = CachedLabeller(learned.labeller)

    def evaluate(lam: float) -> tuple[float, float]:
        result = config.replay_fn(learned.document, labeller, list(val_table.tasks), prices, lam, config.seed, c_ref)
        scores, costs = val_table.chosen(_replayed(result, val_table, agents))
        return metrics.accuracy(scores), metrics.avg_cost(costs)

    points = [(lam, *evaluate(lam)) for lam in lambdas]
    best_cost = metrics.avg_cost(val_table.chosen(p.best_single_choices(val_table, fit_scores))[1])
    narrowed = sweep.budget_bracket(points, best_cost, evaluate) if config.narrow_budget else []
    chosen, rule = sweep.choose_operating_point(points + narrowed, best_cost, c_ref)
    return chosen, {
        "rule": rule,
        "validation_tasks": len(val_table.tasks),
        "validation_best_single_cost": best_cost,
        "validation_points": [
            {"lambda": lam, "accuracy": acc, "avg_cost": cost, "search": search}
            for search, group in (("grid", points), ("bisection", narrowed))
            for lam, acc, cost in group
        ],
        "learning": {
            "seconds": float(learned.seconds),
            "llm_calls": int(learned.llm_calls),
            "usd": float(learned.usd),
            "length_effect": _length_effect(learned.document),
        },
    }


def _online(
    document: HandbookDocument,
    labeller: Labeller,
    table: d.OutcomeTable,
    lambda_: float,
    c_ref: float,
    config: EvalConfig,
    baseline: sweep.Baseline,
    curves: dict[str, dict[float, np.ndarray]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Thompson from a cold and a learned start at the operating lambda, plus the frozen mean policy for scale."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="skillorchestra-eval-") as tmp:
        db_path = config.db_path or Path(tmp) / "eval.db"
        for start in ("cold", "learned"):  # learned last: a given --db ends with the learned handbook live
            started = time.perf_counter()
            run = replay_online(
                document, labeller, table, start=start, lambda_=lambda_, c_ref=c_ref, seed=config.seed, db_path=db_path
            )
            log.info("eval: online thompson (%s start) in %.1f s", start, time.perf_counter() - started)
            runs.append(run)
    online = []
    for run in runs:
        scores, costs = table.chosen(run.picks)
        online.append(
            {
                "policy": p.THOMPSON,
                "start": run.start,
                "lambda": lambda_,
                "cumulative_regret": run.cumulative_regret,
                "accuracy": metrics.accuracy(scores),
                "avg_cost": metrics.avg_cost(costs),
                "regret_curve": run.regret_curve,
            }
        )
    frozen = curves[p.SKILLORCHESTRA][lambda_]
    regret, curve = regret_of(frozen, table, lambda_, c_ref)
    scores, costs = table.chosen(frozen)
    online.append(
        {
            "policy": p.SKILLORCHESTRA,
            "start": "learned",
            "lambda": lambda_,
            "cumulative_regret": regret,
            "accuracy": metrics.accuracy(scores),
            "avg_cost": metrics.avg_cost(costs),
            "regret_curve": curve,
            "note": "frozen posterior means (no online learning), for scale",
        }
    )
    learned_run = runs[-1]
    return online, sweep.row(p.THOMPSON, lambda_, learned_run.picks, table, baseline, start="learned")


def _single_agents(table: d.OutcomeTable) -> list[dict[str, Any]]:
    """Each agent alone on the test tasks it was judged on (`n` of `of`): on sparse data an agent's accuracy and cost
    cover only those tasks, so its point is not comparable with the rows (all `of` tasks) unless n == of."""
    out = []
    for j, agent in enumerate(table.agents):
        judged = table.judged[:, j]
        scores, costs = table.scores[judged, j], table.costs[judged, j]
        out.append(
            {
                "agent": agent,
                "accuracy": metrics.accuracy(scores) if judged.any() else None,
                "avg_cost": metrics.avg_cost(costs) if judged.any() else None,
                "n": int(judged.sum()),
                "of": len(table.tasks),
            }
        )
    return out


def _two_agent(
    table: d.OutcomeTable,
    agent_costs: Mapping[str, float],
    agents: list[str],
    expected: Any,
    knn_pred: Any,
    scorer: HandbookScorer,
    seed: int,
    rows: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """APGR and CPT(50%) per policy: tasks ranked by the expected gain from the strong agent (the lambda sweep
    taken to its limit at a constant cost per call, as RouteLLM counts calls); the coarse grid's figures of the
    swept policies (their real per-text costs) are kept as `grid_*`."""
    weak, strong = sweep.weak_strong(agent_costs, agents)
    raw, _ = scorer.raw_rates(table.queries)
    rng = np.random.default_rng(seed)
    prefer = {
        p.SKILLORCHESTRA: p.strong_gain(expected, weak, strong),
        p.KNN: p.strong_gain(knn_pred, weak, strong),
        p.PAPER_RULE: raw[:, strong] - raw[:, weak],
        p.RANDOM: rng.random(len(table.tasks)),
        p.ORACLE: np.nan_to_num(table.scores[:, strong]) - np.nan_to_num(table.scores[:, weak]),
    }
    out: dict[str, dict[str, Any]] = {
        name: sweep.two_agent_metrics(score, table, weak, strong) for name, score in prefer.items()
    }
    for name in (p.SKILLORCHESTRA, p.KNN):
        points = [(r["agent_share"][agents[strong]], r["accuracy"]) for r in rows if r["policy"] == name]
        grid = sweep.two_agent_from_points(points, table, weak, strong)
        out[name] |= {"grid_apgr": grid["apgr"], "grid_cpt50": grid["cpt50"]}
    for name, why in UNRANKED.items():  # every policy of the rows is named (QA: a lookup by row raised KeyError)
        out[name] = {"apgr": None, "cpt50": None, "curve_points": 0, "tasks": 0, "why": why}
    return out


# the policies of the rows that give no per-task preference for the strong agent, so no threshold to sweep
UNRANKED = {
    p.THOMPSON: "online: one pass at the operating point, not a score to threshold",
    p.BEST_SINGLE: "one agent for every task: an endpoint of the curve, not a router",
    p.CHEAPEST: "one agent for every task: an endpoint of the curve, not a router",
}


def _diagnostics(
    table: d.OutcomeTable,
    rows: list[dict[str, Any]],
    curves: dict[str, dict[float, np.ndarray]],
    operating: float,
    agents: list[str],
    cheap_col: int,
) -> dict[str, Any]:
    """What the targets need: curve vs kNN, collapse at the operating point, per-family accuracy."""
    ours = [(r["avg_cost"], r["accuracy"]) for r in rows if r["policy"] == p.SKILLORCHESTRA]
    theirs = [(r["avg_cost"], r["accuracy"]) for r in rows if r["policy"] == p.KNN]
    op_row = next(r for r in rows if r["policy"] == p.SKILLORCHESTRA and r["lambda"] == operating)
    top_agent, top_share = max(op_row["agent_share"].items(), key=lambda item: item[1])
    families: dict[str, dict[str, Any]] = {}
    names = np.array(table.families)
    for family in sorted(set(table.families)):
        mask = names == family
        entry: dict[str, Any] = {"n": int(mask.sum())}
        for policy in (p.SKILLORCHESTRA, p.KNN):
            picks = curves[policy][operating][mask]
            scores, costs = (
                table.scores[mask][np.arange(mask.sum()), picks],
                table.costs[mask][np.arange(mask.sum()), picks],
            )
            counts = np.bincount(picks, minlength=len(agents))
            entry[policy] = {
                "accuracy": metrics.accuracy(scores),
                "avg_cost": metrics.avg_cost(costs),
                "top_agent": agents[int(np.argmax(counts))],
                "top_share": float(counts.max() / max(1, counts.sum())),
            }
        entry["best_agent"] = agents[metrics.best_single(table.scores[mask])[0]]
        entry["best_agent_accuracy"] = metrics.best_single(table.scores[mask])[1]
        families[family] = entry
    return {
        "curve_vs_knn": sweep.curve_above(ours, theirs),
        "collapse": {
            "top_agent": top_agent,
            "top_share": top_share,
            "cheapest_agent": agents[cheap_col],
            "ok": len(agents) <= 2 or top_share <= COLLAPSE_SHARE or top_agent == agents[cheap_col],
        },
        "per_family_at_operating_point": families,
    }
