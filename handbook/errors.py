"""Domain errors. Each names the field, the value and what was expected, so the MCP layer can pass the
message to the model unchanged (as a ToolError) and the CLI can print it as one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HandbookError(Exception):
    """Base of every error the handbook raises on purpose."""


class InvalidInput(HandbookError):
    """A field's value is out of bounds or malformed; nothing was written."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field, self.value, self.expected = field, value, expected
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}={shown}: expected {expected}")


class NotFound(HandbookError):
    """An id that the handbook does not know; suggests the closest known ids."""

    def __init__(self, kind: str, value: str, known: Iterable[str] = ()) -> None:
        self.kind, self.value = kind, value
        close = difflib.get_close_matches(value, list(known), n=3, cutoff=0.4)
        hint = f"; closest known: {', '.join(close)}" if close else ""
        super().__init__(f"unknown {kind} {value!r}{hint}")


class Conflict(HandbookError):
    """The request contradicts what is already recorded (a second, different outcome report)."""


class Expired(HandbookError):
    """A decision reported after its time to live."""


class Unroutable(HandbookError):
    """No agent satisfies the step's constraints."""
