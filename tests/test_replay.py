"""The replay evaluator routes exactly as the server does, and scores with the recorded outcomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from learning_data import PRICES, swapped_and_alike
from shared_data import LLMROUTER

from skillorchestra.handbook.arrays import document_arrays
from skillorchestra.handbook.datasets import convert_llmrouter
from skillorchestra.handbook.learning.pipeline import learn
from skillorchestra.handbook.learning.profile import Outcomes
from skillorchestra.handbook.learning.replay import replay, replay_arrays
from skillorchestra.handbook.models import Agent, Competence, HandbookDocument, Mode, Skill
from skillorchestra.handbook.service import Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import AgentOutcome, TraceTask, read_prices, read_tasks


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A handbook learned from 400 LLMRouter tasks and 12 other tasks of the same data to route."""
    if not LLMROUTER.is_dir():
        pytest.skip("shared LLMRouter data not present")
    out = tmp_path_factory.mktemp("llmrouter")
    convert_llmrouter(LLMROUTER, out)
    tasks, prices = read_tasks(out / "train.jsonl"), read_prices(out / "agents.json")
    rows = np.random.default_rng(1).permutation(len(tasks))
    learned = learn([tasks[i] for i in sorted(rows[:400])], prices, lambda_=0.1, seed=0)
    return learned, [tasks[i] for i in rows[400:412]], prices


def service_for(document: HandbookDocument, matcher: object, path: Path) -> Handbook:
    store = HandbookStore(path)
    store.create_version(document, source="learn")
    return Handbook(store, matcher=matcher)


@pytest.mark.parametrize("lambda_", [0.0, 0.1, 1.0])
def test_replay_equals_the_services_routing(real, tmp_path: Path, lambda_: float) -> None:
    learned, tasks, prices = real
    result = replay(learned.document, learned.labeller, tasks, prices, lambda_)
    service = service_for(learned.document, learned.labeller, tmp_path / "h.db")
    assert result.task_ids == [t.id for t in tasks] and result.dropped == 0
    for i, task in enumerate(tasks):
        decision = service.route(RouteRequest(text=task.query, lambda_=lambda_))
        assert decision.agent_id == result.choices[i]
        assert [d.skill_id for d in decision.skills] == [skill for skill, _ in result.demands[i]]
        assert [d.weight for d in decision.skills] == pytest.approx([w for _, w in result.demands[i]])
        chosen = next(c for c in decision.candidates if c.agent_id == decision.agent_id)
        assert chosen.expected_cost_usd == pytest.approx(result.expected_costs[i])
        assert result.scores[i] == task.outcomes[result.choices[i]].score
    assert result.accuracy == pytest.approx(float(np.mean(result.scores)))
    service.store.close()


def test_replay_of_a_mode_level_handbook_uses_the_agent_as_a_whole(real, tmp_path: Path) -> None:
    learned, tasks, prices = real
    flat = learned.document.model_copy(update={"skills": [], "competence": [], "cost": []})
    result = replay(flat, learned.labeller, tasks, prices, 0.1)
    service = service_for(flat, learned.labeller, tmp_path / "flat.db")
    assert all(d == [] for d in result.demands)
    assert result.choices == [service.route(RouteRequest(text=t.query, lambda_=0.1)).agent_id for t in tasks]
    service.store.close()


def test_a_large_lambda_with_a_shared_c_ref_picks_the_cheapest_judged_agent(real) -> None:
    learned, tasks, prices = real
    result = replay(learned.document, learned.labeller, tasks, prices, 1000.0, c_ref=1e-4)
    cheapest = min(prices, key=lambda a: (prices[a].input_per_mtok + prices[a].output_per_mtok, a))
    assert set(result.choices) == {cheapest}


def test_agents_without_a_judged_outcome_are_never_chosen_and_empty_tasks_are_dropped() -> None:
    tasks = swapped_and_alike(seed=2, n=60)
    learned = learn(tasks, PRICES, lambda_=0.0, seed=0)
    probe = [t.model_copy(deep=True) for t in tasks[:20]]
    for t in probe:
        t.outcomes["alpha"] = AgentOutcome(score=None)
        t.outcomes.pop("beta")
    probe.append(TraceTask(id="nobody", query=tasks[0].query, outcomes={"alpha": AgentOutcome(score=None)}))
    result = replay(learned.document, learned.labeller, probe, PRICES, 0.0)
    assert set(result.choices) == {"gamma"} and result.dropped == 1 and "nobody" not in result.task_ids


def test_thompson_replay_is_seeded_and_logs_propensities() -> None:
    tasks = swapped_and_alike(seed=4, n=60)
    learned = learn(tasks, PRICES, lambda_=0.05, seed=0)
    a = replay(learned.document, learned.labeller, tasks[:50], PRICES, 0.05, strategy="thompson", seed=3)
    b = replay(learned.document, learned.labeller, tasks[:50], PRICES, 0.05, strategy="thompson", seed=3)
    assert a.choices == b.choices
    assert np.all((a.propensities > 0) & (a.propensities <= 1)) and a.propensities.min() < 1.0
    greedy = replay(learned.document, learned.labeller, tasks[:50], PRICES, 0.05)
    assert np.all(greedy.propensities == 1.0)
    assert np.mean(np.array(a.choices) == np.array(greedy.choices)) > 0.5


def test_replay_breaks_ties_as_route_step_does(tmp_path: Path) -> None:
    """Review: route_step sent a fresh pool's tie at lambda 0 to the cheaper agent, the learner's replay (which
    picks operating points and what goes live) to the earlier one."""
    from skillorchestra.handbook.models import Agent, Mode
    from skillorchestra.handbook.traces import AgentPrice

    prices = {"a-dear": AgentPrice(input_per_mtok=60.0, output_per_mtok=60.0)}
    prices["b-cheap"] = AgentPrice(input_per_mtok=0.1, output_per_mtok=0.1)
    agents = [Agent(id=agent_id, **price.model_dump(exclude={"description"})) for agent_id, price in prices.items()]
    document = HandbookDocument(modes=[Mode(id="answer")], agents=agents)

    class NoSkills:  # the labeller of replay and the matcher of route_step alike
        def weights(self, query: str, mode: str | None = None) -> list[tuple[str, float]]:
            return []

        def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
            return [], "none"

    book = service_for(document, NoSkills(), tmp_path / "h.db")
    routed = book.route(RouteRequest(text="what is 2+2", lambda_=0.0))
    outcomes = {agent_id: AgentOutcome(score=1.0) for agent_id in prices}
    replayed = replay(document, NoSkills(), [TraceTask(id="t", query="what is 2+2", outcomes=outcomes)], prices, 0.0)
    assert routed.agent_id == "b-cheap" and replayed.choices == ["b-cheap"]
    book.store.close()


def test_replay_keeps_a_step_naming_no_mode_to_agents_of_its_skills_modes() -> None:
    """route_step's rule (arrays.serves_step): a task naming no mode is of its skills' modes, so an agent scoped to
    another mode never takes it, however well it scored there."""
    document = HandbookDocument(
        modes=[Mode(id="code"), Mode(id="search")],
        skills=[Skill(id="code.python", mode="code"), Skill(id="search.web", mode="search")],
        agents=[Agent(id="coder", modes=["code"]), Agent(id="searcher", modes=["search"]), Agent(id="any")],
        competence=[  # the handbook ranks the searcher first on both skills, the coder second
            *(Competence(agent_id="searcher", skill_id=s, alpha=50.0, beta=1.0) for s in ("code.python", "search.web")),
            *(Competence(agent_id="coder", skill_id=s, alpha=20.0, beta=1.0) for s in ("code.python", "search.web")),
        ],
    )
    arrays = document_arrays(document)
    tasks = [
        TraceTask(
            id=f"t{i}",
            query="q",
            outcomes={
                "coder": AgentOutcome(score=0.0),
                "searcher": AgentOutcome(score=1.0),
                "any": AgentOutcome(score=0.0),
            },
        )
        for i in range(3)
    ]
    outcomes = Outcomes.build(tasks, {}, arrays.agent_ids)
    weights = np.zeros((3, len(arrays.skill_ids)))
    weights[0, arrays.skill_index["code.python"]] = 1.0  # a code step: the searcher is out
    weights[1, arrays.skill_index["search.web"]] = 1.0  # a search step: the coder is out
    # task 2 demands no skill: of no known mode, every agent may take it
    result = replay_arrays(arrays, weights, ["q"] * 3, [None] * 3, outcomes, [t.id for t in tasks], 0.0)
    assert result.choices == ["coder", "searcher", "searcher"]  # the searcher is out of the code step only
