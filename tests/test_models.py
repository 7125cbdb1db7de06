"""The handbook's models refuse values that would poison routing, wherever they come from (tools, import, CLI)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from skillorchestra.handbook.errors import InvalidInput, first_problem
from skillorchestra.handbook.models import Agent, Competence, HandbookDocument, SkillDemand
from skillorchestra.handbook.traces import read_prices, read_tasks


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_no_model_takes_an_infinite_or_nan_number(value: float) -> None:
    with pytest.raises(ValidationError, match="input_per_mtok"):
        Agent(id="a", input_per_mtok=value)
    with pytest.raises(ValidationError, match="alpha"):
        Competence(agent_id="a", skill_id="s", alpha=value)
    with pytest.raises(ValidationError, match="weight"):
        SkillDemand(skill_id="s", weight=value)


def test_an_imported_document_with_an_infinite_price_is_refused() -> None:
    text = '{"schema_version": 1, "agents": [{"id": "a", "input_per_mtok": Infinity}]}'
    with pytest.raises(ValidationError, match="input_per_mtok"):
        HandbookDocument.model_validate_json(text)


def test_trace_outcomes_and_prices_refuse_infinity_naming_the_line(tmp_path: Path) -> None:
    traces = tmp_path / "t.jsonl"
    traces.write_text('{"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "cost_usd": Infinity}}}\n')
    with pytest.raises(InvalidInput, match="t.jsonl:1"):
        read_tasks(traces)
    prices = tmp_path / "agents.json"
    prices.write_text('{"a": {"input_per_mtok": Infinity, "output_per_mtok": 1}}')
    with pytest.raises(InvalidInput, match="input_per_mtok"):
        read_prices(prices)


def test_first_problem_names_the_nested_field_its_value_and_what_was_expected() -> None:
    class Probe(BaseModel):
        limit: int

        @field_validator("limit")
        @classmethod
        def _positive(cls, value: int) -> int:
            if value <= 0:
                raise ValueError("a positive number")
            return value

    class Outer(BaseModel):
        probes: list[Probe]

    with pytest.raises(ValidationError) as refused:
        Outer.model_validate({"probes": [{"limit": 3}, {"limit": -2}]})
    assert first_problem(refused.value) == ("probes[1].limit", -2, "a positive number")
    with pytest.raises(ValidationError) as refused:
        Outer.model_validate({"probes": [{"limit": "many"}]})
    assert first_problem(refused.value) == (
        "probes[0].limit",
        "many",
        "a valid integer, unable to parse string as an integer",
    )
    with pytest.raises(ValidationError) as refused:
        Outer.model_validate({"probes": [{}]})
    assert first_problem(refused.value) == ("probes[0].limit", None, "a value (the field is required)")


@pytest.mark.parametrize(
    ("line", "says", "value"),
    [
        ('{"id": "t", "query": "q", "outcomes": {"a": {"score": "1"}}}', "outcomes.a.score", 'not "1"'),
        ('{"id": "t", "query": "q", "outcomes": {"a": {"score": true}}}', "outcomes.a.score", "not true"),
        ('{"id": "t", "query": "q", "outcomes": {"a": {"score": 1.7}}}', "outcomes.a.score", "to 1, not 1.7"),
        ('{"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "cost_usd": "0.1"}}}', "outcomes.a.cost_usd", ""),
        # QA: absurd figures wrecked c_ref (one line of 1e23 tokens made it $3e15): the tools' bounds hold here too
        (
            '{"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "prompt_tokens": 9007199254740992}}}',
            "outcomes.a.prompt_tokens",  # review: 2**53 tokens priced a call at $9e8
            "less than or equal to 10000000",
        ),
        (
            '{"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "cost_usd": 1e12}}}',
            "outcomes.a.cost_usd",
            "less than or equal to 1000000, not 1000000000000.0",
        ),
        ('{"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "latency_s": 1e9}}}', "outcomes.a.latency_s", ""),
        (
            '{"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "completion_tokens": 10000001}}}',
            "outcomes.a.completion_tokens",
            "less than or equal to 10000000",
        ),
        ('{"id": "t", "query": "", "outcomes": {"a": {"score": 1}}}', "query", 'not ""'),
        ('{"id": "t", "query": "q", "outcomes": {"a": {"score": 1', "line", "an object at column 55"),  # cut off
    ],
)
def test_trace_values_of_the_wrong_type_are_refused_naming_the_field_and_the_value(
    tmp_path: Path, line: str, says: str, value: str
) -> None:
    """The error names the line, the field and the value given, as the file writes it (QA: a score of 1.7 read
    only "expected less than or equal to 1"; a line cut inside a string read "at line 2 column 0")."""
    traces = tmp_path / "t.jsonl"
    traces.write_text(line + "\n")
    where = "t.jsonl:1: expected" if says == "line" else f"t.jsonl:1: field '{says}': expected"  # a whole line
    with pytest.raises(InvalidInput, match=where) as refused:
        read_tasks(traces)
    assert value in str(refused.value)


def test_whole_numbers_and_extra_keys_are_still_read(tmp_path: Path) -> None:
    traces = tmp_path / "t.jsonl"
    traces.write_text(
        '{"id": "t", "query": "q", "outcomes": {"a": {"score": 1, "cost_usd": 0, "prompt_tokens": 12.0, '
        '"error_class": "task"}}}\n'
    )
    (task,) = read_tasks(traces)
    assert task.outcomes["a"].score == 1.0 and task.outcomes["a"].cost_usd == 0.0
    assert task.outcomes["a"].prompt_tokens == 12


def test_a_byte_order_mark_is_read_as_the_start_of_utf8_text(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM; it is no JSON error at line 1 column 1."""
    traces, prices = tmp_path / "t.jsonl", tmp_path / "agents.json"
    traces.write_bytes(b'\xef\xbb\xbf{"id": "t", "query": "q", "outcomes": {"a": {"score": 1}}}\n')
    prices.write_bytes(b'\xef\xbb\xbf{"a": {"input_per_mtok": 1, "output_per_mtok": 2}}')
    assert [t.id for t in read_tasks(traces)] == ["t"]
    assert read_prices(prices)["a"].output_per_mtok == 2.0
