"""Lexical skill inference: which skills a step's text demands, from SQLite FTS5 with BM25.

No API key, no network: the step's words are matched (porter-stemmed) against each skill's id, description,
indicators and examples. Scores become weights in proportion, keeping only matches within a fraction of the
best one, so a step that clearly names one skill is not diluted by incidental word overlaps.
"""

from __future__ import annotations

import re
import unicodedata

from skillorchestra.handbook.store import HandbookStore

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how i in is it its me my of on or our should "
    "so that the their then there these this to was we what when where which who why will with would you "
    "your please use using step task".split()
)
MAX_QUERY_TERMS = 64
KEEP_RATIO = 0.35  # a match scoring below this share of the best one is treated as incidental


# invisible characters with no meaning inside a word (soft hyphen, zero-width space, word joiner, BOM): pasted
# text carries them mid-word, and both this split and FTS5's tokenizer would cut the word there
_INVISIBLE = "\u00ad\u200b\u2060\ufeff"
# Han ideographs, kana and half-width kana: Chinese and Japanese write no spaces, so a run of them is one FTS5 token
# (unicode61); split from Latin letters and digits, "写一个Python函数" still finds the skills that name Python
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]+)")
# blocks that hold combining marks (a superset: Indic and Southeast Asian blocks whole): a text with none of them
# takes the plain regex split (the per-word loop below costs ~10x on a 31,000-character step)
_MARK_BLOCKS = re.compile(
    "[\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0711\u0730-\u074a"
    "\u07a6-\u07b0\u0816-\u082d\u0859-\u085b\u0898-\u08ff\u0900-\u0dff\u0e31-\u0fff\u102b-\u109f\u1712-\u1734"
    "\u17b4-\u17d3\u1a17-\u1a7f\u1ab0-\u1aff\u1b00-\u1b73\u1dc0-\u1dff\u20d0-\u20ff\u302a-\u302f\u3099\u309a"
    "\ua66f-\ua69f\ua802-\ua8ff\ua926-\ua9e5\uaa29-\uaa4d\ufb1e\ufe00-\ufe0f\ufe20-\ufe2f\U00010000-\U0001e9ff]"
)


def query_terms(text: str) -> list[str]:
    """Distinct content words of the text, in order, quoted for FTS5 (no operator injection). Read in NFC, and
    also in NFKC where that differs (full-width "ｐｙｔｈｏｎ" from an IME, the ligature "ﬁ"), since FTS5 folds
    case and accents but not compatibility forms; the text's own form is kept for a handbook written in it. The
    NFKC forms come beside the text's first MAX_QUERY_TERMS words, not in their place."""
    if text.isascii():  # English steps: as before, and fast
        words = _WORD.findall(text.lower())
        return [f'"{w}"' for w in list(dict.fromkeys(w for w in words if _content(w)))[:MAX_QUERY_TERMS]]
    for invisible in _INVISIBLE:  # str.replace when present: translate() took 5 ms on 31,000 characters
        if invisible in text:
            text = text.replace(invisible, "")
    words = _words(unicodedata.normalize("NFC", text).lower())
    own = list(dict.fromkeys(w for w in words if _content(w)))[:MAX_QUERY_TERMS]
    folded = [
        term
        for word in own
        if not word.isascii() and (form := unicodedata.normalize("NFKC", word)) != word
        for term in _words(form)
        if _content(term)
    ]
    return [f'"{w}"' for w in dict.fromkeys(own + folded)]


def _content(word: str) -> bool:
    return len(word) > 1 and word not in _STOPWORDS


def _words(text: str) -> list[str]:
    """Runs of letters and digits. Combining marks continue a word (a decomposed accent the NFC form keeps, the
    dot of a lowered Turkish İ, Indic vowel signs, Arabic harakat), where the regex alone cut "i̇stanbul" into "i"
    and "stanbul"; CJK runs are split from the letters around them."""
    if text.isascii() or not _MARK_BLOCKS.search(text):
        words = _WORD.findall(text)
    else:
        words = []
        end = 0
        for match in _WORD.finditer(text):
            gap = text[end : match.start()]
            if words and gap and all(unicodedata.category(c).startswith("M") for c in gap):
                words[-1] += gap + match.group()
            else:
                words.append(match.group())
            end = match.end()
    if text.isascii() or not _CJK.search(text):
        return words
    return [part for word in words for part in _CJK.split(word) if part]


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
