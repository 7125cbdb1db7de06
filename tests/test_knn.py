"""The kNN baseline router on crafted data where the neighbours decide."""

from __future__ import annotations

import numpy as np
import pytest

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.knn import KnnRouter, TfidfIndex, terms
from skillorchestra.handbook.traces import AgentOutcome, AgentPrice, TraceTask

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
MATH = ["solve the equation {} squared plus", "integrate polynomial {} derivative", "compute algebra sum {}"]
WORDS = ["translate greeting {} into french", "render sentence {} in spanish", "german wording for {}"]


def family(templates: list[str], agent_scores: dict[str, float], prefix: str, cost: dict[str, float]) -> list:
    """Queries of one family (sharing no word with the other), each agent with a fixed score and cost."""
    return [
        TraceTask(
            id=f"{prefix}-{i}-{j}",
            query=template.format(number),
            outcomes={a: AgentOutcome(score=s, cost_usd=cost[a]) for a, s in agent_scores.items()},
        )
        for i, template in enumerate(templates)
        for j, number in enumerate(NUMBERS)
    ]


COST = {"mathpro": 0.01, "lingo": 0.001}
TRAIN = family(MATH, {"mathpro": 1.0, "lingo": 0.0}, "m", COST) + family(
    WORDS, {"mathpro": 0.0, "lingo": 1.0}, "w", COST
)
TEST = ["solve the polynomial equation with eleven", "translate this greeting into spanish"]


def test_terms_are_unigrams_and_bigrams() -> None:
    assert terms("Hello, big World a") == ["hello", "big", "world", "hello big", "big world"]


def test_tfidf_cosine_of_identical_text_is_one_and_disjoint_is_zero() -> None:
    index = TfidfIndex(["red apple pie", "blue ocean wave", "red apple tart"])
    sims = index.similarities("red apple pie")
    assert sims[0] == pytest.approx(1.0, abs=1e-6)
    assert sims[1] == 0.0
    assert 0.0 < sims[2] < sims[0]


def test_neighbours_decide_per_family() -> None:
    router = KnnRouter(k=5).fit(TRAIN)
    assert router.agents == ["lingo", "mathpro"]
    quality = router.predict_quality(TEST)
    assert quality.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert router.choose(TEST, lambda_=0.0) == ["mathpro", "lingo"]


def test_large_lambda_picks_the_cheaper_agent() -> None:
    router = KnnRouter(k=5).fit(TRAIN)
    assert router.c_ref == pytest.approx(0.01)
    assert router.normalised_cost().tolist() == pytest.approx([0.1, 1.0])
    # mathpro's quality edge (1.0) is below lambda * (1.0 - 0.1) once lambda > 1/0.9.
    assert router.choose(TEST, lambda_=1.2) == ["lingo", "lingo"]
    assert router.choose(TEST, lambda_=1.0) == ["mathpro", "lingo"]


def test_unknown_query_falls_back_to_global_means_and_ties_go_cheaper() -> None:
    router = KnnRouter(k=5).fit(TRAIN)
    assert router.predict_quality(["zzz qqq"]).tolist() == [[0.5, 0.5]]
    assert router.choose(["zzz qqq"], lambda_=0.0) == ["lingo"]


def test_k_nearest_wins_over_the_family_majority() -> None:
    """With k=1 one near-duplicate neighbour decides, even against its family's usual winner."""
    odd = TraceTask(
        id="odd",
        query="solve the equation eleven squared plus twelve",
        outcomes={"mathpro": AgentOutcome(score=0.0), "lingo": AgentOutcome(score=1.0)},
    )
    router = KnnRouter(k=1).fit([*TRAIN, odd])
    assert router.choose(["solve the equation eleven squared plus twelve"]) == ["lingo"]
    assert KnnRouter(k=30).fit([*TRAIN, odd]).choose(["solve the equation eleven squared plus twelve"]) == ["mathpro"]


def test_sparse_outcomes_use_the_agents_global_mean() -> None:
    extra = [
        TraceTask(id=f"g{i}", query=f"translate greeting {n} into french", outcomes={"gen": AgentOutcome(score=0.4)})
        for i, n in enumerate(NUMBERS)
    ]
    router = KnnRouter(k=5).fit(TRAIN + extra)
    quality = dict(zip(router.agents, router.predict_quality(["integrate polynomial derivative"])[0], strict=True))
    assert quality == {"gen": pytest.approx(0.4), "lingo": 0.0, "mathpro": 1.0}


def test_costs_from_prices_and_unknown_cost_is_charged_c_ref() -> None:
    query = "x" * 400  # 100 prompt tokens estimated, plus 256 completion tokens
    tasks = [
        TraceTask(
            id="t",
            query=query,
            outcomes={a: AgentOutcome(score=0.5) for a in ("cheap", "dear", "mystery")},
        )
    ]
    prices = {
        "cheap": AgentPrice(input_per_mtok=1.0, output_per_mtok=1.0),
        "dear": AgentPrice(input_per_mtok=10.0, output_per_mtok=10.0),
    }
    router = KnnRouter().fit(tasks, prices)
    assert router.mean_cost == pytest.approx({"cheap": 356e-6, "dear": 356e-5})
    assert router.unknown_cost == {"mystery"}
    assert router.normalised_cost().tolist() == pytest.approx([0.1, 1.0, 1.0])
    assert router.choose([query], lambda_=0.5) == ["cheap"]


def test_bad_input() -> None:
    with pytest.raises(InvalidInput):
        KnnRouter(k=0)
    with pytest.raises(InvalidInput):
        KnnRouter().fit([])
    with pytest.raises(InvalidInput):
        KnnRouter().predict_quality(["anything"])
    with pytest.raises(InvalidInput):
        KnnRouter().fit(TRAIN).choose(TEST, lambda_=-1.0)


def test_scales_to_thousands_of_tasks() -> None:
    """5,600 x 400 synthetic tasks of random words: fit and route quickly, deterministically."""
    rng = np.random.default_rng(0)
    queries = [" ".join(f"w{i}" for i in row) for row in rng.integers(0, 3000, size=(6000, 40)).tolist()]
    tasks = [
        TraceTask(id=str(i), query=q, outcomes={a: AgentOutcome(score=float(rng.random() < 0.5)) for a in "abc"})
        for i, q in enumerate(queries[:5600])
    ]
    router = KnnRouter().fit(tasks)
    first = router.choose(queries[5600:], lambda_=0.1)
    assert len(first) == 400 and first == router.choose(queries[5600:], lambda_=0.1)
