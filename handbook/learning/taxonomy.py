"""The learned taxonomy: categories (depth 1) with optional leaf skills (depth 2), each owning prototypes.

A prototype is a micro-cluster of training queries (its members) with a centroid in the labeller's feature
space. Skills never own queries directly: they own prototypes, so merging or splitting a skill is a change of
ownership and the labeller and profile are rebuilt from it (nothing is patched, nothing counted twice).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from skillorchestra.handbook.models import ID_MAX

DEFAULT_MODE = "answer"


@dataclass
class Prototypes:
    members: list[np.ndarray]  # training task rows of each prototype
    modes: list[str]
    vectors: np.ndarray  # (P, D) unit centroids in the labeller's feature space
    of_task: np.ndarray  # (N_train,) the prototype each training task belongs to


@dataclass(frozen=True)
class Leaf:
    id: str
    protos: tuple[int, ...]


@dataclass(frozen=True)
class Category:
    id: str
    mode: str
    labels: tuple[str, ...]  # task families it covers ('' entries: found by clustering)
    protos: tuple[int, ...]  # all prototypes of the category (its leaves' union when it has leaves)
    leaves: tuple[Leaf, ...] = ()


@dataclass(frozen=True)
class SkillSpec:
    id: str
    mode: str
    parent: str | None
    protos: tuple[int, ...]  # empty for a category that has leaves (it is labelled through them)
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    categories: tuple[Category, ...] = field(default_factory=tuple)

    def skills(self, depth: int) -> list[SkillSpec]:
        """The skill set at a depth: 0 none, 1 categories only, 2 categories with their leaves."""
        if depth <= 0:
            return []
        out: list[SkillSpec] = []
        for cat in self.categories:
            if depth == 1 or not cat.leaves:
                out.append(SkillSpec(cat.id, cat.mode, None, cat.protos, cat.labels))
                continue
            out.append(SkillSpec(cat.id, cat.mode, None, (), cat.labels))
            out.extend(SkillSpec(leaf.id, cat.mode, cat.id, leaf.protos, cat.labels) for leaf in cat.leaves)
        return out

    @property
    def max_depth(self) -> int:
        if not self.categories:
            return 0
        return 2 if any(c.leaves for c in self.categories) else 1

    def category(self, category_id: str) -> Category:
        return next(c for c in self.categories if c.id == category_id)

    def replace_category(self, old_id: str, new: Sequence[Category]) -> Taxonomy:
        cats: list[Category] = []
        for cat in self.categories:
            cats.extend(new if cat.id == old_id else [cat])
        return Taxonomy(tuple(cats))

    def without(self, ids: Iterable[str]) -> Taxonomy:
        drop = set(ids)
        return Taxonomy(tuple(c for c in self.categories if c.id not in drop))

    def all_ids(self) -> set[str]:
        return {c.id for c in self.categories} | {leaf.id for c in self.categories for leaf in c.leaves}

    def signature(self, depth: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple(sorted((s.id, s.protos) for s in self.skills(depth)))

    def problems(self, n_prototypes: int) -> list[str]:
        """The broken invariants, readably: unique ids, a category with leaves owns exactly their prototypes, and
        each of the `n_prototypes` prototypes is owned by exactly one skill."""
        out: list[str] = []
        ids = [c.id for c in self.categories] + [leaf.id for c in self.categories for leaf in c.leaves]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            out.append(f"ids used twice: {dupes}")
        for cat in self.categories:
            if not cat.leaves:
                continue
            union = {p for leaf in cat.leaves for p in leaf.protos}
            if missing := sorted(set(cat.protos) - union):
                out.append(f"category {cat.id} owns prototypes {missing} that none of its leaves owns")
            if extra := sorted(union - set(cat.protos)):
                out.append(f"leaves of category {cat.id} own prototypes {extra} the category does not")
        out.extend(ownership_problems(self.skills(2), n_prototypes))
        return out

    def check(self, n_prototypes: int) -> None:
        """Raise ValueError naming every broken invariant (a bug in whatever built this taxonomy)."""
        if found := self.problems(n_prototypes):
            raise ValueError("broken taxonomy: " + "; ".join(found))


def ownership_problems(specs: Iterable[SkillSpec], n_prototypes: int) -> list[str]:
    """Prototypes owned by no skill, by several, or out of range (a labeller needs exactly one owner for each)."""
    count = np.zeros(n_prototypes, dtype=np.int64)
    outside: set[int] = set()
    for spec in specs:
        for p in spec.protos:
            if 0 <= p < n_prototypes:
                count[p] += 1
            else:
                outside.add(p)
    out = []
    if orphans := np.flatnonzero(count == 0).tolist():
        out.append(f"prototypes {orphans} are owned by no skill")
    if shared := np.flatnonzero(count > 1).tolist():
        out.append(f"prototypes {shared} are owned by several skills")
    if outside:
        out.append(f"prototypes {sorted(outside)} do not exist (there are {n_prototypes})")
    return out


def with_leaves(cat: Category, leaves: Sequence[Leaf]) -> Category:
    """A category whose leaves are `leaves` (one leaf or none means the category is itself the skill)."""
    if len(leaves) <= 1:
        return replace(cat, leaves=())
    return replace(cat, leaves=tuple(leaves))


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str, limit: int = 48) -> str:
    """A readable id fragment: lowercase words joined by '_' (no dots, which separate category and skill)."""
    return _SLUG.sub("_", text.lower()).strip("_")[:limit] or "skill"


def unique_id(base: str, taken: set[str]) -> str:
    base = base[: ID_MAX - 4]
    candidate, k = base, 2
    while candidate in taken:
        candidate, k = f"{base}-{k}", k + 1
    taken.add(candidate)
    return candidate
