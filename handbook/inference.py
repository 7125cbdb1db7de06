"""Which skills a step demands: the live handbook's learned labeller when it has one, else the configured matcher.

A learned handbook was profiled with its own skill identifier; routing with another one would meet a different
distribution of skill weights than the one the posteriors were learned under. So a version that carries a labeller
is served with it (for the skills it knows), and the lexical or semantic matcher answers otherwise.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from skillorchestra.handbook.store import HandbookStore

log = logging.getLogger(__name__)


class Matcher(Protocol):
    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]: ...

    def warm_up(self) -> str:
        """Load what the first inference would wait for; says what is ready."""
        ...


class HandbookMatcher:
    """The service's matcher: the version's labeller first, `base` (lexical or semantic) otherwise."""

    def __init__(self, store: HandbookStore, base: Matcher) -> None:
        self.store = store
        self.base = base
        self._lock = threading.Lock()
        self._version: int | None = None
        self._labeller: Any = None

    def _live_labeller(self) -> Any:
        version = self.store.current_version()
        with self._lock:
            if version != self._version:
                self._version, self._labeller = version, None
                raw = self.store.labeller()
                if raw is not None:
                    try:
                        from skillorchestra.handbook.learning.labeller import SkillLabeller

                        self._labeller = SkillLabeller.from_json(raw)
                        self._share_embedder(self._labeller)
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

    def warm_up(self) -> str:
        """The live version's labeller (and its MiniLM, if it uses one), then the base matcher."""
        labeller = self._live_labeller()
        warm = getattr(self.base, "warm_up", None)  # a caller's own base matcher may have nothing to load
        ready = warm() if callable(warm) else type(self.base).__name__
        if labeller is None:
            return ready
        if labeller.kind != "tfidf":
            try:
                labeller.embedder()
            except RuntimeError as exc:
                log.warning("learned labeller unavailable: %s", exc)
        return f"{labeller.kind} labeller of version {self._version}; otherwise {ready}"

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
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
