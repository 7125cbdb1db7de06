"""Helpers the delegation tests share: a handbook with agents loaded by the real CLI, and tool calls that assert
they succeeded (or were refused)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from fake_openai import FakeOpenAI
from mcp import Client

from skillorchestra.server.settings import ServerSettings


def priced_agent(agent_id: str, model: str, api_base: str, input_per_mtok: float, output_per_mtok: float) -> str:
    """agents.toml's table of one priced agent of the fake OpenAI server, serving the answer mode."""
    return f"""
[agents.{agent_id}]
model = "openai/{model}"
api_base = "{api_base}"
input_per_mtok = {input_per_mtok}
output_per_mtok = {output_per_mtok}
modes = ["answer"]
"""


def cheap_agent(api_base: str) -> str:
    """The fake OpenAI server's cheap agent (cheap-model, $0.2/$0.4 per Mtok)."""
    return priced_agent("cheap", "cheap-model", api_base, 0.2, 0.4)


def grader_agent(api_base: str) -> str:
    """The fake OpenAI server's judge-model as agent `grader` ($1/$2 per Mtok), for an agents.toml's [judge]."""
    return f"""
[agents.grader]
model = "openai/judge-model"
api_base = "{api_base}"
input_per_mtok = 1.0
output_per_mtok = 2.0
modes = ["answer"]
"""


def priced_pair(api_base: str) -> str:
    """Two priced agents of the fake OpenAI server: a dear strong one and a cheap one."""
    return priced_agent("strong", "strong-model", api_base, 10.0, 30.0) + cheap_agent(api_base)


def loaded(tmp_path: Path, toml_text: str) -> ServerSettings:
    """A fresh handbook with the agents of `toml_text`, loaded by `skillorchestra agents load` in a subprocess."""
    toml = tmp_path / "agents.toml"
    toml.write_text(toml_text)
    db = tmp_path / "h.db"
    cli = Path(sys.executable).with_name("skillorchestra")
    subprocess.run([cli, "agents", "load", str(toml), "--db", str(db)], check=True, capture_output=True, timeout=60)
    return ServerSettings(db_path=db, seed_example=False)


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    return result.structured_content  # type: ignore[return-value]


async def refused(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return result.content[0].text  # type: ignore[union-attr]


async def until_called(fake_openai: FakeOpenAI, model: str) -> None:
    """Until `model`'s first call reached the fake server (its agent is at work, its concurrency slot taken)."""
    with anyio.fail_after(30):
        while not fake_openai.chat_requests(model):
            await anyio.sleep(0.02)


async def give_up_once_called(fake_openai: FakeOpenAI, model: str, group: anyio.abc.TaskGroup) -> None:
    """Cancel `group` (the client's call in it) once `model` is at work: the client gives up mid-call."""
    await until_called(fake_openai, model)
    group.cancel_scope.cancel()


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the handbook file as another process sees them (the server's own connection is not used)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:  # `with conn` never closes
        return conn.execute(sql).fetchall()
