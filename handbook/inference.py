"""Which skills a step demands: the live handbook's learned labeller when it has one, else the configured matcher.

A learned handbook was profiled with its own skill identifier; routing with another one would meet a different
distribution of skill weights than the one the posteriors were learned under. So a version that carries a labeller
is served with it (for the skills it knows), and the lexical or semantic matcher answers otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from skillorchestra.handbook.store import HandbookStore

log = logging.getLogger(__name__)


class Matcher(Protocol):
    """Infers a step's skills. One with something to load (MiniLM) also has `begin_warm_up()` and `warm_up() -> str`;
    a caller's own matcher may have neither (see warm_up_matcher)."""

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]: ...


def begin_matcher_warm_up(matcher: object) -> None:
    """Mark the matcher as loading before its warm-up runs on another thread, if it loads anything."""
    begin = getattr(matcher, "begin_warm_up", None)
    if callable(begin):
        begin()


def warm_up_matcher(matcher: object) -> str:
    """Load what the matcher's first inference would wait for; says what is ready (its class name when it has
    nothing to load)."""
    warm = getattr(matcher, "warm_up", None)
    return warm() if callable(warm) else type(matcher).__name__


class HandbookMatcher:
    """The service's matcher: the version's labeller first, `base` (lexical or semantic) otherwise."""

    def __init__(self, store: HandbookStore, base: Matcher) -> None:
        self.store = store
        self.base = base
        self._lock = threading.Lock()
        self._version: int | None = None
        self._labeller: Any = None
        self._learned_parents: dict[str, str | None] = {}

    def _live_labeller(self) -> Any:
        version = self.store.current_version()
        with self._lock:
            if version != self._version:
                self._version, self._labeller, self._learned_parents = version, None, {}
                raw = self.store.labeller()
                if raw is not None:
                    try:
                        from skillorchestra.handbook.learning.labeller import SkillLabeller

                        self._labeller = SkillLabeller.from_json(raw)
                        self._share_embedder(self._labeller)
                        self._learned_parents = self.store.snapshot_skill_parents(version)
                    except (ValueError, KeyError) as exc:
                        log.warning(
                            "version %s has an unusable labeller (%s); using the %s matcher",
                            version,
                            exc,
                            type(self.base).__name__,
                        )
            return self._labeller

    def _share_embedder(self, labeller: Any) -> None:
        """A MiniLM labeller encodes with the semantic matcher's model instead of loading its own copy (~90 MB)."""
        if labeller.kind == "tfidf":
            return
        loaded = getattr(self.base, "embedder", None)  # the lexical matcher has none
        embedder = loaded() if callable(loaded) else None
        if embedder is not None and embedder.model_name == labeller.model_name:
            labeller.use_embedder(embedder)

    def nearest_live(self, skill_id: str, live: Collection[str]) -> str | None:
        """The skill, or its closest ancestor in `live`, as the labeller's version placed it: a skill deleted since
        the version was learned hands its share of a step to its parent instead of to the step's other skills
        (None: no ancestor is left; that share then goes to the others)."""
        self._live_labeller()  # the parents of the live version
        for _ in range(64):  # a tree is shallow; a damaged one must not loop
            if skill_id in live:
                return skill_id
            parent = self._learned_parents.get(skill_id)
            if parent is None:
                return None
            skill_id = parent
        return None

    def begin_warm_up(self) -> None:
        begin_matcher_warm_up(self.base)

    def warm_up(self) -> str:
        """The base matcher (MiniLM, when semantic), then the live version's labeller, which shares its model."""
        ready = warm_up_matcher(self.base)
        labeller = self._live_labeller()
        if labeller is None:
            return ready
        if labeller.kind != "tfidf":
            try:
                labeller.embedder()
            except RuntimeError as exc:
                log.warning("learned labeller unavailable: %s", exc)
        return f"{labeller.kind} labeller of version {self._version}; otherwise {ready}"

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
        loading = getattr(self.base, "loading", None)
        if callable(loading) and loading():  # a MiniLM labeller would wait for the model: the base answers lexically
            return self.base.infer(text, mode, top_k)
        labeller = self._live_labeller()
        if labeller is not None:
            try:
                found = labeller.match(text, mode, top_k)
            except (RuntimeError, ValueError) as exc:  # a MiniLM labeller without the weights, or one they don't fit
                found = []
                log.warning("learned labeller unavailable: %s", exc)
            total = sum(w for _, w in found)
            if total > 0:
                return [
                    (s, w / total) for s, w in found
                ], f"learned ({labeller.kind} labeller of version {self._version})"
        return self.base.infer(text, mode, top_k)


def live_demands(
    matcher: Matcher, text: str, mode: str | None, top_k: int, live: Mapping[str, int] | Collection[str]
) -> tuple[list[tuple[str, float]], str]:
    """The step's skill weights among the `live` skills, and which matcher found them: a skill a learned labeller
    names that was deleted since hands its weight to its nearest live ancestor (or to the step's other skills);
    the rest are renormalised to sum to 1 (empty: nothing matched). The one rule of route_step and of the
    learner's trial of the live handbook (learning/gate.py try_live_skills)."""
    inferred, source = matcher.infer(text, mode, top_k)
    return on_live(matcher, inferred, live), source


def on_live(
    matcher: Matcher, inferred: list[tuple[str, float]], live: Mapping[str, int] | Collection[str]
) -> list[tuple[str, float]]:
    """`inferred` (a matcher's weights) among the live skills, renormalised (see live_demands). Every matcher here
    keeps its best matches in order and renormalises them, so the first k of a top-n answer, passed here, are its
    top-k answer: consult_handbook infers once for its cards and route_step's weights."""
    nearest_live = getattr(matcher, "nearest_live", None)  # a learned labeller's matcher knows its tree
    known: dict[str, float] = {}
    for skill_id, weight in inferred:
        kept = skill_id if skill_id in live else (nearest_live(skill_id, live) if callable(nearest_live) else None)
        if kept is not None:
            known[kept] = known.get(kept, 0.0) + weight
    total = sum(known.values())
    return [(s, w / total) for s, w in known.items()] if total > 0 else []
