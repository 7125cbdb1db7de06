"""A step's skill demands: its text and mode checked, its skills validated or inferred, and read as columns of the
routing arrays at the depth stored for its orchestrator.

consult and route both read a step this way, so it is one set of plain functions that neither owns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from skillorchestra.handbook.arrays import MODE_PREFIX, ROOT_SKILL, HandbookArrays
from skillorchestra.handbook.errors import InvalidInput, NotFound, known_hint
from skillorchestra.handbook.inference import Matcher, live_demands
from skillorchestra.handbook.models import TEXT_MAX, SkillDemand, visible
from skillorchestra.handbook.request_types import RouteRequest
from skillorchestra.handbook.store import HandbookStore

INFERRED_SKILLS = 3


def check_text(text: str) -> None:
    if not visible(text):  # spaces, NULs or zero-width characters alone describe no step
        raise InvalidInput("text", text, "a non-empty description of the step")
    if len(text) > TEXT_MAX:
        raise InvalidInput("text", f"<{len(text)} characters>", f"at most {TEXT_MAX} characters")


def check_mode(arrays: HandbookArrays, mode: str | None) -> None:
    if mode is not None and mode not in arrays.mode_index:
        raise NotFound("mode", mode, arrays.mode_ids)


def validate_demands(arrays: HandbookArrays, demands: Sequence[SkillDemand]) -> list[tuple[str, float]]:
    """Known skill ids, non-negative weights with a positive sum; returns weights normalised to 1."""
    for position, demand in enumerate(demands):
        field = f"skills[{position}].skill_id"
        if demand.skill_id == ROOT_SKILL:  # shown in consult's rows and contributions, so a model tries it
            raise InvalidInput(
                field, demand.skill_id, "a skill id: '*' is an agent's overall record (leave skills out)"
            )
        if demand.skill_id not in arrays.skill_index and demand.skill_id in arrays.mode_index:
            raise InvalidInput(field, demand.skill_id, f"a skill id: {demand.skill_id!r} is a mode (pass it as mode)")
        if demand.skill_id not in arrays.skill_index:
            raise NotFound(f"skill ({field})", demand.skill_id, arrays.skill_ids)
        if not math.isfinite(demand.weight) or demand.weight < 0:
            raise InvalidInput(f"skills[{position}].weight", demand.weight, "a finite number >= 0")
    top = max((demand.weight for demand in demands), default=0.0)
    if top <= 0:
        raise InvalidInput("skills", [d.model_dump() for d in demands], "weights that sum to a positive number")
    merged: dict[str, float] = {}
    for demand in demands:  # scaled by the largest first: weights near the float maximum would sum to inf
        merged[demand.skill_id] = merged.get(demand.skill_id, 0.0) + demand.weight / top
    total = sum(merged.values())
    return [(skill, weight / total) for skill, weight in merged.items() if weight > 0]


def step_demands(
    matcher: Matcher, arrays: HandbookArrays, text: str, skills: Sequence[SkillDemand] | None, mode: str | None
) -> tuple[list[tuple[str, float]], str]:
    """The skills the caller gave, validated, else those inferred from the text; and where they came from."""
    if skills is not None:  # given, even empty: validated (an empty list has no positive weight)
        return validate_demands(arrays, skills), "client"
    return live_demands(matcher, text, mode, INFERRED_SKILLS, arrays.skill_index)


def columns(
    arrays: HandbookArrays, demands: list[tuple[str, float]], mode: str | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if demands:
        cols = np.array([arrays.column_of_skill(s) for s, _ in demands])
        return cols, np.array([w for _, w in demands]), [s for s, _ in demands]
    if mode is not None:
        # labelled as record_outcome's `updated` and the export name the record: "@<mode>" (review: "mode:M")
        return np.array([arrays.column_of_mode(mode)]), np.ones(1), [f"{MODE_PREFIX}{mode}"]
    return np.array([arrays.root_column]), np.ones(1), [ROOT_SKILL]


def granular(
    store: HandbookStore, arrays: HandbookArrays, matched: list[tuple[str, float]], request: RouteRequest
) -> tuple[list[tuple[str, float]], str | None, str | None]:
    """route_step's skills at its orchestrator's depth: only inferred ones (skills the caller names are its own
    choice), with the mode the step is read in and the granularity's wording (None: no orchestrator named)."""
    if request.orchestrator is None:
        return matched, request.mode, None
    if request.skills is not None:
        return matched, request.mode, "as given (skills named by the caller are not coarsened)"
    return at_depth(store, arrays, matched, request.mode, request.orchestrator)


def at_depth(
    store: HandbookStore,
    arrays: HandbookArrays,
    demands: list[tuple[str, float]],
    mode: str | None,
    orchestrator: str | None,
) -> tuple[list[tuple[str, float]], str | None, str]:
    """The step's skills at the depth stored for this orchestrator, the mode the step is then read in, and the
    granularity's wording. Depth 0 reads the record of the step's mode (the one named, else the one most of its
    skills' weight is in), not the agents' overall one (QA: it showed '*' rows and no mode insights)."""
    coarse, granularity = _coarsen(store, arrays, demands, orchestrator)
    if coarse or mode or not granularity.startswith("depth 0"):
        return coarse, mode, granularity
    heaviest = arrays.heaviest_modes(demands)
    if len(heaviest) != 1:  # no skill matched, or modes tied: the agents' overall record (review: said "mode level")
        return [], None, f"{granularity.removesuffix(' (mode level)')} (no single mode found: agent level)"
    return [], next(iter(heaviest)), granularity


def _coarsen(
    store: HandbookStore, arrays: HandbookArrays, demands: list[tuple[str, float]], orchestrator: str | None
) -> tuple[list[tuple[str, float]], str]:
    """Map skills to their ancestors at the depth selected for this orchestrator (if one was stored)."""
    if orchestrator is None:
        return demands, "full"
    selections = store.selections()
    if orchestrator not in selections:
        hint = known_hint(orchestrator, list(selections)) if selections else "the handbook stores none"
        return demands, f"full (no selection stored for {orchestrator!r}; {hint})"
    depth = selections[orchestrator]
    if depth <= 0:
        return [], f"depth 0 for {orchestrator!r} (mode level)"
    structure = arrays.structure  # the arrays' own tree (cycles already broken): no map of every skill a step
    merged: dict[str, float] = {}
    for skill_id, weight in demands:
        ancestor = arrays.skill_ids[structure.ancestor_at(arrays.skill_index[skill_id], depth)]
        merged[ancestor] = merged.get(ancestor, 0.0) + weight
    wording = f"depth {depth} for {orchestrator!r}"
    if depth > structure.levels:  # kept from an older tree, or chosen by hand (transfer QA: it said nothing)
        wording += f" (full: no skill sits deeper than {structure.levels})"
    return list(merged.items()), wording


def source_at_level(mode: str | None, source: str) -> str:
    """The skills_source of a step no skill was found for, keeping why the matcher found none ("agent level
    (semantic model still loading)"; QA: it read "agent level" while the README promised the loading note)."""
    level = "mode level" if mode else "agent level"
    return f"{level} {source[source.index('(') :]}" if "(" in source else level
