"""Argument completion (MCP `completion/complete`): the ids a host can offer while a user types a resource URI or a
prompt argument, so `handbook://skills/{skill_id}` and the `orchestrate` prompt's `orchestrator` need no lookup first.

The handler gets no request context in mcp 2.x, so it reads the running server's handbook through `current`, as the
resources do. Reads only: a completion never writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio.to_thread
from mcp.server import MCPServer
from mcp.types import Completion, CompletionArgument, CompletionContext, PromptReference, ResourceTemplateReference

from skillorchestra.handbook.models import ID_MAX
from skillorchestra.handbook.service import Handbook

MAX_VALUES = 100  # the most values one completion may carry (MCP specification)


def register_completions(server: MCPServer, current: Callable[[], Handbook]) -> None:
    """`current` returns the running server's handbook (it raises when the server is not running)."""

    def known_ids(ref: PromptReference | ResourceTemplateReference, argument: str) -> list[str]:
        store = current().store
        if isinstance(ref, ResourceTemplateReference):
            if ref.uri == "handbook://skills/{skill_id}" and argument == "skill_id":
                return store.skill_ids()
            if ref.uri == "handbook://agents/{agent_id}" and argument == "agent_id":
                return [agent.id for agent in store.agents()]
        elif ref.name == "orchestrate" and argument == "orchestrator":
            return list(store.selections())
        return []

    @server.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        if len(argument.value) > ID_MAX:  # longer than any id: nothing to read
            return Completion(values=[], total=0, has_more=False)
        ids = await anyio.to_thread.run_sync(known_ids, ref, argument.name)
        return completion_of(ids, argument.value)


def completion_of(ids: Sequence[str], typed: str) -> Completion:
    """The ids that begin with what was typed, then those containing it elsewhere (case-insensitive: typing
    'python' offers 'code.python'), each group sorted, at most MAX_VALUES with the total counted."""
    needle = typed.strip().casefold()
    starting = sorted(i for i in ids if i.casefold().startswith(needle))
    inside = sorted(i for i in ids if needle in i.casefold() and not i.casefold().startswith(needle))
    matches = starting + inside
    return Completion(values=matches[:MAX_VALUES], total=len(matches), has_more=len(matches) > MAX_VALUES)
