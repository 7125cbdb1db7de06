"""Refinement: merge siblings that agents treat alike, drop a category's leaves where they do not pay, split skills
whose parts agents treat differently, and add child skills where routing fails tasks another agent solves
(failures.py).

Each proposal is applied to a copy of the taxonomy, re-labelled and re-profiled from the training tasks (so a
merged skill holds the sum of its parts' evidence and nothing is counted twice), replayed on the validation
split, and kept only if validation utility is not worse (merges and collapses: nor over the lambda panel where equal
at lambda),
better by at least one task (splits), or not worse at lambda and strictly better at lambda or over the lambda panel
(failure-driven children).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from skillorchestra.handbook.learning import failures as failure_moves
from skillorchestra.handbook.learning.candidates import Built, Evaluator
from skillorchestra.handbook.learning.discovery import Corpus, leaf_ids
from skillorchestra.handbook.learning.grouping import GroupingParams, group
from skillorchestra.handbook.learning.taxonomy import Category, Leaf, Prototypes, Taxonomy, unique_id, with_leaves
from skillorchestra.handbook.models import ID_MAX

EPS = 1e-12


@dataclass(frozen=True)
class RefineParams:
    rounds: int = 3
    merge_z: float = 1.96  # siblings merge when no agent's rates differ by this many posterior sds (95%)
    split: GroupingParams = field(default_factory=lambda: GroupingParams(z=1.5, min_n=20))
    min_split_gain: float = 1.0  # validation tasks' worth of utility a split must add
    # None: no failure-driven child skills
    failures: failure_moves.FailureParams | None = field(default_factory=failure_moves.FailureParams)


@dataclass
class Step:
    round: int
    action: str
    target: str
    accepted: bool
    utility_before: float
    utility_after: float
    detail: str = ""  # the evidence behind a failure-driven proposal
    panel_before: float | None = None  # mean utility over the lambda panel: what decides where lambda ties
    panel_after: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            k: (round(v, 6) if isinstance(v, float) else v)
            for k, v in self.__dict__.items()
            if v != "" and v is not None
        }


def _evidence(built: Built, corpus: Corpus) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw (successes, failures) per agent for each labelled skill and each category (sum of its leaves)."""
    y = corpus.outcomes.scores
    judged = ~np.isnan(y)
    s = built.train_weights.T @ np.where(judged, y, 0.0)
    f = built.train_weights.T @ np.where(judged, 1.0 - np.nan_to_num(y), 0.0)
    out = {skill: (s[j], f[j]) for j, skill in enumerate(built.labeller.skill_ids)}
    for cat in built.taxonomy.categories:
        if cat.leaves and all(leaf.id in out for leaf in cat.leaves):
            out[cat.id] = (
                sum(out[leaf.id][0] for leaf in cat.leaves),
                sum(out[leaf.id][1] for leaf in cat.leaves),
            )
    return out


def distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest standardised gap between two skills' Beta(1+s, 1+f) posteriors over agents."""
    (sa, fa), (sb, fb) = a, b
    ma, mb = (1 + sa) / (2 + sa + fa), (1 + sb) / (2 + sb + fb)
    va = ma * (1 - ma) / (3 + sa + fa)
    vb = mb * (1 - mb) / (3 + sb + fb)
    return float(np.max(np.abs(ma - mb) / np.sqrt(va + vb)))


def merge_leaves(tax: Taxonomy, cat_id: str, a: str, b: str, sizes: dict[str, int]) -> Taxonomy:
    cat = tax.category(cat_id)
    la, lb = (next(x for x in cat.leaves if x.id == i) for i in (a, b))
    keep, gone = (la, lb) if sizes.get(a, 0) >= sizes.get(b, 0) else (lb, la)
    merged = Leaf(keep.id, tuple(sorted(keep.protos + gone.protos)))
    leaves = [merged if x.id == keep.id else x for x in cat.leaves if x.id != gone.id]
    return tax.replace_category(cat_id, [with_leaves(cat, leaves)])


def merge_categories(tax: Taxonomy, a: str, b: str, sizes: dict[str, int]) -> Taxonomy:
    ca, cb = tax.category(a), tax.category(b)
    big, small = (ca, cb) if sizes.get(a, 0) >= sizes.get(b, 0) else (cb, ca)
    # the old category ids stay taken: "big+small" cut to ID_MAX // 2 is big's own id when that id is long, and
    # reusing b's id would make `.without([b])` drop the merged category (and stale proposals naming a or b apply)
    taken = tax.all_ids() - {leaf.id for leaf in ca.leaves + cb.leaves}
    new_id = unique_id(f"{big.id}+{small.id}"[: ID_MAX // 2], taken)
    leaves: list[Leaf] = []
    if big.leaves or small.leaves:
        for cat in (big, small):
            parts = cat.leaves or (Leaf(f"{cat.id}.{cat.id}", cat.protos),)
            for leaf in parts:
                suffix = leaf.id.split(".", 1)[1] if "." in leaf.id else leaf.id
                leaves.append(Leaf(unique_id(f"{new_id}.{suffix}", taken), leaf.protos))
    merged = Category(new_id, big.mode, big.labels + small.labels, tuple(sorted(big.protos + small.protos)))
    return tax.replace_category(a, [with_leaves(merged, leaves)]).without([b])


def split_skill(
    tax: Taxonomy, cat_id: str, leaf_id: str | None, groups: list[list[int]], protos: Prototypes, corpus: Corpus
) -> Taxonomy:
    """Replace a leaf (or a category without leaves) by one leaf per group of prototypes.

    Owned prototypes no group names (grouping skips prototypes left without training tasks, e.g. by a
    failure-driven child) go with the group of their most similar prototype: dropped, no skill would own them."""
    cat = tax.category(cat_id)
    owned = next((x.protos for x in cat.leaves if x.id == leaf_id), cat.protos) if leaf_id else cat.protos
    groups = _cover(groups, owned, protos.vectors)
    taken = tax.all_ids() - ({leaf_id} if leaf_id else set())
    rows = [np.concatenate([protos.members[p] for p in g]) for g in groups]
    ids = leaf_ids(corpus, cat_id, rows, taken)
    new = [Leaf(i, tuple(sorted(g))) for i, g in zip(ids, groups, strict=True)]
    leaves = [x for x in cat.leaves if x.id != leaf_id]
    position = next((k for k, x in enumerate(cat.leaves) if x.id == leaf_id), len(leaves))
    return tax.replace_category(cat_id, [with_leaves(cat, leaves[:position] + new + leaves[position:])])


def _cover(groups: list[list[int]], owned: tuple[int, ...], vectors: np.ndarray) -> list[list[int]]:
    """`groups` with every owned prototype they miss added to the group holding its most similar prototype."""
    named = {p for g in groups for p in g}
    if stale := sorted(named - set(owned)):
        raise ValueError(f"split groups name prototypes {stale} the skill does not own")
    out, v = [list(g) for g in groups], vectors.astype(np.float64)
    for p in (p for p in owned if p not in named):
        sims = [float(np.max(v[g] @ v[p])) for g in out]
        out[int(np.argmax(sims))].append(p)
    return [sorted(g) for g in out]


Proposal = tuple[str, str, set[str], Callable[[Taxonomy], Taxonomy]]  # action, target, ids it needs, apply


def _merges(built: Built, corpus: Corpus, params: RefineParams) -> list[Proposal]:
    tax = built.taxonomy
    ev = _evidence(built, corpus)
    sizes = {k: int(round(float((s + f).max()))) for k, (s, f) in ev.items()}
    found: list[tuple[float, Proposal]] = []
    apply: Callable[..., Taxonomy]  # each move binds its own ids as defaults: called with the taxonomy alone
    for cat in tax.categories:
        pairs = [
            (distance(ev[a.id], ev[b.id]), a.id, b.id)
            for i, a in enumerate(cat.leaves)
            for b in cat.leaves[i + 1 :]
            if a.id in ev and b.id in ev
        ]
        if pairs:
            d, a, b = min(pairs)
            if d < params.merge_z:
                apply = lambda t, c=cat.id, a=a, b=b: merge_leaves(t, c, a, b, sizes)  # noqa: E731
                found.append((d, ("merge leaves", f"{a} + {b}", {cat.id, a, b}, apply)))
    for cat in tax.categories:  # leaves that do not pay on validation go: the category becomes the skill again
        if cat.leaves:
            apply = lambda t, c=cat.id: t.replace_category(c, [with_leaves(t.category(c), [])])  # noqa: E731
            needed = {cat.id, *(leaf.id for leaf in cat.leaves)}
            found.append((math.inf, ("collapse leaves", cat.id, needed, apply)))
    cats = [c for c in tax.categories if c.id in ev]
    for i, ca in enumerate(cats):
        for cb in cats[i + 1 :]:
            if ca.mode == cb.mode and (d := distance(ev[ca.id], ev[cb.id])) < params.merge_z:
                apply = lambda t, a=ca.id, b=cb.id: merge_categories(t, a, b, sizes)  # noqa: E731
                found.append((d, ("merge categories", f"{ca.id} + {cb.id}", {ca.id, cb.id}, apply)))
    found.sort(key=lambda item: (item[0], item[1][1]))
    return [proposal for _, proposal in found]


def _splits(built: Built, corpus: Corpus, protos: Prototypes, params: RefineParams) -> list[Proposal]:
    found: list[Proposal] = []
    sims = protos.vectors.astype(np.float64) @ protos.vectors.T.astype(np.float64)
    for cat in built.taxonomy.categories:
        owners: list[tuple[str | None, tuple[int, ...]]] = [(x.id, x.protos) for x in cat.leaves]
        for leaf_id, owned in owners or [(None, cat.protos)]:
            if len(owned) < 2:
                continue
            members = [protos.members[p] for p in owned]
            groups = group(members, corpus.utilities, sims[np.ix_(owned, owned)], params.split)
            if len(groups) > 1:
                mapped = [[owned[a] for a in g] for g in groups]
                apply = lambda t, c=cat.id, leaf=leaf_id, g=mapped: split_skill(t, c, leaf, g, protos, corpus)  # noqa: E731
                found.append(("split", leaf_id or cat.id, {cat.id, leaf_id or cat.id}, apply))
    return found


def not_worse(trial: Built, current: Built) -> bool:
    """Validation utility at lambda not lower, and where equal, utility over the lambda panel not lower either."""
    if trial.utility < current.utility - EPS:
        return False
    return trial.utility > current.utility + EPS or trial.panel_utility > current.panel_utility - EPS


def better(trial: Built, current: Built) -> bool:
    """Not worse at lambda and strictly better at lambda or over the panel: a change that helps somewhere
    (accepting equals would let a merge and a failure child undo each other round after round)."""
    if trial.utility < current.utility - EPS:
        return False
    return trial.utility > current.utility + EPS or trial.panel_utility > current.panel_utility + EPS


def _panels(current: Built, trial: Built) -> tuple[float, float]:
    return current.panel_utility, trial.panel_utility


def _still_there(tax: Taxonomy, needed: set[str]) -> bool:
    return needed <= tax.all_ids()


def refine(
    start: Built,
    evaluator: Evaluator,
    corpus: Corpus,
    protos: Prototypes,
    params: RefineParams,
    on_round: Callable[[int, list[Step]], None] | None = None,
) -> tuple[Built, list[Step]]:
    """A few rounds of merges then splits, each checked on validation; returns the best handbook and the log.
    `on_round(number, log so far)` at the start of each round: on large data a round takes seconds."""
    current, log = start, list[Step]()
    cache = failure_moves.FeatureCache(evaluator)
    n_val = max(len(current.val.scores), 1)
    for number in range(1, params.rounds + 1):
        if on_round is not None:
            on_round(number, log)
        changed = False
        for kind in ("merge", "split"):
            proposals = (
                _merges(current, corpus, params) if kind == "merge" else _splits(current, corpus, protos, params)
            )
            for action, target, needed, apply in proposals:
                if not _still_there(current.taxonomy, needed):
                    continue  # an earlier change this round renamed or absorbed it: re-proposed next round
                trial = evaluator.evaluate("refined", 2, apply(current.taxonomy), current.labeller.temperature)
                if kind == "merge":
                    ok = not_worse(trial, current)
                else:
                    ok = trial.utility > current.utility + params.min_split_gain / n_val - 1e-12
                log.append(
                    Step(number, action, target, ok, current.utility, trial.utility, "", *_panels(current, trial))
                )
                if ok:
                    current, changed = replace(trial, name="refined"), True
        if params.failures is not None:
            current, added = _add_failure_skills(current, evaluator, corpus, params.failures, cache, number, log)
            changed = changed or added
        if not changed:
            break
    return current, log


def _add_failure_skills(
    current: Built,
    evaluator: Evaluator,
    corpus: Corpus,
    params: failure_moves.FailureParams,
    cache: failure_moves.FeatureCache,
    number: int,
    log: list[Step],
) -> tuple[Built, bool]:
    """Try each failure-driven child skill; keep it if it is `better` on validation, else roll back."""
    changed, touched = False, set()
    for proposal in failure_moves.propose(current, evaluator, corpus, cache, params):
        if proposal.category in touched or not _still_there(current.taxonomy, {proposal.category, proposal.skill}):
            continue  # its category changed this round: re-proposed next round from fresh failures
        snapshot = failure_moves._save(evaluator)  # noqa: SLF001 - apply() may fail half-way
        try:
            taxonomy, child, saved = failure_moves.apply(current, evaluator, corpus, cache, proposal, params)
        except KeyError as exc:  # its category was renamed by a merge earlier in this round: not applicable now
            failure_moves.restore(evaluator, snapshot)
            log.append(
                Step(
                    number,
                    "add failure skill",
                    proposal.skill,
                    False,
                    current.utility,
                    current.utility,
                    f"skipped: {exc} is no longer a skill of the base labeller",
                )
            )
            continue
        trial = evaluator.evaluate("refined", 2, taxonomy, current.labeller.temperature)
        ok = better(trial, current)
        target = f"{child} (from {proposal.skill}, routed to {proposal.better})"
        before, after = current.utility, trial.utility
        log.append(
            Step(number, "add failure skill", target, ok, before, after, proposal.detail(), *_panels(current, trial))
        )
        if ok:
            current, changed = replace(trial, name="refined"), True
            touched.add(proposal.category)
        else:
            failure_moves.restore(evaluator, saved)
    return current, changed
