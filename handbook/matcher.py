"""Lexical skill inference: which skills a step's text demands, from SQLite FTS5 with BM25.

No API key, no network: the step's words are matched (porter-stemmed) against each skill's id, description,
indicators and examples. Scores become weights in proportion, keeping only matches within a fraction of the
best one, so a step that clearly names one skill is not diluted by incidental word overlaps. A step in Chinese or
Japanese is also read by character bigrams (handbook/cjk_matcher.py), added to FTS5's scores: FTS5 keeps an unspaced
CJK run as one token, which a skill matches only by holding the very same run.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

from skillorchestra.handbook.cjk_matcher import CJK_RUN, WORD, CjkSkillIndex, cjk_share, has_cjk, without_invisible
from skillorchestra.handbook.store import HandbookStore

_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how i in is it its me my of on or our should "
    "so that the their then there these this to was we what when where which who why will with would you "
    "your please use using step task".split()
)
MAX_QUERY_TERMS = 64
KEEP_RATIO = 0.35  # a match scoring below this share of the best one is treated as incidental


def query_terms(text: str) -> list[str]:
    """Distinct content words of the text, in order, quoted for FTS5 (no operator injection). Read in NFC, and
    also in NFKC where that differs (full-width "ｐｙｔｈｏｎ" from an IME, the ligature "ﬁ"), since FTS5 folds
    case and accents but not compatibility forms; the text's own form is kept for a handbook written in it. The
    NFKC forms come beside the text's first MAX_QUERY_TERMS words, at most as many again (review: a crafted step of
    vulgar fractions made 1,558 terms)."""
    if text.isascii():  # English steps: as before, and fast
        words = WORD.findall(text.lower())
        return [f'"{w}"' for w in list(dict.fromkeys(w for w in words if _content(w)))[:MAX_QUERY_TERMS]]
    words = _words(unicodedata.normalize("NFC", without_invisible(text)).lower())
    own = list(dict.fromkeys(w for w in words if _content(w)))[:MAX_QUERY_TERMS]
    folded = [
        term
        for word in own
        if not word.isascii() and (form := unicodedata.normalize("NFKC", word)) != word
        for term in _words(form)
        if _content(term)
    ]
    return [f'"{w}"' for w in dict.fromkeys(own + folded[:MAX_QUERY_TERMS])]


def _content(word: str) -> bool:
    return len(word) > 1 and word not in _STOPWORDS


def _words(text: str) -> list[str]:
    """Runs of letters and digits. Combining marks continue a word (a decomposed accent the NFC form keeps, the
    dot of a lowered Turkish İ, Indic vowel signs, Arabic harakat), where `WORD` alone cut "i̇stanbul" into "i"
    and "stanbul". A CJK run is also split from the letters around it, the whole run kept beside its parts (FTS5
    indexes "写一个Python函数" as one token: a handbook written in Chinese holds it so)."""
    if text.isascii():
        return WORD.findall(text)
    words = _word_with_marks().findall(text)
    if not CJK_RUN.search(text):
        return words
    split: list[str] = []
    for word in words:
        parts = [part for part in CJK_RUN.split(word) if part]
        split += parts if len(parts) == 1 else [*parts, word]
    return split


@functools.cache
def _word_with_marks() -> re.Pattern[str]:
    """`WORD` letting every combining mark (Unicode category M, from the running Python's tables) continue a word.
    Built on first use (~15 ms): an English-only server never pays for it."""
    marks = [code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)).startswith("M")]
    spans: list[tuple[int, int]] = []
    for code in marks:
        if spans and code == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], code)
        else:
            spans.append((code, code))
    mark_class = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" if a < b else re.escape(chr(a)) for a, b in spans)
    return re.compile(rf"[^\W_](?:[^\W_]|[{mark_class}])*")


class LexicalMatcher:
    """Infers skill demands with FTS5; the default matcher and the fallback when no embedder is installed."""

    name = "lexical"

    def __init__(self, store: HandbookStore) -> None:
        self.store = store
        self.cjk = CjkSkillIndex(store)  # built on the first Chinese or Japanese step, per set of skill texts

    def infer(self, text: str, mode: str | None, top_k: int) -> tuple[list[tuple[str, float]], str]:
        return self.match(text, mode, top_k), self.name

    def warm_up(self) -> str:
        """Nothing to load: FTS5 answers from the file."""
        return self.name

    def match(self, text: str, mode: str | None, top_k: int) -> list[tuple[str, float]]:
        if top_k > 0 and has_cjk(text):
            return self._match_cjk(text, mode, top_k)
        terms = query_terms(text)
        if not terms or top_k <= 0:
            return []
        scored = self.store.search_skills(" OR ".join(terms), mode, max(top_k * 3, top_k))
        return scores_to_weights(scored, top_k)

    def read_by_characters(self, text: str, mode: str | None, top_k: int, min_share: float) -> list[tuple[str, float]]:
        """The step's weights when at least `min_share` of its letters are Chinese or Japanese and a pair of them
        matches a skill; [] otherwise (the semantic matcher then reads it: an English step quoting a name)."""
        if top_k <= 0 or not has_cjk(text) or (share := cjk_share(text)) < min_share:
            return []
        bigrams = self.cjk.score(text, mode)
        return self._merged(text, mode, top_k, bigrams, share) if bigrams else []

    def _match_cjk(self, text: str, mode: str | None, top_k: int) -> list[tuple[str, float]]:
        bigrams = self.cjk.score(text, mode)
        return self._merged(text, mode, top_k, bigrams, cjk_share(text) if bigrams else 0.0)

    def _merged(
        self, text: str, mode: str | None, top_k: int, bigrams: list[tuple[str, float]], share: float
    ) -> list[tuple[str, float]]:
        """FTS5's BM25 (the step's Latin words and whole CJK runs) plus the bigram BM25 of its CJK runs: both sums
        of idf-weighted terms, so they add (a skill holding a whole run of the step gains twice: strong evidence).
        No bigram shared with any skill: exactly FTS5's answer, as before."""
        terms = query_terms(text)
        scored = self.store.search_skills(" OR ".join(terms), mode, max(top_k * 3, top_k)) if terms else []
        if not bigrams:
            return scores_to_weights(scored, top_k)
        # the bigrams count by the share of the step they read (review: a Chinese name in an English step
        merged = {skill: score * share for skill, score in bigrams}  # outweighed the English words FTS5 matched)
        for skill, score in scored:
            merged[skill] = merged.get(skill, 0.0) + max(score, 0.0)
        return scores_to_weights(list(merged.items()), top_k)


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
