"""`skillorchestra learn` and `handbook diff|promote|rollback`, run in-process on real SQLite files."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from learning_data import PRICES, WORDS, swapped_and_alike, unlabelled_swap
from test_cli_output import metrics_blocks
from test_learn_tools import record_swap_traffic

from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import TraceTask, write_tasks
from skillorchestra.server.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def write_data(folder: Path, tasks: list[TraceTask], *, prices: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_tasks(folder / "train.jsonl", tasks)
    if prices:
        (folder / "agents.json").write_text(
            json.dumps({a: p.model_dump(exclude_none=True) for a, p in PRICES.items()}), encoding="utf-8"
        )
    return folder / "train.jsonl"


def canonical(document: HandbookDocument) -> dict[str, object]:
    """The document without its version number, rows in a fixed order (the store lists them sorted)."""
    d = document.model_dump(exclude={"version"})
    for key in ("modes", "skills", "agents", "competence", "cost"):
        d[key] = sorted(d[key], key=lambda row: json.dumps(row, sort_keys=True))
    return d


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    return write_data(tmp_path / "labelled", swapped_and_alike(seed=0, n=60))


def test_learn_prints_skills_candidates_selection_and_writes_a_version(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    code, out, err = run(
        [
            "learn",
            "--data",
            str(labelled),
            "--db",
            str(db),
            "--matcher",
            "lexical",
            "--lambda",
            "0.05",
            "--orchestrator",
            "small",
        ],
        capsys,
    )
    assert code == 0, err
    assert "learn: [100%] handbook learned" in err and "learn:" not in out  # progress on stderr only
    assert "refining: round 1 of at most 3 (0 changes tried, 0 kept)" in err  # refinement can take seconds
    assert "240 judged tasks (192 train / 48 validation), 3 agents, seed 0, lambda 0.05" in out
    assert "prices from" in out and "beside the data" in out
    assert "candidate" in out and "accuracy [95% CI]" in out and "* " in out
    assert "Selected '" in out and "Pareto front" in out
    assert "for orchestrator 'small': consult_handbook, route_step and delegate with orchestrator='small' read" in out
    store = HandbookStore(db)
    try:
        assert store.current_version() == 2
        info = store.versions()[-1]
        assert info["source"] == "learn" and str(labelled) in info["summary"]
        metrics = info["metrics"]
        assert metrics["cost_basis"] == "estimated" and metrics["lambda"] == 0.05
        names = [c["name"] for c in metrics["candidates"]]
        assert names[:2] == ["depth0", "depth1"] and set(metrics["pareto_front"]) <= set(names)
        assert all(c["accuracy_ci"][0] <= c["accuracy"] <= c["accuracy_ci"][1] for c in metrics["candidates"])
        document = store.document()
        assert store.selections() == {"default": metrics["depth"], "small": metrics["depth"]}
        assert document.labeller is not None
        for skill in document.skills:  # every learned skill is printed with its description
            assert f"    {skill.id}\n" in out or f"      {skill.id}\n" in out
        assert len(document.skills) == metrics["n_skills"] >= 2
        code, listed, _ = run(["handbook", "versions", "--db", str(db)], capsys)
        line = listed.splitlines()[-1]
        assert code == 0 and line.startswith("*    2") and f"{metrics['n_skills']} skills" in line
        assert "lambda 0.05; validation accuracy" in line and len(line) < 400  # the digest, not kilobytes of JSON
        code, full, _ = run(["handbook", "versions", "--metrics", "--db", str(db)], capsys)
        assert metrics_blocks(full)[2]["candidates"] == metrics["candidates"]
        # the learned handbook serves: a chemistry step goes to alpha at lambda 0
        decision = Handbook(store).route(RouteRequest(text="titration of an acid with a catalyst", lambda_=0.0))
        assert decision.agent_id == "alpha"
    finally:
        store.close()


def test_learn_is_deterministic_for_a_seed(labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    documents = []
    for name in ("a", "b"):
        code, out, _ = run(
            [
                "learn",
                "--data",
                str(labelled),
                "--db",
                str(tmp_path / f"{name}.db"),
                "--matcher",
                "lexical",
                "--seed",
                "5",
            ],
            capsys,
        )
        assert code == 0
        store = HandbookStore(tmp_path / f"{name}.db")
        documents.append(store.document().model_dump())
        store.close()
    assert documents[0] == documents[1]


def test_learn_without_prices_or_costs_says_costs_are_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_data(tmp_path / "bare", unlabelled_swap(seed=1, n=60), prices=False)
    code, out, err = run(["learn", "--data", str(data), "--db", str(tmp_path / "h.db"), "--matcher", "lexical"], capsys)
    assert code == 0, err
    assert "costs: unknown" in out and "accuracy alone" in out
    assert "(utility = accuracy: no cost is known)" in out and "x cost / c_ref" not in out  # QA: both were printed


def test_learn_from_the_event_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    record_swap_traffic(db, n=80)
    code, out, err = run(
        ["learn", "--data", "events", "--db", str(db), "--matcher", "lexical", "--lambda", "0"], capsys
    )
    assert code == 0, err
    assert "Learned a Skill Handbook from the event log of" in out
    assert "80 judged tasks" in out
    assert "the database's agents" in out  # prices of the live handbook's agents
    store = HandbookStore(db)
    try:
        assert store.versions()[-1]["source"] == "learn"
        assert {a.id for a in store.agents()} == {"alpha", "beta", "gamma", "delta"}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--lambda", "-1"], "--lambda"),
        (["--lambda", "nan"], "--lambda"),
        (["--lambda", "1000.5"], "--lambda"),  # the MCP tools' bound
        (["--val-fraction", "1"], "--val-fraction"),
        (["--seed", "x"], "--seed"),
        (["--orchestrator", ""], "--orchestrator"),
        (["--agents", "/nonexistent/agents.json"], "--agents"),
        (["--learner", "openai/x", "--learner-api-base", "ftp://127.0.0.1/v1"], "--learner-api-base"),
        (["--learner", "openai/x", "--learner-input-per-mtok", "-1"], "--learner-input-per-mtok"),
        (["--learner", "openai/x", "--learner-output-per-mtok", "2e6"], "--learner-output-per-mtok"),
        (["--matcher", "bm25"], "--matcher"),
    ],
)
def test_learn_rejects_bad_arguments_in_one_line(
    extra: list[str], named: str, labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    code, out, err = run(["learn", "--data", str(labelled), "--db", str(db), *extra], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and named in err, err
    assert not db.exists()  # a rejected command creates nothing


def test_learn_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["learn", "--data", str(tmp_path / "missing.jsonl"), "--db", str(tmp_path / "h.db")], capsys)
    assert code == 2 and "--data" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["learn", "--data", "events", "--db", str(tmp_path / "typo.db")], capsys)
    assert code == 2 and "no handbook at" in err and not (tmp_path / "typo.db").exists()  # not a new empty handbook
    HandbookStore(tmp_path / "empty.db").close()
    code, _, err = run(["learn", "--data", "events", "--db", str(tmp_path / "empty.db")], capsys)
    assert code == 2 and "--data" in err and "record_outcome" in err


def test_a_refused_learn_leaves_no_new_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unjudged = tmp_path / "unjudged.jsonl"
    unjudged.write_text('{"id": "t", "query": "q", "outcomes": {"a": {"score": null}}}\n', encoding="utf-8")
    code, _, err = run(["learn", "--data", str(unjudged), "--db", str(tmp_path / "new.db")], capsys)
    assert code == 2 and "judged" in err
    assert list(tmp_path.iterdir()) == [unjudged]  # no database, no -wal or -shm file


@pytest.mark.parametrize("key", ["", "x" * 201])
def test_learn_refuses_an_outcome_key_that_is_no_agent_id(
    key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.jsonl"
    rows = [{"id": f"t{i}", "query": f"q{i}", "outcomes": {"a": {"score": 1.0}, "b": {"score": 0.0}}} for i in range(3)]
    rows[1]["outcomes"] = {key: {"score": 1.0}}
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    code, _, err = run(["learn", "--data", str(data), "--db", str(tmp_path / "new.db")], capsys)
    assert (
        code == 2
        and err.startswith(f"error: {data}:2: field 'outcomes': expected")
        and "outcome keys (agent ids)" in err
    ), err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == [data]


def canned_taxonomy(body: dict[str, Any]) -> str:
    """The fake learner model: a fixed two-category taxonomy, every task shown assigned by its words."""
    last = str(body["messages"][-1]["content"])
    assignments = {
        handle: "science.chemistry" if set(text.split()) & set(WORDS["chemistry"]) else "writing.poetry"
        for handle, text in re.findall(r"^\[(\w+)\] (.*)$", last, re.MULTILINE)
    }
    categories = [
        {
            "id": "science",
            "description": "lab science",
            "skills": [
                {
                    "id": "science.chemistry",
                    "description": "chemistry questions: reactions, acids, molecules",
                    "indicators": ["acid", "molecule"],
                }
            ],
        },
        {
            "id": "writing",
            "description": "literature",
            "skills": [
                {
                    "id": "writing.poetry",
                    "description": "poetry questions: forms and meter",
                    "indicators": ["sonnet", "rhyme"],
                }
            ],
        },
    ]
    first = "Skills found so far" not in last
    return json.dumps({"categories": categories if first else [], "assignments": assignments})


def test_learn_with_an_llm_learner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_data(tmp_path / "d", unlabelled_swap(seed=4, n=60))
    db = tmp_path / "h.db"
    with FakeOpenAI(responder=canned_taxonomy) as fake:
        code, out, err = run(
            [
                "learn",
                "--data",
                str(data),
                "--db",
                str(db),
                "--matcher",
                "lexical",
                "--lambda",
                "0",
                "--learner",
                "openai/fake-learner",
                "--learner-api-base",
                fake.api_base,
                "--learner-input-per-mtok",
                "1",
                "--learner-output-per-mtok",
                "2",
            ],
            capsys,
        )
        calls = len(fake.chat_requests())
    assert code == 0, err
    assert calls >= 1
    assert f"skills discovered by openai/fake-learner ({calls} LLM calls, $" in out
    store = HandbookStore(db)
    try:
        metrics = store.versions()[-1]["metrics"]
        assert metrics["llm_calls"] == calls and metrics["usd"] > 0
        skills = {s.id: s for s in store.skills()}
        assert metrics["selected"] == "depth1" and set(skills) == {"science", "writing"}  # the LLM's categories
        assert "chemistry questions" in skills["science"].description  # in its words
    finally:
        store.close()


def test_an_unset_learner_key_variable_fails_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SKILLORCHESTRA_TEST_NOPE_VAR", raising=False)
    data = write_data(tmp_path / "d", unlabelled_swap(seed=4, n=60))
    db = tmp_path / "h.db"
    with FakeOpenAI(responder=canned_taxonomy) as fake:
        argv = ["learn", "--data", str(data), "--db", str(db), "--learner", "openai/fake-learner"]
        argv += ["--learner-api-base", fake.api_base, "--learner-api-key-env", "SKILLORCHESTRA_TEST_NOPE_VAR"]
        code, out, err = run(argv, capsys)
        calls = len(fake.chat_requests())
    assert code == 2 and out == "" and calls == 0
    assert err.startswith("error: --learner-api-key-env='SKILLORCHESTRA_TEST_NOPE_VAR': expected") and "set" in err
    assert len(err.strip().splitlines()) == 1 and not db.exists()


def test_handbook_action_help(capsys: pytest.CaptureFixture[str]) -> None:
    """rollback undoes the last change (after a promote: back to what it replaced), and every positional says what
    it is."""
    code, out, _ = run(["handbook", "rollback", "-h"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "Undo the last change" in text and "the version it replaced" in text
    code, out, _ = run(["handbook", "-h"], capsys)
    assert "undo the last change" in " ".join(out.split()) and "promote the live version's parent" not in out
    for argv, needle in ((["diff", "-h"], "the version to compare to"), (["promote", "-h"], "to make live again")):
        code, out, _ = run(["handbook", *argv], capsys)
        assert code == 0 and needle in " ".join(out.split()), out


def test_diff_promote_rollback(labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    other = write_data(tmp_path / "other", unlabelled_swap(seed=2, n=60))
    assert run(["learn", "--data", str(labelled), "--db", str(db), "--matcher", "lexical"], capsys)[0] == 0  # v2
    assert run(["learn", "--data", str(other), "--db", str(db), "--matcher", "lexical"], capsys)[0] == 0  # v3
    store = HandbookStore(db)
    v2, v3 = store.snapshot(2), store.snapshot(3)
    # an outcome recorded while version 3 is live: an event against version 3
    handbook = Handbook(store)
    decision = handbook.route(RouteRequest(text="sonnet rhyme stanza verse", allowed_agents=["gamma"]))
    handbook.record(OutcomeReport(decision_id=decision.decision_id, reward=1.0))
    assert len(store.events(3)) == 1
    live3 = store.document()
    store.close()

    code, out, err = run(["handbook", "diff", "2", "3", "--db", str(db)], capsys)
    assert code == 0, err
    added = sorted({s.id for s in v3.skills} - {s.id for s in v2.skills})
    removed = sorted({s.id for s in v2.skills} - {s.id for s in v3.skills})
    assert f"skills: {len(added)} added, {len(removed)} removed" in out
    assert all(f"  + {s}:" in out for s in added) and all(f"  - {s}:" in out for s in removed)
    assert "3 (live): learn, 1 events" in out
    assert "validation accuracy" in out and "selected candidate" in out

    code, out, err = run(["handbook", "rollback", "--db", str(db)], capsys)
    assert code == 0, err
    assert "version 4 is live: version 2 restored" in out
    store = HandbookStore(db)
    try:
        info = store.versions()[-1]
        assert (info["version"], info["parent"], info["source"]) == (4, 2, "promote")
        assert canonical(store.document()) == canonical(v2)  # version 2's handbook, as it was
        assert len(store.events(3)) == 1  # version 3's history stays in the log against it
    finally:
        store.close()

    code, out, _ = run(["handbook", "promote", "3", "--db", str(db)], capsys)  # undo the rollback
    assert code == 0 and "version 5 is live: version 3 restored" in out
    store = HandbookStore(db)
    assert store.versions()[-1]["parent"] == 3
    assert store.document().competence == live3.competence  # with the outcome recorded while 3 was live
    store.close()
    code, out, _ = run(["handbook", "promote", "3", "--snapshot-only", "--db", str(db)], capsys)
    assert code == 0
    store = HandbookStore(db)
    assert canonical(store.document())["competence"] == canonical(v3)["competence"]
    store.close()

    code, _, err = run(["handbook", "promote", "6", "--db", str(db)], capsys)  # already live
    assert code == 2 and "version" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["handbook", "promote", "99", "--db", str(db)], capsys)
    assert code == 2 and "unknown version '99'; this handbook has versions 1 to" in err
    code, _, err = run(["handbook", "diff", "2", "x", "--db", str(db)], capsys)
    assert code == 2 and "B" in err


def test_rollback_walks_back_through_rollbacks_and_undoes_a_promote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    assert run(["handbook", "import", "--example", "--db", str(db)], capsys)[0] == 0  # v2
    code, _, err = run(["handbook", "rollback", "--db", str(db)], capsys)
    assert code == 2 and "empty initial handbook" in err and "promote 1" in err  # never onto the empty v1
    for seed in (1, 2):  # v3, v4
        data = write_data(tmp_path / f"d{seed}", unlabelled_swap(seed=seed, n=150))
        assert run(["learn", "--data", str(data), "--db", str(db), "--matcher", "lexical"], capsys)[0] == 0
    assert run(["handbook", "rollback", "--db", str(db)], capsys)[0] == 0  # v5 = v3
    assert run(["handbook", "rollback", "--db", str(db)], capsys)[0] == 0  # v6 = v2: walks on, not v3 again
    assert run(["handbook", "promote", "4", "--db", str(db)], capsys)[0] == 0  # v7 = v4
    assert run(["handbook", "rollback", "--db", str(db)], capsys)[0] == 0  # v8 = v6 (= v2): undoes the promote
    store = HandbookStore(db)
    try:
        assert [(v["version"], v["parent"]) for v in store.versions()][-4:] == [(5, 3), (6, 2), (7, 4), (8, 6)]
        assert {s.id for s in store.document().skills} == {s.id for s in store.snapshot(2).skills}
    finally:
        store.close()


def test_learning_reports_the_first_runs_embedding_apart_and_the_second_run_finds_it_cached(tmp_path: Path) -> None:
    """With MiniLM features the first run embeds every query (minutes on LLMRouter): the summary says so."""
    import numpy as np

    from skillorchestra.handbook.learning.features import CachedEmbedder
    from skillorchestra.handbook.semantic import SqliteVectorCache
    from skillorchestra.server.commands_learn import render_learned
    from skillorchestra.server.jobs import learn_into_store

    vocabulary = sorted({word for words in WORDS.values() for word in words})

    class Words:  # a deterministic stand-in for MiniLM: one dimension per vocabulary word, one for the rest
        model_name, dim = "test/words", len(vocabulary) + 1

        def encode(self, texts: list[str]) -> np.ndarray:
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for row, text in enumerate(texts):
                for word in text.split():
                    out[row, vocabulary.index(word) if word in vocabulary else -1] += 1.0
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    tasks = swapped_and_alike(seed=0, n=60)
    store = HandbookStore(tmp_path / "h.db")
    embedder = CachedEmbedder(Words(), SqliteVectorCache(store))
    first = learn_into_store(store, tasks, PRICES, data_label="x", price_source="file", embedder=embedder)
    queries = len({t.query for t in tasks})
    assert first.metrics["embedded_queries"] == queries
    assert f"embedding {queries} new queries, now cached in the db" in render_learned(first, store, tmp_path / "h.db")
    second = learn_into_store(store, tasks, PRICES, data_label="x", price_source="file", embedder=embedder)
    assert second.metrics["embedded_queries"] == 0
    assert "embedding" not in render_learned(second, store, tmp_path / "h.db")
    store.close()


def test_learning_from_a_log_of_single_routed_steps_does_not_replace_the_live_handbook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One agent per step gives validation nothing to compare: the learned version is stored, not made live."""
    db = tmp_path / "h.db"
    assert run(["handbook", "import", "--example", "--db", str(db)], capsys)[0] == 0
    store = HandbookStore(db)
    handbook = Handbook(store)
    texts = ["add 17 and 25", "write a python function to sort a list", "who wrote hamlet", "translate hello"]
    for i in range(100):
        routed = handbook.route(RouteRequest(text=f"{texts[i % 4]} (case {i})", lambda_=0.1))
        handbook.record(OutcomeReport(decision_id=routed.decision_id, success=i % 3 != 0))
    live_before = canonical(store.document())
    store.close()
    code, out, err = run(["learn", "--data", "events", "--db", str(db), "--matcher", "lexical"], capsys)
    assert code == 0, err
    assert "did NOT make it live: only 0 validation tasks have outcomes of two or more agents" in out
    assert "skillorchestra handbook promote 3" in out
    store = HandbookStore(db)
    try:
        assert store.current_version() == 2 and canonical(store.document()) == live_before  # untouched
        info = store.versions()[-1]
        assert info["version"] == 3 and info["metrics"]["went_live"] is False and "not live" in info["summary"]
    finally:
        store.close()
    assert run(["handbook", "promote", "3", "--db", str(db)], capsys)[0] == 0  # the user can still choose it
    store = HandbookStore(db)
    promoted = store.versions()[-1]
    assert store.current_version() == 4 and "went_live" not in promoted["metrics"]
    assert "not_live_reason" not in promoted["metrics"] and "agents_back_on_prior" not in promoted["metrics"]
    assert promoted["summary"].startswith("promoted version 3") and "not live" not in promoted["summary"]
    store.close()


def test_rollback_undoes_an_explicit_promote_behind_a_prune_or_a_rollback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    assert run(["handbook", "import", "--example", "--db", str(db)], capsys)[0] == 0  # v2
    for seed in (1, 2, 3):  # v3, v4, v5
        data = write_data(tmp_path / f"d{seed}", unlabelled_swap(seed=seed, n=150))
        assert run(["learn", "--data", str(data), "--db", str(db), "--matcher", "lexical"], capsys)[0] == 0
    assert run(["handbook", "promote", "3", "--db", str(db)], capsys)[0] == 0  # v6 = v3, replacing v5
    store = HandbookStore(db)
    handbook = Handbook(store)
    decision = handbook.route(RouteRequest(text="sonnet rhyme", allowed_agents=["gamma"]))
    handbook.record(OutcomeReport(decision_id=decision.decision_id, reward=1.0))
    store.close()
    assert run(["handbook", "prune", "--before", "2100-01-01", "--db", str(db)], capsys)[0] == 0  # v7 folds v6
    assert run(["handbook", "rollback", "--db", str(db)], capsys)[0] == 0  # v8: undoes the promote -> v5
    assert run(["handbook", "rollback", "--db", str(db)], capsys)[0] == 0  # v9: walks on from v5 -> v4
    store = HandbookStore(db)
    try:
        rows = [(v["version"], v["source"], v["parent"]) for v in store.versions()][6:]
        assert rows == [(7, "prune", 6), (8, "promote", 5), (9, "promote", 4)]
        assert canonical(store.document()) == canonical(store.state_of(4))
    finally:
        store.close()


def test_learning_into_a_new_database_offers_no_undo_onto_the_empty_handbook(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "new.db"
    code, out, _ = run(["learn", "--data", str(labelled), "--db", str(db), "--matcher", "lexical"], capsys)
    assert code == 0 and "it is live now." in out and "Undo:" not in out
    code, out, _ = run(["learn", "--data", str(labelled), "--db", str(db), "--matcher", "lexical"], capsys)
    assert code == 0 and "Undo: skillorchestra handbook rollback" in out


def test_rollback_undoes_an_import_over_agents_loaded_into_the_initial_handbook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: after `agents load` (version 1) and an accidental import, rollback refused version 1 as "the empty
    initial handbook" and said `promote 1` would empty it; it holds the agents and what they recorded."""
    db = tmp_path / "h.db"
    agents = tmp_path / "agents.toml"
    agents.write_text('[agents.local]\nmodel = "openai/local"\napi_base = "http://127.0.0.1:9/v1"\n')
    assert run(["agents", "load", str(agents), "--db", str(db)], capsys)[0] == 0  # version 1
    assert run(["handbook", "import", "--example", "--db", str(db)], capsys)[0] == 0  # version 2
    code, out, err = run(["handbook", "rollback", "--db", str(db)], capsys)
    assert code == 0, err
    store = HandbookStore(db)
    try:
        live = store.document()
        assert [a.id for a in live.agents] == ["local"] and not live.skills
        assert store.version_info(store.current_version())["parent"] == 1
    finally:
        store.close()


def test_learn_over_agents_loaded_into_the_initial_handbook_says_how_to_undo_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review: learn's summary left out its Undo line whenever the parent was the initial version, which after
    `agents load` holds the agents and rollback restores."""
    db = tmp_path / "h.db"
    agents = tmp_path / "agents.toml"
    agents.write_text('[agents.local]\nmodel = "openai/local"\napi_base = "http://127.0.0.1:9/v1"\n')
    assert run(["agents", "load", str(agents), "--db", str(db)], capsys)[0] == 0  # version 1
    data = write_data(tmp_path / "d", unlabelled_swap(seed=1, n=150))
    code, out, err = run(["learn", "--data", str(data), "--db", str(db), "--matcher", "lexical"], capsys)
    assert code == 0, err
    assert f"it is live now. Undo: skillorchestra handbook rollback --db {db}" in out
    deleted = tmp_path / "deleted.db"  # an agent loaded and deleted again leaves the initial version empty
    assert run(["agents", "load", str(agents), "--db", str(deleted)], capsys)[0] == 0
    store = HandbookStore(deleted)
    try:
        Handbook(store).delete_agent("local")
        assert store.is_empty_initial(1)
    finally:
        store.close()


def test_log_level_error_keeps_learn_and_eval_progress_off_stderr(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: learn's progress lines ignored --log-level; a script asking for errors alone got pages of them."""
    root = logging.getLogger()
    before = root.level
    try:
        args = ["learn", "--data", str(labelled), "--db", str(tmp_path / "h.db"), "--matcher", "lexical"]
        code, out, err = run([*args, "--log-level", "ERROR"], capsys)
        assert code == 0 and "Selected '" in out and err == "", err
        code, _, err = run([*args, "--log-level", "INFO"], capsys)
        assert code == 0 and "learn: [100%] handbook learned" in err
    finally:
        root.setLevel(before)
