# ---------------------------------------------------------------------------------------------------------
# Backends section (owner: backend layer). Shared fixtures: the anyio backend and the fake OpenAI server.
# ---------------------------------------------------------------------------------------------------------
import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports litellm: never fetch the price table, never ask the Hugging Face hub.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# tests/ holds helper modules (fake_openai, echo_mcp_server); make them importable whatever the rootdir mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fake_openai import FakeOpenAI  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fresh deterministic OpenAI-compatible server on a free loopback port (``.api_base`` for litellm)."""
    with FakeOpenAI() as server:
        yield server


# ---------------------------------------------------------------------------------------------------------
# End of backends section.
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# Core section (owner: lead). A real SQLite file per test, the server factory, and MCP clients in both eras.
# ---------------------------------------------------------------------------------------------------------
from collections.abc import AsyncIterator  # noqa: E402

from mcp import Client  # noqa: E402

from skillorchestra.server.app import create_server  # noqa: E402
from skillorchestra.server.settings import ServerSettings  # noqa: E402


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "handbook.db"


@pytest.fixture
def server_settings(db_path: Path) -> ServerSettings:
    return ServerSettings(db_path=db_path, seed_example=False)


@pytest.fixture(params=["auto", "legacy"])
async def mcp_client(request: pytest.FixtureRequest, server_settings: ServerSettings) -> AsyncIterator[Client]:
    """The real server through the SDK's in-memory client: modern (2026-07-28) and handshake (2025-11-25) eras."""
    server = create_server(server_settings)
    async with Client(server, mode=request.param, raise_exceptions=request.param == "auto") as client:
        yield client


@pytest.fixture
def no_collection() -> Iterator[None]:
    """Only the collections a test asks for may close an unreferenced connection (a lucky one would hide a
    handbook left open)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
