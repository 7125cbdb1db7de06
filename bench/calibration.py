"""Are the handbook's uncertainty figures honest? route_step's quality, ci90 and propensity against held-out outcomes.

For each shared dataset the handbook is learned as `skillorchestra eval` learns it (same conversion, seed, validation
split and operating lambda: handbook/evaluation/runner.py), imported into a real SQLite file and served by the
Handbook service with the learned labeller as its matcher; every unseen test task is routed (mean strategy, every
agent a candidate) and each agent's quality, ci90 and n are read off the decision, as route_step returns them.

- Reliability of quality as a probability of success: ECE (10 equal-width bins), Brier, log loss (clipped at 1e-3),
  against the agent's overall train success rate and kNN's predicted quality (handbook/knn.py, the eval's k).
- Coverage of ci90 as an interval for a success *rate*: test tasks grouped by (agent, dominant inferred skill), cells
  of >= --min-cell tasks; the cell's observed rate against the mean of its tasks' intervals. The observed rate has
  its own binomial noise, so the script also prints what an honest interval would cover given that noise
  ("expected"), the coverage of the interval widened by the rate's standard error, and the spread of
  z = (observed - quality) / sqrt(sd^2 + se^2) (1.0 when honest; above 1 the figures are overconfident).
- --small N,...: the same on handbooks learned from N random train tasks (the method's "tens of tasks" regime).
- The widening of ci90 the learner measured on its validation split (models.CiInflation, route_step's
  ci_widened_by): every coverage line is printed for the intervals as served (widened) and as the posteriors state
  them ("unwidened"), and a `z spread` line sums both up with the factor.
- --thompson-seeds S: Thompson's reported propensity against the frequency with which S seeds choose each agent.

    python bench/calibration.py [--data ../shared/data] [--seed 0] [--only llmrouter,mmlu,gsm8k] [--small 100,200]
                                [--thompson-seeds 2000]

A script, not a test: 90 s wall on 2 cores with --small 100,400 --thompson-seeds 1000 (MMLU's 7,000 test
tasks dominate). The eval's own steps are runner's private helpers (_eval_data, _operating_point, _learn_handbook).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import machine_line
from eval_tables import DATASETS, DEFAULT_DATA, convert

from skillorchestra.handbook.evaluation import data as d
from skillorchestra.handbook.evaluation import runner
from skillorchestra.handbook.evaluation.runner import EvalConfig, default_learn
from skillorchestra.handbook.knn import KnnRouter
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.posterior import Z90
from skillorchestra.handbook.request_types import RouteRequest
from skillorchestra.handbook.service import Handbook
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import AgentPrice, TraceTask, read_prices, read_tasks

BINS = 10
CLIP = 1e-3  # log loss of predictions at exactly 0 or 1 (kNN's) stays finite


@dataclass
class Served:
    """Per test task and agent (eval agent order), what route_step returned; NaN where not a candidate."""

    quality: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray
    dominant: list[str]  # the heaviest inferred skill per task ("(none)": agent or mode level)


def served(document: HandbookDocument, labeller: object, tasks: Sequence[TraceTask], agents: list[str], lam: float):
    """Route every task through Handbook.route on a real SQLite file, as route_step does (mean strategy)."""
    with tempfile.TemporaryDirectory(prefix="skillorchestra-calibration-") as tmp:
        store = HandbookStore(Path(tmp) / "handbook.db")
        store.create_version(document, source="import")
        handbook = Handbook(store, matcher=labeller)  # type: ignore[arg-type]
        modes = handbook.arrays().mode_index
        column = {agent: j for j, agent in enumerate(agents)}
        quality, low, high, n = (np.full((len(tasks), len(agents)), np.nan) for _ in range(4))
        dominant = []
        for i, task in enumerate(tasks):
            mode = task.mode if task.mode in modes else None
            decision = handbook.route(RouteRequest(text=task.query, mode=mode, lambda_=lam, top_k=len(agents)))
            for c in decision.candidates:
                j = column[c.agent_id]
                quality[i, j], (low[i, j], high[i, j]), n[i, j] = c.quality, c.ci90, c.n
            skills = [(s.skill_id, s.weight) for s in decision.skills]
            dominant.append(max(skills, key=lambda s: s[1])[0] if skills else "(none)")
        store.close()
    return Served(quality, low, high, n, dominant)


def reliability(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ECE over equal-width bins, Brier and log loss of predictions p for scores y (graded scores count as such)."""
    ok = ~np.isnan(p) & ~np.isnan(y)
    p, y = p[ok], y[ok]
    b = np.minimum((p * BINS).astype(int), BINS - 1)
    ece = sum(abs(p[b == k].mean() - y[b == k].mean()) * (b == k).sum() for k in range(BINS) if (b == k).any())
    pc = np.clip(p, CLIP, 1 - CLIP)
    return {
        "ece": float(ece / len(p)),
        "brier": float(np.mean((p - y) ** 2)),
        "logloss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "pairs": float(len(p)),
    }


def bins_line(p: np.ndarray, y: np.ndarray) -> str:
    ok = ~np.isnan(p) & ~np.isnan(y)
    p, y = p[ok], y[ok]
    b = np.minimum((p * BINS).astype(int), BINS - 1)
    shown = [k for k in range(BINS) if (b == k).any()]
    return "  ".join(
        f"{k / BINS:.1f}+ {p[b == k].mean():.2f}->{y[b == k].mean():.2f} ({(b == k).sum()})" for k in shown
    )


def cells(s: Served, y: np.ndarray, min_cell: int) -> list[dict[str, float]]:
    """(agent, dominant skill) cells: observed rate, mean quality, mean interval, evidence, the rate's binomial SE."""
    dominant = np.array(s.dominant)
    out = []
    for skill in sorted(set(s.dominant)):
        for j in range(y.shape[1]):
            m = (dominant == skill) & ~np.isnan(y[:, j]) & ~np.isnan(s.quality[:, j])
            k = int(m.sum())
            if k < min_cell:
                continue
            q = float(s.quality[m, j].mean())
            out.append(
                {
                    "rate": float(y[m, j].mean()),
                    "q": q,
                    "low": float(s.low[m, j].mean()),
                    "high": float(s.high[m, j].mean()),
                    "half": float((s.high[m, j] - s.low[m, j]).mean() / 2),
                    "n": float(s.n[m, j].mean()),
                    "se": math.sqrt(max(q * (1 - q), 1e-9) / k),
                }
            )
    return out


def coverage_line(label: str, cs: list[dict[str, float]]) -> str:
    if not cs:
        return f"  {label:10s} no cell"
    inside = np.mean([c["low"] <= c["rate"] <= c["high"] for c in cs])
    # an honest interval (true rate ~ N(q, sd^2)) covers the noisy observed rate with this probability
    expected = np.mean([math.erf(c["half"] / math.hypot(c["half"] / Z90, c["se"]) / math.sqrt(2)) for c in cs])
    widened = np.mean([abs(c["rate"] - c["q"]) <= math.hypot(c["half"], Z90 * c["se"]) for c in cs])
    z = np.array([(c["rate"] - c["q"]) / math.hypot(c["half"] / Z90, c["se"]) for c in cs])
    med = lambda key: float(np.median([c[key] for c in cs]))  # noqa: E731
    return (
        f"  {label:10s} {len(cs):4d} cells  ci90 covers {inside:4.0%} (honest: {expected:4.0%})  widened by the "
        f"rate's SE {widened:4.0%}  z sd {z.std():.2f} mean {z.mean():+.2f}  median n {med('n'):6.1f} "
        f"half-width {med('half'):.3f} SE {med('se'):.3f}"
    )


def z_spread(s: Served, y: np.ndarray, min_cell: int) -> tuple[float, float, int]:
    """The spread and mean of the cells' z (coverage_line's), and how many cells."""
    cs = cells(s, y, min_cell)
    z = np.array([(c["rate"] - c["q"]) / math.hypot(c["half"] / Z90, c["se"]) for c in cs])
    return (float(z.std()), float(z.mean()), len(cs)) if cs else (float("nan"), float("nan"), 0)


def widening(
    document: HandbookDocument,
    labeller: object,
    tasks: Sequence[TraceTask],
    agents: list[str],
    lam: float,
    y: np.ndarray,
    min_cell: int,
    served_as_is: Served,
) -> None:
    """The same handbook served without its learned ci90 widening: its coverage, and the z spread of both."""
    factor = document.ci_inflation.factor if document.ci_inflation is not None else 1.0
    plain = (
        served(document.model_copy(update={"ci_inflation": None}), labeller, tasks, agents, lam)
        if document.ci_inflation is not None
        else served_as_is
    )
    if not np.array_equal(plain.quality, served_as_is.quality, equal_nan=True):
        raise AssertionError("the widening moved quality")  # it must only move the interval
    cs = cells(plain, y, min_cell)
    print(coverage_line("unwidened", cs))
    before, after = z_spread(plain, y, min_cell), z_spread(served_as_is, y, min_cell)
    print(
        f"  z spread  learned factor x{factor:.2f}: unwidened {before[0]:.2f} (mean {before[1]:+.2f}) -> served "
        f"{after[0]:.2f} (mean {after[1]:+.2f}) over {after[2]} cells"
    )


def report(name: str, s: Served, y: np.ndarray, baselines: dict[str, np.ndarray], min_cell: int) -> None:
    for label, p in {"handbook": s.quality, **baselines}.items():
        r = reliability(p.ravel(), y.ravel())
        print(
            f"  {label:14s} ECE {r['ece']:.4f}  Brier {r['brier']:.4f}  log loss {r['logloss']:.4f}"
            f"  ({int(r['pairs'])} task x agent pairs)"
        )
    print(f"  reliability (bin: mean quality -> observed): {bins_line(s.quality.ravel(), y.ravel())}")
    cs = cells(s, y, min_cell)
    median_n = float(np.median([c["n"] for c in cs])) if cs else 0.0
    print(coverage_line("all", cs))
    print(coverage_line(f"n <= {median_n:.0f}", [c for c in cs if c["n"] <= median_n]))
    print(coverage_line(f"n > {median_n:.0f}", [c for c in cs if c["n"] > median_n]))


def thompson(name: str, document: HandbookDocument, labeller: object, tasks: list[TraceTask], lam: float, seeds: int):
    """Choice frequency over seeds against the mean reported propensity (which counts the choosing draw: 1/257)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="skillorchestra-calibration-") as tmp:
        store = HandbookStore(Path(tmp) / "handbook.db")
        store.create_version(document, source="import")
        handbook = Handbook(store, matcher=labeller)  # type: ignore[arg-type]
        worst = 0.0
        for i in rng.choice(len(tasks), min(4, len(tasks)), replace=False):
            counts: Counter[str] = Counter()
            reported: dict[str, list[float]] = defaultdict(list)
            for seed in range(seeds):
                request = RouteRequest(text=tasks[i].query, lambda_=lam, strategy="thompson", seed=seed, top_k=1)
                decision = handbook.route(request)
                counts[decision.agent_id] += 1
                reported[decision.agent_id].append(decision.propensity)
            shown = []
            for agent, c in counts.most_common(3):
                freq, mean = c / seeds, float(np.mean(reported[agent]))
                worst = max(worst, abs(freq - mean))
                shown.append(f"{agent} {freq:.3f} vs {mean:.3f}")
            print(f"  task {i}: chosen share vs mean reported propensity: {'; '.join(shown)}")
        store.close()
    print(f"  largest gap {worst:.4f} over {seeds} seeds (90% noise of a share p: 1.645 * sqrt(p(1-p)/{seeds}))")


def learned_as_eval(train: list[TraceTask], test: list[TraceTask], prices: dict[str, AgentPrice], seed: int):
    """The eval's own steps (runner.py): its data checks, operating point on the validation split, final learn."""
    config = EvalConfig(seed=seed)
    data = runner._eval_data(train, test, prices)
    operating, _ = runner._operating_point(train, prices, data.agents, data.c_ref, runner._check(config), config)
    handbook = runner._learn_handbook(data, prices, operating, config)
    return data, operating, handbook.learned


def run(name: str, folder: Path, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    train, test = read_tasks(folder / "train.jsonl"), read_tasks(folder / "test.jsonl")
    prices = read_prices(folder / "agents.json")
    data, lam, learned = learned_as_eval(train, test, prices, args.seed)
    table = data.table
    y = table.scores
    train_scores, _ = d.raw_matrices(train, data.agents, prices)
    knn = KnnRouter(runner.DEFAULT_KNN_K).fit(train, prices, data.c_ref)
    baselines = {
        "train rate": np.tile(np.nanmean(train_scores, axis=0), (len(table.tasks), 1)),
        "knn": knn.predict_quality(table.queries),
    }
    s = served(learned.document, learned.labeller, table.tasks, data.agents, lam)
    print(
        f"## {name}: {len(train)} train, {len(table.tasks)} test, {len(data.agents)} agents, operating lambda "
        f"{lam:.4f}, {len(learned.document.skills)} skills\n"
    )
    report(name, s, y, baselines, args.min_cell)
    widening(learned.document, learned.labeller, table.tasks, data.agents, lam, y, args.min_cell, s)
    for size in args.small:
        subset = list(train)
        random.Random(args.seed).shuffle(subset)
        small = default_learn(subset[:size], prices, lam, args.seed)
        rates, _ = d.raw_matrices(subset[:size], data.agents, prices)
        print(f"\n  learned from {size} train tasks ({len(small.document.skills)} skills):")
        as_is = served(small.document, small.labeller, table.tasks, data.agents, lam)
        report(name, as_is, y, {"train rate": np.tile(np.nanmean(rates, axis=0), (len(table.tasks), 1))}, args.min_cell)
        widening(small.document, small.labeller, table.tasks, data.agents, lam, y, args.min_cell, as_is)
    if args.thompson_seeds:
        print()
        thompson(name, learned.document, learned.labeller, table.tasks, lam, args.thompson_seeds)
    print(f"\n  ({time.perf_counter() - started:.0f} s)\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(DATASETS))
    parser.add_argument("--min-cell", type=int, default=20, help="test tasks per (agent, skill) cell")
    parser.add_argument("--small", type=lambda v: [int(x) for x in v.split(",") if x], default=[100, 200])
    parser.add_argument("--thompson-seeds", type=int, default=1000)
    args = parser.parse_args()
    print(f"# calibration of route_step's figures, seed {args.seed}\n{machine_line()}\n")
    with tempfile.TemporaryDirectory(prefix="skillorchestra-bench-") as tmp:
        folders = convert(args.data, Path(tmp), args.seed)
        for name in [n for n in args.only.split(",") if n]:
            run(name, folders[name], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
