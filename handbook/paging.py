"""Pagination of tool answers, by two kinds of cursor.

- Offset cursors page one computed answer (consult_handbook's rows); the cursor carries a digest of what the rows
  depend on, so a cursor of another question or another handbook version is refused rather than misread.
- Key cursors page a list sorted by id (list_agents, list_skills); they hold the last id served, so items added or
  deleted between pages are neither skipped nor repeated, and name their list, so one list's cursor is refused by
  the other (QA: list_agents' cursor given to list_skills skipped every skill sorting before that agent's id).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import encodable

PAGE_LIMIT_MAX = 200
KEY_CURSORS = {"agents": "ka.", "skills": "ks."}  # list -> the prefix of its key cursors
# a page stops early past this many bytes of JSON: a tool result carries it twice (text and structured content),
# and the SSE client refuses an event over 1 MiB (QA: 100 agents of 4,000-character descriptions closed it)
PAGE_BYTES_MAX = 256 * 1024


def encode_offset_cursor(offset: int, query: str) -> str:
    """An offset into one answer: `query` digests what the rows depend on, so another question's cursor is refused."""
    return f"o{offset}.{query}"


def decode_offset_cursor(cursor: str | None, query: str) -> int:
    if cursor is None or cursor == "":
        return 0
    found = re.fullmatch(r"o([0-9]{1,9})\.([0-9a-f]{12})", cursor)
    if found is None:
        raise InvalidInput("cursor", cursor, "a next_cursor value returned by an earlier call")
    if found.group(2) != query:
        raise InvalidInput(
            "cursor",
            cursor,
            "a next_cursor of a call with the same text, mode, top_k, agents_per_skill and orchestrator, on the same "
            "handbook state and skills (an edit or a reported outcome since that call reorders the rows, and the "
            "skills inferred change once the semantic model has loaded: call again without cursor)",
        )
    return int(found.group(1))


def query_digest(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=6).hexdigest()


def key_after(cursor: str | None, limit: int, listing: str) -> str | None:
    """The id a key cursor of `listing` ("agents", "skills") holds (None: the first page), the limit checked first;
    the store pages from it in SQL."""
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise InvalidInput("limit", limit, f"an integer from 1 to {PAGE_LIMIT_MAX}")
    if not cursor:
        return None
    prefix = KEY_CURSORS[listing]
    if not cursor.startswith(prefix) or len(cursor) == len(prefix) or not encodable(cursor):
        raise InvalidInput("cursor", cursor, f"a next_cursor value returned by an earlier list_{listing} call")
    return cursor[len(prefix) :]


def json_bytes(text: str) -> int:
    """A string's size in the JSON a client receives: a quote, a backslash or a newline takes two bytes (review:
    counted as one, quote-heavy examples made a 1.5 MB answer within the card budget)."""
    return len(json.dumps(text, ensure_ascii=False).encode())


def leading_within(sizes: Iterable[int], budget: int = PAGE_BYTES_MAX) -> int:
    """How many leading items fit in `budget` bytes, given their sizes in bytes (CJK text is 3 a character, an
    emoji 4); `sizes` is read lazily, up to the first item that does not fit. The tools' pages and the resources
    (server/resources.py) stop their rows by it."""
    total = fitting = 0
    for size in sizes:
        total += size
        if total > budget:
            break
        fitting += 1
    return fitting


def key_page(items: list[Any], limit: int, listing: str) -> tuple[list[Any], str | None]:
    """A page of the items (sorted by id) after a cursor's id, given up to limit + 1 of them, and the next cursor;
    the page ends early (never empty) once its JSON passes PAGE_BYTES_MAX."""
    first = items[:limit]
    page = first[: max(leading_within(len(item.model_dump_json().encode()) for item in first), 1)]
    return page, KEY_CURSORS[listing] + page[-1].id if len(items) > len(page) else None
