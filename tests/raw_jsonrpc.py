"""JSON-RPC lines a test writes to a stdio server by hand, for what the SDK client hides (stdout, stderr)."""

from __future__ import annotations

from typing import Any

OPENING: list[dict[str, Any]] = [  # the handshake of the 2025-11-25 era
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
]


def tool_call(request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
