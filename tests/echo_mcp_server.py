"""A tiny MCP server of the tests' own, run over stdio, standing in for a tool agent (e.g. web search)."""

from __future__ import annotations

import sys

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

mcp = MCPServer("echo-tools")


@mcp.tool()
def search(text: str) -> str:
    """Deterministic 'search': echoes the query so tests can check what arrived."""
    return f"results for: {text}"


@mcp.tool()
def search_limited(query: str, max_results: int = 1) -> str:
    """Takes the step under another argument name, plus a fixed extra argument."""
    return f"{max_results} result(s) for: {query}"


@mcp.tool()
def broken(text: str) -> str:
    """Always fails the way a tool reports an anticipated failure."""
    raise ToolError(f"search backend refused: {text}")


@mcp.tool()
async def slow(text: str, seconds: float = 5.0) -> str:
    """Sleeps (cancellably), to test the caller's deadline."""
    await anyio.sleep(seconds)
    return text


if __name__ == "__main__":
    print("echo_mcp_server starting", file=sys.stderr)
    mcp.run()
