"""The converters on the real LLMRouter and RouteLLM files: counts, reference means, determinism, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shared_data import SHARED_DATA

from skillorchestra.handbook.datasets import convert_llmrouter, convert_routellm
from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import MAX_USD, PLAUSIBLE_TOKENS
from skillorchestra.handbook.traces import (
    AgentOutcome,
    AgentPrice,
    TraceTask,
    estimate_cost_usd,
    read_prices,
    read_tasks,
)

DATA = SHARED_DATA
LLMROUTER, ROUTELLM = DATA / "llmrouter", DATA / "routellm"
MIXTRAL, GPT4 = "mixtral-8x7b-instruct", "gpt-4-1106-preview"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="/work/shared/data (the real datasets) is absent")


def mean_score(tasks: list[TraceTask], agent: str) -> float:
    return sum(t.outcomes[agent].score or 0.0 for t in tasks) / len(tasks)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def llmrouter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("llmrouter")
    return out, convert_llmrouter(LLMROUTER, out)


@pytest.fixture(scope="module")
def routellm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("routellm")
    return out, convert_routellm(ROUTELLM, out, seed=0)


@needs_data
def test_llmrouter_counts_and_reference_mean(llmrouter: tuple[Path, dict]) -> None:
    out, summary = llmrouter
    train, test = read_tasks(out / "train.jsonl"), read_tasks(out / "test.jsonl")
    assert (len(train), len(test)) == (5608, 500)
    assert summary["train"] == 5608 and summary["test"] == 500
    assert summary["unjoined"] == {"train": 0, "test": 0}
    assert summary["test_seen_in_train"] == 119
    assert all(len(t.outcomes) == 9 for t in train + test)
    assert mean_score(train, "llama-3.1-nemotron-51b-instruct") == pytest.approx(0.621, abs=0.001)
    assert mean_score(test, "llama-3.1-nemotron-51b-instruct") == pytest.approx(0.563, abs=0.001)
    assert len({t.id for t in train + test}) == 5608 + 500


@needs_data
def test_llmrouter_task_labels_and_cluster_ids(llmrouter: tuple[Path, dict]) -> None:
    out, _ = llmrouter
    train, test = read_tasks(out / "train.jsonl"), read_tasks(out / "test.jsonl")
    assert all(t.task for t in train + test)
    assert len({t.task for t in train}) == 14
    assert all(isinstance(t.model_extra.get("cluster_id"), int) for t in train)
    assert all("cluster_id" not in t.model_extra for t in test)


@needs_data
def test_llmrouter_agents_use_price_fields(llmrouter: tuple[Path, dict]) -> None:
    out, summary = llmrouter
    prices = read_prices(out / "agents.json")
    assert sorted(prices) == summary["agents"] and len(prices) == 9
    assert summary["agents_without_price"] == []
    qwen = prices["qwen2.5-7b-instruct"]
    assert (qwen.input_per_mtok, qwen.output_per_mtok) == (0.2, 0.2)  # its description text says $0.30
    assert "$0.30" in (qwen.description or "")
    assert all(p.description for p in prices.values())


@needs_data
def test_llmrouter_is_deterministic(llmrouter: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = llmrouter
    convert_llmrouter(LLMROUTER, tmp_path)
    assert snapshot(tmp_path) == snapshot(out)


@needs_data
def test_routellm_counts_split_and_reference_means(routellm: tuple[Path, dict]) -> None:
    out, summary = routellm
    expected = {"mmlu": (14042, 0.806, 0.681), "gsm8k": (1319, 0.857, 0.638)}
    for name, (total, gpt4, mixtral) in expected.items():
        train, test = read_tasks(out / name / "train.jsonl"), read_tasks(out / name / "test.jsonl")
        rows = train + test
        assert len(rows) == total == summary[name]["total"]
        assert abs(len(train) - len(test)) <= 0.02 * total
        assert not {t.query for t in train} & {t.query for t in test}
        assert mean_score(rows, GPT4) == pytest.approx(gpt4, abs=0.001)
        assert mean_score(rows, MIXTRAL) == pytest.approx(mixtral, abs=0.001)
        assert all(t.outcomes[a].score in (0.0, 1.0) for t in rows for a in (GPT4, MIXTRAL))
        prices = read_prices(out / name / "agents.json")
        assert (prices[GPT4].input_per_mtok, prices[GPT4].output_per_mtok) == (10.0, 30.0)
        assert (prices[MIXTRAL].input_per_mtok, prices[MIXTRAL].output_per_mtok) == (0.6, 0.6)
    mmlu = read_tasks(out / "mmlu" / "train.jsonl")
    assert len({t.task for t in mmlu}) == 57 and "abstract_algebra" in {t.task for t in mmlu}


@needs_data
def test_routellm_seed_decides_the_split(routellm: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = routellm
    convert_routellm(ROUTELLM, tmp_path / "same", seed=0)
    convert_routellm(ROUTELLM, tmp_path / "other", seed=1)
    assert snapshot(tmp_path / "same") == snapshot(out)
    other = read_tasks(tmp_path / "other" / "gsm8k" / "train.jsonl")
    assert {t.id for t in other} != {t.id for t in read_tasks(out / "gsm8k" / "train.jsonl")}


@needs_data
def test_llmrouter_missing_file_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("scores_train.json", "scores_test.json", "default_query_train.jsonl", "default_llm.json"):
        shutil.copy(LLMROUTER / name, src / name)
    with pytest.raises(InvalidInput, match="default_query_test.jsonl"):
        convert_llmrouter(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("score", [True, "1", 1.5, -0.1])
def test_llmrouter_scores_that_are_not_numbers_in_0_1_are_refused_and_nothing_is_written(
    tmp_path: Path, score: object
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "test"):
        rows = [{"question": f"q {split}", "scores": {"m": score if split == "train" else 1.0}}]
        (src / f"scores_{split}.json").write_text(json.dumps(rows), encoding="utf-8")
        (src / f"default_query_{split}.jsonl").write_text("", encoding="utf-8")
    (src / "default_llm.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InvalidInput, match="a score in \\[0,1\\] or null"):
        convert_llmrouter(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_source_folder_is_invalid_input(tmp_path: Path) -> None:
    for convert in (convert_llmrouter, convert_routellm):
        with pytest.raises(InvalidInput, match="nowhere"):
            convert(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write_routellm(src: Path, mmlu_value: str = "True") -> None:
    """A tiny RouteLLM folder: one MMLU subject of two prompts and a GSM8K file of two prompts."""
    (src / "mmlu").mkdir(parents=True)
    header = "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview"
    (src / "mmlu" / "mmlu_toy.csv").write_text(f'{header}\n"Q1\nA. x",False,True\nQ2,{mmlu_value},True\n')
    gsm_header = f"{header},mistralai/Mixtral-8x7B-Instruct-v0.1_response,gpt-4-1106-preview_response"
    (src / "gsm8k_responses.csv").write_text(f'{gsm_header}\nG1,True,True,"a, b",c\nG2,False,True,d,e\n')


def test_routellm_tiny_folder_round_trip(tmp_path: Path) -> None:
    write_routellm(tmp_path / "src")
    summary = convert_routellm(tmp_path / "src", tmp_path / "out", seed=3)
    mmlu = read_tasks(tmp_path / "out/mmlu/train.jsonl") + read_tasks(tmp_path / "out/mmlu/test.jsonl")
    assert {t.query: t.outcomes[MIXTRAL].score for t in mmlu} == {"Q1\nA. x": 0.0, "Q2": 1.0}
    assert {t.task for t in mmlu} == {"toy"}
    assert summary["gsm8k"]["mean_score"] == {MIXTRAL: 0.5, GPT4: 1.0}
    assert "Together AI" in json.loads((tmp_path / "out/mmlu/agents.json").read_text())[MIXTRAL]["description"]


def test_routellm_bad_cell_writes_nothing(tmp_path: Path) -> None:
    write_routellm(tmp_path / "src", mmlu_value="Maybe")
    with pytest.raises(
        InvalidInput, match="mmlu_toy.csv:4: column 'mistralai/Mixtral-8x7B-Instruct-v0.1': expected True"
    ):
        convert_routellm(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write_llmrouter(src: Path, query_line: str = '{"query": "q train"}', price: object = 0.2) -> None:
    """A tiny LLMRouter folder of one task a split and one model, "m"."""
    src.mkdir()
    for split in ("train", "test"):
        rows = [{"question": f"q {split}", "scores": {"m": 1.0}}]
        (src / f"scores_{split}.json").write_text(json.dumps(rows), encoding="utf-8")
        (src / f"default_query_{split}.jsonl").write_text(f"\n{query_line}\n", encoding="utf-8")
    (src / "default_llm.json").write_text(json.dumps({"m": {"input_price": price, "output_price": 0.2}}))


def test_llmrouter_tiny_folder_converts(tmp_path: Path) -> None:
    write_llmrouter(tmp_path / "src")
    convert_llmrouter(tmp_path / "src", tmp_path / "out")
    assert json.loads((tmp_path / "out/agents.json").read_text())["m"]["input_per_mtok"] == 0.2


@pytest.mark.parametrize(
    ("query_line", "price", "says"),
    [
        ('{"query": ', 0.2, r"default_query_train.jsonl:2: expected a JSON object \("),  # a line, not a field
        ('{"query": "q"}', "cheap", r"default_llm.json: model 'm': expected two numbers as input_price and output_"),
    ],
)
def test_llmrouter_bad_line_or_price_is_named_and_nothing_is_written(
    tmp_path: Path, query_line: str, price: object, says: str
) -> None:
    write_llmrouter(tmp_path / "src", query_line, price)
    with pytest.raises(InvalidInput, match=says):
        convert_llmrouter(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_routellm_blank_prompt_is_refused_naming_its_line(tmp_path: Path) -> None:
    """Review: a prompt of blanks was a pydantic traceback once traces refused blank queries."""
    write_routellm(tmp_path / "src")
    gsm = tmp_path / "src" / "gsm8k_responses.csv"
    gsm.write_text(gsm.read_text().replace("G2,", '"   ",'))
    with pytest.raises(InvalidInput, match=r"gsm8k_responses.csv:3: column 'prompt': expected a prompt with some text"):
        convert_routellm(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_routellm_missing_gsm8k_writes_nothing(tmp_path: Path) -> None:
    write_routellm(tmp_path / "src")
    (tmp_path / "src" / "gsm8k_responses.csv").unlink()
    with pytest.raises(InvalidInput, match="gsm8k_responses.csv"):
        convert_routellm(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from skillorchestra.server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_data_convert_refuses_a_negative_seed_like_every_other_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_routellm(tmp_path / "src")
    code, _, err = run_cli(
        ["data", "convert", "--format", "routellm", "--seed", "-1", str(tmp_path / "src"), str(tmp_path / "out")],
        capsys,
    )
    assert code == 2 and "--seed" in err and "expected an integer >= 0" in err and not (tmp_path / "out").exists()
    code, _, err = run_cli(
        ["data", "convert", "--format", "routellm", "--seed", str(2**32), str(tmp_path / "src"), str(tmp_path / "out")],
        capsys,
    )
    assert code == 2 and "expected an integer <= 4294967295" in err and not (tmp_path / "out").exists()
    code, _, err = run_cli(
        ["data", "convert", "--format", "routellm", "--seed", "0", str(tmp_path / "src"), str(tmp_path / "out")], capsys
    )
    assert code == 0 and (tmp_path / "out" / "mmlu" / "train.jsonl").is_file(), err


def test_data_convert_refuses_a_seed_for_llmrouter_whose_split_is_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: --seed 5 was accepted and ignored, as if the split had been drawn anew."""
    code, _, err = run_cli(
        ["data", "convert", "--format", "llmrouter", "--seed", "5", str(tmp_path / "src"), str(tmp_path / "out")],
        capsys,
    )
    assert code == 2 and "--seed=5: expected no seed with --format llmrouter" in err
    assert not (tmp_path / "out").exists()


def test_data_convert_names_outdir_when_it_cannot_be_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: an OUTDIR under a regular file read "[Errno 20] Not a directory: ...", naming no argument."""
    write_routellm(tmp_path / "src")
    (tmp_path / "afile").write_text("")
    outdir = tmp_path / "afile" / "sub"
    code, _, err = run_cli(["data", "convert", "--format", "routellm", str(tmp_path / "src"), str(outdir)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"OUTDIR='{outdir}': expected a folder to write train.jsonl, test.jsonl and agents.json in" in err
    assert "Not a directory" in err


def test_data_convert_help_says_what_each_argument_is(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "convert", "-h"], capsys)
    assert code == 0 and "SRC OUTDIR" in out
    for text in ("the dataset's folder", "train.jsonl, test.jsonl and agents.json", "the layout of SRC"):
        assert text in " ".join(out.split()), out


@pytest.mark.parametrize(
    ("key", "shown"),
    [("", "got ''"), (" ", "got ' '"), (" alpha", "got ' alpha'"), ("m" * 201, "(201 characters)")],
)
def test_outcome_keys_are_agent_ids(tmp_path: Path, key: str, shown: str) -> None:
    """An outcome key becomes an agent id: empty, over 200 characters or space-padded is refused at its line."""
    good = {"id": "t1", "query": "q1", "outcomes": {"alpha": {"score": 1.0}}}
    bad = {"id": "t2", "query": "q2", "outcomes": {"alpha": {"score": 1.0}, key: {"score": 0.0}}}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(InvalidInput) as info:
        read_tasks(path)
    text = str(info.value)
    assert (
        text.startswith(f"{path}:2: field 'outcomes': expected")
        and "outcome keys (agent ids)" in text
        and shown in text
    ), text
    path.write_text(json.dumps({**bad, "outcomes": {"m" * 200: {"score": 0.0}, "meta/llama": {}}}) + "\n")
    assert list(read_tasks(path)[0].outcomes) == ["m" * 200, "meta/llama"]  # 200 characters and '/' are fine


def test_an_estimated_cost_is_held_to_what_one_call_may_cost() -> None:
    """Review: 1e7 tokens at the highest price per token, plus a per-call price, estimated past MAX_USD, and the
    learned version holding that mean was refused when stored."""
    price = AgentPrice(input_per_mtok=MAX_USD, output_per_mtok=MAX_USD, cost_per_call_usd=MAX_USD)
    outcome = AgentOutcome(score=1.0, prompt_tokens=PLAUSIBLE_TOKENS, completion_tokens=PLAUSIBLE_TOKENS)
    assert estimate_cost_usd("q", outcome, price) == MAX_USD
    cheap = AgentPrice(input_per_mtok=1.0, output_per_mtok=2.0, cost_per_call_usd=0.5)
    small = AgentOutcome(score=1.0, prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert estimate_cost_usd("q", small, cheap) == pytest.approx(3.5)
