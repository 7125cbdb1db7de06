"""QA findings on the learning side: a learn beside a serving handbook, traces of other agents, --learner-* flags
alone, priced agents without outcomes, and the learn output's wording. Real SQLite files, the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from learning_data import PRICES, unlabelled_swap
from test_learn_cli import run, write_data
from test_learn_gate import TWO, seeded

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import Skill
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import AgentOutcome, TraceTask, read_tasks, write_tasks
from skillorchestra.server.jobs import learn_into_store

# -- 1. outcomes a server records while a learn compares with the live skills ---------------------------------


def test_outcomes_recorded_during_the_live_trial_do_not_keep_the_learned_version_from_going_live(
    tmp_path: Path,
) -> None:
    """QA: a server recording outcomes at ~1/s on the same file made every learn end 'the live handbook changed
    while it was compared with the live skills': outcomes change neither the live skills nor the labeller."""
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    server = HandbookStore(db)  # the serving process: its own connection to the file
    handbook = Handbook(server)
    recorded: list[str] = []
    try:
        first = learn_into_store(store, unlabelled_swap(seed=1, n=150), PRICES, data_label="x", price_source="file")
        assert first.metrics["went_live"] is True and first.metrics["n_skills"] > 0  # live skills to compare with

        def progress(fraction: float, message: str) -> None:
            if message.startswith("comparing with the live handbook"):  # the trial is about to read the live skills
                for i in range(3):
                    routed = handbook.route(RouteRequest(text=f"acid molecule step {i}", allowed_agents=["alpha"]))
                    handbook.record(OutcomeReport(decision_id=routed.decision_id, success=True))
                    recorded.append(routed.decision_id)

        stamp, edits = store.change_stamp(), store.edit_stamp()
        run_ = learn_into_store(
            store, unlabelled_swap(seed=2, n=150), PRICES, data_label="y", price_source="file", progress=progress
        )
        assert len(recorded) == 3 and store.change_stamp() == stamp + 3  # the outcomes did land in the log
        assert store.edit_stamp() == edits  # ... and are no edit
        assert run_.metrics["live_trial"] is not None and run_.metrics["live_trial"]["live_wins"] is False
        assert run_.metrics["went_live"] is True and run_.metrics["not_live_reason"] is None
        assert store.current_version() == run_.version == 3
    finally:
        server.close()
        store.close()


def test_a_depth_selected_during_a_learn_is_kept_and_does_not_keep_the_version_from_going_live(
    tmp_path: Path,
) -> None:
    """Review: a `handbook select` while learn compared with the live skills made the gate refuse the version (the
    selection changes neither the skills nor the labeller compared), and the version stored lacked it."""
    db = tmp_path / "h.db"
    store, other = HandbookStore(db), HandbookStore(db)  # another process selects a depth
    try:
        first = learn_into_store(store, unlabelled_swap(seed=1, n=150), PRICES, data_label="x", price_source="file")
        assert first.metrics["went_live"] is True and first.metrics["n_skills"] > 0

        def progress(fraction: float, message: str) -> None:
            if message.startswith("comparing with the live handbook"):
                other.select_depth("planner", 1)

        run_ = learn_into_store(
            store, unlabelled_swap(seed=2, n=150), PRICES, data_label="y", price_source="file", progress=progress
        )
        assert run_.metrics["live_trial"] is not None and other.selections()["planner"] == 1
        assert run_.metrics["went_live"] is True and run_.metrics["not_live_reason"] is None
        assert store.selections()["planner"] == 1 and store.snapshot(run_.version).selections["planner"] == 1
        assert run_.metrics["selections_kept"] == {"planner": 1}
    finally:
        other.close()
        store.close()


def test_an_edit_moves_the_edit_stamp_and_an_outcome_only_the_change_stamp(tmp_path: Path) -> None:
    """Consult cursors (change_stamp) must still see outcomes; the learn gate (edit_stamp) must see only edits."""
    db = tmp_path / "h.db"
    seeded(db)
    store = HandbookStore(db)
    handbook = Handbook(store)
    try:
        stamp, edits = store.change_stamp(), store.edit_stamp()
        routed = handbook.route(RouteRequest(text="one step", allowed_agents=[TWO[0]]))
        handbook.record(OutcomeReport(decision_id=routed.decision_id, success=True))
        assert store.change_stamp() > stamp and store.edit_stamp() == edits
        store.apply("upsert_skill", Skill(id="late.edit", mode="general").model_dump())
        assert store.edit_stamp() == store.change_stamp() > edits
    finally:
        store.close()


# -- 2. traces of other agents drop the live agents that have evidence ----------------------------------------

EXTRA = [f"extra{i}" for i in range(5)]


def renamed(tasks: list[TraceTask], names: dict[str, str]) -> list[TraceTask]:
    return [t.model_copy(update={"outcomes": {names.get(a, a): o for a, o in t.outcomes.items()}}) for t in tasks]


def with_extra_agents(tasks: list[TraceTask]) -> list[TraceTask]:
    """Eight agents: alpha, beta, gamma and five that do as gamma does."""
    return [
        t.model_copy(update={"outcomes": {**t.outcomes, **dict.fromkeys(EXTRA, t.outcomes["gamma"])}}) for t in tasks
    ]


def test_traces_of_other_agents_do_not_drop_the_live_agents_with_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    first = write_data(tmp_path / "first", with_extra_agents(unlabelled_swap(seed=1, n=150)), prices=False)
    code, out, err = run(["learn", "--data", str(first), "--db", str(db), "--matcher", "lexical"], capsys)
    assert code == 0 and "it is live now." in out, err
    names = {"alpha": "new-a", "beta": "new-b", "gamma": "new-c"}
    other = write_data(tmp_path / "other", renamed(unlabelled_swap(seed=2, n=150), names), prices=False)
    code, out, err = run(["learn", "--data", str(other), "--db", str(db), "--matcher", "lexical"], capsys)
    assert code == 0, err
    dropped = sorted(["alpha", "beta", "gamma", *EXTRA])
    assert "did NOT make it live: " in out and "it is live now." not in out
    assert (
        "it would drop 8 agents with evidence in the live handbook (alpha, beta, extra0, extra1, extra2, extra3 and "
        "2 more) and their evidence, as the learning data has no outcomes of theirs"
    ) in out
    assert f"skillorchestra handbook promote 3 --db {db}" in out
    store = HandbookStore(db)
    try:
        assert store.current_version() == 2 and sorted(a.id for a in store.agents()) == dropped
        info = store.versions()[-1]
        assert info["metrics"]["went_live"] is False and info["metrics"]["agents_dropped"] == dropped
        assert "it would drop 8 agents" in info["metrics"]["not_live_reason"]
        assert "skillorchestra handbook promote 3" in info["summary"]
        assert {a.id for a in store.snapshot(3).agents} == set(names.values())  # stored, for promote
    finally:
        store.close()


def test_outcomes_recorded_on_the_example_make_its_agent_evidence_a_trace_may_not_drop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped example's own evidence does not hold the first learn back (test_learn_gate covers that it goes
    live); an outcome recorded on it since is the user's evidence, and its agent is named."""
    db = tmp_path / "h.db"
    seeded(db)
    store = HandbookStore(db)
    handbook = Handbook(store)
    try:
        routed = handbook.route(RouteRequest(text="a real step", allowed_agents=[TWO[1]]))
        handbook.record(OutcomeReport(decision_id=routed.decision_id, success=True))
    finally:
        store.close()
    data = write_data(tmp_path / "own", unlabelled_swap(seed=1, n=150))
    code, out, err = run(["learn", "--data", str(data), "--db", str(db), "--matcher", "lexical"], capsys)
    assert code == 0, err
    assert f"it would drop 1 agent with evidence in the live handbook ({TWO[1]}) and their evidence" in out
    store = HandbookStore(db)
    try:
        assert store.current_version() == 2 and store.versions()[-1]["metrics"]["agents_dropped"] == [TWO[1]]
    finally:
        store.close()


# -- 3. --learner-* without --learner -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--learner-api-base", "http://127.0.0.1:9/v1"),
        ("--learner-api-key-env", "SOME_KEY"),
        ("--learner-input-per-mtok", "0.5"),
        ("--learner-output-per-mtok", "0.5"),
    ],
)
def test_a_learner_option_without_learner_is_refused(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_data(tmp_path / "d", unlabelled_swap(seed=1, n=20))
    db = tmp_path / "h.db"
    code, out, err = run(["learn", "--data", str(data), "--db", str(db), flag, value], capsys)
    assert code == 2 and out == ""
    assert (
        len(err.strip().splitlines()) == 1 and err.startswith(f"error: {flag}=") and f"{flag} needs --learner;" in err
    )
    assert not db.exists()  # refused before the database is opened


# -- 4. priced agents without outcomes ------------------------------------------------------------------------


def test_priced_agents_without_outcomes_are_named_as_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_data(tmp_path / "d", unlabelled_swap(seed=1, n=60), prices=False)
    prices = {a: p.model_dump(exclude_none=True) for a, p in PRICES.items()}
    unused = [f"unused{i}" for i in range(8)]
    prices.update(dict.fromkeys(unused, {"input_per_mtok": 2.0, "output_per_mtok": 2.0}))
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps(prices), encoding="utf-8")
    db = tmp_path / "h.db"
    code, out, err = run(
        ["learn", "--data", str(data), "--agents", str(agents), "--db", str(db), "--matcher", "lexical"], capsys
    )
    assert code == 0, err
    said = (
        f"8 agents with prices (from {agents}) but no outcomes in the data left out "
        "(unused0, unused1, unused2, unused3, unused4, unused5 and 2 more)"
    )
    assert f"\n  {said[0].upper()}{said[1:]}\n" in out
    store = HandbookStore(db)
    try:
        info = store.versions()[-1]
        assert info["metrics"]["priced_without_outcomes"] == unused and said in info["summary"]
        assert sorted(a.id for a in store.agents()) == sorted(PRICES)
    finally:
        store.close()


# -- 5. wording -----------------------------------------------------------------------------------------------


def test_one_task_is_counted_in_the_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "one.jsonl"
    write_tasks(data, [TraceTask(id="t", query="one task", outcomes={"a": AgentOutcome(score=1.0)})])
    db = tmp_path / "h.db"
    code, out, err = run(["learn", "--data", str(data), "--db", str(db), "--val-fraction", "0"], capsys)
    assert code == 0, err
    assert "1 judged task (1 task, validated on the training tasks (no validation split))" in out
    assert f"learn: [  0%] 1 task from {data};" in err


def test_the_orchestrator_depth_line_says_when_consult_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: 'consult_handbook with orchestrator=X reads the handbook at that depth' of a version stored only."""
    data = write_data(tmp_path / "d", unlabelled_swap(seed=1, n=20))
    db = tmp_path / "h.db"
    seeded(db)  # the example has skills: with no validation split the version is stored only
    args = ["learn", "--data", str(data), "--matcher", "lexical", "--orchestrator", "bot"]
    code, out, err = run([*args, "--db", str(db), "--val-fraction", "0"], capsys)
    assert code == 0 and "did NOT make it live" in out, err
    line = next(x for x in out.splitlines() if x.startswith("Depth "))
    assert line.endswith(
        "stored for orchestrator 'bot': the tools read steps at that depth once this version is promoted "
        "(it is not live)."
    )
    code, out, err = run([*args, "--db", str(tmp_path / "new.db")], capsys)
    assert code == 0 and "it is live now." in out, err
    assert (
        "stored for orchestrator 'bot': consult_handbook, route_step and delegate with orchestrator='bot' read steps "
        "at that depth." in (out)
    )


def test_a_query_of_blanks_only_is_refused_naming_its_line(tmp_path: Path) -> None:
    """QA: an empty query was refused but one of spaces and a line break was learned from."""
    data = tmp_path / "blank.jsonl"
    data.write_text('{"id": "a", "query": "   \\n ", "outcomes": {"x": {"score": 1}}}\n', encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"blank.jsonl:1: field 'query': expected a query with some text"):
        read_tasks(data)
