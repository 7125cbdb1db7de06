"""Every command that reads a user's file answers a malformed or non-UTF-8 one with exit 2 and one line naming the
file, never a traceback, and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from skillorchestra.server.cli import main

LATIN1 = "caf\u00e9 cr\u00e8me".encode("latin-1")  # valid Latin-1, invalid UTF-8


def _good_tasks(path: Path) -> Path:
    rows = [
        {"id": f"t{i}", "query": f"{path.stem} question {i}", "outcomes": {"a": {"score": i % 2}, "b": {"score": 1}}}
        for i in range(6)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _good_prices(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {"a": {"input_per_mtok": 0.1, "output_per_mtok": 0.1}, "b": {"input_per_mtok": 1, "output_per_mtok": 1}}
        )
    )
    return path


def _repeated_id(path: Path) -> Path:
    """Good tasks t0..t5, then t1 again on line 7: one task would count twice."""
    _good_tasks(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "t1", "query": "again", "outcomes": {"a": {"score": 1}}}) + "\n")
    return path


def _unjudged(path: Path) -> Path:
    path.write_text(json.dumps({"id": "t", "query": "q", "outcomes": {"a": {"score": None}}}) + "\n", encoding="utf-8")
    return path


def _misspelt(path: Path) -> Path:
    """QA: "scroe" dropped the agent from the scoring and "cost_usdd" became an estimate, silently (exit 0)."""
    _good_tasks(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "t9", "query": "q", "outcomes": {"a": {"cost_usd": 0.01, "scroe": 1.0}}}) + "\n")
    return path


def _misspelt_price(path: Path) -> Path:
    path.write_text(json.dumps({"a": {"inptu": 0.1, "output_per_mtok": 0.1}, "b": {}}))
    return path


def _eval(d: Path, train: Path, test: Path) -> list[str]:
    """eval's arguments for these files, priced by good prices."""
    return ["eval", "--train", str(train), "--test", str(test), "--agents", str(_good_prices(d / "p.json"))]


def _broken(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


CASES = {
    "eval --agents, malformed JSON": lambda d: (
        ["eval", "--train", str(_good_tasks(d / "train.jsonl")), "--test", str(_good_tasks(d / "test.jsonl"))]
        + ["--agents", str(_broken(d / "agents.json", b"{bad"))],
        "agents.json",
        "line 1 column 2",
    ),
    "learn --agents, malformed JSON": lambda d: (
        ["learn", "--data", str(_good_tasks(d / "train.jsonl")), "--agents", str(_broken(d / "agents.json", b"[1,"))],
        "agents.json",
        "a JSON object",
    ),
    "learn --agents, not UTF-8": lambda d: (
        ["learn", "--data", str(_good_tasks(d / "train.jsonl")), "--agents", str(_broken(d / "agents.json", LATIN1))],
        "agents.json",
        "UTF-8",
    ),
    "learn --data, not UTF-8": lambda d: (
        ["learn", "--data", str(_broken(d / "train.jsonl", LATIN1)), "--agents", str(_good_prices(d / "p.json"))],
        "train.jsonl",
        "UTF-8",
    ),
    "eval --train, not UTF-8": lambda d: (
        _eval(d, _broken(d / "train.jsonl", LATIN1), _good_tasks(d / "test.jsonl")),
        "train.jsonl",
        "UTF-8",
    ),
    "learn --data, a repeated task id": lambda d: (
        ["learn", "--data", str(_repeated_id(d / "train.jsonl")), "--agents", str(_good_prices(d / "p.json"))],
        "train.jsonl:7: id 't1'",
        "expected each task id once (first on line 2)",
    ),
    "learn --data, nothing judged": lambda d: (
        ["learn", "--data", str(_unjudged(d / "train.jsonl")), "--matcher", "lexical"],
        "--data='",  # QA: it read "tasks=1", naming no argument
        "train.jsonl': expected at least one task with a judged (non-null) score (1 task, none judged)",
    ),
    "eval --test, a repeated task id": lambda d: (
        _eval(d, _good_tasks(d / "train.jsonl"), _repeated_id(d / "test.jsonl")),
        "test.jsonl:7: id 't1'",
        "expected each task id once (first on line 2)",
    ),
    "eval --test, a misspelt outcome key": lambda d: (
        _eval(d, _good_tasks(d / "train.jsonl"), _misspelt(d / "test.jsonl")),
        "test.jsonl:7: field 'outcomes.a'",
        "expected 'score', not 'scroe' (misspelt, or another name for it? an unknown key would be ignored)",
    ),
    "learn --agents, a misspelt price key": lambda d: (
        ["learn", "--data", str(_good_tasks(d / "train.jsonl")), "--agents", str(_misspelt_price(d / "p.json"))],
        "p.json='a'",
        "expected 'input_per_mtok', not 'inptu'",
    ),
    "agents load, not UTF-8": lambda d: (
        ["agents", "load", str(_broken(d / "agents.toml", LATIN1))],
        "agents.toml",
        "UTF-8",
    ),
    "handbook import, not UTF-8": lambda d: (
        ["handbook", "import", str(_broken(d / "handbook.json", LATIN1))],
        "handbook.json",
        "UTF-8",
    ),
    "explore --tasks, not UTF-8": lambda d: (
        ["explore", "--tasks", str(_broken(d / "tasks.jsonl", LATIN1)), "--out", str(d / "out.jsonl")],
        "tasks.jsonl",
        "UTF-8",
    ),
    "data convert, a query file not UTF-8": lambda d: (
        ["data", "convert", "--format", "llmrouter", str(_llmrouter_folder(d / "src")), str(d / "out.jsonl")],
        "default_query_train.jsonl",
        "UTF-8",
    ),
}


def _llmrouter_folder(folder: Path) -> Path:
    folder.mkdir()
    for name in ("scores_train.json", "scores_test.json", "default_llm.json"):
        (folder / name).write_text("[]" if name.startswith("scores") else "{}", encoding="utf-8")
    (folder / "default_query_test.jsonl").write_text("", encoding="utf-8")
    _broken(folder / "default_query_train.jsonl", LATIN1)
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_file_is_one_line_naming_it_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, file_name, says = CASES[case](tmp_path)
    db = tmp_path / "h.db"
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--db", str(db)] if argv[0] != "data" else argv)  # data convert opens no handbook
    out, err = capsys.readouterr()
    assert exited.value.code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert file_name in err and says in err
    assert not (tmp_path / "out.jsonl").exists() and not db.exists()


def test_an_import_lacking_a_documents_keys_is_refused_naming_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """{"format": ...} alone validated as an empty handbook and emptied the live one (QA)."""
    db = tmp_path / "h.db"
    with pytest.raises(SystemExit):
        main(["handbook", "import", "--example", "--db", str(db)])
    capsys.readouterr()
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"format": "skillorchestra-handbook", "schema_version": 1, "version": 3}))
    with pytest.raises(SystemExit) as exited:
        main(["handbook", "import", str(partial), "--db", str(db)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: partial.json:modes=") and "competence, cost" in err
    with pytest.raises(SystemExit):
        main(["handbook", "show", "--db", str(db)])
    assert "skills 20, agents 9" in capsys.readouterr().out  # the live handbook is the example still


def _import_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any) -> tuple[int, str, Path]:
    """The example handbook exported, changed by `change(document)`, and imported back: (exit status, stderr, db)."""
    db, exported = tmp_path / "h.db", tmp_path / "e.json"
    with pytest.raises(SystemExit):
        main(["handbook", "import", "--example", "--db", str(db)])
    with pytest.raises(SystemExit):
        main(["handbook", "export", str(exported), "--db", str(db)])
    document = json.loads(exported.read_text())
    change(document)
    exported.write_text(json.dumps(document))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["handbook", "import", str(exported), "--db", str(db)])
    return int(exited.value.code or 0), capsys.readouterr().err, db


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda row: row.pop("beta"), "competence[3].beta='(missing)': expected a number > 0 (a row needs both"),
        (lambda row: row.update(alpha="8"), "competence[3].alpha='8': expected a valid number"),
        # QA: 1e160 imported, then every route over it answered a NaN interval the client refused
        (
            lambda row: row.update(alpha=1e160),
            "competence[3].alpha=1e+160: expected at most 1e+12",
        ),
    ],
)
def test_an_imported_competence_row_needs_both_counts_as_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, says: str
) -> None:
    """QA: a row without beta imported as beta 1 (the prior), and "8" as 8: the agent read 0.91 where 0.8 was meant."""
    code, err, db = _import_changed(tmp_path, capsys, lambda document: change(document["competence"][3]))
    assert code == 2 and says in err
    with pytest.raises(SystemExit):
        main(["handbook", "versions", "--db", str(db)])
    assert "version 3" not in capsys.readouterr().out  # nothing was imported


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [  # fuzz QA: a cost of 1e7 imported made c_ref so large that lambda no longer counted; the tools' bounds
        ("mean_cost_usd", 1e7, "cost[0].mean_cost_usd=10000000.0: expected at most 1e+06"),
        ("mean_prompt_tokens", 1e300, "cost[0].mean_prompt_tokens=1e+300: expected at most 9.0072e+15"),
        ("m2_cost", 1e308, "cost[0].m2_cost=1e+308: expected at most 1e+24"),
        ("n", 1e13, "cost[0].n=10000000000000.0: expected at most 1e+12"),
    ],
)
def test_an_imported_cost_row_is_held_to_what_a_tool_may_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: float, says: str
) -> None:
    code, err, db = _import_changed(tmp_path, capsys, lambda document: document["cost"][0].update({field: value}))
    assert code == 2 and says in err and err.startswith(f"error: {tmp_path / 'e.json'}: "), err
    with pytest.raises(SystemExit):
        main(["handbook", "versions", "--db", str(db)])
    assert "version 3" not in capsys.readouterr().out  # nothing was imported


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("empty.jsonl", '{"id": "1", "query": "", "outcomes": {"a": {"score": 1}}}\n', "expected at least 1 character"),
        ("broken.jsonl", '{"id": "1", x}\n', "expected valid JSON (key must be a string"),
    ],
)
def test_a_trace_files_problem_is_worded_without_pydantics_subjects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, says: str
) -> None:
    """pydantic's "String should have ..." and "Invalid JSON: ..." read as "expected String should have ..." (QA)."""
    data = tmp_path / name
    data.write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["learn", "--data", str(data), "--db", str(tmp_path / "h.db")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and says in err and "should" not in err and "Invalid JSON" not in err, err


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ({"id": "t", "qid": "7", "idx": 3, "query": "q", "outcomes": {}}, None),  # beside the field they resemble
        ({"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "prompt": "the text", "completion": "x"}}}, None),
        ({"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "scores": [1, 0]}}}, None),
        ({"id": "t", "query": "q", "outcomes": {"a": {"scroe": 1}}}, "'score', not 'scroe'"),
        ({"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "latency_ms": 20}}}, "'latency_s', not 'latency_ms'"),
        ({"id": "t", "querry": "q", "outcomes": {}}, "'query', not 'querry'"),
        ({"id": "t", "query": "q", "outcomes": {"a": {"reward": 1}}}, "'score', not 'reward'"),  # QA: read as no score
        ({"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "cost": 0.05}}}, "'cost_usd', not 'cost'"),
        ({"id": "t", "query": "q", "outcomes": {"a": {"SCORE": 1}}}, "'score', not 'SCORE'"),
        ({"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "input_tokens": 9}}}, "'prompt_tokens', not"),
    ],
)
def test_only_keys_that_look_like_a_missing_field_are_refused(line: dict[str, Any], refused: str | None) -> None:
    """Review: "qid" beside "id", or a "prompt" holding the prompt's text, were refused as misspellings."""
    from pydantic import ValidationError

    from skillorchestra.handbook.traces import TraceTask

    if refused is None:
        TraceTask.model_validate(line)
    else:
        with pytest.raises(ValidationError, match=refused):
            TraceTask.model_validate(line)


def test_an_imported_field_that_has_no_place_is_named_without_its_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: an agent's api_key pasted into an import document was echoed in the error (agents.toml masks it)."""

    def paste_key(document: dict[str, Any]) -> None:
        document["agents"][0]["api_key"] = "sk-proj-SECRETSECRET1234567890"

    code, err, _ = _import_changed(tmp_path, capsys, paste_key)
    assert code == 2 and "agents[0].api_key='(its value not shown)'" in err and "SECRET" not in err


def test_an_imported_skill_whose_mode_reads_as_a_typo_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: a skill of mode "answr" imported and created a second mode beside "answer", saying nothing."""

    def misspell(document: dict[str, Any]) -> None:
        document["skills"][0]["mode"] = "answr"

    code, err, _ = _import_changed(tmp_path, capsys, misspell)
    assert code == 2 and "mode='answr': expected 'answer', a mode the document lists" in err
