"""Start-up time is a feature (hosts spawn the server on every launch): what only delegation or the trace files need
loads on first use, not before the first tools/list. Checked in a fresh interpreter, as a served process starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# delegation's backends, their connection settings and the judge; the trace file models (learn, eval, demo)
LAZY = (
    "skillorchestra.server.agent_config",
    "skillorchestra.server.judge",
    "skillorchestra.server.llm_backend",
    "skillorchestra.server.mcp_backend",
    "skillorchestra.handbook.traces",
    "tomllib",
    "litellm",
)

CODE = """
import json, sys
import anyio
from mcp import Client
from skillorchestra.server.app import create_server
from skillorchestra.server.settings import ServerSettings

LAZY = json.loads(sys.argv[2])

async def main():
    settings = ServerSettings(db_path=sys.argv[1], seed_example=True)
    async with Client(create_server(settings)) as client:
        listed = [tool.name for tool in (await client.list_tools()).tools]
        at_listing = [name for name in LAZY if name in sys.modules]
        delegated = await client.call_tool("delegate", {"text": "Prove that sqrt(2) is irrational"})
        after_delegate = [name for name in LAZY if name in sys.modules]
    print(json.dumps({"listed": listed, "at_listing": at_listing, "after_delegate": after_delegate,
                      "delegate_error": delegated.is_error, "delegate_text": delegated.content[0].text}))

anyio.run(main)
"""


def test_delegation_backends_and_trace_models_load_on_first_use_not_at_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CODE, str(tmp_path / "h.db"), json.dumps(LAZY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(done.stdout)
    assert "delegate" in seen["listed"]
    assert seen["at_listing"] == []
    # the first delegation reads the connection settings (none loaded here: refused, saying how to load them)
    assert "skillorchestra.server.agent_config" in seen["after_delegate"]
    assert seen["delegate_error"]
    assert "agents load" in seen["delegate_text"]
