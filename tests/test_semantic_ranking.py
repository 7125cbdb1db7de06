"""The semantic scorer ranks skills by one lexsort on (cosine, skill id): the order the Python sort gave."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skillorchestra.handbook.embedding import SemanticScorer


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
