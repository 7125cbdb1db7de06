"""consult: a step's skills, as cards, and for each its agents ranked by competence, a page at a time.

It reads the arrays as route does (demands.py, eligibility.py) but decides nothing and writes nothing.
"""

from __future__ import annotations

import numpy as np

from skillorchestra.handbook import costing
from skillorchestra.handbook.arrays import HandbookArrays, serves_step
from skillorchestra.handbook.demands import INFERRED_SKILLS, at_depth, check_mode, check_text, columns, source_at_level
from skillorchestra.handbook.eligibility import unusable
from skillorchestra.handbook.handbook_base import HandbookBase
from skillorchestra.handbook.inference import on_live
from skillorchestra.handbook.length import step_shift
from skillorchestra.handbook.models import Skill
from skillorchestra.handbook.paging import (
    PAGE_BYTES_MAX,
    decode_offset_cursor,
    encode_offset_cursor,
    json_bytes,
    leading_within,
    query_digest,
)
from skillorchestra.handbook.posterior import normal_ci90
from skillorchestra.handbook.results import AgentSkillStat, ConsultResult, SkillCard
from skillorchestra.handbook.router import shifted


class ConsultMixin(HandbookBase):
    def consult(
        self,
        text: str,
        mode: str | None = None,
        top_k: int = 5,
        orchestrator: str | None = None,
        cursor: str | None = None,
        unavailable: dict[str, str] | None = None,
        page_size: int = 50,
        agents_per_skill: int | None = None,
    ) -> ConsultResult:
        """The step's skills and, for each, its agents by competence: at most `agents_per_skill` of them (None:
        all), since every row costs the reading model tokens (11 agents x 4 skills were 70% of a task's)."""
        check_text(text)
        version = self.store.current_version()
        stamp = self.store.change_stamp()
        arrays = self.arrays()
        check_mode(arrays, mode)
        # one inference for both: each card's weight is the one route_step would give its skill (QA: consult's five
        # skills renormalised read apart from route_step's three), and the skills beyond route_step's show 0
        inferred, source = self.matcher.infer(text, mode, max(top_k, INFERRED_SKILLS))
        routed = dict(on_live(self.matcher, inferred[:INFERRED_SKILLS], arrays.skill_index))
        demands = [(s, routed.get(s, 0.0)) for s, _ in on_live(self.matcher, inferred[:top_k], arrays.skill_index)]
        demands, level_mode, granularity = at_depth(self.store, arrays, demands, mode, orchestrator)
        # the rows' order follows competence, which an outcome or an edit changes, and the skills inferred, which
        # change when the semantic model finishes loading after start: a cursor of another state or of other skills
        # would skip and repeat rows (QA, both), so they are part of what a cursor must match
        query = query_digest(text, mode, top_k, orchestrator, version, agents_per_skill, stamp, demands)
        offset = decode_offset_cursor(cursor, query)
        cols, weights, labels = columns(arrays, demands, level_mode)
        step_modes = arrays.step_modes(mode, routed.items())  # route_step's: `unavailable` reads as its exclusions
        tokens = np.repeat(costing.prompt_tokens([text]), len(cols))
        per_skill_cost = costing.expected_costs(arrays, tokens, cols[:, None], np.ones((len(cols), 1)))
        lo, hi = normal_ci90(arrays.mean, arrays.var * arrays.ci_scale[:, None] ** 2)  # route_step's widening
        shift = step_shift(arrays, text)
        rows: list[AgentSkillStat] = []
        not_shown = 0
        for k, (col, label) in enumerate(zip(cols, labels, strict=True)):
            # ranked as route_step scores competence: with this step's length shift
            order = np.argsort(-shifted(arrays.mean[:, col], shift), kind="stable")
            # route_step's rule; the agents it leaves out are listed in `unavailable`, so "none" and "none usable"
            # read apart
            usable = [i for i in order if arrays.enabled[i] and serves_step(arrays.agent_modes[i], step_modes)]
            not_shown += len(usable) - len(usable[:agents_per_skill])
            for i in usable[:agents_per_skill]:
                agent_cost = None if np.isnan(per_skill_cost[k, i]) else per_skill_cost[k, i]
                rows.append(
                    AgentSkillStat(
                        agent_id=arrays.agent_ids[i],
                        skill_id=label,
                        mean=float(arrays.mean[i, col]),
                        ci90=(float(lo[i, col]), float(hi[i, col])),
                        n=float(arrays.evidence[i, col]),
                        expected_cost_usd=None if agent_cost is None else float(agent_cost),
                        length_shift=0.0 if shift is None else float(shift[i]),
                    )
                )
        page = rows[offset : offset + page_size]
        next_cursor = encode_offset_cursor(offset + page_size, query) if offset + page_size < len(rows) else None
        shown = self._skill_texts(arrays, [s for s, _ in demands])
        cards = [_card(shown[s], w, PAGE_BYTES_MAX // len(demands)) for s, w in demands]
        return ConsultResult(
            skills=cards,
            agents=page,
            insights=self._insights(level_mode, [shown[s].mode for s, _ in demands]),
            skills_source=source if demands else source_at_level(level_mode, source),  # as route_step words it (QA)
            granularity=granularity,
            unavailable={**unusable(arrays, mode, step_modes, bool(routed)), **(unavailable or {})},
            handbook_version=version,
            next_cursor=next_cursor,
            agents_not_shown=not_shown,
        )

    def _skill_texts(self, arrays: HandbookArrays, skill_ids: list[str]) -> dict[str, Skill]:
        """The skills as stored now: the arrays' copies keep the texts they were derived with, and outlive an edit
        of texts alone (see EditMixin._edit). Read by id, only those shown (a dict of every skill cost 4 ms at
        20,000)."""
        shown = {}
        for skill_id in skill_ids:
            stored = self.store.skill(skill_id)
            shown[skill_id] = stored if stored is not None else arrays.skills[arrays.skill_index[skill_id]]
        return shown

    def _insights(self, mode: str | None, skill_modes: list[str]) -> list[str]:
        wanted = [mode] if mode else list(dict.fromkeys(skill_modes))
        modes = {m.id: m for m in self.store.modes()}
        return [f"[{m}] {line}" for m in wanted if m in modes for line in modes[m].insights]


def _card(skill: Skill, weight: float, budget: int) -> SkillCard:
    """The skill for a consult answer, its indicators and examples within `budget` bytes (the leading ones; either
    list may take what the other leaves of its half). QA: five skills of 50 long examples each made a 1.8 MB answer,
    which the SSE client refuses (over 1 MiB) and every model pays for in tokens."""
    room = budget - json_bytes(skill.description)
    indicator_sizes = [json_bytes(text) + 1 for text in skill.indicators]  # and its comma
    example_sizes = [json_bytes(text) + 1 for text in skill.examples]
    indicators = leading_within(indicator_sizes, max(room // 2, room - sum(example_sizes)))
    examples = leading_within(example_sizes, room - sum(indicator_sizes[:indicators]))
    return SkillCard(
        skill_id=skill.id,
        mode=skill.mode,
        parent_id=skill.parent_id,
        description=skill.description,
        indicators=skill.indicators[:indicators],
        examples=skill.examples[:examples],
        weight=weight,
        texts_not_shown=len(skill.indicators) - indicators + len(skill.examples) - examples,
    )
