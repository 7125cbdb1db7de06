"""Skill examples show what a skill holds: one query per prototype, the largest first, no templated copies."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from skillorchestra.handbook.learning.naming import _examples
from skillorchestra.handbook.learning.taxonomy import Prototypes


def test_examples_take_each_prototype_in_turn_largest_first_and_skip_templated_copies() -> None:
    queries = [
        "How do you say 'train station' in French? (case 231)",  # a tight template: the closest rows of all
        "How do you say 'train station' in French? (case 287)",
        "Alice has 46 books and buys 17 more. How many now?",
        "A pen costs 3 dollars; how much do 7 pens cost?",
        "Bob reads 12 pages a day. How many pages in a week?",
        "Carol has 5 coins and finds 2. How many coins?",
    ]
    members = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    sims = np.zeros((len(queries), 2))
    sims[[0, 1], 0] = [0.99, 0.98]
    sims[[2, 3, 4, 5], 1] = [0.6, 0.7, 0.5, 0.4]
    protos = Prototypes(
        members=members, modes=["answer", "answer"], vectors=np.eye(2), of_task=np.array([0, 0, 1, 1, 1, 1])
    )
    corpus = SimpleNamespace(queries=queries)

    picked = _examples(protos, [0, 1], corpus, sims)  # type: ignore[arg-type]

    # the larger prototype's closest query first, then the template's once, then the larger one's next
    assert picked == [queries[3], queries[0], queries[2]]
    assert _examples(protos, [0], corpus, sims, k=3) == [queries[0]]  # a copy with another number is no example
    assert _examples(protos, [], corpus, sims) == []
