"""`skillorchestra explore` against the fake OpenAI-compatible server (and the echo MCP server): grading, null
scores for infrastructure failures, costs, resumable output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.traces import read_tasks
from skillorchestra.server.agent_config import McpAgentConnection
from skillorchestra.server.cli import main
from skillorchestra.server.explore import ExploreTask, done_ids, explore, grade, last_number, resolve_grader

ECHO = str(Path(__file__).with_name("echo_mcp_server.py"))

TASKS = [
    {"id": "n1", "query": "What is 10 + 7? Reply 17", "reference": "17"},  # auto -> numeric
    {"id": "c1", "query": "Name the capital of France: Paris", "reference": "paris", "grader": "contains"},
    {"id": "u1", "query": "Write a haiku about rain", "task": "poems"},  # no reference: unscored
    {"id": "n2", "query": "Compute 3 * 4 = 12", "reference": 12.0, "grader": "numeric"},
]


def pool_file(tmp_path: Path, server: FakeOpenAI) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[agents.good]
model = "openai/good"
api_base = "{server.api_base}"
input_per_mtok = 1.0
output_per_mtok = 2.0

[agents.bad]
model = "openai/bad"
api_base = "{server.api_base}"

[agents.down]
model = "openai/down"
api_base = "{server.api_base}"

[agents.tiny]
model = "openai/tiny"
api_base = "{server.api_base}"
""",
        encoding="utf-8",
    )
    server.behaviours.update({"bad": "WRONG", "down": "FAIL500", "tiny": "FAIL400"})
    return path


def tasks_file(tmp_path: Path, tasks: list[dict] = TASKS, name: str = "tasks.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    return path


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0)


def test_explore_grades_each_agent_and_never_scores_an_outage(
    tmp_path: Path, fake_openai: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "traces.jsonl"
    args = ["explore", "--tasks", str(tasks_file(tmp_path)), "--pool", str(pool_file(tmp_path, fake_openai))]
    assert run_cli(args + ["--out", str(out), "--concurrency", "2"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "4/4" in captured.err  # the progress bar
    assert "8 calls failed" in captured.err and "remove a task's line from it to run that task again" in captured.err
    traces = {t.id: t for t in read_tasks(out)}  # the generic format of interface.md
    assert sorted(traces) == ["c1", "n1", "n2", "u1"]
    score = {tid: {a: o.score for a, o in t.outcomes.items()} for tid, t in traces.items()}
    for tid in ("n1", "c1", "n2"):
        assert score[tid] == {"good": 1.0, "bad": 0.0, "down": None, "tiny": 0.0}
    assert set(score["u1"].values()) == {None}  # no reference: not judged, whoever answered
    down = traces["n1"].outcomes["down"].model_dump()
    assert down["error_class"] == "server_error" and down["cost_usd"] == 0.0 and down["score"] is None  # no completion
    assert traces["n1"].outcomes["tiny"].model_dump()["error_class"] == "task"  # the agent's failure: scored 0
    good = traces["n1"].outcomes["good"]
    assert good.output == "answer[good]: What is 10 + 7? Reply 17"
    assert good.cost_usd == pytest.approx((good.prompt_tokens * 1.0 + good.completion_tokens * 2.0) / 1e6)
    assert traces["n1"].outcomes["bad"].cost_usd is None  # no price known: unknown, never 0
    assert traces["u1"].task == "poems" and traces["u1"].outcomes["good"].output
    line = json.loads(out.read_text().splitlines()[0])
    assert line["grader"] in ("numeric", "contains") and "reference" in line
    assert summary["run"] == 4 and summary["calls"] == 16 and summary["skipped"] == 0
    assert summary["errors"] == {"server_error": 4, "task": 4}
    assert summary["accuracy"] == {"bad": 0.0, "good": 1.0, "tiny": 0.0}
    assert summary["cost_usd"] is None and summary["cost_usd_known"] > 0
    assert len(fake_openai.chat_requests("good")) == 4


def test_explore_resumes_after_an_interruption(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    pool = str(pool_file(tmp_path, fake_openai))
    tasks, out = str(tasks_file(tmp_path)), tmp_path / "traces.jsonl"
    base = ["explore", "--tasks", tasks, "--pool", pool, "--out", str(out), "--no-progress"]
    assert run_cli(base + ["--limit", "2"]) == 0  # the run that got "killed" after two tasks
    first = out.read_text(encoding="utf-8")
    assert len(first.splitlines()) == 2 and len(fake_openai.chat_requests()) == 8
    with out.open("a", encoding="utf-8") as handle:
        handle.write('{"id": "u1", "query": "Write a ha')  # killed in the middle of writing a line
    assert run_cli(base + ["--concurrency", "3"]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith(first)  # finished tasks are kept as they were...
    ids = [json.loads(line)["id"] for line in text.splitlines()]
    assert sorted(ids) == ["c1", "n1", "n2", "u1"]  # ...the cut line is gone, each task once
    assert len(fake_openai.chat_requests()) == 16  # only the two missing tasks ran again
    assert run_cli(base) == 0 and len(fake_openai.chat_requests()) == 16  # nothing left to do


@pytest.mark.anyio
async def test_a_tool_agent_runs_through_the_delegation_backend(tmp_path: Path) -> None:
    echo = McpAgentConnection(id="echo/search", kind="mcp", command=sys.executable, args=(ECHO,), tool="search")
    tasks = [ExploreTask(id="s1", query="ping", reference="results for: ping")]
    summary = await explore(tasks, {echo.id: echo}, tmp_path / "t.jsonl", progress=False)
    (trace,) = read_tasks(tmp_path / "t.jsonl")
    assert trace.outcomes["echo/search"].score == 1.0  # exact (auto: the reference is not a number)
    assert trace.outcomes["echo/search"].cost_usd == 0.0 and summary.as_dict()["cost_usd"] == 0.0


def test_graders() -> None:
    assert last_number("The total is 1,234.50 dollars.") == 1234.5
    assert last_number("from -3 to -7.25") == -7.25 and last_number("none") is None
    assert grade("so x = 1,234.5", "1234.50", "numeric") == 1.0
    assert grade("x = 12, not 13", "12", "numeric") == 0.0  # the LAST number counts
    assert grade("no number", "3", "numeric") == 0.0
    # a fraction is its value (QA: "3/4" was read as 4, so "1/4" and "4" scored 1 and "0.75" scored 0)
    assert last_number("x = -3/4") == -0.75 and last_number("3 / 4") == 0.75 and last_number("1/0") is None
    assert grade("the result is 0.75", "3/4", "numeric") == 1.0 and grade("so 6/8", "3/4", "numeric") == 1.0
    assert grade("the result is 1/4", "3/4", "numeric") == 0.0 and grade("the result is 4", "3/4", "numeric") == 0.0
    assert grade("the result is 2", "1/2", "numeric") == 0.0
    assert resolve_grader("3/4", None) == "numeric"  # auto reads a fraction as a number too
    assert grade("  Paris. ", "paris", "exact") == 1.0 and grade("Paris, France", "paris", "exact") == 0.0
    assert grade("It is PARIS, France", "paris", "contains") == 1.0 and grade("Lyon", "paris", "contains") == 0.0
    assert resolve_grader("42", None) == "numeric" and resolve_grader("-1.5", None) == "numeric"
    assert resolve_grader("Paris", None) == "exact" and resolve_grader("42", "contains") == "contains"
    assert resolve_grader("Paris", None, "contains") == "contains"


def test_explore_bad_input_exits_2_with_one_line(
    tmp_path: Path, fake_openai: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    pool, out = str(pool_file(tmp_path, fake_openai)), str(tmp_path / "o.jsonl")
    tasks = str(tasks_file(tmp_path))
    assert run_cli(["explore", "--tasks", tasks, "--pool", pool, "--out", out, "--concurrency", "0"]) == 2
    assert "--concurrency" in capsys.readouterr().err
    bad = tasks_file(tmp_path, [{"id": "a", "query": "q"}, {"id": "a", "query": "again"}], "bad.jsonl")
    assert run_cli(["explore", "--tasks", str(bad), "--pool", pool, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl:2" in err and "each task id once" in err and len(err.splitlines()) == 1
    typo = tasks_file(tmp_path, [{"id": "a", "query": "1+2", "refrence": "3"}], "typo.jsonl")  # QA: paid, graded none
    assert run_cli(["explore", "--tasks", str(typo), "--pool", pool, "--out", out]) == 2
    assert "typo.jsonl:1" in (err := capsys.readouterr().err) and "expected 'reference', not 'refrence'" in err
    db = tmp_path / "empty.db"
    assert run_cli(["explore", "--tasks", tasks, "--out", out, "--db", str(db)]) == 2
    err = capsys.readouterr().err  # QA: it read "--pool=None" and did not say the database was not there
    assert "--pool='(missing)': expected an agents.toml file, or a database with connections" in err
    assert f"({db} does not exist)" in err
    assert not Path(out).exists() and not fake_openai.chat_requests()


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("a-folder", "a file path (this is a directory)"),
        ("a-file/o.jsonl", "a path whose folders can be created"),
        pytest.param(
            "/proc/e.jsonl",
            "a file path in a writable folder",
            marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc"),
        ),
    ],
)
def test_explore_refuses_an_unwritable_out_before_calling_any_agent(
    tmp_path: Path, fake_openai: FakeOpenAI, out: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pool, tasks = str(pool_file(tmp_path, fake_openai)), str(tasks_file(tmp_path))
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_cli(["explore", "--tasks", tasks, "--pool", pool, "--out", str(tmp_path / out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.startswith(f"error: --out='{tmp_path / out}': expected {expected}"), err
    assert len(err.splitlines()) == 1 and not fake_openai.chat_requests()
    assert sorted(p.name for p in tmp_path.iterdir()) == before and list((tmp_path / "a-folder").iterdir()) == []


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'\xff\xfe{"id": "x"}\n{"id": "y', "UTF-8"),
        (b'not json\n{"id": "y', "a trace line written by explore"),
    ],
)
def test_an_out_file_explore_did_not_write_is_refused_untouched(tmp_path: Path, content: bytes, says: str) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    with pytest.raises(InvalidInput, match=says):
        done_ids(out)
    assert out.read_bytes() == content  # the partial last line was not cut off a file that is refused


def test_a_partial_last_line_is_cut_and_its_task_runs_again(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "x"}\n{"id": "y", "que')
    assert done_ids(out) == {"x"} and out.read_bytes() == b'{"id": "x"}\n'


def test_ctrl_c_says_how_to_resume(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    import signal
    import subprocess
    import time

    for model in ("good", "bad", "down", "tiny"):
        fake_openai.behaviours[model] = "SLOW:30"  # every call hangs until the interrupt
    cli = Path(sys.executable).with_name("skillorchestra")
    out = tmp_path / "traces.jsonl"
    args = [str(cli), "explore", "--tasks", str(tasks_file(tmp_path)), "--pool", str(pool_file(tmp_path, fake_openai))]
    proc = subprocess.Popen([*args, "--out", str(out), "--no-progress"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not fake_openai.chat_requests() and time.monotonic() < deadline:  # explore is calling agents now
            time.sleep(0.05)
        assert fake_openai.chat_requests(), "explore never called an agent"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert f"interrupted; the finished tasks are in {out}: run the same command again to resume" in err


def test_explore_exits_1_when_every_call_failed(
    tmp_path: Path, fake_openai: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: a pool nobody in could answer exited 0, like a good run."""
    pool = tmp_path / "down.toml"
    pool.write_text(f'[agents.down]\nmodel = "openai/down"\napi_base = "{fake_openai.api_base}"\n', encoding="utf-8")
    fake_openai.behaviours["down"] = "FAIL500"
    tasks = str(tasks_file(tmp_path, TASKS[:2]))
    assert run_cli(["explore", "--tasks", tasks, "--pool", str(pool), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert json.loads(capsys.readouterr().out)["errors"] == {"server_error": 2}
    fake_openai.behaviours["down"] = "FAIL400"  # an agent refusing the task answered: scored 0, not an outage
    again = ["explore", "--tasks", tasks, "--pool", str(pool), "--out", str(tmp_path / "refused.jsonl")]
    assert run_cli(again) == 0


def test_a_cost_past_the_trace_readers_bound_is_written_as_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review: explore wrote whatever cost a backend priced (10M believed tokens at $1e6 per Mtok: $1e7), and the
    trace reader refuses more than $1e6 a call, so the whole file no longer read."""
    from skillorchestra.handbook.traces import read_tasks
    from skillorchestra.server.explore import outcome
    from skillorchestra.server.llm_backend import BackendResult

    dear = outcome(BackendResult(answer="4", cost_usd=2e7, cost_source="agent_prices"), "4", "exact")
    fair = outcome(BackendResult(answer="4", cost_usd=0.5, cost_source="agent_prices"), "4", "exact")
    assert "cost_usd" not in dear and dear["cost_source"] == "unknown" and dear["score"] == 1.0
    assert "a cost of $2e+07 is past $1e+06 a call, which traces do not take: written as unknown" in caplog.text
    assert (fair["cost_usd"], fair["cost_source"]) == (0.5, "agent_prices")
    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps({"id": "t", "query": "2+2", "outcomes": {"a": dear, "b": fair}}) + "\n")
    (task,) = read_tasks(traces)
    assert task.outcomes["a"].cost_usd is None and task.outcomes["b"].cost_usd == 0.5
