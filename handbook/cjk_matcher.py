"""Skill inference for Chinese and Japanese text: overlapping character bigrams weighted like BM25.

Neither language puts spaces between words, so FTS5's unicode61 tokenizer keeps a whole run of ideographs and kana
as one token: a step shared a token with a skill only when the very same run stood in both (bench/multilingual.py:
0 of 20 steps against handbooks written in Chinese or Japanese). Two adjacent characters are the usual unit of CJK
retrieval without a dictionary (most Chinese words and Japanese kanji compounds are two characters long), so the
step's bigrams are matched against the bigrams of each skill's id, description, indicators and examples, each
weighted by its rarity among the skills (BM25's idf: "一个" or "して" count little) with BM25's saturation and
length norm. A one-ideograph run (an item of "狗、飞盘、公园") is read as that ideograph.

Terms are integers (two code points) and the index is a sorted vocabulary with CSR postings, built once per set of
skill texts: a 32,000-character step is a few numpy passes, not 32,000 Python steps.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skillorchestra.handbook.store import HandbookStore

# invisible characters with no meaning inside a word (soft hyphen, zero-width space, word joiner, BOM): pasted text
# carries them mid-word, and any split would cut the word there (the lexical matcher strips them too)
INVISIBLE = "\u00ad\u200b\u2060\ufeff"
# ideographs (with 々〆〇) and kana (full and half width): a run of them is what unicode61 keeps as one token
_HAN_RANGES = ((0x3005, 0x3007), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))
_KANA_RANGES = ((0x3040, 0x30FF), (0xFF66, 0xFF9F))
# captured, so that the lexical matcher's split keeps the runs (findall and search read alike)
CJK_RUN = re.compile("([" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _HAN_RANGES + _KANA_RANGES) + "]+)")
WORD = re.compile(r"[^\W_]+")  # letters and digits of any script
# compatibility forms NFKC folds into the ones a handbook is written in: half-width katakana (an old IME's "ｶﾞ"),
# the compatibility ideographs (U+F900-FAFF)
_COMPATIBLE = re.compile("[\uf900-\ufaff\uff66-\uff9f]")
KANA, HAN = 1, 2
_BASE = 0x110000  # a bigram's key: first code point x _BASE + second; an ideograph's key: its code point
K1 = 1.2  # BM25's term-frequency saturation, as FTS5's bm25()
B = 0.75  # BM25's length normalisation, as FTS5's bm25()


def _class_table() -> np.ndarray:
    """Per code point up to the last CJK one: 0, KANA or HAN (the last entry, 0, stands for every higher one)."""
    table = np.zeros(max(b for _, b in _HAN_RANGES + _KANA_RANGES) + 2, dtype=np.uint8)
    for ranges, kind in ((_KANA_RANGES, KANA), (_HAN_RANGES, HAN)):
        for a, b in ranges:
            table[a : b + 1] = kind
    return table


_CLASS = _class_table()


def has_cjk(text: str) -> bool:
    """Whether the step holds a Chinese or Japanese character (an English step never pays for the rest)."""
    return not text.isascii() and CJK_RUN.search(text) is not None


def without_invisible(text: str) -> str:
    """The text without INVISIBLE characters (str.replace where present: translate() took 5 ms on 31,000)."""
    for invisible in INVISIBLE:
        if invisible in text:
            text = text.replace(invisible, "")
    return text


def folded(text: str) -> str:
    """Invisible characters removed, compatibility forms folded, the rest in NFC (a step and the skill texts alike:
    kana pasted decomposed, as macOS writes them, had lost 40% of a step's score: review)."""
    text = without_invisible(text)
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC" if _COMPATIBLE.search(text) else "NFC", text)


def cjk_share(text: str) -> float:
    """The share of the step's letters and digits that are Chinese or Japanese characters: how much of the step the
    bigrams read (an English step quoting a name in Chinese is mostly read by its English words)."""
    cjk = sum(len(run) for run in CJK_RUN.findall(text))
    return cjk / max(sum(map(len, WORD.findall(text))), 1)


@dataclass(frozen=True)
class Scan:
    """A folded text's code points and, per position, whether a bigram starts there (a CJK character followed by
    another), whether it is a CJK character with no CJK neighbour (a one-character run), whether an ideograph."""

    codes: np.ndarray
    pair: np.ndarray
    alone: np.ndarray
    han: np.ndarray

    @classmethod
    def of(cls, text: str) -> Scan:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
        kind = _CLASS[np.minimum(codes, len(_CLASS) - 1)]
        cjk = kind > 0
        pair = np.zeros(len(codes), dtype=bool)
        pair[:-1] = cjk[:-1] & cjk[1:]
        alone = cjk.copy()
        alone[1:] &= ~cjk[:-1]
        alone[:-1] &= ~cjk[1:]
        return cls(codes, pair, alone, kind == HAN)

    def bigrams(self, where: np.ndarray) -> np.ndarray:
        """The keys of the bigrams starting at these positions."""
        return self.codes[where] * _BASE + self.codes[where + 1]


def step_terms(text: str) -> np.ndarray:
    """A step's term keys: the bigrams of its runs, and the ideograph of each one-ideograph run."""
    scan = Scan.of(folded(text))
    return np.concatenate((scan.bigrams(np.flatnonzero(scan.pair)), scan.codes[scan.alone & scan.han]))


@dataclass(frozen=True)
class BigramIndex:
    """Sorted term keys, and per term (CSR: `starts`) the skills holding it with the BM25 weight it adds to each."""

    skill_ids: tuple[str, ...]
    modes: tuple[str, ...]
    vocabulary: np.ndarray
    starts: np.ndarray
    skills: np.ndarray
    weights: np.ndarray

    @classmethod
    def build(cls, rows: Sequence[tuple[str, str, tuple[str, ...]]]) -> BigramIndex:
        """From (skill id, mode, texts) rows, in one pass over all the texts (12,000 skills: well under a second).
        A skill's terms are its bigrams and every ideograph it holds (so a step's one-ideograph word finds it); its
        length is its bigrams plus its one-character runs. idf is Lucene's log(1 + (N - n + 0.5) / (n + 0.5)):
        positive even for a term most skills hold, where FTS5's log((N - n + 0.5) / (n + 0.5)) is ~0 in a handbook
        of few skills."""
        # each skill's CJK runs alone, a newline between them (no bigram across two runs or texts): an English
        # handbook's texts are not held or scanned at all (review: 12,000 skills of prose had peaked at 2 GB)
        texts = ["\n".join(CJK_RUN.findall(folded("\n".join(parts)))) for _, _, parts in rows]
        scan = Scan.of("\n".join(texts))
        owner_at = np.repeat(np.arange(len(texts)), [len(text) + 1 for text in texts])[: len(scan.codes)]
        at_pair, at_han = np.flatnonzero(scan.pair), np.flatnonzero(scan.han)
        keys = np.concatenate((scan.bigrams(at_pair), scan.codes[at_han]))
        owners = owner_at[np.concatenate((at_pair, at_han))]
        vocabulary, term = np.unique(keys, return_inverse=True)
        # (term, skill) pairs with their counts, sorted by term: the CSR order of the postings
        held, tf = np.unique(term * max(len(rows), 1) + owners, return_counts=True)
        term, owner = np.divmod(held, max(len(rows), 1))
        df = np.bincount(term, minlength=len(vocabulary))
        idf = np.log1p((len(rows) - df + 0.5) / (df + 0.5))
        ends = np.concatenate((at_pair, np.flatnonzero(scan.alone)))
        length = np.bincount(owner_at[ends], minlength=len(rows)).astype(np.float64)
        mean_length = float(length[length > 0].mean()) if (length > 0).any() else 1.0
        norm = K1 * (1 - B + B * length / mean_length)
        weight = idf[term] * tf * (K1 + 1) / (tf + norm[owner])
        return cls(
            skill_ids=tuple(skill_id for skill_id, _, _ in rows),
            modes=tuple(mode for _, mode, _ in rows),
            vocabulary=vocabulary,
            starts=np.concatenate(([0], np.cumsum(df))).astype(np.int64),
            skills=owner,
            weights=weight,
        )

    def score(self, text: str, mode: str | None) -> list[tuple[str, float]]:
        """BM25 score of each skill (of this mode) sharing a term with the step, best first; [] when none does.
        The step's terms count once each (its bigrams, and the ideographs of its one-character runs)."""
        if not len(self.vocabulary):
            return []
        asked = np.unique(step_terms(text))  # the cost grows with the step, not with the vocabulary (review)
        place = np.minimum(np.searchsorted(self.vocabulary, asked), len(self.vocabulary) - 1)
        matched = place[self.vocabulary[place] == asked]
        if not len(matched):
            return []
        first, sizes = self.starts[matched], np.diff(self.starts)[matched]
        postings = np.repeat(first - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))
        totals = np.bincount(self.skills[postings], weights=self.weights[postings], minlength=len(self.skill_ids))
        scored = [
            (self.skill_ids[index], float(totals[index]))
            for index in np.flatnonzero(totals > 0)
            if mode is None or self.modes[index] == mode
        ]
        return sorted(scored, key=lambda item: (-item[1], item[0]))


# the texts FTS5 indexes, as stored: compared raw on each new handbook state (12,000 skills: 15 ms, where reading
# them as Skill models took 140-240 ms, and every recorded outcome makes a new state)
_TEXTS_SQL = "SELECT id, mode, description, indicators, examples FROM skills ORDER BY id"
Row = tuple[str, str, str | None, str | None, str | None]


def skill_texts(row: Row) -> tuple[str, ...]:
    """What the index reads of a stored skill: its id, description, indicators and examples (FTS5's columns)."""
    skill_id, _, description, indicators, examples = row
    return (skill_id, description or "", *json.loads(indicators or "[]"), *json.loads(examples or "[]"))


def _digest(rows: Sequence[Row]) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    for row in rows:
        for field in row:
            hasher.update((field or "").encode("utf-8", "surrogatepass") + b"\0")
    return hasher.digest()


class CjkSkillIndex:
    """The live skills' bigram index, kept per handbook state as the semantic matcher keeps its scorer (the store's
    data_version and generation); a new state whose skill texts did not change (a recorded outcome) keeps it."""

    def __init__(self, store: HandbookStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._state: tuple[int, int] | None = None
        self._texts_digest: bytes | None = None  # of the rows the index was built from (not the rows: 20-100 MB)
        self._index = BigramIndex.build([])

    def current(self) -> BigramIndex:
        state = (self.store.data_version(), self.store.generation)  # read first: a later change is seen next time
        with self._lock:
            if state == self._state:
                return self._index
        with self.store.lock:
            rows: list[Row] = self.store.db.conn.execute(_TEXTS_SQL).fetchall()
        with self._lock:
            digest = _digest(rows)
            if digest != self._texts_digest:
                self._index = BigramIndex.build([(row[0], row[1], skill_texts(row)) for row in rows])
                self._texts_digest = digest
            self._state = state
            return self._index

    def score(self, text: str, mode: str | None) -> list[tuple[str, float]]:
        return self.current().score(text, mode)
