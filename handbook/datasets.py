"""Converters of the two public routing datasets (LLMRouter, RouteLLM) into the generic outcome format.

Both read and check everything before writing, so a bad source folder writes nothing. Neither dataset records
token counts: the written tasks carry scores only, and costs are estimated later from `agents.json` prices
(interface.md: len(query)/4 prompt tokens, 256 completion tokens).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from skillorchestra.handbook.atomic_file import write_text_atomic
from skillorchestra.handbook.errors import InvalidInput, InvalidLine, not_utf8
from skillorchestra.handbook.traces import AgentOutcome, TraceTask, load_json, write_tasks

SPLITS = ("train", "test")

# RouteLLM's two models. Prices are public list prices per million tokens, as of 2024:
# GPT-4-1106-preview: OpenAI pricing page, $10 input / $30 output.
# Mixtral-8x7B-Instruct-v0.1: Together AI serverless pricing, $0.60 input / $0.60 output (an assumption: the
# RouteLLM paper does not fix a provider; other hosts charge $0.24-$0.70).
ROUTELLM_AGENTS: dict[str, tuple[str, float, float, str]] = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (
        "mixtral-8x7b-instruct",
        0.6,
        0.6,
        "Mixtral-8x7B-Instruct-v0.1 (RouteLLM's weak model). Price: Together AI list price, $0.60/$0.60 per "
        "million input/output tokens (assumed host).",
    ),
    "gpt-4-1106-preview": (
        "gpt-4-1106-preview",
        10.0,
        30.0,
        "GPT-4-1106-preview (RouteLLM's strong model). Price: OpenAI list price, $10/$30 per million "
        "input/output tokens.",
    ),
}
ROUTELLM_BOOL = {"True": 1.0, "False": 0.0}


def _require(path: Path, what: str) -> Path:
    """Fail with the missing file's name rather than a bare FileNotFoundError mid-conversion."""
    if not path.is_file():
        raise InvalidInput("src", str(path), f"{what} to exist")
    return path


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise InvalidInput("src", str(path), "a dataset folder")
    return path


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8-sig") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidLine(f"{path}:{number}", None, f"a JSON object ({exc})") from None
        except UnicodeDecodeError:
            raise not_utf8(path) from None
    return rows


def _write_agents(path: Path, agents: dict[str, dict[str, Any]]) -> None:
    write_text_atomic(path, json.dumps(agents, indent=2, sort_keys=True) + "\n")


def _write_split(out_dir: Path, tasks: dict[str, list[TraceTask]], agents: dict[str, dict[str, Any]]) -> None:
    """Write train/test/agents only once everything was read and checked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in tasks.items():
        write_tasks(out_dir / f"{split}.jsonl", rows)
    _write_agents(out_dir / "agents.json", agents)


def _query_index(rows: Iterable[dict[str, Any]]) -> tuple[dict[str, str | None], list[str]]:
    """Map query text -> task_name (first occurrence wins); also list queries with conflicting task names."""
    index: dict[str, str | None] = {}
    conflicting: list[str] = []
    for row in rows:
        query, name = row.get("query"), row.get("task_name")
        if not isinstance(query, str):
            continue
        if query not in index:
            index[query] = name
        elif index[query] != name and query not in conflicting:
            conflicting.append(query)
    return index, conflicting


def _llmrouter_task(split: str, number: int, row: Any, tasks_by_query: dict[str, str | None]) -> TraceTask:
    where = f"scores_{split}.json[{number}]"
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
        raise InvalidInput(where, "question", "a row {question: str (some text), scores: {model: 0..1}}")
    scores = row.get("scores")
    if not isinstance(scores, dict) or not scores:
        raise InvalidInput(where, "scores", "a non-empty object {model: score in [0,1]}")
    outcomes = {}
    for model, score in scores.items():
        # true is no score (read_tasks refuses it too), though bool is an int subclass
        is_number = isinstance(score, int | float) and not isinstance(score, bool)
        if score is not None and not (is_number and 0.0 <= score <= 1.0):
            raise InvalidInput(f"{where}.scores", model, "a score in [0,1] or null")
        outcomes[model] = AgentOutcome(score=None if score is None else float(score))
    extra = {"cluster_id": row["cluster_id"]} if row.get("cluster_id") is not None else {}
    return TraceTask(
        id=f"llmrouter-{split}-{number:05d}",
        query=row["question"],
        task=tasks_by_query.get(row["question"]),
        outcomes=outcomes,
        **extra,
    )


def _llmrouter_agents(models: list[str], catalogue: Any, path: Path) -> dict[str, dict[str, Any]]:
    """Prices come from the numeric fields, never the description text (qwen2.5-7b's text disagrees)."""
    if not isinstance(catalogue, dict):
        raise InvalidInput(str(path), "llms", "a JSON object {model: {input_price, output_price, ...}}")
    agents: dict[str, dict[str, Any]] = {}
    for model in models:
        entry = catalogue.get(model)
        if not isinstance(entry, dict):
            continue
        try:
            price_in, price_out = float(entry["input_price"]), float(entry["output_price"])
        except (KeyError, TypeError, ValueError):
            raise InvalidLine(str(path), f"model {model!r}", "two numbers as input_price and output_price") from None
        agents[model] = {"input_per_mtok": price_in, "output_per_mtok": price_out}
        for key, source in (("description", "feature"), ("model", "model"), ("size", "size")):
            if isinstance(entry.get(source), str):
                agents[model][key] = entry[source]
    return agents


def convert_llmrouter(src_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Convert LLMRouter's score files into `out_dir/{train,test}.jsonl` and `out_dir/agents.json`.

    Scores join the query files on the exact question text to get the task family; the ids
    (`llmrouter-<split>-<row>`) follow the score files' row order, so they are stable across runs.
    """
    src_dir, out_dir = _require_dir(Path(src_dir)), Path(out_dir)
    files = {
        name: _require(src_dir / name, f"the LLMRouter file {name}")
        for name in (
            "scores_train.json",
            "scores_test.json",
            "default_query_train.jsonl",
            "default_query_test.jsonl",
            "default_llm.json",
        )
    }
    tasks: dict[str, list[TraceTask]] = {}
    summary: dict[str, Any] = {"format": "llmrouter", "unjoined": {}, "ambiguous_task": {}}
    for split in SPLITS:
        rows = load_json(files[f"scores_{split}.json"], "a JSON list of score rows")
        if not isinstance(rows, list):
            raise InvalidInput(f"scores_{split}.json", "rows", "a JSON list of {question, scores}")
        index, conflicting = _query_index(_load_jsonl(files[f"default_query_{split}.jsonl"]))
        ambiguous = set(conflicting)
        tasks[split] = [_llmrouter_task(split, n, row, index) for n, row in enumerate(rows)]
        summary[split] = len(tasks[split])
        summary["unjoined"][split] = sum(1 for t in tasks[split] if t.query not in index)
        summary["ambiguous_task"][split] = sum(1 for t in tasks[split] if t.query in ambiguous)
    models = sorted({m for rows in tasks.values() for t in rows for m in t.outcomes})
    agents = _llmrouter_agents(
        models, load_json(files["default_llm.json"], "a JSON object of models"), files["default_llm.json"]
    )
    train_queries = {t.query for t in tasks["train"]}
    summary |= {
        "agents": models,
        "agents_without_price": [m for m in models if m not in agents],
        "test_seen_in_train": sum(1 for t in tasks["test"] if t.query in train_queries),
    }
    _write_split(out_dir, tasks, agents)
    return summary


def _routellm_rows(path: Path, task: str | None, id_prefix: str) -> list[TraceTask]:
    """Read one RouteLLM CSV: `prompt`, then one True/False column per model (extra columns ignored)."""
    try:
        return _routellm_csv(path, task, id_prefix)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _routellm_csv(path: Path, task: str | None, id_prefix: str) -> list[TraceTask]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in ("prompt", *ROUTELLM_AGENTS) if c not in header]
        if missing:
            raise InvalidInput(str(path), "columns", f"prompt and {', '.join(ROUTELLM_AGENTS)} (missing {missing})")
        tasks = []
        for number, row in enumerate(reader):
            outcomes = {}
            for column, (agent_id, *_rest) in ROUTELLM_AGENTS.items():
                if row[column] not in ROUTELLM_BOOL:
                    raise InvalidLine(f"{path}:{reader.line_num}", f"column {column!r}", "True or False")
                outcomes[agent_id] = AgentOutcome(score=ROUTELLM_BOOL[row[column]])
            if not (row["prompt"] or "").strip():  # a trace needs a query (review: a traceback, not this line)
                raise InvalidLine(f"{path}:{reader.line_num}", "column 'prompt'", "a prompt with some text")
            tasks.append(TraceTask(id=f"{id_prefix}-{number:05d}", query=row["prompt"], task=task, outcomes=outcomes))
    return tasks


def _seeded_split(tasks: list[TraceTask], seed: int) -> dict[str, list[TraceTask]]:
    """50/50 over distinct prompts, so a prompt listed twice never lands in both train and test."""
    prompts = list(dict.fromkeys(t.query for t in tasks))
    random.Random(seed).shuffle(prompts)
    train_prompts = set(prompts[: (len(prompts) + 1) // 2])
    return {
        "train": [t for t in tasks if t.query in train_prompts],
        "test": [t for t in tasks if t.query not in train_prompts],
    }


def _routellm_agents() -> dict[str, dict[str, Any]]:
    return {
        agent_id: {"input_per_mtok": price_in, "output_per_mtok": price_out, "description": text}
        for agent_id, price_in, price_out, text in ROUTELLM_AGENTS.values()
    }


def _split_summary(split: dict[str, list[TraceTask]]) -> dict[str, Any]:
    rows = split["train"] + split["test"]
    means = {agent: sum(t.outcomes[agent].score or 0.0 for t in rows) / len(rows) for agent in rows[0].outcomes}
    return {"train": len(split["train"]), "test": len(split["test"]), "total": len(rows), "mean_score": means}


def convert_routellm(src_dir: Path, out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Convert RouteLLM's MMLU and GSM8K correctness files into `out_dir/{mmlu,gsm8k}/` generic files.

    Each dataset gets its own seeded 50/50 split; the MMLU task label is the subject (from the file name).
    """
    src_dir, out_dir = _require_dir(Path(src_dir)), Path(out_dir)
    mmlu_dir = src_dir / "mmlu"
    if not mmlu_dir.is_dir():
        raise InvalidInput("src", str(mmlu_dir), "the RouteLLM folder mmlu/ of mmlu_<subject>.csv files")
    mmlu_files = sorted(mmlu_dir.glob("mmlu_*.csv"))
    if not mmlu_files:
        raise InvalidInput("src", str(mmlu_dir), "at least one mmlu_<subject>.csv file")
    gsm8k_file = _require(src_dir / "gsm8k_responses.csv", "the RouteLLM file gsm8k_responses.csv")
    mmlu: list[TraceTask] = []
    for path in mmlu_files:
        subject = path.stem.removeprefix("mmlu_")
        mmlu.extend(_routellm_rows(path, subject, f"mmlu-{subject}"))
    datasets = {
        "mmlu": _seeded_split(mmlu, seed),
        "gsm8k": _seeded_split(_routellm_rows(gsm8k_file, "gsm8k", "gsm8k"), seed),
    }
    for name, split in datasets.items():
        if not split["train"] or not split["test"]:
            raise InvalidInput("src", str(src_dir), f"at least two distinct {name} prompts")
    for name, split in datasets.items():
        _write_split(out_dir / name, split, _routellm_agents())
    summary: dict[str, Any] = {"format": "routellm", "seed": seed, "agents": sorted(_routellm_agents())}
    summary |= {name: _split_summary(split) for name, split in datasets.items()}
    return summary
