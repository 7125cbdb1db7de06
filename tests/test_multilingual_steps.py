"""Steps that are not plain English: accents in either Unicode form, Turkish İ, Indic vowel signs, Chinese or
Japanese mixed with English without spaces, full-width letters from an IME, invisible characters inside a word,
emoji alone. The lexical matcher (FTS5) and the semantic one (MiniLM) on a real SQLite handbook; bench/multilingual.py
measures the translations of whole steps."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from skillorchestra.handbook.embedding import load_default_embedder
from skillorchestra.handbook.example import example_document
from skillorchestra.handbook.matcher import _STOPWORDS, MAX_QUERY_TERMS, LexicalMatcher, query_terms
from skillorchestra.handbook.models import Agent, Skill
from skillorchestra.handbook.request_types import RouteRequest
from skillorchestra.handbook.semantic import SemanticMatcher
from skillorchestra.handbook.service import Handbook
from skillorchestra.handbook.store import HandbookStore

EMBEDDER, WHY = load_default_embedder()
needs_weights = pytest.mark.skipif(EMBEDDER is None, reason=f"MiniLM weights not installed: {WHY}")

SKILLS = [
    Skill(id="docs.resume", mode="answer", description="Write a résumé for a job application"),
    Skill(id="travel.city_guide", mode="answer", description="A travel guide to Istanbul and its sights"),
    Skill(id="code.python", mode="answer", description="Python functions over lists and strings"),
    Skill(id="lang.hindi", mode="answer", description="हिन्दी अनुवाद"),
    Skill(id="math.equations", mode="answer", description="Equations with integer solutions"),
]


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Handbook]:
    handbook = Handbook(HandbookStore(tmp_path / "h.db"))
    for skill in SKILLS:
        handbook.upsert_skill(skill)
    handbook.upsert_agent(Agent(id="solo", modes=["answer"], input_per_mtok=1.0, output_per_mtok=1.0))
    yield handbook
    handbook.store.close()


def top(book: Handbook, text: str) -> str | None:
    found = LexicalMatcher(book.store).match(text, None, 3)
    return found[0][0] if found else None


@pytest.mark.parametrize(
    ("text", "skill"),
    [
        ("résumé", "docs.resume"),
        ("RESUME", "docs.resume"),  # FTS5's unicode61 removes diacritics on both sides
        ("re\u0301sume\u0301", "docs.resume"),  # NFD: the regex cut it into "re" and "sume" (QA)
        ("İSTANBUL", "travel.city_guide"),  # lowered to "i" + U+0307: cut into "i" and "stanbul" (QA)
        ("写一个Python函数", "code.python"),  # one unsegmented run was one term matching nothing (QA)
        ("Python関数を書いてください", "code.python"),
        ("ｐｙｔｈｏｎ", "code.python"),  # full-width letters from an IME: FTS5 does not fold them (QA)
        ("py\u200bthon", "code.python"),  # zero-width space pasted inside the word (QA)
        ("equa\u00adtions", "math.equations"),  # soft hyphen (QA)
        ("हिन्दी में लिखें", "lang.hindi"),  # vowel signs cut every word to single letters, all dropped (QA)
    ],
)
def test_a_word_in_any_form_finds_the_skill_its_plain_form_finds(book: Handbook, text: str, skill: str) -> None:
    assert top(book, text) == skill


def test_nfc_and_nfd_forms_of_a_step_give_the_same_terms() -> None:
    step = "Écris un résumé en français pour Müller & Søren, s'il te plaît"
    assert query_terms(unicodedata.normalize("NFD", step)) == query_terms(unicodedata.normalize("NFC", step))


def test_every_combining_mark_continues_a_word() -> None:
    """Review: a list of blocks missed 435 marks (Meetei Mayek, Sundanese, ...), whose words were cut apart."""
    for text, word in (("ꯃꯤꯇꯩ ꯃꯌꯦꯛ", "ꯃꯌꯦꯛ"), ("ᮞᮥᮔ᮪ᮓ ᮘᮞ", "ᮞᮥᮔ᮪ᮓ"), ("нѣкоⷮторый", "нѣкоⷮторый")):
        assert f'"{word}"' in query_terms(text), text


def test_a_step_gives_at_most_twice_max_query_terms() -> None:
    """Review: each word's compatibility form could re-split into many terms, past the cap the query relies on."""
    crafted = " ".join(f"ｗ{i}½ｘ¼ｙ¾ｚ{i}" for i in range(3000))
    assert len(query_terms(crafted)) <= 2 * MAX_QUERY_TERMS


def test_a_cjk_run_is_kept_whole_beside_its_parts() -> None:
    """FTS5 indexes "写一个Python函数" as one token: a handbook written in Chinese holds the run (review)."""
    assert query_terms("写一个Python函数") == ['"写一个"', '"python"', '"函数"', '"写一个python函数"']


_OLD_WORD = re.compile(r"[^\W_]+")


@pytest.mark.parametrize(
    "text",
    [
        "Write a function to check for the number of jumps required of given length to reach a point",
        "What is the equation of the line parallel to $4x+2y=8$ and passing through the point $(0,1)$?",
        'def f(xs):\n    """Return the max."""\n    return sorted(xs)[-1]  # O(n log n)',
        "the of and to " * 40 + "zebra",
    ],
)
def test_plain_ascii_steps_keep_their_terms(text: str) -> None:
    """English steps are read as before: words of letters and digits, lowered, stopwords and single letters out."""
    seen = dict.fromkeys(w for w in _OLD_WORD.findall(text.lower()) if len(w) > 1 and w not in _STOPWORDS)
    assert query_terms(text) == [f'"{w}"' for w in list(seen)[:MAX_QUERY_TERMS]]


@pytest.mark.parametrize(
    "text",
    [
        "🐍🔢✨",
        "「」？，。！",
        "\u200f\u202bاكتب دالة\u202c",
        '"python" NEAR(a b) AND OR NOT * ^ -x',
        "\u0301\u0308 leading combining marks",
        "ﷺ ﷽ ㈱ ¼ ⅷ",
        "Straße STRASSE straße",
        "x" * 31_000 + " 函数",
        "ǅemal ǈubljana",
    ],
)
def test_odd_steps_neither_raise_nor_claim_a_match_they_did_not_find(book: Handbook, text: str) -> None:
    decision = book.route(RouteRequest(text=text))
    consulted = book.consult(text)
    assert consulted.skills_source == decision.skills_source
    if not decision.skills:
        assert decision.skills_source == "agent level"
    else:
        assert decision.skills_source == "lexical"
        assert sum(s.weight for s in decision.skills) == pytest.approx(1.0)


def test_an_emoji_step_routes_at_agent_level(book: Handbook) -> None:
    decision = book.route(RouteRequest(text="🐍🔢✨"))
    assert decision.skills == [] and decision.skills_source == "agent level"


@pytest.fixture
def example_store(tmp_path: Path) -> Iterator[HandbookStore]:
    store = HandbookStore(tmp_path / "example.db")
    store.create_version(example_document(), source="import")
    yield store
    store.close()


@needs_weights
@pytest.mark.parametrize("text", ["🐍🔢✨", "😀", "👍👍 🙏"])
def test_a_step_the_model_cannot_read_is_no_semantic_match(example_store: HandbookStore, text: str) -> None:
    """QA: every step of emoji alone embedded as the same [UNK] vector and got the same three skills (cosine
    0.14); now it falls to the lexical matcher, here to no skill, and says why."""
    matcher = SemanticMatcher(example_store, load=lambda: (EMBEDDER, ""))
    weights, source = matcher.infer(text, None, 3)
    assert weights == []
    assert source == "lexical (semantic model: most of the step's characters are unknown to it)"
    book = Handbook(example_store, matcher=matcher)
    decision = book.route(RouteRequest(text=text))
    assert decision.skills == []
    assert decision.skills_source == "agent level (semantic model: most of the step's characters are unknown to it)"


@needs_weights
def test_a_mostly_unknown_step_with_english_words_is_read_lexically(example_store: HandbookStore) -> None:
    matcher = SemanticMatcher(example_store, load=lambda: (EMBEDDER, ""))
    weights, source = matcher.infer("写一个Python函数，返回列表中最长的字符串", None, 3)
    assert source.startswith("lexical (semantic model")
    assert weights and weights[0][0] == "code.python_functions"


@needs_weights
def test_english_and_accented_latin_steps_stay_semantic(example_store: HandbookStore) -> None:
    matcher = SemanticMatcher(example_store, load=lambda: (EMBEDDER, ""))
    for text in ["Write a Python function that returns the longest string in a list.", "Écris une fonction Python"]:
        weights, source = matcher.infer(text, None, 3)
        assert source == "semantic" and weights[0][0].startswith("code"), text


@needs_weights
def test_full_width_latin_reads_as_its_ascii_form(example_store: HandbookStore) -> None:
    """QA: the model's vocabulary has no full-width letters, so an IME's "ｐｙｔｈｏｎ" was [UNK]."""
    matcher = SemanticMatcher(example_store, load=lambda: (EMBEDDER, ""))
    assert matcher.infer("ｐｙｔｈｏｎ\u3000ｆｕｎｃｔｉｏｎ", None, 3) == matcher.infer("python function", None, 3)


class _CountingEmbedder:
    """The real model, counting how often a step's unknown share is worked out."""

    def __init__(self, inner: object) -> None:
        self.inner, self.shares_computed = inner, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def unknown_share(self, text: str) -> float:
        self.shares_computed += 1
        return self.inner.unknown_share(text)  # type: ignore[attr-defined]


@needs_weights
def test_a_steps_unknown_share_is_worked_out_once(example_store: HandbookStore) -> None:
    """consult then route on the same step: tokenizing a long step again took 12-28 ms of each call (review)."""
    counting = _CountingEmbedder(EMBEDDER)
    matcher = SemanticMatcher(example_store, load=lambda: (counting, ""))  # type: ignore[arg-type]
    step = "Écris une fonction Python qui trie une liste " * 20
    assert matcher.infer(step, None, 3) == matcher.infer(step, None, 3)
    assert counting.shares_computed == 1
