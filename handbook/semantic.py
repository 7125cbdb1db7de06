"""Semantic skill inference: MiniLM embeddings of the step against each skill's text (description, indicators,
examples), for steps that paraphrase a skill without sharing its words.

The model loads lazily on first use (start-up stays fast) and is optional: without the weights the lexical
matcher answers, and the result says so. Skill vectors are cached in the handbook file by text hash, so a restart
or a second server process does not re-encode them. The vectors of recent steps are kept in memory: an
orchestrator usually consults, routes and delegates the same step text, and the model is the slow part.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from skillorchestra.handbook.embedding import (
    Embedder,
    SemanticScorer,
    compose_skill_text,
    from_blob,
    load_default_embedder,
    scores_to_weights,
    to_blob,
)
from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.store import HandbookStore

CHUNK = 900
STEP_VECTORS_KEPT = 256  # recent step texts whose vectors are kept (384 floats each: ~0.4 MB)
# a step at least this share of whose wordpieces the model does not know ([UNK]) is not read semantically: its
# vector is mostly the [UNK] vector, and ranked the same few skills first whatever it said (bench/multilingual.py:
# every emoji-only step got the same three skills; Chinese steps went mostly to the [UNK] vector's nearest skill)
MAX_UNKNOWN_SHARE = 0.5
MIN_CJK_SHARE = 0.3  # of a step's letters in Chinese or Japanese, for its character pairs to be what reads it
# full-width ASCII (U+FF01-FF5E, and the ideographic space), as a Chinese or Japanese IME types Latin letters: the
# model's vocabulary lacks them ([UNK]), so "ｐｙｔｈｏｎ" is read as "python"
_FULL_WIDTH = {0xFF01 + i: 0x21 + i for i in range(94)} | {0x3000: 0x20}


def _digest(text: str) -> bytes:
    """A step text's key in the recent-step caches: 256 steps of up to 32,000 characters would hold 8 MB as keys."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


Kept = TypeVar("Kept")


def _recent(cache: OrderedDict[bytes, Kept], key: bytes) -> Kept | None:
    """A recent step's kept value (then the most recent), or None."""
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _remember(cache: OrderedDict[bytes, Kept], key: bytes, value: Kept) -> None:
    """Keep a step's value, forgetting the least recent beyond STEP_VECTORS_KEPT."""
    cache[key] = value
    while len(cache) > STEP_VECTORS_KEPT:
        cache.popitem(last=False)


class SqliteVectorCache:
    """The VectorCache protocol over the handbook file's `embeddings` table."""

    def __init__(self, store: HandbookStore) -> None:
        self.store = store

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), CHUNK):  # SQLite caps the number of bound parameters
            chunk = list(hashes[start : start + CHUNK])
            marks = ",".join("?" for _ in chunk)
            with self.store.lock:
                rows = self.store.db.conn.execute(
                    f"SELECT hash, vector FROM embeddings WHERE hash IN ({marks})", chunk
                ).fetchall()
            found.update((h, from_blob(v)) for h, v in rows)
        return found

    def put(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Best effort, never waiting: the matcher calls this holding its own lock, and another process holding
        the file's write lock (a CLI import) must not stall every semantic inference. Vectors not stored now are
        encoded again by the next process that needs them."""
        rows = [{"hash": h, "vector": to_blob(v)} for h, v in vectors.items()]
        self.store.try_write(
            lambda: self.store.db.table("embeddings").upsert_all(rows, pk="hash"), wait_for_threads=True
        )


class SemanticMatcher:
    """Infers skill demands by cosine similarity; falls back to the lexical matcher when it has no answer."""

    name = "semantic"

    def __init__(
        self,
        store: HandbookStore,
        *,
        load: Callable[[], tuple[Embedder | None, str]] = load_default_embedder,
        fallback: LexicalMatcher | None = None,
    ) -> None:
        self.store = store
        self._load = load
        self.fallback = fallback or LexicalMatcher(store)
        self._lock = threading.Lock()
        self._embedder: Embedder | None = None
        self._unavailable: str | None = None
        self._scorers: dict[tuple[str | None, tuple[tuple[str, str], ...]], SemanticScorer] = {}
        self._by_state: dict[tuple[str | None, int, int], SemanticScorer] = {}
        self._step_vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()  # text digest -> vector
        self._unknown_shares: OrderedDict[bytes, float] = OrderedDict()  # text digest -> share of [UNK] pieces
        # while a background warm-up loads the model (4 s on a new file: the skill vectors are encoded too), steps
        # take the lexical matcher instead of waiting: a host's first route_step would otherwise stall
        self._warming = threading.Event()
        self._warmed = threading.Event()

    def embedder(self) -> Embedder | None:
        with self._lock:
            if self._embedder is None and self._unavailable is None:
                self._embedder, reason = self._load()
                if self._embedder is None:
                    self._unavailable = reason
            return self._embedder

    def begin_warm_up(self) -> None:
        """From now until warm_up ends, steps take the lexical matcher (set before warm_up's thread starts)."""
        self._warming.set()

    def warm_up(self) -> str:
        """Load the model and the live skills' vectors now, so no step waits for them; steps inferred meanwhile
        take the lexical matcher (see infer)."""
        self.begin_warm_up()
        try:
            embedder = self.embedder()
            if embedder is None:
                return f"lexical (semantic unavailable: {self._unavailable})"
            scorer = self._scorer(embedder, None)
            return f"semantic, {len(scorer.skill_ids)} skill vectors ({scorer.computed} encoded)"
        finally:
            self._warmed.set()  # failed too: the next step loads it itself, and says why if it cannot

    def loading(self) -> bool:
        """A warm-up is loading the model: steps meanwhile take the lexical matcher instead of waiting."""
        return self._warming.is_set() and not self._warmed.is_set()

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
        if self.loading():
            weights, _ = self.fallback.infer(text, mode, top_k)
            return weights, "lexical (semantic model still loading)"
        embedder = self.embedder()
        if embedder is None:
            weights, _ = self.fallback.infer(text, mode, top_k)
            return weights, f"lexical (semantic unavailable: {self._unavailable})"
        if not text.isascii():  # English steps pay nothing for this: the model knows every ASCII character
            text = text.translate(_FULL_WIDTH)
            if self._mostly_unknown(embedder, text):
                weights, _ = self.fallback.infer(text, mode, top_k)
                return weights, "lexical (semantic model: most of the step's characters are unknown to it)"
            # the English model guesses at kana (Japanese: 6 of 10, against 10 of 10 by character pairs)
            weights = self.fallback.read_by_characters(text, mode, top_k, MIN_CJK_SHARE)
            if weights:
                return weights, "lexical (a Chinese or Japanese step, read by its characters)"
        scorer = self._scorer(embedder, mode)
        weights = []
        if top_k > 0 and scorer.skill_ids:  # no skill in this mode: nothing to compare the step with
            weights = scores_to_weights(scorer.score_vector(self._step_vector(embedder, text)), top_k)
        if weights:
            return weights, "semantic"
        weights, _ = self.fallback.infer(text, mode, top_k)
        return weights, "lexical (no semantic match)"

    def _mostly_unknown(self, embedder: Embedder, text: str) -> bool:
        """Whether the model knows too little of the step to read it (MAX_UNKNOWN_SHARE). Kept per recent step as
        its vector is: tokenizing 32,000 characters again took 12-28 ms of every consult and route (review)."""
        unknown_share = getattr(embedder, "unknown_share", None)  # a caller's own embedder may not say
        if not callable(unknown_share):
            return False
        key = _digest(text)
        with self._lock:
            share = _recent(self._unknown_shares, key)
        if share is None:
            share = float(unknown_share(text))
            with self._lock:
                _remember(self._unknown_shares, key, share)
        return share >= MAX_UNKNOWN_SHARE

    def _step_vector(self, embedder: Embedder, text: str) -> np.ndarray:
        """The step's vector; a text seen recently is not encoded again (a vector depends on the text only).
        Kept by the text's digest: 256 steps of up to 32,000 characters would hold 8 MB of keys."""
        key = _digest(text)
        with self._lock:
            vector = _recent(self._step_vectors, key)
            if vector is not None:
                return vector
        vector = embedder.encode([text])[0]  # outside the lock: concurrent steps encode in parallel
        with self._lock:
            _remember(self._step_vectors, key, vector)
        return vector

    def _scorer(self, embedder: Embedder, mode: str | None) -> SemanticScorer:
        state = (mode, self.store.data_version(), self.store.generation)
        cached = self._by_state.get(state)
        if cached is not None:
            return cached
        scorer = self._build_scorer(embedder, mode)
        self._by_state = {state: scorer}
        return scorer

    def _build_scorer(self, embedder: Embedder, mode: str | None) -> SemanticScorer:
        texts = {
            s.id: compose_skill_text(
                f"{s.id.replace('.', ' ').replace('_', ' ')}: {s.description}", s.indicators, s.examples
            )
            for s in self.store.skills()
            if mode is None or s.mode == mode
        }
        key = (mode, tuple(sorted(texts.items())))
        with self._lock:
            scorer = self._scorers.get(key)
            if scorer is None:
                scorer = SemanticScorer(embedder, texts, cache=SqliteVectorCache(self.store))
                self._scorers = {key: scorer}  # one live skill set at a time
            return scorer
