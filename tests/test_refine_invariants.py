"""Refinement keeps the taxonomy invariant: every prototype is owned by exactly one skill, and a category with
leaves owns exactly its leaves' prototypes. Hand-made prototypes and outcomes reproduce the sequences that once
left a prototype owned by no skill (a KeyError deep in the labeller)."""

from __future__ import annotations

import numpy as np
import pytest

from skillorchestra.handbook.learning.candidates import Evaluator, Split
from skillorchestra.handbook.learning.discovery import Corpus
from skillorchestra.handbook.learning.features import TfidfSpace
from skillorchestra.handbook.learning.grouping import GroupingParams
from skillorchestra.handbook.learning.labeller import SkillLabeller
from skillorchestra.handbook.learning.profile import Outcomes
from skillorchestra.handbook.learning.refine import RefineParams, _splits, merge_categories
from skillorchestra.handbook.learning.taxonomy import Category, Leaf, Prototypes, Taxonomy
from skillorchestra.handbook.models import ID_MAX, Agent, Mode
from skillorchestra.handbook.traces import AgentOutcome, TraceTask

N_PER = 30  # tasks per non-empty prototype


def _tasks(n_protos: int, empty: set[int], prefix: str) -> tuple[list[TraceTask], np.ndarray]:
    """N_PER tasks per non-empty prototype: agent 'x' solves even prototypes, 'y' odd ones; their prototype rows."""
    tasks, of_task = [], []
    for p in range(n_protos):
        if p in empty:
            continue
        for i in range(N_PER):
            good = "x" if p % 2 == 0 else "y"
            outcomes = {a: AgentOutcome(score=float(a == good), cost_usd=0.001) for a in ("x", "y")}
            tasks.append(TraceTask(id=f"{prefix}{p}-{i}", query=f"topic{p} word{p} item {i}", outcomes=outcomes))
            of_task.append(p)
    return tasks, np.array(of_task, dtype=np.int64)


def _evaluator(taxonomy: Taxonomy, n_protos: int, empty: set[int] = frozenset()) -> tuple[Evaluator, Corpus]:
    """A real evaluator over orthogonal prototypes; each task sits on its own prototype's axis."""
    vectors = np.eye(n_protos, dtype=np.float32)
    owner = {p: c.id for c in taxonomy.categories for p in c.protos}
    base = SkillLabeller(
        "minilm", vectors, [owner[p] for p in range(n_protos)], {c.id: c.mode for c in taxonomy.categories}, 0.1
    )
    train, of_task = _tasks(n_protos, empty, "t")
    val, val_of = _tasks(n_protos, empty, "v")
    members = [np.flatnonzero(of_task == p) for p in range(n_protos)]
    protos = Prototypes(members, ["answer"] * n_protos, vectors, of_task)
    outcomes = Outcomes.build(train, {}, ["x", "y"])

    def split(tasks: list[TraceTask], rows_of: np.ndarray) -> Split:
        sims = np.full((len(tasks), n_protos), 0.1) + 0.8 * np.eye(n_protos)[rows_of]
        return Split([t.id for t in tasks], [t.query for t in tasks], [None] * len(tasks),
                     Outcomes.build(tasks, {}, ["x", "y"]), sims)  # fmt: skip

    agents = [Agent(id="x"), Agent(id="y")]
    evaluator = Evaluator(
        base, protos, split(train, of_task), split(val, val_of), agents, [Mode(id="answer")], 0.0, 0.001, 2.0, 0
    )
    queries = [t.query for t in train]
    space = TfidfSpace.fit(queries, min_df=1)
    corpus = Corpus(queries, [None] * len(train), ["answer"] * len(train), outcomes, [outcomes.scores], space,
                    space.transform(queries), None, 0)  # fmt: skip
    return evaluator, corpus


def _owned(taxonomy: Taxonomy) -> list[int]:
    return sorted(p for s in taxonomy.skills(2) for p in s.protos)


def test_merging_into_a_category_whose_long_id_is_the_merged_id_keeps_every_prototype() -> None:
    long_id = "history_" + "x" * (ID_MAX // 2 - len("history_"))  # fills the merged id's budget on its own
    bio, history = Category("bio", "answer", ("bio",), (0, 1)), Category(long_id, "answer", ("h",), (2, 3))
    tax = Taxonomy((bio, history, Category("law", "answer", ("law",), (4,))))
    evaluator, _ = _evaluator(tax, 5)

    merged = merge_categories(tax, "bio", long_id, {"bio": 10, long_id: 50})  # the long one is bigger: named first

    cat, law = merged.categories
    assert cat.protos == (0, 1, 2, 3) and law.id == "law" and _owned(merged) == [0, 1, 2, 3, 4]
    assert cat.id not in {"bio", long_id} and len(cat.id) <= ID_MAX
    built = evaluator.evaluate("refined", 2, merged)  # was KeyError: 0 (the merged category had been dropped)
    assert sorted(built.labeller.skill_ids) == sorted([cat.id, "law"])


def test_splitting_a_skill_that_owns_a_prototype_without_tasks_keeps_that_prototype() -> None:
    # prototype 1 lost all its tasks to a failure-driven child (failures.apply moves rows, never prototypes)
    tax = Taxonomy((Category("c", "answer", ("c",), (0, 1, 2, 3)),))
    evaluator, corpus = _evaluator(tax, 4, empty={1})
    start = evaluator.evaluate("depth1", 1, tax)
    params = RefineParams(split=GroupingParams(z=1.5, min_n=20))

    proposals = _splits(start, corpus, evaluator.protos, params)

    assert [p[0] for p in proposals] == ["split"]
    refined = proposals[0][3](tax)
    (cat,) = refined.categories
    assert len(cat.leaves) == 2 and _owned(refined) == [0, 1, 2, 3]
    assert sorted(p for leaf in cat.leaves for p in leaf.protos) == list(cat.protos)
    built = evaluator.evaluate("refined", 2, refined)  # was KeyError: 1
    assert len(built.labeller.skill_ids) == 2


def test_a_broken_taxonomy_fails_loudly_naming_the_orphan_prototypes() -> None:
    good = Taxonomy((Category("c", "answer", ("c",), (0, 1, 2), (Leaf("c.a", (0,)), Leaf("c.b", (1, 2)))),))
    evaluator, _ = _evaluator(good, 3)
    broken = Taxonomy((Category("c", "answer", ("c",), (0, 1, 2), (Leaf("c.a", (0,)), Leaf("c.b", (1,)))),))

    good.check(3)
    with pytest.raises(ValueError, match=r"category c owns prototypes \[2\] that none of its leaves owns"):
        broken.check(3)
    with pytest.raises(ValueError, match=r"prototypes \[2\] are owned by no skill"):
        evaluator.evaluate("refined", 2, broken)
    with pytest.raises(ValueError, match=r"prototypes \[2\] are owned by no skill"):
        evaluator.labeller(broken.skills(2))
