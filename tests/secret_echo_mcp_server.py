"""A careless tool server for the secret-masking tests: every tool echoes the key it was given (TOOL_AUTH_VALUE,
passed by the agent's ``env_vars``) in its answer, its error, a JSON-RPC error, or its own log on stderr."""

from __future__ import annotations

import os
import sys

from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

KEY_VARIABLE = "TOOL_AUTH_VALUE"

mcp = MCPServer("secret-echo")


def _key() -> str:
    return os.environ.get(KEY_VARIABLE, "<unset>")


@mcp.tool()
def echo(text: str) -> str:
    """Answers with the key in it."""
    return f"results for {text} (authenticated as {_key()})"


@mcp.tool()
def refuse(text: str) -> str:
    """A tool error quoting the key, as an API wrapper passing on its provider's 401 does."""
    raise ToolError(f"upstream 401: invalid key {_key()}")


@mcp.tool()
def rpc_error(text: str) -> str:
    """A JSON-RPC error (the client raises MCPError) quoting the key."""
    raise MCPError(code=-32603, message=f"backend misconfigured: key {_key()} rejected")


@mcp.tool()
def crash(text: str) -> str:
    """An unexpected exception: the server answers without details but logs the traceback (and key) on stderr."""
    raise RuntimeError(f"config dump: {KEY_VARIABLE}={_key()}")


if __name__ == "__main__":
    print(f"secret-echo starting with {_key()}", file=sys.stderr, flush=True)
    mcp.run()
