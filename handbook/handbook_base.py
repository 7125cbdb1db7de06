"""What the parts of the Handbook share: the attributes Handbook.__init__ (service.py) sets and the lookups every
part reads, declared once so a reader (and a type checker) sees what each mixin relies on.

The mixins (consulting, deciding, recording, delegated_calls, editing) each add one job to this base; service.py
puts them together as Handbook.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from skillorchestra.handbook.arrays import HandbookArrays
from skillorchestra.handbook.arrays_cache import ArraysCache
from skillorchestra.handbook.inference import Matcher
from skillorchestra.handbook.models import Agent, Mode, Skill
from skillorchestra.handbook.request_types import HandbookSettings
from skillorchestra.handbook.store import HandbookStore


class HandbookBase:
    store: HandbookStore
    settings: HandbookSettings
    clock: Callable[[], float]
    matcher: Matcher
    _arrays_cache: ArraysCache
    _record_lock: threading.Lock  # a record's write and its patch of the arrays, in turn (see RecordMixin.record)

    def arrays(self) -> HandbookArrays:
        """The routing arrays, current (Handbook reads them through its ArraysCache)."""
        raise NotImplementedError

    def agent(self, agent_id: str) -> Agent | None:
        """The stored agent with this id (None if there is none)."""
        return self.store.agent(agent_id)

    def skill(self, skill_id: str) -> Skill | None:
        """The stored skill with this id (None if there is none)."""
        return self.store.skill(skill_id)

    def mode(self, mode_id: str) -> Mode | None:
        """The stored mode with this id (None if there is none)."""
        return self.store.mode(mode_id)


def stored_json(value: Any) -> Any:
    """A JSON column of a decision or outcome row, decoded unless it already is."""
    return json.loads(value) if isinstance(value, str) else value
