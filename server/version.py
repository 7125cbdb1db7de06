"""The installed package's version, apart from the MCP app so the CLI can print it without importing the SDK."""

from __future__ import annotations

import functools
import importlib.metadata


@functools.cache  # asked twice per start (the CLI's --version text, the MCP server's version): one lookup
def package_version() -> str:
    try:
        return importlib.metadata.version("skillorchestra-mcp")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"
