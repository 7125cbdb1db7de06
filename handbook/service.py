"""The Handbook service: consult, route, record and edit, over the store, the arrays and the router.

Handbook is put together here from one part per job, each in its own module:
- consulting.py (consult), deciding.py (route), recording.py (record, withdraw), delegated_calls.py (what
  delegation writes beside them), editing.py (upsert, edit, delete, list);
- demands.py and eligibility.py: how consult and route read a step and which agents may take it;
- arrays_cache.py: the in-memory routing arrays, kept fresh: own state-changing writes mark them stale (or patch
  them), and SQLite's data_version tells when another process (the CLI, another server) committed;
- handbook_base.py: the attributes the parts share; request_types.py: the requests and settings callers build.
The names callers import from here (Handbook, HandbookSettings, RouteRequest, OutcomeReport, DelegateRequest,
INFERRED_SKILLS) stay importable from here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from skillorchestra.handbook.arrays import HandbookArrays
from skillorchestra.handbook.arrays_cache import ArraysCache
from skillorchestra.handbook.consulting import ConsultMixin
from skillorchestra.handbook.deciding import RouteMixin
from skillorchestra.handbook.delegated_calls import DelegatedCallsMixin
from skillorchestra.handbook.demands import INFERRED_SKILLS, validate_demands
from skillorchestra.handbook.editing import EditMixin
from skillorchestra.handbook.inference import Matcher, begin_matcher_warm_up, warm_up_matcher
from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.models import SkillDemand
from skillorchestra.handbook.recording import RecordMixin
from skillorchestra.handbook.request_types import DelegateRequest, HandbookSettings, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore

__all__ = [
    "INFERRED_SKILLS",
    "DelegateRequest",
    "Handbook",
    "HandbookSettings",
    "OutcomeReport",
    "RouteRequest",
]


class Handbook(ConsultMixin, RouteMixin, RecordMixin, DelegatedCallsMixin, EditMixin):
    def __init__(
        self,
        store: HandbookStore,
        settings: HandbookSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        matcher: Matcher | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or HandbookSettings()
        self.clock = clock
        self.matcher = matcher or LexicalMatcher(store)
        self._arrays_cache = ArraysCache(store, self.settings.kappa)
        self._record_lock = threading.Lock()  # a record's write and its patch of the arrays, in turn (see record)

    def arrays(self) -> HandbookArrays:
        return self._arrays_cache.read()

    def begin_warm_up(self) -> None:
        """Mark the matcher as loading before warm_up runs on another thread: a step arriving first must not start
        loading the model itself (it waited 4 s) nor see it loaded for consult and not for route_step (QA)."""
        begin_matcher_warm_up(self.matcher)

    def warm_up(self) -> str:
        """Derive the routing arrays and load the skill matcher now (a server just started), not on the first step;
        says what is ready. The matcher first: its warm-up always ends its loading mark, even when it fails, where
        a failed derivation before it left every later step "still loading" (review)."""
        ready = warm_up_matcher(self.matcher)
        self.arrays()
        return ready

    def infer_skills(
        self, text: str, mode: str | None, top_k: int = INFERRED_SKILLS
    ) -> tuple[list[tuple[str, float]], str]:
        """Skill weights for a step, and which matcher found them."""
        return self.matcher.infer(text, mode, top_k)

    def validate_demands(self, arrays: HandbookArrays, demands: Sequence[SkillDemand]) -> list[tuple[str, float]]:
        """Known skill ids, non-negative weights with a positive sum; returns weights normalised to 1."""
        return validate_demands(arrays, demands)
