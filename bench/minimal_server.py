"""Benchmark-only: the smallest MCPServer with one tool, the cold-start baseline of bench/cold_start.py."""

from __future__ import annotations

from mcp.server import MCPServer

server = MCPServer("minimal")


@server.tool()
def ping(text: str) -> str:
    """Return the text."""
    return text


if __name__ == "__main__":
    server.run()
