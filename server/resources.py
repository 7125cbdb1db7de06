"""Read-only views of the handbook as MCP resources (JSON), for hosts that browse rather than call.

Compact JSON, and the listings say only what a reader needs to choose (a skill's indicators and examples are on its
own page; an agent's page lists the skills it has evidence on): a host may put a whole resource into the model's
context, and at 20,000 skills the skills listing was 5 MB. Each resource's rows stop at RESOURCE_BYTES_MAX, most
telling first on a page (the most evidence), and it says how many were not shown and where they are (the paged
list tools), since a resource read takes no cursor."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.server.mcpserver.resources.templates import ResourceSecurity

from skillorchestra.handbook.arrays import HandbookArrays
from skillorchestra.handbook.errors import known_hint
from skillorchestra.handbook.metrics import entropy_bits
from skillorchestra.handbook.paging import PAGE_BYTES_MAX, leading_within
from skillorchestra.handbook.results import four_significant
from skillorchestra.handbook.schema import schema_version
from skillorchestra.handbook.service import Handbook


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


LISTED_SKILL_FIELDS = {"id", "mode", "parent_id", "description"}
LISTED_DESCRIPTION = 200  # characters of a description the listing resources show
RESOURCE_BYTES_MAX = PAGE_BYTES_MAX  # of a resource's rows, as of a tool's page: the SSE client refuses 1 MiB
# An id is a key looked up in the handbook, never a file path: the SDK's default policy refused ids a user may well
# choose ("/models/qwen2.5-7b", a vLLM model path; "x:tiny", read as a drive letter) as "Unknown resource" (QA)
OPAQUE_IDS = ResourceSecurity(exempt_params={"skill_id", "agent_id"})


def _listed(fields: dict[str, Any]) -> dict[str, Any]:
    """A listing's row: a long description cut (with an ellipsis), the whole of it in the item's own resource."""
    text = fields.get("description") or ""
    if len(text) > LISTED_DESCRIPTION:
        fields["description"] = text[: LISTED_DESCRIPTION - 1] + "…"
    return fields


def register_resources(server: MCPServer, current: Callable[[], Handbook]) -> None:
    """`current` returns the running server's handbook (static resources get no request context in mcp 2.x)."""

    @server.resource(
        "handbook://skills",
        mime_type="application/json",
        description=(
            "Every skill: id, mode, parent and description (cut to 200 characters; the rest: "
            "handbook://skills/{skill_id})"
        ),
    )
    def skills() -> str:
        rows = [_listed(s.model_dump(include=LISTED_SKILL_FIELDS)) for s in current().store.skills()]
        return _json(_listing("skills", rows, "list_skills (paged) or handbook://skills/{skill_id}"))

    @server.resource(
        "handbook://agents",
        mime_type="application/json",
        description="Every agent, its description cut to 200 characters (the rest: handbook://agents/{agent_id})",
    )
    def agents() -> str:  # whole descriptions of hundreds of agents passed the SSE client's 1 MiB event cap (QA)
        rows = [_listed(a.model_dump()) for a in current().store.agents()]
        return _json(_listing("agents", rows, "list_agents (paged) or handbook://agents/{agent_id}"))

    @server.resource(
        "handbook://skills/{skill_id}",
        mime_type="application/json",
        description="One skill and each agent on it",
        security=OPAQUE_IDS,
    )
    def skill(skill_id: str) -> str:
        return _json(skill_card(current(), skill_id))

    @server.resource(
        "handbook://agents/{agent_id}",
        mime_type="application/json",
        description="One agent: overall competence and, per skill it has evidence on, competence and cost",
        security=OPAQUE_IDS,
    )
    def agent(agent_id: str) -> str:
        return _json(agent_card(current(), agent_id))  # the SDK has already percent-decoded the id

    @server.resource(
        "handbook://stats",
        mime_type="application/json",
        description="Counts, version, and routing shares per agent since the first decision and over the newest "
        "(`recent`): watch for collapse onto one agent",
    )
    def stats() -> str:
        return _json(handbook_stats(current()))


def _within_bytes(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The first rows whose JSON fits RESOURCE_BYTES_MAX, and how many did not (QA: at 12,000 skills the skills
    listing was 1.6 MB, which the SSE client refused, closing the connection; an agent's page was 250 KB)."""
    shown = leading_within((len(_json(row).encode()) + 1 for row in rows), RESOURCE_BYTES_MAX)  # + its comma
    return rows[:shown], len(rows) - shown


def _listing(key: str, rows: list[dict[str, Any]], rest: str, count_key: str = "not_shown") -> dict[str, Any]:
    """A resource's rows under `key`: those that fit, how many did not (`count_key`), and where they are."""
    shown, not_shown = _within_bytes(rows)
    return {key: shown, count_key: not_shown, **({"rest": rest} if not_shown else {})}


def _figures(arrays: HandbookArrays, i: int, col: int) -> dict[str, float | None]:
    """One agent's numbers under one skill, as an agent's and a skill's page show them."""
    return {
        "mean": _number(arrays.mean[i, col]),
        "n": _number(arrays.evidence[i, col]),
        "mean_cost_usd": _number(arrays.cost_mean[i, col]),
        "usual_step_tokens": _number(arrays.prompt_mean[i, col]),  # the cost moves with a step's length
    }


def skill_card(handbook: Handbook, skill_id: str) -> dict[str, object]:
    skill_id = skill_id.strip()  # as the tools take ids: stored ids never start or end with white space
    arrays = handbook.arrays()
    if skill_id not in arrays.skill_index:
        raise ResourceNotFoundError(f"unknown skill {skill_id!r}; {known_hint(skill_id, arrays.skill_ids)}")
    col = arrays.column_of_skill(skill_id)
    # the texts as stored now: the arrays' copy outlives an edit of texts alone (Handbook._edit)
    skill = handbook.store.skill(skill_id) or arrays.skills[arrays.skill_index[skill_id]]
    rows: list[dict[str, Any]] = [
        {"agent_id": agent_id, **_figures(arrays, i, col)} for i, agent_id in enumerate(arrays.agent_ids)
    ]
    rows.sort(key=lambda row: -row["n"])  # stable: agents with the most evidence first, then by id
    rest = "handbook://agents/{agent_id}, each agent's own page"
    return {**skill.model_dump(), **_listing("agents", rows, rest, "agents_not_shown")}


def _number(value: float) -> float | None:
    """A JSON number of four significant digits (as tool results carry estimates: QA), or null where the handbook
    has none (NaN)."""
    return None if np.isnan(value) else four_significant(float(value))


def agent_card(handbook: Handbook, agent_id: str) -> dict[str, object]:
    agent_id = agent_id.strip()  # as the tools take ids
    arrays = handbook.arrays()
    if agent_id not in arrays.agent_index:
        raise ResourceNotFoundError(f"unknown agent {agent_id!r}; {known_hint(agent_id, arrays.agent_ids)}")
    i = arrays.agent_index[agent_id]
    agent = handbook.store.agent(agent_id) or arrays.agents[i]  # its texts as stored now (Handbook._edit)
    rows: list[dict[str, Any]] = [
        {"skill_id": skill_id, **_figures(arrays, i, col)}
        for skill_id, col in arrays.skill_index.items()
        if arrays.evidence[i, col] > 0  # elsewhere it shows only what it inherits from the level above
    ]
    rows.sort(key=lambda row: -row["n"])  # stable: the skills it has most evidence on first
    # with evidence, past the page's size: the skills with least evidence
    skills = _listing("skills", rows, "handbook://skills/{skill_id}, each skill's own page", "skills_not_shown")
    return {
        **agent.model_dump(),
        "overall": {
            "mean": _number(arrays.mean[i, arrays.root_column]),
            "n": _number(arrays.evidence[i, arrays.root_column]),
        },
        # the learned length effect (handbook/length.py): competence + slope * (ln(characters) - center), the
        # length held within [low, high]; range_ln_chars is (low, center, high)
        "length_effect": (
            {"slope": _number(arrays.length_slope[i]), "range_ln_chars": [_number(x) for x in arrays.length_range]}
            if arrays.has_length_effect
            else None
        ),
        **skills,
        "skills_without_evidence": int(np.sum(arrays.evidence[i, : len(arrays.skill_ids)] <= 0)),
    }


RECENT_DECISIONS = 500  # handbook://stats' recent window: a collapse happening now, which lifetime shares hide


def handbook_stats(handbook: Handbook) -> dict[str, object]:
    """Lifetime routing shares, and the same over the newest decisions (drift QA: lifetime shares read 70/30 while
    the last 500 steps had all gone to one agent)."""
    store = handbook.store
    return {
        "handbook_version": store.current_version(),
        "schema_version": schema_version(),
        "counts": store.counts(),
        "forgetting": handbook.settings.forgetting,  # gamma when on: counts of evidence are then aged
        **_shares(store.routing_counts()),
        "recent": _recent(store.routing_counts(last=RECENT_DECISIONS)),
    }


def _recent(counts: dict[str, int]) -> dict[str, object]:
    """The newest decisions' shares, and how many they are (at most RECENT_DECISIONS; review: it said 500 of 7)."""
    return {"decisions": sum(counts.values()), **_shares(counts)}


def _shares(counts: dict[str, int]) -> dict[str, object]:
    total = sum(counts.values())
    fractions = {agent: count / total for agent, count in Counter(counts).items()} if total else {}
    p = np.array(list(fractions.values()))
    return {
        "routing_shares": {agent: four_significant(share) for agent, share in fractions.items()},
        "routing_entropy_bits": four_significant(entropy_bits(fractions)),  # 0.0, never -0.0, for a single agent
        "top_agent_share": four_significant(float(p.max())) if p.size else 0.0,
    }
