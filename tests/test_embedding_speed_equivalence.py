"""The faster NumpyMiniLM forward gives the vectors of the plain forward it replaced.

The plain forward (out-of-place layer norm, every product unpadded, the attention mask always applied) is kept
below as the slow reference. The speed-ups that must not move a vector: a zero row added to products of 4k+3 rows,
in-place layer norm and bias adds, no mask for a single unpadded text, the layers' weights copied into one block;
the scorer's ranking by one lexsort instead of a Python sort.
Weight-free checks run everywhere; the model checks skip when the weights package is not installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
from shared_data import LLMROUTER

from skillorchestra.handbook import embedding
from skillorchestra.handbook.embedding import (
    INSTALL_HINT,
    NumpyMiniLM,
    SemanticScorer,
    compose_skill_text,
    load_default_embedder,
    locate_minilm_weights,
    scores_to_weights,
)

Vectors = tuple[list[str], np.ndarray, np.ndarray]  # texts, the model's single-text vectors, the reference's
TOLERANCE = 1e-5  # max abs difference of unit vectors: float32 rounding, nothing more
QUERIES = LLMROUTER / "default_query_test.jsonl"
STEPS = [
    "Sum the integers from 1 to 100.",
    "Translate this French paragraph about the weather into plain English for a newsletter.",
    "Write a SQL query joining orders to customers and report revenue per region for last quarter.",
    "Find the bug in the recursive parser: it overflows the stack on nested brackets deeper than 900 levels.",
    "Summarise the attached research paper in five bullet points, citing every assumption the authors make.",
    "Plot the latency histogram",
    "Is 7919 prime?",
    "Differentiate sin(x) * x^2 with respect to x and simplify the result, then evaluate it at x = pi / 2.",
    "Draft a polite email declining the meeting on Friday and proposing two other times next week.",
    "Which knight is lying? A says B is a knave; B says they are both knights; C says nothing.",
    "Refactor the billing module so the retry policy lives in one place and the HTTP timeout is configurable.",
    "Estimate the dose for a 70 kg adult.",
]
SKILLS = {
    "math": compose_skill_text("Arithmetic and calculus", ["derivatives, integrals, primes"], ["sum 1 to 100"]),
    "sql": compose_skill_text("SQL databases", ["joins and aggregations"], ["join orders to customers"]),
    "translate": compose_skill_text("Translation between natural languages", ["French to English"]),
    "code": compose_skill_text("Debugging and refactoring code", ["stack overflows, retries, timeouts"]),
    "writing": compose_skill_text("Writing emails, summaries and reports", ["bullet points", "polite tone"]),
    "logic": compose_skill_text("Logic puzzles", ["knights and knaves", "syllogisms"]),
    "medical": compose_skill_text("Medical questions", ["dosage", "symptoms"]),
}


# ------------------------------------------------------------------------------------- the slow reference


def reference_layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + eps) * gamma + beta


def reference_forward(model: NumpyMiniLM, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """NumpyMiniLM._forward as it was before the speed-ups (git 6fc62b9)."""
    batch, seq = ids.shape
    hidden, heads = model.dim, model.n_heads
    head_dim = hidden // heads
    scale = np.float32(1.0 / np.sqrt(head_dim))
    x = model.word_emb[ids] + model.pos_emb[:seq][None] + model.type_emb[types]
    x = reference_layer_norm(x, model.emb_ln_g, model.emb_ln_b, model.eps).reshape(batch * seq, hidden)
    attn_bias = ((mask - 1.0) * np.float32(1e9))[:, None, None, :]
    for lyr in model.layers:
        qkv = (x @ lyr.qkv_w + lyr.qkv_b).reshape(batch, seq, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(0, 1, 3, 2)) * scale + attn_bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * seq, hidden)
        x = reference_layer_norm(ctx @ lyr.attn_out_w + lyr.attn_out_b + x, lyr.ln1_g, lyr.ln1_b, model.eps)
        ffn = embedding._gelu(x @ lyr.ffn_in_w + lyr.ffn_in_b)
        x = reference_layer_norm(ffn @ lyr.ffn_out_w + lyr.ffn_out_b + x, lyr.ln2_g, lyr.ln2_b, model.eps)
    tokens = x.reshape(batch, seq, hidden)
    pooled = (tokens * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))


def reference_encode(model: NumpyMiniLM, text: str) -> np.ndarray:
    enc = model.tokenizer.encode(text)
    ids = np.array([enc.ids], dtype=np.int64)
    return reference_forward(model, ids, np.array([enc.type_ids], dtype=np.int64), np.ones(ids.shape, np.float32))[0]


# ------------------------------------------------------------------------------------ without the weights


@pytest.mark.parametrize("rows", range(1, 10))
def test_dense_matches_plain_product_for_every_row_count(rows: int) -> None:
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 48)).astype(np.float32)
    weight = rng.standard_normal((48, 40)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    got = embedding._dense(x, weight, bias)
    assert got.shape == (rows, 40) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, x @ weight + bias, rtol=0, atol=1e-5)


def test_in_place_layer_norm_equals_reference() -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((19, 384)) * 3 + 1).astype(np.float32)
    gamma = rng.standard_normal(384).astype(np.float32)
    beta = rng.standard_normal(384).astype(np.float32)
    expected = reference_layer_norm(x, gamma, beta, 1e-12)
    got = embedding._layer_norm(x.copy(), gamma, beta, 1e-12)
    np.testing.assert_array_equal(got, expected)  # the same operations in the same order: bit for bit


def test_layers_in_one_block_keep_values_and_shapes() -> None:
    rng = np.random.default_rng(3)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    names = [f.name for f in embedding.fields(embedding._Layer)]
    layers = [embedding._Layer(**{n: arr(4, 6) if n.endswith("_w") else arr(6) for n in names}) for _ in range(3)]
    packed = embedding._in_one_block(layers)
    base = packed[0].qkv_w.base
    for before, after in zip(layers, packed, strict=True):
        for name in names:
            np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
            assert getattr(after, name).base is base  # one allocation for all of them
            assert getattr(after, name).flags.c_contiguous


class TableEmbedder:
    """Fixed vectors per text (some texts share one, so cosines tie exactly)."""

    model_name = "table"
    dim = 8

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def test_score_vector_order_equals_sorted_by_cosine_then_id() -> None:
    rng = np.random.default_rng(11)
    distinct = [rng.standard_normal(8).astype(np.float32) for _ in range(6)]
    table = {f"text{i}": distinct[i % 6] for i in range(40)}  # 40 skills, 6 vectors: many exact ties
    ids = [f"skill{(i * 17) % 40:02d}{'xyz'[i % 3]}" for i in range(40)]  # insertion order != id order
    scorer = SemanticScorer(TableEmbedder(table), {sid: f"text{i}" for i, sid in enumerate(ids)})
    for trial in range(50):
        vec = rng.standard_normal(8).astype(np.float32) if trial else distinct[0]
        unit = vec / max(float(np.linalg.norm(vec)), 1e-12)
        expected = sorted(
            zip(scorer.skill_ids, map(float, scorer.matrix @ unit), strict=True), key=lambda p: (-p[1], p[0])
        )
        assert scorer.score_vector(vec) == expected


# --------------------------------------------------------------------------------------- with the weights


@pytest.fixture(scope="module")
def model() -> NumpyMiniLM:
    if locate_minilm_weights() is None:
        pytest.skip(f"MiniLM weights not installed ({INSTALL_HINT})")
    loaded, reason = load_default_embedder()
    assert loaded is not None, reason
    return loaded


def step_texts(model: NumpyMiniLM) -> list[str]:
    """The fixed steps plus real questions of 8-64 tokens, so every token count modulo 4 occurs."""
    texts = list(STEPS)
    if QUERIES.is_file():
        with QUERIES.open(encoding="utf-8") as fh:
            questions = [json.loads(line)["query"] for line in fh]
        texts += [q for q in questions if 8 <= len(model.tokenizer.encode(q).ids) <= 64][:16]
    return texts


@pytest.fixture(scope="module")
def vectors(model: NumpyMiniLM) -> Vectors:
    """Computed once for the tests below."""
    texts = step_texts(model)
    fast = np.stack([model.encode([t])[0] for t in texts])
    slow = np.stack([reference_encode(model, t) for t in texts])
    return texts, fast, slow


def test_single_text_vectors_equal_reference(model: NumpyMiniLM, vectors: Vectors) -> None:
    texts, fast, slow = vectors
    residues = {len(model.tokenizer.encode(t).ids) % 4 for t in texts}
    assert residues == {0, 1, 2, 3}, residues  # the padded product (4k+3 rows) and the others are all exercised
    assert float(np.abs(fast - slow).max()) < TOLERANCE


def test_batched_vectors_equal_single_and_reference(model: NumpyMiniLM) -> None:
    texts = STEPS  # mixed lengths: the batch pads them to the longest and masks the padding
    batched = model.encode(texts, batch_size=5)
    single = np.stack([reference_encode(model, t) for t in texts])
    assert float(np.abs(batched - single).max()) < TOLERANCE


def test_same_skills_chosen_as_reference(model: NumpyMiniLM, vectors: Vectors) -> None:
    texts, fast, slow = vectors
    scorer = SemanticScorer(model, SKILLS)
    for text, fast_vec, slow_vec in zip(texts, fast, slow, strict=True):
        got = scores_to_weights(scorer.score_vector(fast_vec))
        expected = scores_to_weights(scorer.score_vector(slow_vec))
        assert [s for s, _ in got] == [s for s, _ in expected], text
        np.testing.assert_allclose([w for _, w in got], [w for _, w in expected], rtol=0, atol=1e-3)
    top = {text: scorer.score_vector(vec)[0][0] for text, vec in zip(texts, fast, strict=True)}
    assert top[STEPS[2]] == "sql" and top[STEPS[1]] == "translate"  # the check above compares real choices
