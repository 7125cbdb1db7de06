"""The eval engine on tiny hand-made datasets whose answers are worked out by hand.

The learner here is a stand-in (one skill per task label, competence = the label's counts, labeller = the
labels of the query's TF-IDF neighbours), so these tests pin the evaluation, not the learning.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skillorchestra.handbook.evaluation import data as d
from skillorchestra.handbook.evaluation import policies as p
from skillorchestra.handbook.evaluation import sweep
from skillorchestra.handbook.evaluation.episodes import Episode, build_episodes, episode_rule, evaluate_episodes
from skillorchestra.handbook.evaluation.online import regret_of, replay_online
from skillorchestra.handbook.evaluation.report import cost_basis_text
from skillorchestra.handbook.evaluation.report import summary as report_summary
from skillorchestra.handbook.evaluation.runner import EvalConfig, default_replay, run_eval
from skillorchestra.handbook.evaluation.scorer import HandbookScorer, Scored
from skillorchestra.handbook.knn import KnnRouter, TfidfIndex
from skillorchestra.handbook.models import Agent, Competence, CostStats, HandbookDocument, Mode, Skill
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import AgentOutcome, AgentPrice, TraceTask, estimate_cost_usd

# -- the stand-in learner and replay ------------------------------------------------------------------------


class LabelLabeller:
    """Skill weights = the task labels of the query's nearest training queries."""

    def __init__(self, tasks: list[TraceTask], k: int = 5) -> None:
        self.index = TfidfIndex([t.query for t in tasks])
        self.labels = [f"family.{t.task}" for t in tasks]
        self.k = k

    def weights(self, query: str) -> list[tuple[str, float]]:
        sims = self.index.similarities(query)
        top = np.argsort(-sims, kind="stable")[: self.k]
        votes = Counter(self.labels[i] for i in top[sims[top] > 0])
        total = sum(votes.values())
        return sorted(((s, c / total) for s, c in votes.items()), key=lambda x: (-x[1], x[0])) if total else []


@dataclass
class Learned:
    document: HandbookDocument
    labeller: LabelLabeller
    seconds: float
    llm_calls: int = 0
    usd: float = 0.0


def standin_learn(tasks: list[TraceTask], prices: dict[str, AgentPrice], lambda_: float, seed: int) -> Learned:
    started = time.perf_counter()
    success: dict[tuple[str, str], float] = defaultdict(float)
    failure: dict[tuple[str, str], float] = defaultdict(float)
    costs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for task in tasks:
        skill = f"family.{task.task}"
        for agent, outcome in task.outcomes.items():
            if outcome.score is None:
                continue
            success[agent, skill] += outcome.score
            failure[agent, skill] += 1 - outcome.score
            cost = estimate_cost_usd(task.query, outcome, prices.get(agent))
            if cost is not None:
                costs[agent, skill].append(cost)
    agents = sorted({a for a, _ in success})
    document = HandbookDocument(
        modes=[Mode(id="general")],
        skills=[Skill(id=s) for s in sorted({s for _, s in success})],
        agents=[Agent(id=a) for a in agents],
        competence=[
            Competence(agent_id=a, skill_id=s, alpha=1 + v, beta=1 + failure[a, s]) for (a, s), v in success.items()
        ],
        cost=[
            CostStats(agent_id=a, skill_id=s, n=len(v), mean_cost_usd=float(np.mean(v))) for (a, s), v in costs.items()
        ],
    )
    return Learned(document, LabelLabeller(tasks), time.perf_counter() - started)


@dataclass
class Replayed:
    choices: list[str]


def standin_replay(document, labeller, tasks, prices, lambda_, seed, c_ref) -> Replayed:  # noqa: ANN001
    agents = sorted(a.id for a in document.agents)
    scored = HandbookScorer(document, labeller, agents, c_ref).score([t.query for t in tasks])
    return Replayed([agents[j] for j in scored.choose(lambda_, c_ref)])


def config(**overrides: Any) -> EvalConfig:
    return EvalConfig(**{"learn_fn": standin_learn, "replay_fn": standin_replay, "episodes": 30, **overrides})


# -- hand-made data -----------------------------------------------------------------------------------------

NUMBERS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()
TEMPLATES = {
    "math": ["solve the equation {} squared", "integrate polynomial {} derivative"],
    "words": ["translate greeting {} into french", "render sentence {} in spanish"],
    "easy": ["say hello politely {} times", "wave goodbye cheerfully {} times"],
}
# mathpro (dear, strong) wins math; lingo (cheap, weak) wins words; both solve easy.
SCORES = {
    "math": {"mathpro": 1.0, "lingo": 0.0},
    "words": {"mathpro": 0.0, "lingo": 1.0},
    "easy": {"mathpro": 1.0, "lingo": 1.0},
}
COST = {"mathpro": 0.01, "lingo": 0.001}
PRICES = {
    "mathpro": AgentPrice(input_per_mtok=10, output_per_mtok=30),
    "lingo": AgentPrice(input_per_mtok=0.5, output_per_mtok=0.5),
}


def tasks_of(family: str, numbers: list[str], prefix: str) -> list[TraceTask]:
    return [
        TraceTask(
            id=f"{prefix}-{family}-{i}-{n}",
            query=template.format(n),
            task=family,
            outcomes={a: AgentOutcome(score=s, cost_usd=COST[a]) for a, s in SCORES[family].items()},
        )
        for i, template in enumerate(TEMPLATES[family])
        for n in numbers
    ]


TRAIN = (
    tasks_of("math", NUMBERS[:10], "tr") * 2
    + tasks_of("words", NUMBERS[:10], "tr")
    + tasks_of("easy", NUMBERS[:10], "tr")
)
TRAIN = [t.model_copy(update={"id": f"{t.id}-{k}"}) for k, t in enumerate(TRAIN)]
TEST = (
    tasks_of("math", NUMBERS[10:], "te")
    + tasks_of("words", NUMBERS[10:], "te")[:5]
    + tasks_of("easy", NUMBERS[10:], "te")
    + TRAIN[:3]
)  # three seen queries to drop


def test_drop_seen_counts_and_keeps_order() -> None:
    kept, dropped = d.drop_seen(TRAIN, TEST)
    assert dropped == 3
    assert kept == TEST[:-3]


def test_split_by_query_is_seeded_and_disjoint() -> None:
    fit, val = d.split_by_query(TRAIN, 0.2, seed=3)
    assert {t.query for t in fit}.isdisjoint({t.query for t in val})
    assert len(fit) + len(val) == len(TRAIN)
    assert d.split_by_query(TRAIN, 0.2, seed=3) == (fit, val)
    assert d.split_by_query(TRAIN, 0.2, seed=4) != (fit, val)


def test_table_costs_and_basis() -> None:
    assert d.cost_basis(TRAIN) == "cost_usd"
    unpriced = [t.model_copy(update={"outcomes": {"a": AgentOutcome(score=1.0)}}) for t in TRAIN[:2]]
    assert d.cost_basis(unpriced) == "estimated"
    assert d.recorded_cost_share(TRAIN) == 1.0 and d.recorded_cost_share(unpriced) == 0.0
    mixed = d.recorded_cost_share(TRAIN[:2] + unpriced)  # QA: "estimated" alone hid that most costs were recorded
    judged = sum(o.score is not None for t in TRAIN[:2] for o in t.outcomes.values())
    assert mixed == pytest.approx(judged / (judged + 2))
    assert (
        cost_basis_text({"cost_basis": "estimated", "recorded_cost_share": 0.3}) == "estimated (30% of costs recorded)"
    )
    assert cost_basis_text({"cost_basis": "estimated", "recorded_cost_share": 0.0}) == "estimated"
    assert cost_basis_text({"cost_basis": "estimated", "recorded_cost_share": 0.997}).endswith(
        "(over 99% of costs recorded)"
    )
    assert cost_basis_text({"cost_basis": "estimated", "recorded_cost_share": 0.004}).endswith(
        "(under 1% of costs recorded)"
    )
    table = d.build_table(unpriced, ["a", "b"], {"a": AgentPrice(input_per_mtok=4, output_per_mtok=1)}, c_ref=9.0)
    expected = (len(unpriced[0].query) / 4 * 4 + 256 * 1) / 1e6
    assert table.costs[0, 0] == pytest.approx(expected)
    assert table.costs[0, 1] == 9.0  # no price, no recorded cost: charged c_ref
    assert np.isnan(table.scores[0, 1])


# -- metrics with known answers -----------------------------------------------------------------------------


def two_agent_table(weak: list[float], strong: list[float]) -> d.OutcomeTable:
    n = len(weak)
    tasks = [TraceTask(id=str(i), query=f"q{i}", outcomes={}) for i in range(n)]
    costs = np.tile([1.0, 10.0], (n, 1))
    return d.OutcomeTable(tasks, ["weak", "strong"], np.column_stack([weak, strong]).astype(float), costs)


def test_apgr_of_perfect_constant_and_random_routers() -> None:
    # half the tasks both solve, half only the strong model: weak 0.5, strong 1.0
    table = two_agent_table([1.0] * 50 + [0.0] * 50, [1.0] * 100)
    perfect = sweep.two_agent_metrics(table.scores[:, 1] - table.scores[:, 0], table, 0, 1)
    # PGR rises linearly to 1 at 50% strong calls, then stays: area 0.5 * 0.5 + 0.5 = 0.75; CPT(50%) = 0.25
    assert perfect["apgr"] == pytest.approx(0.75)
    assert perfect["cpt50"] == pytest.approx(0.25)
    constant = sweep.two_agent_metrics(np.zeros(100), table, 0, 1)
    assert constant["apgr"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    weak = (rng.random(20_000) < 0.6).astype(float)
    strong = (rng.random(20_000) < 0.8).astype(float)
    table = two_agent_table(list(weak), list(strong))
    randomised = sweep.two_agent_metrics(rng.random(20_000), table, 0, 1)
    assert randomised["apgr"] == pytest.approx(0.5, abs=0.03)
    assert randomised["cpt50"] == pytest.approx(0.5, abs=0.05)


def test_two_agent_metrics_count_only_tasks_both_agents_were_judged_on() -> None:
    """QA: one unjudged strong score counted as 0 made the oracle's APGR 5.03; the curve is defined where both
    agents have a score, and says on how many tasks."""
    weak, strong = [1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0, float("nan")]
    sparse = two_agent_table(weak, strong)
    dense = two_agent_table(weak[:4], strong[:4])
    for prefer in (np.array([0.9, 0.8, 0.1, 0.7, 0.95]), np.zeros(5)):
        got = sweep.two_agent_metrics(prefer, sparse, 0, 1)
        assert got == sweep.two_agent_metrics(prefer[:4], dense, 0, 1) | {"tasks": 4}
        assert got["apgr"] is not None and 0.0 <= got["apgr"] <= 1.0
    grid = [(0.0, 0.5), (1.0, 0.75)]
    assert sweep.two_agent_from_points(grid, sparse, 0, 1)["apgr"] is None  # rows over all tasks: not comparable
    assert sweep.two_agent_from_points(grid, dense, 0, 1)["apgr"] == pytest.approx(0.5)
    none_both = two_agent_table([1.0, float("nan")], [float("nan"), 1.0])
    assert sweep.two_agent_metrics(np.zeros(2), none_both, 0, 1) == {
        "apgr": None,
        "cpt50": None,
        "curve_points": 0,
        "tasks": 0,
    }


def test_no_episode_from_fewer_than_three_test_tasks_still_names_every_routing() -> None:
    kept, _ = d.drop_seen(TRAIN, TEST)
    table = d.build_table(kept[:2], ["lingo", "mathpro"], PRICES, c_ref=0.01)
    assert build_episodes(table, 40, seed=0) == []
    learned = standin_learn(TRAIN, PRICES, 0.1, 0)
    scorer = HandbookScorer(learned.document, learned.labeller, table.agents, c_ref=0.01)
    knn = KnnRouter(5).fit(TRAIN, PRICES, 0.01)
    out = evaluate_episodes(table, [], scorer, scorer.score(table.queries), knn, 0.0, 0.01, np.array([0.0, 1.0]))
    assert set(out) == {"step-level", "query-level", "query-level-knn", "best-single"}
    assert all(v == {"accuracy": None, "avg_cost": None, "episodes": 0} for v in out.values())
    assert episode_rule(table).startswith("none: 2 test task(s)")


def test_row_metrics_on_a_hand_made_table() -> None:
    table = two_agent_table([1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0])
    oracle = p.oracle_choices(table)
    assert oracle.tolist() == [0, 1, 0, 0]  # cheapest success; nobody succeeds on task 3: the cheapest
    baseline = sweep.Baseline(best_single_accuracy=0.5, oracle_accuracy=0.75, agent_costs={"weak": 1, "strong": 10})
    row = sweep.row("oracle", None, oracle, table, baseline)
    assert row["accuracy"] == 0.75
    assert row["avg_cost"] == pytest.approx((1 + 10 + 1 + 1) / 4)
    assert row["agent_share"] == {"weak": 0.75, "strong": 0.25}
    assert row["expensive_share"] == 0.25
    assert row["oracle_gap_closed"] == pytest.approx(1.0)
    assert row["entropy_bits"] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    always_strong = sweep.row("best-single", None, p.constant(table, 1), table, baseline)
    assert always_strong["oracle_gap_closed"] == pytest.approx(0.0)
    assert always_strong["expensive_share"] == 1.0


def test_the_gap_to_the_oracle_is_measured_up_to_the_best_score_on_graded_data(tmp_path: Path) -> None:
    """Graded scores: the cheap agent scores 0.6 (a success, >= 0.5) on every task, the dear one 1.0 on three of
    four and 0.0 on the fourth. The thrifty oracle picks the cheap agent everywhere (0.6, below best-single's 0.75);
    the gap closed is measured against the best score per task (0.9), so falling short of best-single is negative,
    not "the whole gap closed" as it read against the thrifty oracle."""

    def graded(prefix: str) -> list[TraceTask]:
        return [
            TraceTask(
                id=f"{prefix}{i}",
                query=f"{prefix} question number {i}",
                outcomes={
                    "cheap": AgentOutcome(score=0.6, cost_usd=0.001),
                    "dear": AgentOutcome(score=0.0 if i % 4 == 3 else 1.0, cost_usd=0.01),
                },
            )
            for i in range(8)
        ]

    result = run_eval(graded("train"), graded("test"), {}, config(db_path=tmp_path / "eval.db"))
    by = {(r["policy"], r["lambda"]): r for r in result["rows"]}
    assert result["dataset"]["oracle_best_score_accuracy"] == pytest.approx(0.9)
    assert by["best-single", None]["accuracy"] == pytest.approx(0.75)
    assert by["oracle", None]["accuracy"] == pytest.approx(0.6)
    assert by["oracle", None]["oracle_gap_closed"] == pytest.approx(-1.0)  # (0.6 - 0.75) / (0.9 - 0.75)
    assert by["cheapest", None]["oracle_gap_closed"] == pytest.approx(-1.0)
    assert by["best-single", None]["oracle_gap_closed"] == pytest.approx(0.0)


def test_budget_bracket_bisects_the_grid_step_where_validation_cost_crosses_the_budget() -> None:
    def evaluate(lam: float) -> tuple[float, float]:  # cost falls linearly from 10 at lambda 0 to 0 at lambda 1
        return 0.8 - 0.2 * lam, 10.0 * (1.0 - lam)

    grid = [(lam, *evaluate(lam)) for lam in (0.0, 0.2, 0.5, 1.0)]
    found = sweep.budget_bracket(grid, best_single_cost=10.0, evaluate=evaluate, steps=6)  # budget: cost <= 5
    assert [lam for lam, _, _ in found] == pytest.approx([0.35, 0.425, 0.4625, 0.48125, 0.490625, 0.4953125], abs=1e-6)
    lam, _ = sweep.choose_operating_point(grid + found, best_single_cost=10.0, c_ref=10.0)
    assert lam == 0.5  # the budget is met exactly at 0.5: bisection only approaches it from above 0.49
    found = sweep.budget_bracket(grid, best_single_cost=12.0, evaluate=evaluate, steps=3)  # budget: cost <= 6
    lam, _ = sweep.choose_operating_point(grid + found, best_single_cost=12.0, c_ref=10.0)
    assert lam == 0.425 and evaluate(lam)[1] <= 6.0 and evaluate(lam - 0.05)[1] > 6.0
    assert sweep.budget_bracket(grid, best_single_cost=100.0, evaluate=evaluate) == []  # everything within budget


def test_operating_point_rule() -> None:
    points = [(0.0, 0.70, 10.0), (0.1, 0.66, 4.0), (0.2, 0.64, 2.0), (0.5, 0.60, 1.0)]
    assert sweep.choose_operating_point(points, best_single_cost=10.0, c_ref=10.0)[0] == 0.1
    lam, rule = sweep.choose_operating_point(points, best_single_cost=1.0, c_ref=1.0)  # nothing within 0.5
    assert lam == 0.5 and "max acc" in rule  # 0.60 - 0.1 * 1.0 beats 0.64 - 0.1 * 2.0 and the rest


def test_curve_above_compares_their_points_with_our_envelope() -> None:
    ours = [(1.0, 0.6), (2.0, 0.8), (3.0, 0.7)]
    theirs = [(1.5, 0.65), (2.5, 0.9), (0.5, 0.1)]
    result = sweep.curve_above(ours, theirs)
    assert result["points_compared"] == 2  # (0.5, 0.1) is cheaper than all of ours
    assert result["share_at_or_above"] == 0.5
    assert result["mean_margin"] == pytest.approx(((0.7 - 0.65) + (0.8 - 0.9)) / 2)


def test_strong_gain_is_the_lambda_sweep_in_the_limit_at_constant_call_costs() -> None:
    rng = np.random.default_rng(1)
    scored = Scored(
        quality=rng.random((200, 2)), cost=np.tile(np.array([0.5, 1.5]), (200, 1)), known=np.ones(2, dtype=bool)
    )
    gain = p.strong_gain(scored, weak=0, strong=1)
    for lam in (0.0, 0.05, 0.3, 1.0):  # strong wins where gain > lam * (1.5 - 0.5) / c_ref
        assert np.array_equal(scored.choose(lam, 2.0) == 1, gain > lam * 0.5)


def test_the_eval_scorer_breaks_ties_as_the_router_does() -> None:
    """Equal utilities go to the cheaper agent, then to the earlier one."""
    quality = np.array([[0.5, 0.5, 0.4], [0.5, 0.5, 0.5], [0.2, 0.3, 0.3]])
    cost = np.array([[0.9, 0.1, 0.0], [0.2, 0.2, 0.2], [0.0, 0.5, 0.4]])
    scored = Scored(quality=quality, cost=cost, known=np.ones(3, dtype=bool))
    assert scored.choose(0.0, 1.0).tolist() == [1, 0, 2]


# -- policies ------------------------------------------------------------------------------------------------


class Fixed:
    def __init__(self, weights: list[tuple[str, float]]) -> None:
        self._weights = weights

    def weights(self, query: str) -> list[tuple[str, float]]:
        return self._weights


def test_paper_rule_uses_raw_rates_unseen_zero_and_cost_only_on_ties() -> None:
    document = HandbookDocument(
        skills=[Skill(id="s"), Skill(id="t")],
        agents=[
            Agent(id="lucky", input_per_mtok=1, output_per_mtok=1),
            Agent(id="steady", input_per_mtok=1, output_per_mtok=1),
            Agent(id="twin", input_per_mtok=2, output_per_mtok=2),
        ],
        competence=[
            Competence(agent_id="lucky", skill_id="s", alpha=2, beta=1),  # 1 of 1
            Competence(agent_id="lucky", skill_id="t", alpha=1, beta=6),  # 0 of 5: a weak agent overall
            Competence(agent_id="steady", skill_id="s", alpha=30, beta=2),  # 29 of 30
            Competence(agent_id="steady", skill_id="t", alpha=2, beta=1),  # 1 of 1 on t
            Competence(agent_id="twin", skill_id="t", alpha=2, beta=1),  # 1 of 1 on t, dearer
        ],
    )
    table = d.OutcomeTable(
        [TraceTask(id="1", query="q", outcomes={})], ["lucky", "steady", "twin"], np.ones((1, 3)), np.ones((1, 3))
    )
    on_s = HandbookScorer(document, Fixed([("s", 1.0)]), table.agents, c_ref=1.0)
    expected = on_s.score(table.queries)
    assert p.paper_rule_choices(on_s, table, expected).tolist() == [0]  # 1 of 1 beats 29 of 30
    assert expected.choose(0.0, 1.0).tolist() == [1]  # the posterior mean does not
    rates, _ = on_s.raw_rates(["q"])
    assert rates[0, 2] == 0.0  # twin never seen on s: 0, not the prior's 0.5
    on_t = HandbookScorer(document, Fixed([("t", 1.0)]), table.agents, c_ref=1.0)
    assert p.paper_rule_choices(on_t, table, on_t.score(table.queries)).tolist() == [1]  # tie: the cheaper


# -- online and episodes -------------------------------------------------------------------------------------


def test_regret_against_the_best_utility() -> None:
    table = two_agent_table([1.0, 0.0], [1.0, 1.0])
    # utilities at lambda 1, c_ref 10: weak (1 - 0.1, 0 - 0.1), strong (1 - 1, 1 - 1)
    regret, curve = regret_of(np.array([1, 0]), table, lambda_=1.0, c_ref=10.0)
    assert regret == pytest.approx((0.9 - 0.0) + (0.0 - (-0.1)))
    assert curve[-1] == pytest.approx(regret)


def test_online_thompson_learns_from_a_cold_start(tmp_path: Path) -> None:
    n = 120
    tasks = [TraceTask(id=str(i), query=f"solve equation {i}", task="math", outcomes={}) for i in range(n)]
    scores = np.column_stack([np.zeros(n), np.ones(n)])  # 'good' always succeeds, 'bad' never
    table = d.OutcomeTable(tasks, ["bad", "good"], scores, np.full((n, 2), 0.001))
    document = HandbookDocument(
        skills=[Skill(id="family.math")],
        agents=[Agent(id="bad"), Agent(id="good")],
        competence=[Competence(agent_id="bad", skill_id="family.math", alpha=50, beta=1)],
    )
    run = replay_online(
        document,
        Fixed([("family.math", 1.0)]),
        table,
        start="cold",
        lambda_=0.0,
        c_ref=0.001,
        seed=0,
        db_path=tmp_path / "eval.db",
    )
    assert run.start == "cold"
    assert run.picks[n // 2 :].mean() > 0.9  # it found the good agent (the learned 50-1 prior was dropped)
    assert run.cumulative_regret == pytest.approx(float((run.picks == 0).sum()))
    store = HandbookStore(tmp_path / "eval.db")
    rows = {(c.agent_id, c.skill_id): c for c in store.competence()}
    assert rows["good", "family.math"].alpha == pytest.approx(1.0 + (run.picks == 1).sum())
    store.close()


def test_step_level_episodes_beat_query_level_on_swapped_strengths() -> None:
    kept, _ = d.drop_seen(TRAIN, TEST)
    table = d.build_table(kept, ["lingo", "mathpro"], PRICES, c_ref=0.01)
    episodes = build_episodes(table, 40, seed=0)
    assert all(3 <= len(e.steps) <= 3 for e in episodes)  # three families: one step each
    assert all(len({table.families[i] for i in e.steps}) == len(e.steps) for e in episodes)
    assert build_episodes(table, 40, seed=0) == episodes
    learned = standin_learn(TRAIN, PRICES, 0.1, 0)
    scorer = HandbookScorer(learned.document, learned.labeller, table.agents, c_ref=0.01)
    knn = KnnRouter(5).fit(TRAIN, PRICES, 0.01)
    out = evaluate_episodes(table, episodes, scorer, scorer.score(table.queries), knn, 0.0, 0.01, np.array([0.0, 1.0]))
    assert out["step-level"]["accuracy"] == 1.0  # each step to the agent that solves its family
    assert out["best-single"]["accuracy"] == 0.0  # mathpro fails every words step
    assert out["query-level"]["accuracy"] == 0.0  # one agent cannot solve both math and words
    assert out["step-level"]["avg_cost"] < out["best-single"]["avg_cost"]
    assert Episode(steps=[0]) != episodes[0]


# -- the whole eval --------------------------------------------------------------------------------------------


def without_timings(result: dict[str, Any]) -> dict[str, Any]:
    clone = json.loads(json.dumps(result))
    clone.pop("learning")
    clone["operating_point"].pop("learning")
    return clone


def test_run_eval_schema_and_known_answers(tmp_path: Path) -> None:
    result = run_eval(TRAIN, TEST, PRICES, config(db_path=tmp_path / "eval.db"))
    ds = result["dataset"]
    assert (ds["train"], ds["test"], ds["dropped_seen_in_train"]) == (len(TRAIN), len(TEST) - 3, 3)
    assert ds["agents"] == ["lingo", "mathpro"] and ds["cost_basis"] == "cost_usd"
    assert ds["c_ref"] == pytest.approx(0.01) and ds["best_single_agent"] == "mathpro"
    policies = {r["policy"] for r in result["rows"]}
    assert policies == {
        "skillorchestra",
        "skillorchestra-thompson",
        "paper-rule",
        "knn",
        "best-single",
        "cheapest",
        "random",
        "oracle",
    }
    keys = {
        "policy",
        "lambda",
        "accuracy",
        "avg_cost",
        "agent_share",
        "entropy_bits",
        "expensive_share",
        "oracle_gap_closed",
    }
    for row in result["rows"]:
        assert keys <= set(row)
        assert sum(row["agent_share"].values()) == pytest.approx(1.0)
        assert (row["lambda"] is None) == (row["policy"] in p.FIXED)
    by = {(r["policy"], r["lambda"]): r for r in result["rows"]}
    assert by["oracle", None]["accuracy"] == 1.0 and by["oracle", None]["oracle_gap_closed"] == 1.0
    assert by["best-single", None]["accuracy"] == pytest.approx(0.8)  # mathpro fails the 5 words tasks of 25
    assert by["skillorchestra", 0.0]["accuracy"] == 1.0  # the perfect router on this data
    assert by["skillorchestra", 0.0]["agent_share"]["lingo"] == pytest.approx(0.2)  # words only at lambda 0
    assert by["skillorchestra", 1.0]["agent_share"]["lingo"] >= 0.6  # easy moves to the cheap agent
    assert by["skillorchestra", 1.0]["avg_cost"] < by["skillorchestra", 0.0]["avg_cost"]
    swept = [r["lambda"] for r in result["rows"] if r["policy"] == "skillorchestra"]
    assert set(sweep.DEFAULT_LAMBDAS) <= set(swept) and swept == sorted(swept)
    assert result["operating_point"]["policy"] == "skillorchestra"
    assert result["operating_point"]["lambda"] in swept  # a bisected operating point gets its own row
    assert len(swept) == len(sweep.DEFAULT_LAMBDAS) + (result["operating_point"]["lambda"] not in sweep.DEFAULT_LAMBDAS)
    assert set(result["two_agent"]) == {r["policy"] for r in result["rows"]}  # QA: three were missing
    assert result["two_agent"]["best-single"]["apgr"] is None and result["two_agent"]["best-single"]["why"]
    assert result["two_agent"]["knn"]["tasks"] == result["dataset"]["test"]  # dense: every test task counts
    assert "best-single APGR" not in report_summary(result)
    assert result["two_agent"]["skillorchestra"]["apgr"] > result["two_agent"]["random"]["apgr"]
    assert {(o["policy"], o["start"]) for o in result["online"]} >= {
        ("skillorchestra-thompson", "cold"),
        ("skillorchestra-thompson", "learned"),
    }
    assert set(result["episodes"]) >= {"step-level", "query-level", "best-single"}
    assert set(result["learning"]) >= {"seconds", "llm_calls", "usd"}
    assert result["learning"]["skills"] >= 2  # APGR above random needs skills that tell tasks apart
    assert result["replay_agreement"]["min"] == 1.0
    json.dumps(result, allow_nan=False)
    store = HandbookStore(tmp_path / "eval.db")  # --db given: the online replay lives there
    assert store.versions()[-1]["source"] == "eval"
    store.close()


def test_on_sparse_test_data_every_policy_picks_among_the_agents_judged_on_the_task(tmp_path: Path) -> None:
    """mathpro was not run on the test's 5 words tasks: a policy routing there must take lingo (replay's rule), so
    every row is scored on all 25 tasks and none pays for a pick without a score."""
    sparse = [
        t.model_copy(update={"outcomes": {"lingo": t.outcomes["lingo"]}}) if t.task == "words" else t for t in TEST
    ]
    result = run_eval(TRAIN, sparse, PRICES, config(db_path=tmp_path / "eval.db", replay_fn=default_replay))
    by = {(r["policy"], r["lambda"]): r for r in result["rows"]}
    best = by["best-single", None]  # mathpro where it ran, else the next best on train
    assert best["accuracy"] == 1.0 and best["agent_share"]["lingo"] == pytest.approx(5 / 25)
    assert best["avg_cost"] == pytest.approx((20 * COST["mathpro"] + 5 * COST["lingo"]) / 25)
    for row in result["rows"]:
        assert row["agent_share"].get("lingo", 0.0) >= 5 / 25 - 1e-9, row["policy"]
    assert result["replay_agreement"]["min"] == 1.0
    # every episode holds a words step (three families, one step each): one agent for all of it must be lingo
    assert result["episodes"]["best-single"]["avg_cost"] == pytest.approx(3 * COST["lingo"])
    assert result["episodes"]["query-level"]["avg_cost"] == pytest.approx(3 * COST["lingo"])
    assert result["episodes"]["step-level"]["accuracy"] == 1.0


def test_policy_choices_keep_to_the_judged_agents_and_random_stays_uniform() -> None:
    n = 30_000
    scores = np.ones((n, 3))
    scores[::2, 0] = np.nan  # agent 0 not run on half the tasks
    scores[::3, 2] = np.nan
    table = d.OutcomeTable(
        [TraceTask(id=str(i), query=f"q{i}", outcomes={}) for i in range(n)], ["a", "b", "c"], scores, np.ones((n, 3))
    )
    picks = p.random_choices(table, seed=0)
    assert table.judged[np.arange(n), picks].all()
    both_missing = ~table.judged[:, 0] & ~table.judged[:, 2]
    assert (picks[both_missing] == 1).all()
    only_a_missing = ~table.judged[:, 0] & table.judged[:, 2]
    assert np.bincount(picks[only_a_missing], minlength=3)[1:] / only_a_missing.sum() == pytest.approx(
        [0.5, 0.5], abs=0.02
    )
    assert (
        p.best_single_choices(table, np.array([[0.9, 0.5, 0.7]])) == np.where(table.judged[:, 0], 0, 2 - both_missing)
    ).all()
    assert (p.cheapest_choices(table, {"a": 3.0, "b": 2.0, "c": 1.0}) == np.where(table.judged[:, 2], 2, 1)).all()


def test_run_eval_is_deterministic_for_a_seed() -> None:
    first = without_timings(run_eval(TRAIN, TEST, PRICES, config(seed=7)))
    assert without_timings(run_eval(TRAIN, TEST, PRICES, config(seed=7))) == first
    other = without_timings(run_eval(TRAIN, TEST, PRICES, config(seed=8)))
    random_rows = [r for r in first["rows"] if r["policy"] == "random"]
    assert random_rows != [r for r in other["rows"] if r["policy"] == "random"]


def test_any_eval_seed_gives_the_online_replay_seeds_route_step_takes(tmp_path: Path) -> None:
    result = run_eval(TRAIN, TEST, PRICES, config(seed=4_000_000_000, db_path=tmp_path / "eval.db"))
    assert {row["policy"] for row in result["rows"]} >= {"skillorchestra-thompson"}


def test_run_eval_rejects_bad_lambdas_and_all_seen_tests() -> None:
    from skillorchestra.handbook.errors import InvalidInput

    with pytest.raises(InvalidInput, match="lambda"):
        run_eval(TRAIN, TEST, PRICES, config(lambdas=(-0.1,)))
    with pytest.raises(InvalidInput, match="test"):
        run_eval(TRAIN, TRAIN[:5], PRICES, config())


def test_run_eval_refuses_a_test_set_judged_only_for_agents_train_lacks_before_learning() -> None:
    """It crashed with a TypeError after learning; the CLI checked it, library callers (bench/) did not."""
    from skillorchestra.handbook.errors import InvalidInput

    stranger = [t.model_copy(update={"outcomes": {"stranger": AgentOutcome(score=1.0)}}) for t in TEST[:5]]
    learned: list[int] = []

    def counting_learn(*args: Any) -> Any:
        learned.append(1)
        return standin_learn(*args)

    with pytest.raises(InvalidInput) as refused:
        run_eval(TRAIN, stranger, PRICES, EvalConfig(learn_fn=counting_learn, replay_fn=standin_replay, episodes=30))
    assert refused.value.field == "--test" and "for an agent of --train" in str(refused.value)
    assert learned == []


# -- unknown costs, sparse data and the readable report --------------------------------------------------------


def without_costs(tasks: list[TraceTask]) -> list[TraceTask]:
    return [
        t.model_copy(update={"outcomes": {a: AgentOutcome(score=o.score) for a, o in t.outcomes.items()}})
        for t in tasks
    ]


def test_run_eval_refuses_a_pool_where_no_judged_agent_has_a_known_cost_before_learning() -> None:
    """c_ref was 0, every cost $0 and lambda did nothing, silently; a cost_usd in the data counts as known."""
    from skillorchestra.handbook.errors import InvalidInput

    learned: list[int] = []

    def counting_learn(*args: Any) -> Any:
        learned.append(1)
        return standin_learn(*args)

    unpriced = {"stranger": AgentPrice(input_per_mtok=1, output_per_mtok=1)}  # prices nobody of the data
    with pytest.raises(InvalidInput) as refused:
        run_eval(without_costs(TRAIN), without_costs(TEST), unpriced, config(learn_fn=counting_learn))
    assert refused.value.field == "--agents" and "none for lingo, mathpro" in str(refused.value)
    assert learned == []
    result = run_eval(TRAIN, TEST, {}, config(lambdas=(0.1,)))  # no prices, but the data records cost_usd
    assert result["dataset"]["c_ref"] == pytest.approx(COST["mathpro"])


MYSTERY = [t.model_copy(update={"outcomes": {**t.outcomes, "mystery": AgentOutcome(score=1.0)}}) for t in TRAIN]


def test_an_agent_of_unknown_cost_counts_as_expensive_and_the_summary_names_it() -> None:
    """mystery has neither a price nor a recorded cost: it is charged c_ref (mathpro's cost) like the dearest agent,
    so calls to it count in expensive_share (they were left out) and the printed summary says so."""
    from skillorchestra.handbook.evaluation.report import summary

    test = [t.model_copy(update={"outcomes": {**t.outcomes, "mystery": AgentOutcome(score=1.0)}}) for t in TEST]
    result = run_eval(MYSTERY, test, PRICES, config(lambdas=(0.0, 1.0)))
    ds = result["dataset"]
    assert ds["unknown_cost_agents"] == ["mystery"] and ds["best_single_agent"] == "mystery"
    by = {(r["policy"], r["lambda"]): r for r in result["rows"]}
    assert by["best-single", None]["agent_share"]["mystery"] == 1.0
    assert by["best-single", None]["expensive_share"] == 1.0
    assert by["best-single", None]["avg_cost"] == pytest.approx(COST["mathpro"])  # charged c_ref
    for row in result["rows"]:
        share = row["agent_share"]
        assert row["expensive_share"] == pytest.approx(share["mathpro"] + share["mystery"]), row["policy"]
    text = summary(result)
    assert "unknown cost (no price in --agents, no cost_usd in the data): mystery charged c_ref $0.01 per call" in text
    assert "unknown cost" not in summary(run_eval(TRAIN, TEST, PRICES, config(lambdas=(0.1,))))


def test_single_agents_on_sparse_data_carry_their_coverage(tmp_path: Path) -> None:
    """mathpro was not run on the 5 test words tasks: its point is its accuracy and cost on the 20 it was judged on
    (it looked better than every router, oracle included), and the JSON says so with n of `of`."""
    from skillorchestra.server.plots import agent_label

    sparse = [
        t.model_copy(update={"outcomes": {"lingo": t.outcomes["lingo"]}}) if t.task == "words" else t for t in TEST
    ]
    result = run_eval(TRAIN, sparse, PRICES, config(lambdas=(0.1,)))
    single = {a["agent"]: a for a in result["single_agents"]}
    assert (single["mathpro"]["n"], single["mathpro"]["of"]) == (20, 25)
    assert single["mathpro"]["accuracy"] == 1.0 and single["mathpro"]["avg_cost"] == pytest.approx(COST["mathpro"])
    assert (single["lingo"]["n"], single["lingo"]["of"]) == (25, 25)
    assert single["lingo"]["avg_cost"] == pytest.approx(COST["lingo"])
    assert agent_label(single["mathpro"]) == "mathpro (20/25 tasks)" and agent_label(single["lingo"]) == "lingo"


def test_test_tasks_judged_for_no_agent_are_counted_and_printed() -> None:
    from skillorchestra.handbook.evaluation.report import summary

    unjudged = [
        t.model_copy(update={"id": f"u{i}", "query": f"nobody judged this {i}", "outcomes": {"lingo": AgentOutcome()}})
        for i, t in enumerate(TEST[:4])
    ]
    result = run_eval(TRAIN, TEST + unjudged, PRICES, config(lambdas=(0.1,)))
    ds = result["dataset"]
    assert (ds["test"], ds["dropped_seen_in_train"], ds["dropped_unjudged"]) == (len(TEST) - 3, 3, 4)
    assert "(3 dropped as seen in train, 4 as judged for no agent)" in summary(result)


def test_the_episode_rule_says_how_the_episodes_were_drawn() -> None:
    """On one family (GSM8K) the steps are any distinct tasks: the rule said 'from distinct task families'."""
    math_only = [t for t in TRAIN if t.task == "math"]
    result = run_eval(math_only, [t for t in TEST if t.task == "math"], PRICES, config(lambdas=(0.1,)))
    rule = result["episodes_detail"]["rule"]
    assert "families" not in rule.split("(")[0] and "one task family" in rule and "3-5 distinct tasks" in rule
    three = run_eval(TRAIN, TEST, PRICES, config(lambdas=(0.1,)))["episodes_detail"]["rule"]
    assert three.startswith("3 steps, each from a different task family")  # three families: three steps each


def test_the_table_keeps_its_columns_for_any_lambda() -> None:
    """0.09375 (a bisected operating point) pushed every later column of its line one place right."""
    from skillorchestra.handbook.evaluation.report import rows_table

    shares = {"a": 1.0}
    rows = [
        {"policy": "skillorchestra", "lambda": lam, "accuracy": 0.5, "avg_cost": 0.001, "agent_share": shares}
        | {"oracle_gap_closed": 0.1, "entropy_bits": 0.0, "expensive_share": 1.0}
        for lam in (0.0, 0.09375, 0.0078125, 0.115625, 123456.0, None)
    ]
    lines = rows_table({"rows": rows, "operating_point": {"lambda": 0.09375}}).splitlines()
    acc_at = lines[0].index("   acc") + len("   acc")
    assert all(line[acc_at - 5 : acc_at] == "0.500" for line in lines[2:]), "\n".join(lines)
    lambda_at = lines[0].index("lambda") + len("lambda")  # at most 4 significant digits, right-aligned under it
    shown = [line[lambda_at - 7 : lambda_at] for line in lines[2:]]
    assert shown == ["   0.00", "0.09375", "0.00781", " 0.1156", "1.2e+05", "      -"]
