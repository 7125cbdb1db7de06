"""The learned length effect: fitted on residuals, kept only where cross-validation says it routes better,
carried by the document and the store, and applied alike by the router, the service and the replay."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from learning_data import LENGTH_PRICES, PRICES, length_dependent, length_query, swapped_and_alike
from mcp import Client
from pydantic import ValidationError
from test_store import DOCUMENT, dump

from skillorchestra.handbook.errors import InvalidInput, NotFound
from skillorchestra.handbook.evaluation.online import cold_document
from skillorchestra.handbook.evaluation.runner import EvalConfig, run_eval
from skillorchestra.handbook.evaluation.scorer import HandbookScorer
from skillorchestra.handbook.learning.length_fit import fit_length_effect
from skillorchestra.handbook.learning.pipeline import LearnParams, learn
from skillorchestra.handbook.learning.replay import replay
from skillorchestra.handbook.models import Agent, Competence, HandbookDocument, LengthEffect, Mode, Skill
from skillorchestra.handbook.results import four_significant
from skillorchestra.handbook.router import RouteInputs, route
from skillorchestra.handbook.service import Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import write_tasks
from skillorchestra.server.app import create_server
from skillorchestra.server.cli import main
from skillorchestra.server.settings import ServerSettings


@pytest.fixture(scope="module")
def learned():
    return learn(length_dependent(), LENGTH_PRICES, lambda_=0.1, seed=0)


@pytest.fixture(scope="module")
def texts() -> tuple[str, str]:
    rng = np.random.default_rng(9)
    return length_query(rng, 0), length_query(rng, 38)  # a one-liner and a ~40-sentence problem


def service(document: HandbookDocument, matcher: object, path: Path) -> Handbook:
    store = HandbookStore(path)
    store.create_version(document, source="learn")
    return Handbook(store, matcher=matcher)


# -- learning ---------------------------------------------------------------------------------------------------


def test_the_learner_keeps_a_slope_for_the_agent_that_fails_long_problems(learned) -> None:
    report = learned.metrics["length_effect"]
    assert report["kept"] and report["folds"] == 5
    assert report["cv_panel_utility"]["with"] > report["cv_panel_utility"]["without"]
    effect = learned.document.length_effect
    assert effect is not None and effect.slopes == report["slopes"]
    assert effect.slopes["small"] < -0.1  # the data: -0.4 per unit of ln(characters) until the 0.1 floor
    assert abs(effect.slopes["large"]) < 0.05  # the data: no length dependence at all
    lengths = np.log([len(t.query) for t in length_dependent()])
    assert effect.center == pytest.approx(lengths.mean())  # every task fitted the final slopes (train + validation)


def test_routing_sends_the_long_problem_to_the_steady_agent_and_the_one_liner_to_the_cheap_one(
    learned, texts: tuple[str, str], tmp_path: Path
) -> None:
    short, long = texts
    with_effect = service(learned.document, learned.labeller, tmp_path / "with.db")
    plain = learned.document.model_copy(update={"length_effect": None})
    without = service(plain, learned.labeller, tmp_path / "without.db")
    pick = lambda book, text: book.route(RouteRequest(text=text, lambda_=0.5)).agent_id  # noqa: E731
    assert (pick(with_effect, short), pick(with_effect, long)) == ("small", "large")
    # without it the price decides: the long problem's tokens make the large agent dear, so it goes to small
    assert (pick(without, short), pick(without, long)) == ("large", "small")
    with_effect.store.close()
    without.store.close()


def test_a_candidate_reports_its_length_shift_and_its_quality_includes_it(
    learned, texts: tuple[str, str], tmp_path: Path
) -> None:
    effect = learned.document.length_effect
    book = service(learned.document, learned.labeller, tmp_path / "h.db")
    for text in texts:
        decision = book.route(RouteRequest(text=text, lambda_=0.1))
        for candidate in decision.candidates:
            x = min(max(math.log(len(text)), effect.low), effect.high)
            expected = effect.slopes[candidate.agent_id] * (x - effect.center)
            assert candidate.length_shift == pytest.approx(expected)
            raw = sum(candidate.contributions.values())
            assert candidate.quality == pytest.approx(min(max(raw + expected, 0.0), 1.0))
    book.store.close()


def test_replay_routes_exactly_as_the_service_with_a_length_effect(learned, tmp_path: Path) -> None:
    tasks = length_dependent(seed=5, n=40)
    book = service(learned.document, learned.labeller, tmp_path / "h.db")
    splits = []
    for lambda_ in (0.1, 0.5):
        result = replay(learned.document, learned.labeller, tasks, LENGTH_PRICES, lambda_)
        assert result.choices == [book.route(RouteRequest(text=t.query, lambda_=lambda_)).agent_id for t in tasks]
        splits.append(len(set(result.choices)))
    assert splits == [1, 2]  # at lambda 0.5 the length really splits the tasks
    book.store.close()


def test_where_length_does_not_matter_no_effect_is_kept() -> None:
    result = learn(swapped_and_alike(n=80), PRICES, lambda_=0.1, seed=0)
    assert result.metrics["length_effect"]["kept"] is False
    assert result.document.length_effect is None


def test_length_ridge_none_learns_no_length_effect() -> None:
    result = learn(length_dependent(n=200), LENGTH_PRICES, lambda_=0.1, seed=0, params=LearnParams(length_ridge=None))
    assert result.metrics["length_effect"] is None and result.document.length_effect is None


def test_the_fit_is_a_ridge_slope_of_the_residuals_on_centred_log_length() -> None:
    queries = ["a" * 10, "a" * 100, "a" * 1000, "a" * 100]
    quality = np.full((4, 2), 0.5)
    scores = np.array([[1.0, 0.5], [0.5, np.nan], [0.0, 0.5], [0.5, 0.5]])
    effect = fit_length_effect(quality, scores, queries, ["x", "y"], ridge=0.0)
    x = np.log([10, 100, 1000, 100])
    assert effect.center == pytest.approx(x.mean())
    xc = x - x.mean()
    r = scores[:, 0] - 0.5
    assert effect.slopes["x"] == pytest.approx((r * xc).sum() / (xc * xc).sum())
    assert effect.slopes["y"] == pytest.approx(0.0)  # residuals of zero; the unjudged row is left out
    shrunk = fit_length_effect(quality, scores, queries, ["x", "y"], ridge=10.0)
    assert abs(shrunk.slopes["x"]) < abs(effect.slopes["x"])


# -- the router -------------------------------------------------------------------------------------------------


def test_the_router_adds_the_shift_inside_zero_and_one_for_both_strategies() -> None:
    inputs = dict(
        mean=np.array([[0.8], [0.6]]),
        var=np.full((2, 1), 0.001),
        alpha=np.array([[80.0], [60.0]]),
        beta=np.array([[20.0], [40.0]]),
        weights=np.ones(1),
        cost=np.zeros(2),
        c_ref=1.0,
        eligible=np.ones(2, dtype=bool),
    )
    plain = route(RouteInputs(**inputs), 0.0, "mean", None)
    moved = route(RouteInputs(**inputs, shift=np.array([-0.5, 0.9])), 0.0, "mean", None)
    assert plain.chosen == 0 and moved.chosen == 1
    assert moved.quality.tolist() == pytest.approx([0.3, 1.0])  # 0.6 + 0.9 is clipped to a probability
    sampled = route(RouteInputs(**inputs, shift=np.array([-0.5, 0.3])), 0.0, "thompson", np.random.default_rng(0))
    assert sampled.chosen == 1 and sampled.propensity == pytest.approx(1.0)


# -- the document and the store ------------------------------------------------------------------------------------


EFFECT = LengthEffect(center=5.0, low=2.0, high=8.0, slopes={"meta/llama-70b": -0.1, "tiny": 0.05})


def test_the_length_effect_survives_export_import_and_versions(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    document = DOCUMENT.model_copy(update={"length_effect": EFFECT})
    version = store.create_version(document, source="import")
    assert store.document().length_effect == EFFECT
    exported = HandbookDocument.model_validate_json(store.document().model_dump_json())
    assert exported.length_effect == EFFECT
    assert store.snapshot(version).length_effect == EFFECT
    store.create_version(DOCUMENT, source="import")
    assert store.document().length_effect is None
    store.rollback()
    assert store.document().length_effect == EFFECT
    store.rebuild()
    assert store.document().length_effect == EFFECT
    store.close()


def test_a_slope_for_an_agent_the_document_lacks_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="import")
    before = dump(store)
    bad = DOCUMENT.model_copy(update={"length_effect": EFFECT.model_copy(update={"slopes": {"ghost": 0.1}})})
    with pytest.raises(NotFound) as refused:
        store.create_version(bad, source="import")
    assert "length_effect.slopes" in str(refused.value) and "ghost" in str(refused.value)
    assert dump(store) == before
    store.close()


def test_deleting_an_agent_deletes_its_slope_so_the_export_imports_again(tmp_path: Path) -> None:
    book = Handbook(HandbookStore(tmp_path / "h.db"))
    book.store.create_version(DOCUMENT.model_copy(update={"length_effect": EFFECT}), source="import")
    book.delete_agent("tiny")
    assert book.store.document().length_effect.slopes == {"meta/llama-70b": -0.1}
    book.store.rebuild()  # the event replays the same way
    assert book.store.document().length_effect.slopes == {"meta/llama-70b": -0.1}
    HandbookStore(tmp_path / "again.db").create_version(book.store.document(), source="import")
    assert book.arrays().length_slope.tolist() == [-0.1]


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"slopes": {"gpt": 1.5}}, "slopes[gpt]"),
        ({"slopes": {"gpt": float("nan")}}, "slopes.gpt"),
        ({"center": -1.0}, "center"),
        ({"center": float("inf")}, "center"),
        ({"low": 6.0}, "low <= center <= high"),
        ({"high": 4.0}, "low <= center <= high"),
    ],
)
def test_out_of_range_effects_are_refused_naming_the_field(update: dict, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        LengthEffect.model_validate({"center": 5.0, "low": 1.0, "high": 9.0, "slopes": {}, **update})
    assert field in str(refused.value)


# -- over MCP and the CLI ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_route_step_and_the_agent_card_show_the_length_effect(
    learned, texts: tuple[str, str], db_path: Path
) -> None:
    HandbookStore(db_path).create_version(learned.document, source="learn")
    async with Client(create_server(ServerSettings(db_path=db_path, seed_example=False))) as client:
        routed = (await client.call_tool("route_step", {"text": texts[1], "lambda_": 0.5})).structured_content
        card = json.loads((await client.read_resource("handbook://agents/small")).contents[0].text)  # type: ignore[union-attr]
    assert routed["agent_id"] == "large"
    small = next(c for c in routed["candidates"] if c["agent_id"] == "small")
    assert small["length_shift"] < -0.1  # a long problem: the small agent's competence falls
    effect = learned.document.length_effect
    assert card["length_effect"] == {  # four significant digits, as the tools give estimates
        "slope": four_significant(effect.slopes["small"]),
        "range_ln_chars": [four_significant(x) for x in (effect.low, effect.center, effect.high)],
    }


def test_handbook_show_prints_each_agents_slope(learned, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    HandbookStore(tmp_path / "h.db").create_version(learned.document, source="learn")
    with pytest.raises(SystemExit) as exited:
        main(["handbook", "show", "--db", str(tmp_path / "h.db")])
    out = capsys.readouterr().out
    slope = learned.document.length_effect.slopes["small"]
    small = next(line for line in out.splitlines() if line.startswith("agent small "))
    assert exited.value.code in (0, None) and small.startswith("agent small $0.1/$0.1 per Mtok; competence ")
    assert small.endswith(f", length slope {slope:+.3f} per ln(characters)")


def test_learn_says_whether_it_kept_a_length_effect_and_the_handbook_routes_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_tasks(folder / "train.jsonl", length_dependent())
    prices = {agent: price.model_dump(exclude_none=True) for agent, price in LENGTH_PRICES.items()}
    (folder / "agents.json").write_text(json.dumps(prices), encoding="utf-8")
    db = tmp_path / "h.db"
    with pytest.raises(SystemExit) as exited:
        main(["learn", "--data", str(folder / "train.jsonl"), "--db", str(db), "--matcher", "lexical"])
    out, err = capsys.readouterr()
    assert exited.value.code in (0, None), err
    assert "Length effect kept: 5-fold cross-validated utility over the lambda sweep" in out
    with contextlib.closing(HandbookStore(db)) as store:
        trial = store.versions()[-1]["metrics"]["length_effect"]["cv_panel_utility"]
        slopes = store.document().length_effect.slopes
    gain = trial["with"] - trial["without"]
    assert f"without ({gain:+.2g})." in out and gain > 0  # the difference, not two figures that may read equal
    assert f"small {slopes['small']:+.3f}" in out and slopes["small"] < -0.1


def test_handbook_diff_shows_the_slopes_a_version_gained(learned, tmp_path: Path, capsys) -> None:
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    plain = store.create_version(learned.document.model_copy(update={"length_effect": None}), source="import")
    with_effect = store.create_version(learned.document, source="learn")
    store.close()
    with pytest.raises(SystemExit):
        main(["handbook", "diff", str(plain), str(with_effect), "--db", str(db)])
    out = capsys.readouterr().out
    slopes = learned.document.length_effect.slopes
    effect = learned.document.length_effect
    fitted = f"{effect.low:.2f}..{effect.high:.2f} around {effect.center:.2f}"
    assert f"length effect (success per unit of ln(characters), fitted on ln(characters) none -> {fitted}):" in out
    assert f"  small: none -> {slopes['small']:+.3f}" in out and f"  large: none -> {slopes['large']:+.3f}" in out


def test_a_step_longer_than_any_training_task_is_scored_at_the_longest_trained_length(learned, tmp_path) -> None:
    effect = learned.document.length_effect
    book = service(learned.document, learned.labeller, tmp_path / "h.db")
    longest = math.exp(effect.high)
    for characters in (int(longest) + 10, 30_000):
        decision = book.route(RouteRequest(text="invoice ledger " + "x" * (characters - 15), lambda_=0.1))
        shifts = {c.agent_id: c.length_shift for c in decision.candidates}
        assert shifts["small"] == pytest.approx(effect.slopes["small"] * (effect.high - effect.center))
    short = book.route(RouteRequest(text="tax", lambda_=0.1))  # shorter than any training task: held at `low`
    shifts = {c.agent_id: c.length_shift for c in short.candidates}
    assert shifts["small"] == pytest.approx(effect.slopes["small"] * (effect.low - effect.center))
    book.store.close()


FLIP = HandbookDocument(
    modes=[Mode(id="general")],
    skills=[Skill(id="maths", mode="general", description="word problems: invoice ledger tax")],
    agents=[Agent(id="small"), Agent(id="large")],
    competence=[
        Competence(agent_id="small", skill_id="maths", alpha=8.0, beta=2.0),  # 0.8 on the problems it was shown
        Competence(agent_id="large", skill_id="maths", alpha=7.0, beta=3.0),
    ],
    length_effect=LengthEffect(
        center=math.log(100), low=math.log(10), high=math.log(10_000), slopes={"small": -0.2, "large": 0.0}
    ),
)


def test_consult_ranks_agents_with_the_steps_length_shift_as_route_step_does(tmp_path: Path) -> None:
    """small leads on the skill, but a 5,000-character problem costs it 0.2 * ln(50) = 0.78: large comes first."""
    book = Handbook(HandbookStore(tmp_path / "h.db"))
    book.store.create_version(FLIP, source="import")
    long, short = "invoice ledger tax " + "x" * 4981, "invoice ledger tax"
    for text, first in ((long, "large"), (short, "small")):
        rows = book.consult(text).agents
        routed = book.route(RouteRequest(text=text, lambda_=0.0))
        assert [row.agent_id for row in rows] == [c.agent_id for c in routed.candidates]
        assert rows[0].agent_id == first == routed.agent_id
        shift = {c.agent_id: c.length_shift for c in routed.candidates}
        assert all(row.length_shift == pytest.approx(shift[row.agent_id]) for row in rows)
    assert {row.agent_id: row.length_shift for row in book.consult(long).agents}["small"] == pytest.approx(
        -0.2 * math.log(50)
    )
    plain = Handbook(HandbookStore(tmp_path / "plain.db"))
    plain.store.create_version(FLIP.model_copy(update={"length_effect": None}), source="import")
    assert plain.consult(long).agents[0].agent_id == "small"  # without the effect the skill's mean decides


def test_the_eval_scorer_scores_a_step_exactly_as_route_step(learned, tmp_path: Path) -> None:
    texts = [t.query for t in length_dependent(seed=4, n=30)]
    scored = HandbookScorer(learned.document, learned.labeller, ["large", "small"], c_ref=1.0).score(texts)
    book = service(learned.document, learned.labeller, tmp_path / "h.db")
    for i, text in enumerate(texts):
        quality = {c.agent_id: c.quality for c in book.route(RouteRequest(text=text, lambda_=0.1)).candidates}
        assert scored.quality[i].tolist() == pytest.approx([quality["large"], quality["small"]], abs=1e-12)
    assert scored.quality[:, 1].std() > 0.05  # the small agent's quality really moves with the length
    book.store.close()


def test_the_eval_json_carries_the_learned_effect() -> None:
    train, test = length_dependent(n=300), length_dependent(seed=3, n=100)

    def without_length(tasks, prices, lambda_, seed):  # the eval's learner with the length effect switched off
        return learn(tasks, dict(prices), lambda_=lambda_, seed=seed, params=LearnParams(length_ridge=None))

    with_effect = run_eval(train, test, LENGTH_PRICES, EvalConfig(episodes=0))
    without = run_eval(train, test, LENGTH_PRICES, EvalConfig(episodes=0, learn_fn=without_length))
    for learning in (with_effect["learning"], with_effect["learning"]["selection"]):
        assert learning["length_effect"]["slopes"]["small"] < -0.05
    assert without["learning"]["length_effect"] is None and without["learning"]["selection"]["length_effect"] is None


def test_a_handbook_without_a_length_effect_exports_without_the_key() -> None:
    assert "length_effect" not in json.loads(DOCUMENT.model_dump_json())  # older readers still import it
    assert json.loads(DOCUMENT.model_copy(update={"length_effect": EFFECT}).model_dump_json())["length_effect"]


def test_the_online_evals_cold_start_knows_nothing_of_the_learned_slopes(learned) -> None:
    assert cold_document(learned.document).length_effect is None


@pytest.mark.parametrize("ridge", [0.0, -1.0, float("nan")])
def test_a_ridge_that_is_not_positive_is_refused(ridge: float) -> None:
    with pytest.raises(InvalidInput) as refused:
        LearnParams(length_ridge=ridge)
    assert refused.value.field == "length_ridge"


def test_a_live_state_replaced_by_an_older_release_does_not_keep_a_stale_effect(tmp_path: Path) -> None:
    """An older release makes another version live without knowing the effect's row (its rollback, import or
    learn): the row names the version it was written for, so it no longer applies."""
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT.model_copy(update={"length_effect": EFFECT}), source="learn")
    plain = store.create_version(DOCUMENT, source="import", live=False)
    assert store.document().length_effect == EFFECT
    with store.write():  # what an older release's promotion of `plain` writes: the tables and current_version
        store._set_meta("current_version", str(plain))
    assert store.document().length_effect is None
    assert Handbook(store).arrays().has_length_effect is False
    store.close()


def test_an_earlier_versions_state_keeps_its_effect_and_the_events_on_it(tmp_path: Path) -> None:
    book = Handbook(HandbookStore(tmp_path / "h.db"))
    first = book.store.create_version(DOCUMENT.model_copy(update={"length_effect": EFFECT}), source="import")
    book.delete_agent("tiny")  # an event on version `first`
    book.store.create_version(DOCUMENT, source="import")
    assert book.store.state_of(first).length_effect.slopes == {"meta/llama-70b": -0.1}


def test_an_effect_left_without_agents_is_no_effect(tmp_path: Path) -> None:
    book = Handbook(HandbookStore(tmp_path / "h.db"))
    only_tiny = EFFECT.model_copy(update={"slopes": {"tiny": 0.05}})
    book.store.create_version(DOCUMENT.model_copy(update={"length_effect": only_tiny}), source="import")
    book.delete_agent("tiny")
    assert book.store.document().length_effect is None
    assert "length_effect" not in json.loads(book.store.document().model_dump_json())
    empty = DOCUMENT.model_copy(update={"length_effect": EFFECT.model_copy(update={"slopes": {}})})
    book.store.create_version(empty, source="import")
    assert book.store.document().length_effect is None


def test_two_ids_for_the_same_agent_are_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        LengthEffect.model_validate({"center": 5.0, "low": 1.0, "high": 9.0, "slopes": {" a ": 0.1, "a": -0.2}})
    assert "name the same agent" in str(refused.value)


def test_surrounding_whitespace_is_not_a_longer_problem(learned, tmp_path: Path) -> None:
    book = service(learned.document, learned.labeller, tmp_path / "h.db")
    text = "invoice ledger tax audit budget"
    plain = book.route(RouteRequest(text=text, lambda_=0.1)).candidates
    padded = book.route(RouteRequest(text=" " * 5000 + text + "\n" * 50, lambda_=0.1)).candidates
    assert {c.agent_id: c.length_shift for c in plain} == {c.agent_id: c.length_shift for c in padded}
    book.store.close()
