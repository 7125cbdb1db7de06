"""The handbook's agents, skills and modes: added, changed, deleted and listed, each edit checked in its write.

An edit names only what it changes: read, merged and written in one transaction, so two clients editing different
fields of one agent at once both land (a read outside it would let the later write undo the other). Every edit's
checks (a parent that exists, no children left behind, no cycle) run in its write transaction too: checked outside
it, a child added while its parent was deleted outlived the parent.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from skillorchestra.handbook.arrays import ROOT_SKILL
from skillorchestra.handbook.errors import InvalidInput, NotFound, first_problem
from skillorchestra.handbook.handbook_base import HandbookBase
from skillorchestra.handbook.models import DEFAULT_MODE, Agent, Mode, Skill
from skillorchestra.handbook.paging import key_after, key_page
from skillorchestra.handbook.results import AgentPage, Removed, SkillPage

TEXT_FIELDS = frozenset({"description", "indicators", "examples", "insights"})  # no derived number reads them
EditedT = TypeVar("EditedT", Agent, Skill, Mode)


class EditMixin(HandbookBase):
    def edit_agent(self, agent_id: str, changes: Mapping[str, Any]) -> Agent:
        """Add the agent, or change the fields in `changes` of the stored one (the others keep their values)."""
        with self.store.write():
            return self.upsert_agent(_merged(Agent, self.agent(agent_id), {**changes, "id": agent_id}))

    def edit_skill(self, skill_id: str, changes: Mapping[str, Any]) -> Skill:
        """Add the skill, or change the fields in `changes` (parent_id None: top-level) of the stored one. A new
        skill given a parent and no mode takes its parent's mode (a child must be in it), else the default mode,
        which the handbook adds if it lacks it; a mode given must be one the handbook has (a misspelt one would
        be created, and hide the skill from that mode's steps and agents)."""
        with self.store.write():
            if changes.get("mode") not in (None, DEFAULT_MODE):
                self._known_mode_for("mode", [changes["mode"]])
            current = self.skill(skill_id)
            parent = self.skill(changes["parent_id"]) if changes.get("parent_id") else None
            if current is None and parent is not None and "mode" not in changes:
                changes = {**changes, "mode": parent.mode}
            return self.upsert_skill(_merged(Skill, current, {**changes, "id": skill_id}))

    def edit_mode(self, mode_id: str, changes: Mapping[str, Any]) -> Mode:
        """Add the mode, or change the fields in `changes` of the stored one."""
        with self.store.write():
            return self.upsert_mode(_merged(Mode, self.mode(mode_id), {**changes, "id": mode_id}))

    def upsert_agent(self, agent: Agent) -> Agent:
        """An agent may only name modes the handbook has: a misspelt mode would hide it from that mode's steps."""
        with self.store.write():
            self._known_mode_for("modes", agent.modes)
            self._edit("upsert_agent", agent.model_dump())
        return agent

    def _known_mode_for(self, field: str, modes: Sequence[str]) -> None:
        """Refuse `modes` (the value of `field`) unless the handbook has each: naming the known ones and the
        closest, and how to add a new one."""
        known = sorted(m.id for m in self.store.modes())
        unknown = [m for m in modes if m not in known]
        if unknown:
            listed = ", ".join(known) if known else "none yet"
            close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
            hint = f"; closest known: {close[0]}" if close else ""
            raise InvalidInput(
                field,
                unknown if field == "modes" else unknown[0],
                f"modes the handbook has ({listed}){hint}; add a new mode with upsert_mode first",
            )

    def upsert_mode(self, mode: Mode) -> Mode:
        with self.store.write():
            self._edit("upsert_mode", mode.model_dump())
        return mode

    def upsert_skill(self, skill: Skill) -> Skill:
        if skill.id == ROOT_SKILL:
            raise InvalidInput("skill_id", skill.id, f"any id but the reserved {ROOT_SKILL!r}")
        with self.store.write():
            self._check_skill_placement(skill)
            self._edit("upsert_skill", skill.model_dump())
        return skill

    def _check_skill_placement(self, skill: Skill) -> None:
        """A skill's parent exists, is not the skill or below it, and shares its mode, as its children do.

        Read by id (the parent, its ancestors, the children), in the edit's write transaction: reading the whole
        table took 3.3 s an edit at 20,000 skills."""
        if skill.parent_id is not None:
            parent = self.store.skill(skill.parent_id)
            if parent is None:
                raise NotFound("skill (parent_id)", skill.parent_id, self.store.skill_ids())
            ancestor: Skill | None = parent
            seen: set[str] = set()
            while ancestor is not None and ancestor.id not in seen:  # refuse cycles: not below this skill
                if ancestor.id == skill.id:
                    raise InvalidInput("parent_id", skill.parent_id, f"a skill that is not {skill.id!r} or below it")
                seen.add(ancestor.id)
                ancestor = self.store.skill(ancestor.parent_id) if ancestor.parent_id is not None else None
            if skill.mode != parent.mode:  # a skill refines its parent, so it belongs to the same stage of work
                raise InvalidInput("mode", skill.mode, f"{parent.mode!r}, the mode of its parent {skill.parent_id!r}")
        children = [s for s in self.store.skill_children(skill.id) if s.mode != skill.mode]
        if children:  # moving a parent to another mode would leave its children behind in the old one
            raise InvalidInput(
                "mode",
                skill.mode,
                f"{children[0].mode!r}, the mode of its children {', '.join(s.id for s in children)} (give them"
                ' parent_id "" first, or delete them)',
            )

    def delete_agent(self, agent_id: str) -> Removed:
        with self.store.write():
            if self.agent(agent_id) is None:
                raise NotFound("agent", agent_id, [a.id for a in self.store.agents()])
            competence, cost = self.store.evidence_counts("agent_id", agent_id)
            self._edit("delete_agent", {"id": agent_id})
        return Removed(kind="agent", id=agent_id, competence_rows=competence, cost_rows=cost)

    def delete_skill(self, skill_id: str) -> Removed:
        with self.store.write():
            if self.store.skill(skill_id) is None:
                raise NotFound("skill", skill_id, self.store.skill_ids())
            children = [s.id for s in self.store.skill_children(skill_id)]
            if children:
                raise InvalidInput(
                    "skill_id", skill_id, f"a skill without children (delete {', '.join(children)} first)"
                )
            competence, cost = self.store.evidence_counts("skill_id", skill_id)
            self._edit("delete_skill", {"id": skill_id})
        return Removed(kind="skill", id=skill_id, competence_rows=competence, cost_rows=cost)

    def _edit(self, kind: str, payload: dict[str, Any]) -> None:
        """Append the edit, unless it would leave the entity as it is stored: an unchanged upsert (a host
        re-asserting its agents at every start) would grow the event log and bump the file's data_version,
        making every other server sharing the file reload. An edit of texts alone is noted as such: the derived
        arrays outlive it (ArraysCache.note_texts_only). The texts shown are read from the store."""
        stored = {"upsert_agent": self.agent, "upsert_skill": self.skill, "upsert_mode": self.mode}.get(kind)
        current = stored(payload["id"]) if stored is not None else None
        if current is None:
            self.store.apply(kind, payload)
            return
        stored_fields = current.model_dump()
        if stored_fields == payload:
            return
        self.store.apply(kind, payload)
        if all(stored_fields[k] == v for k, v in payload.items() if k not in TEXT_FIELDS):
            self._arrays_cache.note_texts_only(self.store.generation)

    # -- listings ----------------------------------------------------------------------------------------

    def list_agents(self, mode: str | None = None, cursor: str | None = None, limit: int = 50) -> AgentPage:
        self._known_mode(mode)
        after = key_after(cursor, limit, "agents")
        page, next_cursor = key_page(self.store.agents_page(after, mode, limit + 1), limit, "agents")  # in SQL
        return AgentPage(items=page, next_cursor=next_cursor)

    def list_skills(self, mode: str | None = None, cursor: str | None = None, limit: int = 50) -> SkillPage:
        self._known_mode(mode)
        after = key_after(cursor, limit, "skills")
        page, next_cursor = key_page(self.store.skills_page(after, mode, limit + 1), limit, "skills")  # in SQL
        return SkillPage(items=page, next_cursor=next_cursor)

    def _known_mode(self, mode: str | None) -> None:
        """A filter by a mode the handbook lacks is a typo, not an empty answer."""
        if mode is not None:
            known = [m.id for m in self.store.modes()]
            if mode not in known:
                raise NotFound("mode", mode, known)


def _merged(model: type[EditedT], current: EditedT | None, changes: Mapping[str, Any]) -> EditedT:
    """`current` with `changes` applied (a new record starts from the model's defaults); a value the model refuses
    is the caller's error, named by field."""
    base = current.model_dump() if current is not None else {}
    try:
        return model(**{**base, **changes})
    except ValidationError as exc:
        where, value, expected = first_problem(exc)
        raise InvalidInput(where or model.__name__, value, expected) from None
