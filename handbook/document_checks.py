"""Referential checks of a handbook document that its pydantic schema cannot make (unique ids, known modes and
parents, no parent cycles, evidence rows naming known agents and skills, a labeller that works), run before a
document is written: an import or a learned version either fits whole or is refused naming the field."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from skillorchestra.handbook.arrays import MODE_PREFIX, ROOT_SKILL
from skillorchestra.handbook.errors import InvalidInput, NotFound
from skillorchestra.handbook.models import (
    MAX_EVIDENCE,
    MAX_SECONDS,
    MAX_TOKENS,
    MAX_USD,
    Agent,
    Competence,
    CostStats,
    HandbookDocument,
    Mode,
    Skill,
    addressable,
    control_characters,
    plain_text,
)

MINILM_DIM = 384  # all-MiniLM-L6-v2's vectors: the width of a MiniLM labeller's prototypes


def check_document(document: HandbookDocument, live: HandbookDocument | None = None, *, texts: bool = True) -> None:
    """Referential checks the pydantic schema cannot make; raised before anything is written. `live` is the
    handbook the document replaces: ids and texts it already holds are not refused by the rules for new ones
    (check_entering), so a learned version keeping the live agents passes on a file older than those rules.
    texts=False leaves texts unchecked, for a learned version (its examples are task texts: one real training query
    holds U+0085) and an import (the export of a file older than the text rules must import back); texts are
    checked where a client edits them, and printed inert (`handbook show`)."""
    skill_ids = [s.id for s in document.skills]
    agent_ids = [a.id for a in document.agents]
    entities: tuple[tuple[str, Sequence[Mode | Skill | Agent], Sequence[Mode | Skill | Agent]], ...] = (
        ("skills", document.skills, live.skills if live else []),
        ("agents", document.agents, live.agents if live else []),
        ("modes", document.modes, live.modes if live else []),
    )
    for kind, items, held in entities:
        stored = {item.id: item for item in held}
        seen: set[str] = set()
        for position, item in enumerate(items):  # the row's place in the file, as a reader finds it (fuzz QA)
            if item.id in seen:
                raise InvalidInput(f"{kind}[{position}].id", item.id, "unique ids")
            seen.add(item.id)
            where = f"{kind}[{_label(item.id)}]."
            check_entering(item, stored.get(item.id), where, id_field=f"{kind}[{position}].id", texts=texts)
    if texts and document.description != (live.description if live else ""):
        _check(plain_text, "description", document.description)
    listed = {m.id for m in document.modes}
    for skill in document.skills:  # a skill's mode is created, unless it reads as a typo of a listed one (QA)
        close = difflib.get_close_matches(skill.mode, sorted(listed), n=1, cutoff=0.8) if listed else []
        if skill.mode not in listed and close:
            raise InvalidInput(
                f"skills[{_label(skill.id)}].mode", skill.mode, f"{close[0]!r}, a mode the document lists (misspelt?)"
            )
    mode_ids = listed | {s.mode for s in document.skills}
    for agent in document.agents:
        unknown = [m for m in agent.modes if m not in mode_ids]
        if unknown:
            raise InvalidInput(
                f"agents[{agent.id}].modes",
                unknown,
                f"modes the document has ({', '.join(sorted(mode_ids)) or 'none'})",
            )
    known_skills = set(skill_ids) | {ROOT_SKILL} | {f"{MODE_PREFIX}{m}" for m in mode_ids}
    parents = {s.id: s.parent_id for s in document.skills}
    mode_of = {s.id: s.mode for s in document.skills}
    for skill in document.skills:
        if skill.id == ROOT_SKILL or skill.id.startswith(MODE_PREFIX):
            raise InvalidInput(
                "skills[].id",
                skill.id,
                f"an id that is not {ROOT_SKILL!r} and does not start with {MODE_PREFIX!r} (reserved)",
            )
        if skill.parent_id is not None and skill.parent_id not in parents:  # naming the skill that names it (QA)
            raise NotFound(f"parent skill (skills[{skill.id}].parent_id)", skill.parent_id, skill_ids)
        if skill.parent_id is not None and skill.mode != mode_of[skill.parent_id]:
            raise InvalidInput(
                f"skills[{skill.id}].mode",
                skill.mode,
                f"{mode_of[skill.parent_id]!r}, the mode of its parent skill {skill.parent_id!r}",
            )
        seen, cursor = {skill.id}, skill.parent_id
        while cursor is not None:
            if cursor in seen:
                raise InvalidInput(f"skills[{skill.id}].parent_id", skill.parent_id, "a parent chain without a cycle")
            seen.add(cursor)
            cursor = parents.get(cursor)
    for section, rows in (("competence", document.competence), ("cost", document.cost)):
        _check_pairs(section, rows, set(agent_ids), known_skills)
    if document.length_effect is not None:
        for agent_id in document.length_effect.slopes:
            if agent_id not in agent_ids:
                raise NotFound("agent in length_effect.slopes", agent_id, agent_ids)
    if document.ci_inflation is not None:  # an agent added later under such a name would start widened (review)
        for agent_id in document.ci_inflation.evidence:
            if agent_id not in agent_ids:
                raise NotFound("agent in ci_inflation.evidence", agent_id, agent_ids)
    if document.labeller is not None:
        _check_labeller(document.labeller, set(skill_ids))


def check_entering(
    entity: Mode | Skill | Agent,
    stored: Mode | Skill | Agent | None,
    where: str = "",
    *,
    id_field: str = "id",
    texts: bool = True,
) -> None:
    """Refuse what a write would add to the handbook that cannot be addressed or shown safely (models.addressable,
    models.plain_text): a new entity's id, a skill's new mode (storing the skill creates it), and texts other
    than those `stored` (the entity as the file holds it) already has. What the file holds passes, so a handbook
    written before these rules still opens, and its entities stay editable. Fields are named `where` + field."""
    if stored is None:
        _check(addressable, id_field, entity.id)
    if isinstance(entity, Skill) and (stored is None or entity.mode != getattr(stored, "mode", None)):
        _check(addressable, f"{where}mode", entity.mode)
    if not texts:
        return
    if stored is None or entity.description != stored.description:
        _check(plain_text, f"{where}description", entity.description)
    for name in ("insights", "indicators", "examples"):
        items: list[str] = getattr(entity, name, [])
        held = set(getattr(stored, name, []))
        for index, item in enumerate(items):
            if item not in held:
                _check(plain_text, f"{where}{name}[{index}]", item)


def _check(rule: Callable[[str], str], field: str, value: str) -> None:
    try:
        rule(value)
    except ValueError as exc:
        raise InvalidInput(field, value, str(exc)) from None


def _label(entity_id: str) -> str:
    """An id as a field name shows it: quoted and escaped when it holds control characters (an older file's)."""
    return repr(entity_id) if control_characters(entity_id) else entity_id


def _check_labeller(raw: dict[str, Any], skill_ids: set[str]) -> None:
    """A learned labeller must load, name the document's skills and (TF-IDF: no model needed) answer a step:
    a damaged one would make the server fall back to the lexical matcher and route differently, with a warning
    only in its log."""
    from skillorchestra.handbook.embedding import MODEL_NAME  # numpy: only for a document that has a labeller
    from skillorchestra.handbook.learning.labeller import SkillLabeller

    try:
        labeller = SkillLabeller.from_json(raw)
        if labeller.kind == "tfidf":
            labeller.match("a step to route", None, 1)
        elif labeller.model_name == MODEL_NAME and labeller.prototypes.shape[1] != MINILM_DIM:  # no model loaded
            raise ValueError(f"prototypes of width {labeller.prototypes.shape[1]}, not MiniLM's {MINILM_DIM}")
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        shown = f"{raw.get('kind')!r} labeller"
        raise InvalidInput("labeller", shown, f"a labeller written by skillorchestra learn ({exc})") from None
    # Skills deleted since it was learned are fine: routing drops their share of a step (an export after a
    # delete_skill must import). A labeller that names none of the document's skills belongs to another handbook.
    if labeller.skill_ids and not set(labeller.skill_ids) & skill_ids:
        raise InvalidInput("labeller.skills", sorted(labeller.skill_ids)[:5], "skills the document has (it names none)")


EVIDENCE_BOUNDS = {"alpha": MAX_EVIDENCE, "beta": MAX_EVIDENCE}
# a mean of recorded figures is within the bound of one figure; m2 sums squared deviations of up to MAX_EVIDENCE calls
COST_BOUNDS = {
    **{name: MAX_EVIDENCE for name in ("n", "n_step_tokens", "n_prompt_tokens", "n_completion_tokens", "n_latency_s")},
    "mean_cost_usd": MAX_USD,
    "m2_cost": MAX_EVIDENCE * MAX_USD**2,
    **{name: float(MAX_TOKENS) for name in ("mean_prompt_tokens", "mean_completion_tokens", "mean_step_tokens")},
    "mean_latency_s": MAX_SECONDS,
}


def _check_pairs(field: str, rows: Sequence[Competence | CostStats], agents: set[str], skills: set[str]) -> None:
    seen: set[tuple[str, str]] = set()
    for position, row in enumerate(rows):  # the row's place in the file, as a reader finds it (QA)
        if row.agent_id not in agents:
            raise NotFound(f"agent ({field}[{position}].agent_id)", row.agent_id, agents)
        if row.skill_id not in skills:
            raise NotFound(f"skill ({field}[{position}].skill_id)", row.skill_id, skills)
        # QA: an imported 1e160 overflowed the posterior's variance to NaN, and every route over it failed; a cost of
        # 1e7 made c_ref so large that lambda no longer counted (fuzz QA). The bounds are those of what a tool may
        # record, checked where a document enters, so a file holding such a row still opens to be mended
        for name, bound in (EVIDENCE_BOUNDS if isinstance(row, Competence) else COST_BOUNDS).items():
            if getattr(row, name) > bound:
                raise InvalidInput(f"{field}[{position}].{name}", getattr(row, name), f"at most {bound:g}")
        pair = (row.agent_id, row.skill_id)
        if pair in seen:  # the store's key: SQLite would refuse it as if the database were broken
            raise InvalidInput(f"{field}[{row.agent_id}, {row.skill_id}]", "a second row", "one row per (agent, skill)")
        seen.add(pair)
