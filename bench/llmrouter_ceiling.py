"""How far is the LLMRouter target (acc >= 0.62 at <= 50% of best-single's cost) from routers that know the family?

On the 381 unseen test tasks (9 agents) it prints accuracy and test cost as a share of the best single agent's
(best on train), for:
  1. the learned handbook (product code), at the lambda the eval picks on validation and at the best grid lambda;
  2. a router GIVEN each task's true family that picks per family the agent maximising train mean score -
     lambda * mean cost / c_ref, at the lambda the eval's rule picks on a validation split of train (and, labelled,
     at the best lambda read off test), and the exact train-optimal assignment within the budget (train means
     weighted by the test's family counts, no test outcome), with what train predicted for it;
  3. an upper bound that cheats: the per-family assignment maximising TEST accuracy within the TEST budget (exact
     multiple-choice knapsack over the test's families, by a Pareto-front dynamic programme);
  4. per family: what the train-chosen agent scores on train and test next to the test-optimal agent;
  5. sampling error: a bootstrap over test tasks of the two train-chosen routers at their validation lambdas.
What it shows: whether knowing the family exactly, with train statistics, is enough, and how far a family-level
assignment could go at all. What it does not show: that no router learned on train reaches the target -- a router
with per-task signal inside a family is not bounded by (3) (see the per-task oracle row, for scale).
Nothing is chosen on test except the rows marked TEST. Run: python bench/llmrouter_ceiling.py (about 15 s).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from common import machine_line

from skillorchestra.handbook.datasets import convert_llmrouter
from skillorchestra.handbook.evaluation import data as d
from skillorchestra.handbook.evaluation import policies as p
from skillorchestra.handbook.evaluation import sweep
from skillorchestra.handbook.evaluation.runner import DEFAULT_VAL_FRACTION
from skillorchestra.handbook.evaluation.scorer import CachedLabeller, HandbookScorer
from skillorchestra.handbook.learning.pipeline import learn
from skillorchestra.handbook.traces import AgentPrice, TraceTask, read_prices, read_tasks

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET, BUDGET, SEED, FINE = 0.62, sweep.BUDGET_SHARE, 0, np.round(np.arange(0.0, 2.0005, 0.0025), 4)
Router = Callable[[float], np.ndarray]  # lambda -> picks (column per task of one table)


def short(agent: str) -> str:
    name = agent.replace("-instruct", "")
    return name.split("-", 2)[2] if "nemotron" in name else name


def family_means(table: d.OutcomeTable) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    fams = np.array(table.families)
    return {f: (np.nanmean(table.scores[fams == f], 0), table.costs[fams == f].mean(0)) for f in sorted(set(fams))}


def family_router(fit: d.OutcomeTable, target: d.OutcomeTable, c_ref: float, fallback: int) -> Router:
    """Given the true family: per family argmax of fit's mean score - lambda * mean cost / c_ref."""
    means = family_means(fit)

    def picks(lam: float) -> np.ndarray:
        best = {f: int(np.argmax(np.nan_to_num(s, nan=-1.0) - lam * c / c_ref)) for f, (s, c) in means.items()}
        return np.array([best.get(f, fallback) for f in target.families])

    return picks


def handbook_router(
    tasks: list[TraceTask],
    prices: dict[str, AgentPrice],
    lam: float,
    agents: list[str],
    c_ref: float,
    target: d.OutcomeTable,
) -> Router:
    """The product's learner and batch scorer (what the eval's replay agrees with), scoring `target` once."""
    learned = learn(tasks, prices, lambda_=lam, seed=SEED)
    scored = HandbookScorer(learned.document, CachedLabeller(learned.labeller), agents, c_ref).score(target.queries)
    return lambda x: scored.choose(x, c_ref)


def rate(table: d.OutcomeTable, picks: np.ndarray, ref_cost: float) -> tuple[float, float]:
    scores, costs = table.chosen(picks)
    return float(np.nanmean(scores)), float(costs.mean() / ref_cost)


def validation_lambda(router: Router, val: d.OutcomeTable, val_best_cost: float, c_ref: float) -> float:
    """The eval's rule (runner._operating_point): grid, bisection where the budget is crossed, then the choice."""

    def evaluate(lam: float) -> tuple[float, float]:
        acc, share = rate(val, router(lam), val_best_cost)
        return acc, share * val_best_cost

    points = [(lam, *evaluate(lam)) for lam in sweep.DEFAULT_LAMBDAS]
    points += sweep.budget_bracket(points, val_best_cost, evaluate)
    return sweep.choose_operating_point(points, val_best_cost, c_ref)[0]


def best_within(
    router: Router, test: d.OutcomeTable, ref: float, lambdas: Sequence[float]
) -> tuple[float, float, float]:
    """The most accurate lambda whose test cost is within budget: read off TEST, so only a generous reading."""
    rated = [(lam, *rate(test, router(lam), ref)) for lam in lambdas]
    return max((r for r in rated if r[2] <= BUDGET + 1e-12), key=lambda r: (r[1], -r[2]), default=(np.nan,) * 3)


def train_view(train: d.OutcomeTable, test: d.OutcomeTable) -> d.OutcomeTable:
    """The test tasks as train sees them: each task gets its family's train mean score and cost (no test outcome)."""
    means = family_means(train)
    scores = np.array([means[f][0] for f in test.families])
    return d.OutcomeTable(test.tasks, test.agents, scores, np.array([means[f][1] for f in test.families]))


def knapsack(table: d.OutcomeTable, budget: float) -> dict[str, int]:
    """Exact max of summed score over one agent per family s.t. summed cost <= budget (Pareto-front DP)."""
    fams = np.array(table.families)
    front: list[tuple[float, float, dict[str, int]]] = [(0.0, 0.0, {})]
    for f in sorted(set(fams)):
        s, c = np.nan_to_num(table.scores[fams == f]).sum(0), table.costs[fams == f].sum(0)
        grown = [(c0 + c[a], s0 + s[a], {**pick, f: a}) for c0, s0, pick in front for a in range(len(s))]
        front = []
        for cost, score, pick in sorted((g for g in grown if g[0] <= budget), key=lambda g: (g[0], -g[1])):
            if not front or score > front[-1][1]:
                front.append((cost, score, pick))
    return front[-1][2]


def main() -> int:
    print(machine_line())
    if not (DEFAULT_DATA / "llmrouter").is_dir():
        print(f"skipped: {DEFAULT_DATA / 'llmrouter'} not present (the shared data lives next to the repository)")
        return 0
    with tempfile.TemporaryDirectory(prefix="skillorchestra-ceiling-") as tmp:
        convert_llmrouter(DEFAULT_DATA / "llmrouter", Path(tmp))
        train, test_tasks = read_tasks(Path(tmp) / "train.jsonl"), read_tasks(Path(tmp) / "test.jsonl")
        prices = dict(read_prices(Path(tmp) / "agents.json"))
    agents = d.judged_agents(train)
    train_scores, train_costs = d.raw_matrices(train, agents, prices)
    c_ref = d.reference_cost(d.mean_costs(train_costs, agents))

    def table(tasks: list[TraceTask]) -> d.OutcomeTable:
        return d.build_table(tasks, agents, prices, c_ref)

    tr, te = table(train), table(d.scorable(train, test_tasks))
    best = p.best_single_column(train_scores)
    ref = float(te.costs[:, best].mean())
    fit, val = d.split_by_query(train, DEFAULT_VAL_FRACTION, SEED)
    fit_t, val_t = table(fit), table(val)
    val_best_cost = float(val_t.costs[:, p.best_single_column(d.raw_matrices(fit, agents, prices)[0])].mean())
    print(
        f"LLMRouter unseen test: {len(te.tasks)} tasks, {len(agents)} agents, {len(set(te.families))} families; "
        f"best single {agents[best]} {np.nanmean(te.scores[:, best]):.3f}; target acc >= {TARGET} at <= {BUDGET:.0%}"
    )
    print(f"{'router (cost% = its test cost / best single test cost)':66s} lambda    acc  cost%  target")

    def show(label: str, lam: float | None, acc: float, share: float) -> None:
        ok = "PASS" if acc >= TARGET and share <= BUDGET + 1e-12 else "MISS"
        print(f"{label:66s} {'-' if lam is None else f'{lam:.4g}':>6s}  {acc:.3f}  {share:5.0%}  {ok}")

    hb_val = handbook_router(fit, prices, sweep.REFERENCE_LAMBDA, agents, c_ref, val_t)
    hb_op = validation_lambda(hb_val, val_t, val_best_cost, c_ref)
    hb = handbook_router(train, prices, hb_op, agents, c_ref, te)
    show("1. handbook (ours), lambda chosen on validation (the eval's row)", hb_op, *rate(te, hb(hb_op), ref))
    grid = sorted({*sweep.DEFAULT_LAMBDAS, hb_op})
    show("   handbook (ours), best grid lambda on TEST (generous)", *best_within(hb, te, ref, grid))
    fam_op = validation_lambda(family_router(fit_t, val_t, c_ref, best), val_t, val_best_cost, c_ref)
    fam = family_router(tr, te, c_ref, best)
    show("2. true family label, chosen on train, lambda chosen on validation", fam_op, *rate(te, fam(fam_op), ref))
    show(
        "   true family label, chosen on train, best grid lambda on TEST",
        *best_within(fam, te, ref, sweep.DEFAULT_LAMBDAS),
    )
    show("   true family label, chosen on train, best of 801 lambdas on TEST", *best_within(fam, te, ref, FINE))
    seen = train_view(tr, te)  # train's family means on the test's family mix: what train predicts for test
    planned = knapsack(seen, BUDGET * seen.costs[:, best].sum())
    planned_picks = np.array([planned[f] for f in te.families])
    show("   true family label, exact train-optimal plan (test family counts)", None, *rate(te, planned_picks, ref))
    exact = knapsack(te, BUDGET * te.costs[:, best].sum())
    exact_picks = np.array([exact[f] for f in te.families])
    show("3. true family label, chosen on TEST (cheating upper bound, exact)", None, *rate(te, exact_picks, ref))
    predicted = [rate(seen, x, float(seen.costs[:, best].mean())) for x in (planned_picks, exact_picks)]
    flipped = predicted[0][0] > predicted[1][0] and rate(te, planned_picks, ref)[0] < rate(te, exact_picks, ref)[0]
    print(
        f"   train's means predicted the plan at {predicted[0][0]:.3f} ({predicted[0][1]:.0%}) and row 3's assignment "
        f"at {predicted[1][0]:.3f} ({predicted[1][1]:.0%})"
        + ("; test ranks them the other way round" if flipped else "")
    )
    show("   per-task oracle (TEST, for scale: not a family-level router)", None, *rate(te, p.oracle_choices(te), ref))

    fam_picks, hb_picks = fam(fam_op), hb(hb_op)
    print(
        f"\n4. per family: train pick (row 2, lambda {fam_op:g}) vs TEST pick (row 3); score train/test, cost% of best"
    )
    pick = "tr    te    $%"
    print(f"{'family':22s} {'n':>3s} {'n_tr':>5s}  {'train pick':21s} {pick}  {'TEST pick':21s} {pick}  d_acc")
    fams, fams_tr, n = np.array(te.families), np.array(tr.families), len(te.tasks)
    for f in sorted(set(fams)):
        m, mt = fams == f, fams_tr == f
        cells, a_tr = [], fam_picks[m][0]
        for a in (a_tr, exact[f]):
            tr_s, te_s = np.nanmean(tr.scores[mt, a]), np.nanmean(te.scores[m, a])
            cells.append(f"{short(agents[a]):21s} {tr_s:.2f}  {te_s:.2f}  {te.costs[m, a].mean() / ref:3.0%}")
        gain = (np.nansum(te.scores[m, exact[f]]) - np.nansum(te.scores[m, a_tr])) / n
        print(f"{f:22s} {m.sum():3d} {mt.sum():5d}  {cells[0]}  {cells[1]}  {gain:+.3f}")

    print("\n5. sampling error (test tasks resampled with replacement, seed 0, 2000 resamples)")
    scores = np.nan_to_num(te.chosen(fam_picks)[0])
    print(
        f"   SE of a {n}-task accuracy: {scores.std(ddof=1) / np.sqrt(n):.3f} (graded scores), binary at 0.6: "
        f"{np.sqrt(0.24 / n):.3f}; the target is {TARGET * n:.1f} task-points of score"
    )
    idx = np.random.default_rng(SEED).integers(0, n, size=(2000, n))
    for label, picks in (("true family, validation lambda", fam_picks), ("handbook, validation lambda", hb_picks)):
        s, c = te.chosen(picks)
        acc, share = np.nan_to_num(s)[idx].mean(1), c[idx].sum(1) / te.costs[:, best][idx].sum(1)
        hit = np.mean((acc >= TARGET) & (share <= BUDGET))
        lo, hi = np.percentile(acc, [5, 95])
        print(f"   {label:32s} acc 90% interval [{lo:.3f}, {hi:.3f}]; share of resamples meeting the target {hit:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
