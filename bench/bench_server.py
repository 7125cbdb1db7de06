"""Benchmark-only launcher: the product's server (create_server) plus a trivial `echo` tool, over stdio.

The echo is the baseline of bench/route_latency.py's round trip (same process, same transport, same SDK), so
the ratio isolates what route_step itself costs. `replay_decision` returns one stored RouteDecision without
routing: the floor set by route_step's result size (serialisation, client-side output-schema validation).
Neither ever ships: only this script adds them.
Usage: python bench/bench_server.py DB_PATH
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel

from skillorchestra.handbook.results import RouteDecision
from skillorchestra.handbook.service import RouteRequest
from skillorchestra.server.app import create_server, open_handbook
from skillorchestra.server.settings import ServerSettings
from skillorchestra.tools.schemas import self_contained_schemas


class Echo(BaseModel):
    text: str


def main() -> None:
    settings = ServerSettings.from_env(db_path=Path(sys.argv[1]))
    server = create_server(settings)
    handbook = open_handbook(settings)
    stored = handbook.route(RouteRequest(text="benchmark: a typical step to parse and sort records"))
    handbook.store.close()

    @server.tool(name="echo")
    def echo(text: str) -> Echo:
        """Return the text unchanged (benchmark baseline)."""
        return Echo(text=text)

    @server.tool(name="replay_decision")
    def replay_decision(text: str) -> RouteDecision:
        """Return a stored route_step result without routing (benchmark payload floor)."""
        return stored

    self_contained_schemas(server)  # as create_server does for the product's tools: no `$ref` left to resolve
    server.run()


if __name__ == "__main__":
    main()
