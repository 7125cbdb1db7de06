"""Argument completion: a host offers the handbook's skill and agent ids while a resource URI is typed, and the
stored orchestrator names for the `orchestrate` prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client
from mcp.types import Completion, PromptReference, ResourceTemplateReference

from skillorchestra.handbook.example import example_document
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.app import create_server
from skillorchestra.server.completions import MAX_VALUES, completion_of
from skillorchestra.server.settings import ServerSettings

SKILL_URI = ResourceTemplateReference(type="ref/resource", uri="handbook://skills/{skill_id}")
AGENT_URI = ResourceTemplateReference(type="ref/resource", uri="handbook://agents/{agent_id}")
ORCHESTRATE = PromptReference(type="ref/prompt", name="orchestrate")


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(example_document().model_copy(update={"selections": {"small": 1, "Big": 0}}), source="t")
    store.close()
    return ServerSettings(db_path=tmp_path / "h.db", seed_example=False)


async def completed(
    client: Client, ref: PromptReference | ResourceTemplateReference, name: str, value: str
) -> Completion:
    return (await client.complete(ref, {"name": name, "value": value})).completion


@pytest.mark.anyio
async def test_resource_ids_complete_from_the_live_handbook(settings: ServerSettings) -> None:
    document = example_document()
    async with Client(create_server(settings)) as client:
        assert client.server_capabilities is not None and client.server_capabilities.completions is not None
        skills = await completed(client, SKILL_URI, "skill_id", "CODE")  # case-insensitive
        expected = sorted(s.id for s in document.skills if s.id.startswith("code"))
        assert skills.values == expected and skills.total == len(expected) and not skills.has_more
        inside = await completed(client, SKILL_URI, "skill_id", "python")  # no id begins with it: those holding it
        assert inside.values and all("python" in v and not v.startswith("python") for v in inside.values)
        agents = await completed(client, AGENT_URI, "agent_id", "")
        assert agents.values == sorted(a.id for a in document.agents)
        assert (await completed(client, AGENT_URI, "agent_id", "no-such")).values == []
        assert (await completed(client, SKILL_URI, "agent_id", "c")).values == []  # not this template's argument
        assert (await completed(client, SKILL_URI, "skill_id", "c" * 10_000)).values == []


@pytest.mark.anyio
async def test_the_orchestrate_prompt_completes_the_stored_orchestrator_names(settings: ServerSettings) -> None:
    async with Client(create_server(settings)) as client:
        assert (await completed(client, ORCHESTRATE, "orchestrator", "")).values == ["Big", "small"]
        assert (await completed(client, ORCHESTRATE, "orchestrator", "b")).values == ["Big"]
        assert (await completed(client, ORCHESTRATE, "goal", "b")).values == []  # free text: nothing to offer
        other = PromptReference(type="ref/prompt", name="other")
        assert (await completed(client, other, "orchestrator", "")).values == []


def test_a_long_list_is_cut_to_the_specifications_hundred_with_the_total_counted() -> None:
    ids = [f"skill-{i:03d}" for i in range(250)] + ["a-skill-7"]
    shown = completion_of(ids, "SKILL")
    assert len(shown.values) == MAX_VALUES and shown.total == 251 and shown.has_more
    assert shown.values[0] == "skill-000"  # those beginning with it first; "a-skill-7" only holds it
    assert completion_of(ids, "a-") == Completion(values=["a-skill-7"], total=1, has_more=False)
