"""Thin MCP adapters over the handbook: validate, call, shape the answer."""

from __future__ import annotations

from mcp.server import MCPServer

from skillorchestra.tools import catalog, delegation, learning, routing
from skillorchestra.tools.schemas import self_contained_schemas, strict_arguments


def register_tools(server: MCPServer) -> None:
    routing.register(server)
    catalog.register(server)
    delegation.register(server)
    learning.register(server)
    self_contained_schemas(server)
    strict_arguments(server)  # reads the inlined schemas
