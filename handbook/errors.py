"""Domain errors. Each names the field, the value and what was expected, so the MCP layer can pass the
message to the model unchanged (as a ToolError) and the CLI can print it as one line."""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class HandbookError(Exception):
    """Base of every error the handbook raises on purpose."""


SHOWN_MAX = 240  # characters of a refused value an error repeats


class InvalidInput(HandbookError):
    """A field's value is out of bounds or malformed; nothing was written."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field, self.value, self.expected = field, value, expected
        shown = repr(value)
        if len(shown) > SHOWN_MAX:  # a 32,000-character step text is not repeated back; a file path is kept whole
            shown = shown[: SHOWN_MAX - 3] + "..."
        super().__init__(f"{field}={shown}: expected {expected}")


class InvalidLine(InvalidInput):
    """A bad line of an input file, worded as compilers word one: "FILE:LINE: SUBJECT: expected ...". The plain
    form, "t.jsonl:1='query': expected a value", read as if 'query' were the value given (QA)."""

    def __init__(self, location: str, subject: str | None, expected: str) -> None:
        super().__init__(location, subject, expected)
        self.args = (f"{location}: {subject}: expected {expected}" if subject else f"{location}: expected {expected}",)


def field_path(loc: Sequence[str | int]) -> str:
    """A field's place as one wording everywhere: names joined by dots, list positions in brackets
    (`skills[0].weight`); pydantic's own "skills.0.weight" read beside the handbook's "skills[0].skill_id"."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def first_problem(exc: ValidationError) -> tuple[str, object, str]:
    """The first error of a pydantic ValidationError as (field path, the value given, what was expected),
    so every place that turns one into an InvalidInput words it alike (see `expectation`)."""
    err = exc.errors(include_url=False)[0]
    where = field_path(err["loc"])
    if err["type"] == "missing":  # pydantic's input is then the whole object around the field
        return where, None, "a value (the field is required)"
    return where, err.get("input"), expectation(err)


# what a file's author calls the types pydantic names after Python's
_PLAIN_KINDS = {
    "tuple_type": "a list (an array: [...])",
    "list_type": "a list (an array: [...])",
    "dict_type": "an object ({...})",
    "model_type": "an object ({...})",
    "model_attributes_type": "an object ({...})",
}

# pydantic's subjects, dropped: the message reads "field=value: expected <what>"
_PYDANTIC_SUBJECTS = (
    "Value error, ",
    "Input should be ",
    "String should have ",
    "List should have ",
    "Dictionary should have ",
)


def expectation(error: Mapping[str, Any]) -> str:
    """What a pydantic error (one item of ValidationError.errors()) expected, worded to follow "expected"."""
    kind, message = error["type"], str(error["msg"])
    if kind == "extra_forbidden":
        return "no field of this name (misspelt, or not one this takes)"
    if kind == "json_invalid":
        return f"valid JSON ({message.removeprefix('Invalid JSON: ')})"
    if kind in _PLAIN_KINDS:  # pydantic's words for Python types, which a user writing TOML or JSON never sees (QA)
        return _PLAIN_KINDS[kind]
    if kind == "string_unicode":  # "Input should be a valid string, unable to parse raw data as a unicode string"
        return "text of valid Unicode (no lone surrogate escapes such as \\ud800)"
    for prefix in _PYDANTIC_SUBJECTS:  # "String should have at least 1 character" -> "at least 1 character"
        message = message.removeprefix(prefix)
    message = message.replace(" after validation, not ", ", not ")  # "at most 50 items after validation, not 51"
    given = error.get("input")
    if isinstance(given, float) and not math.isfinite(given) and "finite" not in message:
        return f"a finite number, {message}"  # NaN fails "<= 1000" too, and the bound alone misleads
    return message


def not_utf8(path: object) -> InvalidInput:
    """A file whose bytes are not UTF-8 text: the user's input, named, instead of a UnicodeDecodeError traceback."""
    return InvalidInput(str(path), "encoding", "UTF-8 text (the file holds bytes that are not UTF-8)")


class NotFound(HandbookError):
    """An id that the handbook does not know; suggests the closest known ids."""

    def __init__(self, kind: str, value: str, known: Iterable[str] | None = None, *, hint: str | None = None) -> None:
        """`hint` replaces the closest known ids where those say nothing (numbers: name the range instead)."""
        self.kind, self.value = kind, value
        if hint is None and known is not None:
            hint = known_hint(value, list(known))
        super().__init__(f"unknown {kind} {value!r}" + (f"; {hint}" if hint else ""))


def named(ids: Sequence[str], limit: int) -> str:
    """'a, b, c and 4 more': at most `limit` ids, the rest counted, so a message stays one line."""
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def counted(count: int, noun: str) -> str:
    """'1 agent', '3 agents' (QA: "1 agents", "1 versions"); nouns here take an s."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def known_hint(value: str, known: list[str], listed: int = 10, beside: int = 6) -> str:
    """The closest known ids, and all of them beside when at most `beside` (QA: "unknown mode 'web'; closest known:
    answer" hid the 'search' mode it meant); with none close, all of them when few (a model guessing "math" for a
    mode should read the modes there are), else how many there are."""
    close = difflib.get_close_matches(value, known, n=3, cutoff=0.4)
    if close:
        every = f" (known: {', '.join(sorted(known))})" if len(close) < len(known) <= beside else ""
        return f"closest known: {', '.join(close)}{every}"
    if not known:
        return "none is known yet"
    if len(known) <= listed:
        return f"known: {', '.join(sorted(known))}"
    return f"none of the {len(known)} known is close"


class Conflict(HandbookError):
    """The request contradicts what is already recorded (a second, different outcome report)."""


class Expired(HandbookError):
    """A decision reported after its time to live."""


class Unroutable(HandbookError):
    """No agent satisfies the step's constraints."""


class FileReplaced(HandbookError):
    """The handbook file was moved, removed or replaced after this process opened it; nothing was written."""


def utc_text(moment: float) -> str:
    """An epoch time as messages show it: the ISO UTC time a reader can place (2026-11-23T10:15:49Z)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
