"""Lexical skill inference: which skills a step's text demands, from SQLite FTS5 with BM25.

No API key, no network: the step's words are matched (porter-stemmed) against each skill's id, description,
indicators and examples. Scores become weights in proportion, keeping only matches within a fraction of the
best one, so a step that clearly names one skill is not diluted by incidental word overlaps.
"""

from __future__ import annotations

import re

from skillorchestra.handbook.store import HandbookStore

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how i in is it its me my of on or our should "
    "so that the their then there these this to was we what when where which who why will with would you "
    "your please use using step task".split()
)
MAX_QUERY_TERMS = 64
KEEP_RATIO = 0.35  # a match scoring below this share of the best one is treated as incidental


def query_terms(text: str) -> list[str]:
    """Distinct content words of the text, in order, quoted for FTS5 (no operator injection)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if len(word) > 1 and word not in _STOPWORDS:
            seen.setdefault(word, None)
    return [f'"{w}"' for w in list(seen)[:MAX_QUERY_TERMS]]


class LexicalMatcher:
    """Infers skill demands with FTS5; the default matcher and the fallback when no embedder is installed."""

    name = "lexical"

    def __init__(self, store: HandbookStore) -> None:
        self.store = store

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
        return self.match(text, mode, top_k), self.name

    def warm_up(self) -> str:
        """Nothing to load: FTS5 answers from the file."""
        return self.name

    def match(self, text: str, mode: str | None, top_k: int) -> list[tuple[str, float]]:
        terms = query_terms(text)
        if not terms or top_k <= 0:
            return []
        scored = self.store.search_skills(" OR ".join(terms), mode, max(top_k * 3, top_k))
        return scores_to_weights(scored, top_k)


def scores_to_weights(scored: list[tuple[str, float]], top_k: int) -> list[tuple[str, float]]:
    """Keep the top_k matches that score at least KEEP_RATIO of the best; weights proportional, summing to 1."""
    positive = [(skill, score) for skill, score in scored if score > 0]
    if not positive:
        # tiny corpora give BM25 scores of ~0: fall back to equal weights over the first matches
        kept = [skill for skill, _ in scored[: min(top_k, 3)]]
        return [(skill, 1.0 / len(kept)) for skill in kept] if kept else []
    best = max(score for _, score in positive)
    kept_scored = sorted([(s, v) for s, v in positive if v >= KEEP_RATIO * best], key=lambda item: (-item[1], item[0]))[
        :top_k
    ]
    total = sum(score for _, score in kept_scored)
    return [(skill, score / total) for skill, score in kept_scored]
