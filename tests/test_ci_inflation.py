"""The learned widening of ci90: measured on the validation split only, at least 1, kept with its version as the
length effect is, applied to ci90 by route_step and consult_handbook, fading with later evidence, and never moving
quality or any routing choice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from learning_data import PRICES, swapped_and_alike
from pydantic import ValidationError

from skillorchestra.handbook.arrays import build_arrays, document_arrays
from skillorchestra.handbook.ci_scale import ci_scales, effective_ci_inflation
from skillorchestra.handbook.errors import NotFound
from skillorchestra.handbook.learning.ci_inflation import Measured, agent_evidence, measure
from skillorchestra.handbook.learning.gate import keep_live_agents
from skillorchestra.handbook.learning.pipeline import learn, learnable, split_tasks
from skillorchestra.handbook.models import (
    Agent,
    CiInflation,
    Competence,
    HandbookDocument,
    Mode,
    Skill,
    SkillDemand,
)
from skillorchestra.handbook.posterior import Z90
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import AgentOutcome, TraceTask, write_tasks
from skillorchestra.server.cli import main

DOCUMENT = HandbookDocument(
    modes=[Mode(id="general")],
    skills=[Skill(id="algebra", mode="general"), Skill(id="essays", mode="general")],
    agents=[
        Agent(id="big", input_per_mtok=5.0, output_per_mtok=5.0),
        Agent(id="small", input_per_mtok=0.1, output_per_mtok=0.1),
    ],
    competence=[  # 50 observations per cell: intervals twice as wide still inside [0, 1]
        Competence(agent_id="big", skill_id="algebra", alpha=31.0, beta=21.0),
        Competence(agent_id="big", skill_id="essays", alpha=26.0, beta=26.0),
        Competence(agent_id="small", skill_id="algebra", alpha=21.0, beta=31.0),
        Competence(agent_id="small", skill_id="essays", alpha=31.0, beta=21.0),
    ],
)
WIDENED = CiInflation(factor=2.0, evidence={"big": 100.0, "small": 100.0})


class Fixed:
    """A matcher that reads every step as mostly algebra (the default one's inference is not what is tested)."""

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
        return [("algebra", 0.7), ("essays", 0.3)][:top_k], "lexical"


def service(document: HandbookDocument, path: Path) -> Handbook:
    store = HandbookStore(path)
    store.create_version(document, source="learn")
    return Handbook(store, matcher=Fixed())


def half_widths(decision) -> dict[str, float]:
    return {c.agent_id: (c.ci90[1] - c.ci90[0]) / 2 for c in decision.candidates}


# -- the measurement ---------------------------------------------------------------------------------------------


def one_cell(scores: list[float]) -> tuple[Measured, float]:
    """One agent, no skills: every task reads the root column, one cell. Returns the measurement and the stated sd."""
    arrays = build_arrays(
        [Mode(id="general")], [], [Agent(id="a")], [Competence(agent_id="a", skill_id="*", alpha=6.0, beta=6.0)], []
    )
    y = np.array(scores)[:, None]
    measured = measure(arrays, np.zeros((len(scores), 0)), [None] * len(scores), y)
    return measured, float(np.sqrt(arrays.var[0, arrays.root_column]))


def test_the_measurement_is_the_shared_miss_of_task_pairs_in_units_of_the_stated_sd() -> None:
    measured, sd = one_cell([1.0, 1.0, 1.0, 1.0])  # quality 0.5: each task misses by +0.5, all alike
    # sum over the 12 ordered pairs of 0.5 * 0.5, over 12 * sd^2
    assert measured.pairs == 6 and measured.tasks == 4
    assert measured.variance_ratio == pytest.approx(0.25 / sd**2)
    assert measured.factor == pytest.approx(min(0.5 / sd, 10.0))
    assert measured.factor > 1  # a cell that missed by 0.5 where the posterior said +-sd (0.14)


def test_misses_that_cancel_widen_nothing_the_factor_is_never_below_one() -> None:
    measured, _ = one_cell([1.0, 0.0, 1.0, 0.0])  # pairs: (+0.5)(-0.5) four times, (+0.5)(+0.5) twice
    assert measured.variance_ratio is not None and measured.variance_ratio < 0
    assert measured.factor == 1.0
    lone, _ = one_cell([1.0])  # no pair: nothing measured, nothing widened
    assert lone.variance_ratio is None and lone.factor == 1.0
    rng = np.random.default_rng(3)
    for _ in range(50):
        m, _ = one_cell(list(rng.integers(0, 2, size=int(rng.integers(1, 12))).astype(float)))
        assert 1.0 <= m.factor <= 10.0


def test_only_tasks_of_the_same_agent_and_heaviest_skill_pair_up() -> None:
    arrays = document_arrays(DOCUMENT)
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # algebra, essays, algebra (arrays.skill_ids order)
    scores = np.array([[1.0, np.nan], [1.0, 1.0], [1.0, 0.0]])  # small judged once on algebra: no pair of its own
    measured = measure(arrays, weights, [None, None, None], scores)
    assert measured.pairs == 1  # big's two algebra tasks, nothing else
    big, algebra = arrays.agent_index["big"], arrays.column_of_skill("algebra")
    r = 1.0 - arrays.mean[big, algebra]
    assert measured.variance_ratio == pytest.approx(r * r / arrays.var[big, algebra])


def test_agent_evidence_counts_each_agents_observations() -> None:
    assert agent_evidence(DOCUMENT.competence) == {"big": 100.0, "small": 100.0}


# -- the learner: validation only --------------------------------------------------------------------------------


def flipped_on_validation(tasks: list[TraceTask]) -> list[TraceTask]:
    """The same tasks with every validation task's outcomes reversed (the learner's own split of seed 0)."""
    _, val_rows = split_tasks(learnable(tasks, 0.2, 0.1), 0.2, 0)
    val_ids = {tasks[i].id for i in val_rows}
    return [
        t.model_copy(update={"outcomes": {a: AgentOutcome(score=1.0 - o.score) for a, o in t.outcomes.items()}})
        if t.id in val_ids
        else t
        for t in tasks
    ]


@pytest.fixture(scope="module")
def honest():
    return learn(swapped_and_alike(n=40), PRICES, lambda_=0.1, seed=0)


def test_validation_outcomes_that_contradict_training_widen_ci90_and_the_learner_reports_it(honest) -> None:
    tasks = swapped_and_alike(n=40)
    contradicted = learn(flipped_on_validation(tasks), PRICES, lambda_=0.1, seed=0)
    # the training tasks are the same, so every difference comes from the validation outcomes
    assert [t.id for t in contradicted.train] == [t.id for t in honest.train]
    report = contradicted.metrics["ci_inflation"]
    assert report["validation_tasks"] == len(contradicted.val) and report["pairs"] > 0
    assert report["factor"] > 2.0
    assert contradicted.document.ci_inflation is not None
    assert contradicted.document.ci_inflation.factor == report["factor"]
    # it fades against the training tasks' evidence, the part it was measured on: the deployed document also
    # counts the validation tasks (review: the factor had applied whole to evidence it did not describe)
    deployed = agent_evidence(contradicted.document.competence)
    share = len(contradicted.train) / (len(contradicted.train) + len(contradicted.val))
    for agent, learned in contradicted.document.ci_inflation.evidence.items():
        assert learned == pytest.approx(share * deployed[agent])
    assert honest.metrics["ci_inflation"]["factor"] < report["factor"] / 2


def test_outcomes_that_hold_on_validation_leave_ci90_as_stated(honest) -> None:
    report = honest.metrics["ci_inflation"]
    assert report["factor"] == 1.0 and report["variance_ratio"] < 1.0
    assert honest.document.ci_inflation is None


def test_without_a_validation_split_nothing_is_measured() -> None:
    result = learn(swapped_and_alike(n=40), PRICES, lambda_=0.1, seed=0, val_fraction=0.0)
    assert result.metrics["ci_inflation"] is None and result.document.ci_inflation is None


# -- the store: with its version ---------------------------------------------------------------------------------


def test_the_factor_is_kept_with_its_version_and_goes_with_a_rollback_or_a_new_version(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    plain = store.create_version(DOCUMENT, source="import")
    widened = store.create_version(DOCUMENT.model_copy(update={"ci_inflation": WIDENED}), source="learn")
    assert store.ci_inflation() == WIDENED and store.document().ci_inflation == WIDENED
    assert store.snapshot(widened).ci_inflation == WIDENED and store.snapshot(plain).ci_inflation is None
    store.rebuild()
    assert store.ci_inflation() == WIDENED
    store.rollback()  # back to `plain`: no widening
    assert store.ci_inflation() is None and Handbook(store).arrays().ci_scale.tolist() == [1.0, 1.0]
    store.promote(widened)  # and forward again: its own
    assert store.ci_inflation() == WIDENED
    store.create_version(DOCUMENT, source="import")  # a new version without one
    assert store.ci_inflation() is None
    store.close()


def test_a_row_written_for_another_version_is_not_read(tmp_path: Path) -> None:
    """A release that knows no widening makes another version live without touching the row: it must not apply."""
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT.model_copy(update={"ci_inflation": WIDENED}), source="learn")
    other = store.create_version(DOCUMENT, source="import", live=False)
    with store.write():
        store._set_meta("current_version", str(other))
    assert store.ci_inflation() is None
    store.close()


def test_no_widening_exports_without_the_key_and_a_factor_of_one_is_none(tmp_path: Path) -> None:
    assert "ci_inflation" not in json.loads(DOCUMENT.model_dump_json())
    assert effective_ci_inflation(CiInflation(factor=1.0, evidence={"big": 5.0})) is None
    assert effective_ci_inflation(CiInflation(factor=3.0, evidence={})) is None
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT.model_copy(update={"ci_inflation": CiInflation(factor=1.0)}), source="import")
    assert "ci_inflation" not in json.loads(store.document().model_dump_json())
    exported = DOCUMENT.model_copy(update={"ci_inflation": WIDENED}).model_dump_json()
    assert HandbookDocument.model_validate_json(exported).ci_inflation == WIDENED
    store.close()


@pytest.mark.parametrize("update", [{"factor": 0.5}, {"factor": 11.0}, {"factor": math.nan}, {"evidence": {"a": -1.0}}])
def test_out_of_range_factors_are_refused(update: dict) -> None:
    with pytest.raises(ValidationError):
        CiInflation.model_validate({"factor": 2.0, **update})


def test_deleting_an_agent_drops_its_learned_evidence(tmp_path: Path) -> None:
    book = service(DOCUMENT.model_copy(update={"ci_inflation": WIDENED}), tmp_path / "h.db")
    book.delete_agent("small")
    assert book.store.ci_inflation().evidence == {"big": 100.0}
    book.store.rebuild()  # the event replays the same way
    assert book.store.ci_inflation().evidence == {"big": 100.0}
    book.store.close()


# -- serving: ci90 wider, routing unchanged ----------------------------------------------------------------------


def test_ci90_widens_by_the_factor_and_route_step_says_so(tmp_path: Path) -> None:
    widened = service(DOCUMENT.model_copy(update={"ci_inflation": WIDENED}), tmp_path / "w.db")
    plain = service(DOCUMENT, tmp_path / "p.db")
    request = RouteRequest(text="solve for x", lambda_=0.1, top_k=2)
    wide, narrow = widened.route(request), plain.route(request)
    for agent, half in half_widths(wide).items():
        assert half == pytest.approx(2.0 * half_widths(narrow)[agent])
    assert [c.ci_widened_by for c in wide.candidates] == [2.0, 2.0]
    assert [c.ci_widened_by for c in narrow.candidates] == [1.0, 1.0]
    # a result pays for the field only where it says something (review: ~5% of a route_step result at 1.0)
    assert all("ci_widened_by" in c for c in wide.model_dump(mode="json")["candidates"])
    assert not any("ci_widened_by" in c for c in narrow.model_dump(mode="json")["candidates"])
    # the stated sd: sum_s w_s sd_s of the step's skills, times the factor
    arrays = widened.arrays()
    big = arrays.agent_index["big"]
    sd = 0.7 * math.sqrt(arrays.var[big, arrays.column_of_skill("algebra")])
    sd += 0.3 * math.sqrt(arrays.var[big, arrays.column_of_skill("essays")])
    assert half_widths(wide)["big"] == pytest.approx(2.0 * Z90 * sd)
    widened.store.close()
    plain.store.close()


def test_consult_widens_each_skills_interval_alike(tmp_path: Path) -> None:
    widened = service(DOCUMENT.model_copy(update={"ci_inflation": WIDENED}), tmp_path / "w.db")
    plain = service(DOCUMENT, tmp_path / "p.db")
    wide, narrow = widened.consult("solve for x"), plain.consult("solve for x")
    assert [(r.agent_id, r.skill_id, r.mean) for r in wide.agents] == [
        (r.agent_id, r.skill_id, r.mean) for r in narrow.agents
    ]
    for w, n in zip(wide.agents, narrow.agents, strict=True):
        assert (w.ci90[1] - w.ci90[0]) == pytest.approx(2.0 * (n.ci90[1] - n.ci90[0]))
    widened.store.close()
    plain.store.close()


def test_quality_and_every_choice_stay_the_same_at_every_lambda_and_strategy(honest, tmp_path: Path) -> None:
    factor = CiInflation(factor=3.0, evidence=agent_evidence(honest.document.competence))
    plain = HandbookStore(tmp_path / "p.db")
    plain.create_version(honest.document, source="learn")
    widened = HandbookStore(tmp_path / "w.db")
    widened.create_version(honest.document.model_copy(update={"ci_inflation": factor}), source="learn")
    books = [Handbook(store, matcher=honest.labeller) for store in (plain, widened)]
    wider = 0
    for task in swapped_and_alike(seed=7, n=6):
        for lambda_ in (0.0, 0.1, 1.0, 20.0):
            for strategy, seed in (("mean", None), ("thompson", 11)):
                request = RouteRequest(text=task.query, lambda_=lambda_, strategy=strategy, seed=seed, top_k=3)
                a, b = (book.route(request) for book in books)
                assert (a.agent_id, a.propensity, a.explored) == (b.agent_id, b.propensity, b.explored)
                assert [(c.agent_id, c.quality, c.utility) for c in a.candidates] == [
                    (c.agent_id, c.quality, c.utility) for c in b.candidates
                ]
                for ca, cb in zip(a.candidates, b.candidates, strict=True):
                    assert cb.ci90[0] <= ca.ci90[0] and cb.ci90[1] >= ca.ci90[1]
                    wider += (cb.ci90[1] - cb.ci90[0]) > (ca.ci90[1] - ca.ci90[0]) + 1e-12
    assert wider > 0
    plain.close()
    widened.close()


# -- fading with later evidence ----------------------------------------------------------------------------------


def test_the_scale_fades_as_recorded_evidence_outnumbers_the_learning_data() -> None:
    inflation = CiInflation(factor=3.0, evidence={"a": 10.0, "b": 10.0})
    scales = ci_scales(inflation, ["a", "b", "new"], np.array([10.0, 40.0, 50.0]))
    # a: as learned; b: 1 + (9 - 1) * 10 / 40 = 3; an agent the learner never saw: not widened
    assert scales.tolist() == pytest.approx([3.0, math.sqrt(3.0), 1.0])
    assert ci_scales(inflation, ["a"], np.array([5.0])).tolist() == [3.0]  # forgetting below n0: the full factor
    assert ci_scales(None, ["a", "b"], np.array([1.0, 2.0])).tolist() == [1.0, 1.0]


def test_recorded_outcomes_narrow_the_widening_of_that_agent(tmp_path: Path) -> None:
    book = service(DOCUMENT.model_copy(update={"ci_inflation": WIDENED}), tmp_path / "h.db")
    for _ in range(100):
        decision = book.route(
            RouteRequest(text="solve", skills=[SkillDemand(skill_id="algebra", weight=1.0)], allowed_agents=["big"])
        )
        book.record(OutcomeReport(decision_id=decision.decision_id, success=True))
    scale = book.arrays().ci_scale
    # big: 100 observations learned, 200 now -> sqrt(1 + 3 * 100 / 200); small untouched
    assert scale[book.arrays().agent_index["big"]] == pytest.approx(math.sqrt(2.5))
    assert scale[book.arrays().agent_index["small"]] == pytest.approx(2.0)
    candidate = book.route(RouteRequest(text="solve", allowed_agents=["big"])).candidates[0]
    assert candidate.ci_widened_by == pytest.approx(math.sqrt(2.5))
    book.store.close()


# -- where a user looks ------------------------------------------------------------------------------------------


def test_handbook_show_prints_each_agents_widening_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    HandbookStore(db).create_version(
        DOCUMENT.model_copy(update={"ci_inflation": CiInflation(factor=2.0, evidence={"big": 50.0})}), source="learn"
    )
    with pytest.raises(SystemExit) as exited:
        main(["handbook", "show", "--db", str(db)])
    out = capsys.readouterr().out
    assert exited.value.code in (0, None)
    # big: 50 learned, 100 now -> sqrt(1 + 3 * 0.5); small: not seen by the learner
    assert "ci90 widened (learned x2.00 on validation, fading with new outcomes): big x1.58, small x1.00" in out


def test_learn_says_how_far_validation_missed_and_stores_the_factor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_tasks(folder / "train.jsonl", flipped_on_validation(swapped_and_alike(n=40)))
    prices = {agent: price.model_dump(exclude_none=True) for agent, price in PRICES.items()}
    (folder / "agents.json").write_text(json.dumps(prices), encoding="utf-8")
    db = tmp_path / "h.db"
    with pytest.raises(SystemExit) as exited:
        main(["learn", "--data", str(folder / "train.jsonl"), "--db", str(db), "--matcher", "lexical", "--seed", "0"])
    out, err = capsys.readouterr()
    assert exited.value.code in (0, None), err
    stored = HandbookStore(db)
    factor = stored.versions()[-1]["metrics"]["ci_inflation"]["factor"]
    assert factor > 2.0 and stored.ci_inflation().factor == factor
    assert f"route_step and consult_handbook widen ci90 x{factor:.2f}" in out
    stored.close()


def test_an_import_whose_widening_names_an_unknown_agent_is_refused(tmp_path: Path) -> None:
    """An agent added later under that name would start widened, though the learner never saw it (review)."""
    store = HandbookStore(tmp_path / "h.db")
    stray = CiInflation(factor=2.0, evidence={"big": 100.0, "ghost": 50.0})
    with pytest.raises(NotFound, match="ghost"):
        store.create_version(DOCUMENT.model_copy(update={"ci_inflation": stray}), source="import")
    assert store.ci_inflation() is None
    store.close()


def test_learning_from_the_log_drops_a_deleted_agents_widening() -> None:
    """An agent the log holds but the live handbook no longer does does not come back, nor does its widening (the
    version was refused for naming it: e82ba7d)."""
    widened = DOCUMENT.model_copy(update={"ci_inflation": WIDENED})
    live = [agent for agent in widened.agents if agent.id != "small"]
    kept = keep_live_agents(widened, live, widened.modes)
    assert kept.ci_inflation is not None and set(kept.ci_inflation.evidence) == {"big"}
    alone = keep_live_agents(widened, [], widened.modes)
    assert alone.ci_inflation is None
