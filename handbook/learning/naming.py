"""Readable skills: descriptions, indicators and examples a person can judge.

Indicators are the skill's most distinctive terms against its siblings; examples are the training queries
closest to its prototypes, one per prototype, the largest first; the description says what the tasks look like
and how the agents differ on them (from the profiled posteriors), because a skill only exists to explain a
difference between agents.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from skillorchestra.handbook.arrays import HandbookArrays
from skillorchestra.handbook.learning.discovery import Corpus
from skillorchestra.handbook.learning.features import distinctive_terms
from skillorchestra.handbook.learning.taxonomy import Prototypes, SkillSpec, Taxonomy
from skillorchestra.handbook.models import DESCRIPTION_MAX, Skill

EXAMPLE_CHARS = 160
_SPACE = re.compile(r"\s+")


def short(text: str, limit: int = EXAMPLE_CHARS) -> str:
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _rows(protos: Prototypes, ids: Sequence[int]) -> np.ndarray:
    return np.concatenate([protos.members[p] for p in ids] + [np.empty(0, np.int64)])


def _agents_line(arrays: HandbookArrays, col: int) -> str:
    mean = arrays.mean[:, col]
    order = np.argsort(-mean, kind="stable")
    best = ", ".join(f"{arrays.agent_ids[i]} {mean[i]:.0%}" for i in order[:2])
    worst = arrays.agent_ids[order[-1]]
    return f"strongest {best}; weakest {worst} {mean[order[-1]]:.0%}"


def describe(
    specs: Sequence[SkillSpec],
    taxonomy: Taxonomy,
    corpus: Corpus,
    protos: Prototypes,
    arrays: HandbookArrays,
    train_sims: np.ndarray,
) -> list[Skill]:
    """Skill objects with description, indicators and examples for a candidate's skill set."""
    cat_protos = {c.id: c.protos for c in taxonomy.categories}
    spec_by_id = {s.id: s for s in specs}
    out: list[Skill] = []
    for spec in specs:
        own = spec.protos or cat_protos.get(spec.id, ())
        rows = _rows(protos, own)
        if spec.parent is None:
            siblings = [s for s in specs if s.parent is None and s.mode == spec.mode and s.id != spec.id]
            other_ids = [p for s in siblings for p in (s.protos or cat_protos.get(s.id, ()))]
        else:
            siblings = [s for s in specs if s.parent == spec.parent and s.id != spec.id]
            other_ids = [p for s in siblings for p in s.protos]
        indicators = distinctive_terms(corpus.space, corpus.rows, rows, _rows(protos, other_ids), top=6)
        examples = _examples(protos, own, corpus, train_sims)
        col = arrays.column_of_skill(spec.id)
        n = int(round(float(arrays.evidence[:, col].max()))) if arrays.agent_ids else 0
        cues = ", ".join(f"'{t}'" for t in indicators[:4]) or "no distinctive wording"
        if spec.parent is None:
            families = [lab for lab in spec.labels if lab]
            what = (
                f"Tasks of the {', '.join(repr(f) for f in families)} famil{'y' if len(families) == 1 else 'ies'}"
                if families
                else "Tasks found by clustering similar queries"
            )
            text = f"{what} (evidence of ~{n} judged tasks); cues: {cues}. Agents: {_agents_line(arrays, col)}."
        else:
            parent_col = arrays.column_of_skill(spec.parent)
            best_here = arrays.agent_ids[int(np.argmax(arrays.mean[:, col]))]
            best_parent = arrays.agent_ids[int(np.argmax(arrays.mean[:, parent_col]))]
            contrast = (
                f"here {best_here} leads, while across {spec.parent} {best_parent} does"
                if best_here != best_parent
                else f"agents rank differently here than across {spec.parent}"
            )
            text = (
                f"Part of {spec.parent}: ~{n} judged tasks marked by {cues}; {contrast}. "
                f"Agents: {_agents_line(arrays, col)}."
            )
        out.append(
            Skill(
                id=spec.id,
                mode=spec.mode,
                parent_id=spec.parent if spec.parent in spec_by_id else None,
                description=text[:DESCRIPTION_MAX],
                indicators=indicators,
                examples=examples,
            )
        )
    return out


def _examples(protos: Prototypes, own: Sequence[int], corpus: Corpus, sims: np.ndarray, k: int = 3) -> list[str]:
    """Up to k member queries that show what the skill holds: the query closest to each of its prototypes in turn,
    the largest prototype first, skipping one that reads as a copy of a query already picked (the same words
    with other numbers). QA: taking the k closest queries of the whole skill showed three copies of one tight
    prototype's template ("... in French? (case 231)", "(case 287)") on a skill whose cues said 'dollars'."""
    by_size = sorted(own, key=lambda p: -protos.members[p].size)  # stable: ties keep the skill's order
    queues = []
    for p in by_size:
        rows = protos.members[p]
        closeness = np.nan_to_num(sims[rows, p], nan=-1.0)
        queues.append(list(rows[np.argsort(-closeness, kind="stable")]))
    picked: list[str] = []
    seen: set[str] = set()
    while len(picked) < k and any(queues):
        for queue in queues:
            while queue:
                text = short(corpus.queries[int(queue.pop(0))])
                if text and _shape(text) not in seen:
                    picked.append(text)
                    seen.add(_shape(text))
                    break
            if len(picked) == k:
                break
    return picked


_DIGITS = re.compile(r"\d+")


def _shape(text: str) -> str:
    """A query with its numbers blanked: templated copies ("case 231", "case 287") read as one."""
    return _DIGITS.sub("#", text.casefold())
