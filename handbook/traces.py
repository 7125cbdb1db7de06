"""The generic outcome data of interface.md: one task a line, each agent's score and cost.

Learning, evaluation and the dataset converters all speak this format, so a user's own logs only need to be
turned into it once.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from skillorchestra.handbook.atomic_file import atomic_writer
from skillorchestra.handbook.errors import InvalidInput, InvalidLine, first_problem, not_utf8
from skillorchestra.handbook.models import (
    CHARS_PER_TOKEN,
    DEFAULT_COMPLETION_TOKENS,
    ID_MAX,
    INFRASTRUCTURE_ERRORS,
    MAX_SECONDS,
    MAX_USD,
    PLAUSIBLE_TOKENS,
)
from skillorchestra.handbook.models import SUCCESS_THRESHOLD as SUCCESS_THRESHOLD  # traces.SUCCESS_THRESHOLD, as ever

SHOWN_VALUE = 60  # characters of a refused value an error about a line repeats
ModelT = TypeVar("ModelT", bound=BaseModel)


# other names users give a field (QA: "reward" or "cost" read as no score and an estimated cost, silently)
SYNONYMS = {
    "score": ("reward", "success", "correct", "accuracy"),
    "cost_usd": ("cost", "usd", "price", "cost_dollars"),
    "prompt_tokens": ("input_tokens",),
    "completion_tokens": ("output_tokens",),
    "latency_s": ("latency", "seconds", "duration_s"),
    "reference": ("answer", "expected", "gold", "ground_truth", "target"),
}


def refuse_misspelt(data: Any, fields: Iterable[str], known: Iterable[str] = ()) -> Any:
    """A before-validator for the formats that keep unknown keys: a key that is not `known` but looks like a field
    the object lacks (or like that field's first word misspelt: "inptu" for input_per_mtok) is refused, naming both,
    since keeping it meant that "scroe" silently read as no score and "cost_usdd" as an estimated cost (QA). A key
    beside the field it resembles ("qid" beside "id"), or a field's first word itself ("prompt" holding the prompt's
    text), is someone's own key and kept (review)."""
    if not isinstance(data, dict):
        return data
    missing = [field for field in fields if field not in data]
    words = {field.split("_")[0]: field for field in missing if "_" in field}
    other_names = {name: field for field in missing for name in SYNONYMS.get(field, ())}
    for key in data:
        if not isinstance(key, str) or key in known or key in fields:
            continue
        lowered = key.lower()  # "SCORE", "COST_USD" (QA)
        if key in words and lowered not in other_names:
            continue
        close = [field for field in missing if field == lowered] or (
            [other_names[lowered]] if lowered in other_names else []
        )
        close = close or difflib.get_close_matches(key, missing, n=1, cutoff=0.8)
        close = close or [words[w] for w in difflib.get_close_matches(key, list(words), n=1, cutoff=0.8)]
        if close:
            raise PydanticCustomError(
                "misspelt_field",
                "{expected}, not {key} (misspelt, or another name for it? an unknown key would be ignored)",
                {"expected": repr(close[0]), "key": repr(key)},
            )
    return data


# what explore and the server's log write beside an outcome's fields
WRITTEN_BESIDE = frozenset({"error_class", "error", "cost_source", "step_tokens"})


class AgentOutcome(BaseModel):
    """One agent's result on one task; a null score means 'not judged' and is skipped by learn and eval. Strict, as
    the MCP tools are: "1" or true is not a score (a log written with the wrong types is refused, not guessed at);
    other keys are kept (explore writes error_class, error and cost_source beside these)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

    score: float | None = Field(default=None, ge=0.0, le=1.0)
    # bounded (QA: one line of 1e23 prompt tokens made c_ref $3e15, and every lambda routed alike); tokens as
    # delegate believes a usage report: a call's tokens price its cost, so 2**53 of them still made c_ref $9e8
    cost_usd: float | None = Field(default=None, ge=0.0, le=MAX_USD)
    prompt_tokens: int | None = Field(default=None, ge=0, le=PLAUSIBLE_TOKENS)
    completion_tokens: int | None = Field(default=None, ge=0, le=PLAUSIBLE_TOKENS)
    latency_s: float | None = Field(default=None, ge=0.0, le=MAX_SECONDS)
    output: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_keys(cls, data: Any) -> Any:
        return refuse_misspelt(data, cls.model_fields, known=WRITTEN_BESIDE)

    @field_validator("prompt_tokens", "completion_tokens", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        """12.0 tokens is 12 (pandas writes integer columns with gaps so); strict mode alone would refuse it."""
        return int(value) if isinstance(value, float) and value.is_integer() else value


class TraceTask(BaseModel):
    """A task with every agent's outcome (outcomes may be sparse: a missing agent was not run)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=ID_MAX)
    query: str = Field(min_length=1)
    task: str | None = None
    mode: str | None = None
    outcomes: dict[str, AgentOutcome]

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_keys(cls, data: Any) -> Any:
        return refuse_misspelt(data, ("id", "query", "outcomes"))  # "model" beside "mode" is someone's own key

    @field_validator("query")
    @classmethod
    def _some_text(cls, query: str) -> str:
        """A blank query routes as nothing (QA: "   \\n " was learned from, while "" was refused)."""
        if not query.strip():
            raise PydanticCustomError("blank_query", "a query with some text, not only blanks")
        return query

    @field_validator("outcomes")
    @classmethod
    def _agent_ids(cls, outcomes: dict[str, AgentOutcome]) -> dict[str, AgentOutcome]:
        """The keys become handbook agent ids, so they obey the id rule here, where the error can name the line (ids
        are stored stripped, so ' a' would silently merge with 'a')."""
        for key in outcomes:
            if not key.strip() or len(key) > ID_MAX or key != key.strip():
                shown = repr(key) if len(key) <= 40 else f"{key[:40]!r}... ({len(key)} characters)"
                raise PydanticCustomError(
                    "agent_id",
                    "outcome keys (agent ids) that are non-empty strings of at most {max} characters without "
                    "leading or trailing spaces, got {key}",
                    {"max": ID_MAX, "key": shown},
                )
        return outcomes


class AgentPrice(BaseModel):
    """An agent's prices from `agents.json`: per million tokens (both), per call (a tool billed by the call, as
    agents.toml's and the handbook's cost_per_call_usd: QA), or both."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)  # "1" is not a price

    input_per_mtok: float | None = Field(default=None, ge=0.0, le=MAX_USD)
    output_per_mtok: float | None = Field(default=None, ge=0.0, le=MAX_USD)
    cost_per_call_usd: float | None = Field(default=None, ge=0.0, le=MAX_USD)
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_keys(cls, data: Any) -> Any:
        return refuse_misspelt(data, cls.model_fields)

    @model_validator(mode="after")
    def _priced(self) -> AgentPrice:
        tokens = (self.input_per_mtok is None, self.output_per_mtok is None)
        if tokens == (True, True) and self.cost_per_call_usd is None:
            raise ValueError("input_per_mtok and output_per_mtok, or cost_per_call_usd (no price given)")
        if tokens in ((True, False), (False, True)):
            raise ValueError("input_per_mtok and output_per_mtok set together (or neither)")
        return self


def infrastructure_failure(outcome: AgentOutcome) -> bool:
    """An outage (explore writes its error_class): no answer, so it says nothing of the agent's quality or of what
    its answers cost, and learning leaves it out of both."""
    return (outcome.model_extra or {}).get("error_class") in INFRASTRUCTURE_ERRORS


def estimate_cost_usd(query: str, outcome: AgentOutcome, price: AgentPrice | None) -> float | None:
    """Cost of one call: `cost_usd` wins, else tokens (given, or len(query)/4 and 256) times the agent's token
    prices, plus its price per call."""
    if outcome.cost_usd is not None:
        return outcome.cost_usd
    if price is None:
        return None
    per_call = price.cost_per_call_usd or 0.0
    if price.input_per_mtok is None or price.output_per_mtok is None:  # priced by the call alone
        return per_call
    prompt = outcome.prompt_tokens if outcome.prompt_tokens is not None else len(query) / CHARS_PER_TOKEN
    completion = outcome.completion_tokens if outcome.completion_tokens is not None else DEFAULT_COMPLETION_TOKENS
    # at most what a call may cost: a learned version's rows are held to it when stored (review: 1e7 tokens at the
    # highest price, plus a per-call price, refused the version)
    return min((prompt * price.input_per_mtok + completion * price.output_per_mtok) / 1e6 + per_call, MAX_USD)


def read_tasks(path: str | Path) -> list[TraceTask]:
    """Read a generic JSONL file; a bad line is an error naming the file, line and field."""
    return list(iter_tasks(path))


def iter_tasks(path: str | Path) -> Iterator[TraceTask]:
    lines = validated_lines(Path(path).open(encoding="utf-8-sig"), path, TraceTask, "generic outcome JSONL")
    for _, task in unique_ids(lines, path):
        yield task


class _HasId(Protocol):
    id: str


IdT = TypeVar("IdT", bound=_HasId)


def unique_ids(lines: Iterable[tuple[int, IdT]], path: str | Path) -> Iterator[tuple[int, IdT]]:
    """The rule of every task file (outcomes, explore tasks): each id once. A repeated id would count one task twice
    in learning and evaluation, and a resumed explore skips a task by its id; the error names the file, the line
    and the id, and where it was first."""
    first: dict[str, int] = {}
    for number, item in lines:
        if item.id in first:
            expected = f"each task id once (first on line {first[item.id]})"
            raise InvalidLine(f"{path}:{number}", f"id {item.id!r}", expected)
        first[item.id] = number
        yield number, item


def validated_lines(handle: TextIO, path: str | Path, model: type[ModelT], what: str) -> Iterator[tuple[int, ModelT]]:
    """(line number, model) for each non-blank JSONL line of an open file (closed at the end); a bad line is an
    InvalidInput naming the file, the line, the first field at fault and `what` of interface.md was expected."""
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:  # without its line break: a line cut inside a string read "at line 2 column 0" (QA)
                    yield number, model.model_validate_json(line.rstrip("\r\n"))
                except ValidationError as exc:
                    where, given, expected = first_problem(exc)
                    expected = f"{_in_the_line(expected)}{_not(given, expected)} ({what} of interface.md)"
                    raise InvalidLine(f"{path}:{number}", f"field {where!r}" if where else None, expected) from None
        except UnicodeDecodeError:  # decoded a buffer at a time, so no exact line to name
            raise not_utf8(path) from None


def _in_the_line(expected: str) -> str:
    """A JSON error's position within the one line parsed: its column (the file's line is already named)."""
    return re.sub(r" at line 1 column (\d+)", r" at column \1", expected)


def _not(given: object, expected: str) -> str:
    """ ", not <value>" for a scalar the line gave, short enough to show and not already in the message (QA: a
    score of 1.7 read only "expected less than or equal to 1")."""
    if not isinstance(given, bool | int | float | str):
        return ""
    shown = json.dumps(given, ensure_ascii=False)  # as the file writes it: true, NaN, "1"
    if len(shown) > SHOWN_VALUE or expected.startswith("valid JSON") or repr(given) in expected:
        return ""
    return f", not {shown}"


def write_tasks(path: str | Path, tasks: Iterable[TraceTask]) -> int:
    """Write tasks as JSONL; returns how many were written. All or nothing: a failed write leaves an old file whole."""
    count = 0
    with atomic_writer(path) as handle:
        for task in tasks:
            handle.write(task.model_dump_json(exclude_none=True) + "\n")
            count += 1
    return count


def load_json(path: str | Path, what: str) -> Any:
    """A JSON file's value; malformed JSON or bytes that are not UTF-8 are an InvalidInput naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise InvalidInput(str(path), f"line {exc.lineno} column {exc.colno}", f"{what} ({exc.msg})") from None
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_prices(path: str | Path) -> dict[str, AgentPrice]:
    """Read `agents.json` ({agent_id: {input_per_mtok, output_per_mtok, description?}})."""
    raw = load_json(path, "a JSON object {agent_id: {input_per_mtok, output_per_mtok}}")
    if not isinstance(raw, dict):
        raise InvalidInput(str(path), "agents", "a JSON object {agent_id: {input_per_mtok, output_per_mtok}}")
    prices: dict[str, AgentPrice] = {}
    for agent_id, entry in raw.items():
        try:
            prices[agent_id] = AgentPrice.model_validate(entry)
        except ValidationError as exc:
            where, _, expected = first_problem(exc)
            raise InvalidInput(str(path), f"{agent_id}.{where}" if where else agent_id, expected) from None
    return prices
