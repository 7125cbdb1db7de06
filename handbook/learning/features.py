"""Text features for skill discovery: sparse TF-IDF (always, for names and the lexical fallback) and MiniLM vectors.

Everything is numpy: a tiny CSR matrix for TF-IDF rows, a seeded k-means, and an embedding cache so a second
learning run does not re-embed thousands of queries (embedding dominates the first run's time).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skillorchestra.handbook.embedding import Embedder, InMemoryVectorCache, VectorCache, text_hash
from skillorchestra.handbook.knn import terms
from skillorchestra.handbook.matcher import _STOPWORDS

MIN_DF = 2
MAX_FEATURES = 60_000
_DIGITS = re.compile(r"^[\d_ ]+$")
# Function words are poor cues for a person reading a skill card (they stay in the features themselves).
_FUNCTION_WORDS = _STOPWORDS | frozenset(
    "about above after again against all also am any because been before being below between both but could did "
    "doing down during each few further had having he her here hers herself him himself his into just more most "
    "much must no nor not now off once only other ought ours out over own same she shall some such than theirs "
    "them themselves they those through too under until up very were whom yours yourself said says say one two "
    "may might many like get got make made well".split()
)


@dataclass
class Csr:
    """Rows of a sparse matrix: row i is indices/data[indptr[i]:indptr[i+1]] (columns sorted, float32)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def take(self, rows: np.ndarray) -> Csr:
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        pick = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)] + [np.empty(0, np.int64)])
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Csr(indptr, self.indices[pick], self.data[pick], self.n_cols)

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_rows), np.diff(self.indptr))

    def dense(self, columns: np.ndarray | None = None) -> np.ndarray:
        """Dense float32 rows; with `columns` (sorted ids), only those columns, in that order."""
        if columns is None:
            out = np.zeros((self.n_rows, self.n_cols), dtype=np.float32)
            out[self.row_ids(), self.indices] = self.data
            return out
        position = np.full(self.n_cols, -1, dtype=np.int64)
        position[columns] = np.arange(len(columns))
        mapped = position[self.indices]
        keep = mapped >= 0
        out = np.zeros((self.n_rows, len(columns)), dtype=np.float32)
        out[self.row_ids()[keep], mapped[keep]] = self.data[keep]
        return out

    def column_sums(self, rows: np.ndarray | None = None) -> np.ndarray:
        sub = self if rows is None else self.take(rows)
        return np.bincount(sub.indices, weights=sub.data, minlength=self.n_cols)

    def column_df(self, rows: np.ndarray | None = None) -> np.ndarray:
        sub = self if rows is None else self.take(rows)
        return np.bincount(sub.indices, minlength=self.n_cols)

    def matmul_dense(self, right: np.ndarray, chunk: int = 512) -> np.ndarray:
        """self @ right for a dense (n_cols x k) right-hand side, densifying `chunk` rows at a time."""
        out = np.empty((self.n_rows, right.shape[1]), dtype=np.float64)
        for start in range(0, self.n_rows, chunk):
            rows = np.arange(start, min(start + chunk, self.n_rows))
            out[rows] = self.take(rows).dense() @ right
        return out


class TfidfSpace:
    """Sublinear TF-IDF over word unigrams and bigrams (handbook/knn.py `terms`), rows l2-normalised."""

    def __init__(self, vocabulary: Mapping[str, int], idf: np.ndarray) -> None:
        self.vocabulary = dict(vocabulary)
        self.idf = np.asarray(idf, dtype=np.float32)
        self.terms = [""] * len(self.vocabulary)
        for term, col in self.vocabulary.items():
            self.terms[col] = term

    @classmethod
    def fit(cls, documents: Sequence[str], min_df: int = MIN_DF, max_features: int = MAX_FEATURES) -> TfidfSpace:
        df = Counter(term for doc in documents for term in set(terms(doc)))
        kept = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))[:max_features]
        n = len(documents)
        idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float32)
        return cls({t: i for i, t in enumerate(kept)}, idf)

    def transform(self, documents: Sequence[str]) -> Csr:
        indptr, indices, data = [0], [], []
        for doc in documents:
            cols, vals = self.vector(doc)
            indices.append(cols)
            data.append(vals)
            indptr.append(indptr[-1] + len(cols))
        return Csr(
            np.array(indptr, dtype=np.int64),
            np.concatenate(indices + [np.empty(0, np.int64)]),
            np.concatenate(data + [np.empty(0, np.float32)]),
            len(self.vocabulary),
        )

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted columns, weights) of one text: (1 + log tf) * idf over known terms, l2-normalised."""
        count = Counter(t for t in terms(text) if t in self.vocabulary)
        if not count:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        cols = np.array(sorted(self.vocabulary[t] for t in count), dtype=np.int64)
        tf = np.array([count[self.terms[c]] for c in cols], dtype=np.float32)
        weights = (1.0 + np.log(tf)) * self.idf[cols]
        return cols, (weights / np.linalg.norm(weights)).astype(np.float32)

    def readable(self, col: int) -> bool:
        """A term a person can read as a cue: not only stopwords, not only digits."""
        term = self.terms[col]
        words = term.split()
        return not _DIGITS.match(term) and not all(w in _FUNCTION_WORDS or len(w) < 3 for w in words)


def distinctive_terms(
    space: TfidfSpace, rows: Csr, inside: np.ndarray, outside: np.ndarray, top: int = 8, min_share: float = 0.05
) -> list[str]:
    """Terms whose mean TF-IDF weight is highest inside a group relative to the rest, present in >= min_share of it."""
    if inside.size == 0:
        return []
    mean_in = rows.column_sums(inside) / inside.size
    mean_out = rows.column_sums(outside) / max(outside.size, 1) if outside.size else 0.0
    df_in = rows.column_df(inside)
    score = mean_in - mean_out
    candidates = np.flatnonzero((df_in >= max(2, math.ceil(min_share * inside.size))) & (score > 0))
    ranked = candidates[np.lexsort((candidates, -score[candidates]))]
    picked: list[str] = []
    for col in ranked:
        if not space.readable(int(col)):
            continue
        term = space.terms[int(col)]
        if any(term in p.split() or p in term.split() for p in picked if " " in p or " " in term):
            continue  # a bigram and its own word say the same thing twice
        picked.append(term)
        if len(picked) == top:
            break
    return picked


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 40, spherical: bool = False) -> np.ndarray:
    """Seeded k-means++ then Lloyd; returns a label per row (clusters renumbered by first appearance)."""
    n = x.shape[0]
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    x = x.astype(np.float64, copy=False)
    sq = (x * x).sum(axis=1)
    centres = [x[int(rng.integers(n))]]
    dist = np.maximum(sq - 2 * x @ centres[0] + centres[0] @ centres[0], 0.0)
    for _ in range(1, k):
        total = dist.sum()
        pick = int(rng.choice(n, p=dist / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[pick])
        dist = np.minimum(dist, np.maximum(sq - 2 * x @ x[pick] + x[pick] @ x[pick], 0.0))
    c = np.array(centres)
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        d2 = sq[:, None] - 2 * x @ c.T + (c * c).sum(axis=1)[None, :]
        new = np.argmin(d2, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():
                c[j] = x[members].mean(axis=0)
                if spherical:
                    c[j] /= max(float(np.linalg.norm(c[j])), 1e-12)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(labels.max() + 1, dtype=np.int64)
    remap[np.unique(labels)[order]] = np.arange(order.size)
    return remap[labels]


def reduce_svd(rows: Csr, dims: int, min_df: int = 2, seed: int = 0, max_cols: int = 2048) -> np.ndarray:
    """Rows projected on their top singular directions (randomised SVD, seeded), unit length.

    Only columns with df >= min_df in these rows (at most `max_cols`, the most frequent) enter, so the dense
    block stays small: a category of 500 queries is a 500 x 2048 matrix.
    """
    df = rows.column_df()
    cols = np.flatnonzero(df >= min_df)
    if cols.size == 0:
        return np.zeros((rows.n_rows, 1))
    if cols.size > max_cols:
        cols = np.sort(cols[np.argsort(-df[cols], kind="stable")[:max_cols]])
    a = rows.dense(cols).astype(np.float64)
    k = min(dims, *a.shape)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(a @ rng.standard_normal((a.shape[1], min(k + 10, a.shape[1]))))
    q, _ = np.linalg.qr(a @ (a.T @ q))  # one power iteration sharpens a slowly decaying TF-IDF spectrum
    b = q.T @ a  # A ~ Q B; B's left singular vectors from its small Gram matrix (cheaper than an SVD of B)
    eig, vecs = np.linalg.eigh(b @ b.T)
    order = np.argsort(-eig, kind="stable")[:k]
    reduced = (q @ vecs[:, order]) * np.sqrt(np.maximum(eig[order], 0.0))
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    return reduced / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------------------------------------- embeddings


class CachedEmbedder:
    """An embedder that looks vectors up by text hash first, so a text always gets the very same vector."""

    def __init__(self, embedder: Embedder, cache: VectorCache | None = None) -> None:
        self.embedder = embedder
        self.cache: VectorCache = cache if cache is not None else InMemoryVectorCache()
        self.computed = 0

    @property
    def model_name(self) -> str:
        return self.embedder.model_name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        keys = [text_hash(t, self.model_name) for t in texts]
        found = self.cache.get(list(dict.fromkeys(keys)))
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            text_of = dict(zip(keys, texts, strict=True))
            fresh = self.embedder.encode([text_of[k] for k in missing])
            new = {k: fresh[i] for i, k in enumerate(missing)}
            self.cache.put(new)
            found.update(new)
            self.computed += len(missing)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            out[i] = found[key]
        return out


class NpzVectorCache:
    """A VectorCache in one .npz file (hashes + float32 matrix): for benchmarks and repeated offline runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._store: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path) as data:
                for key, vec in zip(data["hashes"].tolist(), data["vectors"], strict=True):
                    self._store[str(key)] = vec.astype(np.float32)

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        return {h: self._store[h] for h in hashes if h in self._store}

    def put(self, vectors: Mapping[str, np.ndarray]) -> None:
        for key, vec in vectors.items():
            self._store[key] = np.asarray(vec, dtype=np.float32)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self._store)
        matrix = np.stack([self._store[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
        np.savez(self.path, hashes=np.array(keys), vectors=matrix)

    def __len__(self) -> int:
        return len(self._store)
