"""A tool of another MCP server as an agent: the tests' own echo server, spawned over stdio."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from skillorchestra.server.agent_config import McpAgentConnection, load_agent_configs
from skillorchestra.server.mcp_backend import call_mcp_tool

ECHO = str(Path(__file__).with_name("echo_mcp_server.py"))


def tool_agent(tool: str, **kw: object) -> McpAgentConnection:
    return McpAgentConnection(
        id=kw.pop("id", f"echo/{tool}"),
        kind="mcp",
        command=sys.executable,
        args=(ECHO,),
        tool=tool,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_tool_result_is_the_answer_with_no_token_cost() -> None:
    r = await call_mcp_tool(tool_agent("search"), "sqlite fts5 ranking", timeout_s=20)
    assert r.ok, r.message
    assert r.answer == "results for: sqlite fts5 ranking"
    assert (r.cost_usd, r.cost_source) == (0.0, "no_token_cost")
    assert r.prompt_tokens is None and 0 < r.latency_s < 20


@pytest.mark.anyio
async def test_argument_name_extra_arguments_and_configured_cost() -> None:
    agent = tool_agent("search_limited", text_argument="query", arguments={"max_results": 3}, cost_per_call_usd=0.01)
    r = await call_mcp_tool(agent, "vector search", timeout_s=20)
    assert r.ok and r.answer == "3 result(s) for: vector search"
    assert (r.cost_usd, r.cost_source) == (0.01, "agent_prices")


@pytest.mark.anyio
async def test_tool_error_is_a_task_failure_with_its_message() -> None:
    r = await call_mcp_tool(tool_agent("broken"), "anything", timeout_s=20)
    assert r.error_class == "task" and not r.infrastructure_failure
    assert "search backend refused: anything" in (r.message or "")


@pytest.mark.anyio
async def test_a_tool_the_server_does_not_have_is_a_server_error_not_a_task_failure() -> None:
    r = await call_mcp_tool(tool_agent("serach"), "anything", timeout_s=20)
    assert r.error_class == "server_error" and r.infrastructure_failure
    assert "no tool 'serach'" in (r.message or "") and r.cost_usd == 0.0


@pytest.mark.anyio
async def test_slow_tool_times_out_within_the_budget() -> None:
    t0 = time.perf_counter()
    r = await call_mcp_tool(tool_agent("slow", timeout_s=2.0, arguments={"seconds": 60}), "zzz", timeout_s=60)
    assert r.error_class == "timeout" and r.infrastructure_failure and "2 s" in (r.message or "")
    # the deadline plus the SDK's bounded child shutdown (2 s, then terminate), never the tool's 60 s: the margin is
    # a loaded host's (the tool's 5 s default against a 4.5 s bound told the two apart by half a second)
    assert time.perf_counter() - t0 < 10
    # review: the $0 price `agents load` gives an unpriced tool made a failed call's cost unknown
    unpriced = await call_mcp_tool(
        tool_agent("slow", timeout_s=2.0, arguments={"seconds": 60}, cost_per_call_usd=0.0), "zzz", timeout_s=60
    )
    assert (unpriced.error_class, unpriced.cost_usd, unpriced.cost_source) == ("timeout", 0.0, "no_token_cost")


@pytest.mark.anyio
async def test_missing_command_is_a_connection_failure() -> None:
    agent = McpAgentConnection(id="ghost", kind="mcp", command="/nonexistent/mcp-server", tool="search")
    r = await call_mcp_tool(agent, "hello", timeout_s=5)
    assert r.error_class == "connection" and r.message
    # no tool ran, so a configured per-call price does not apply (QA: it was recorded as unknown cost)
    priced = agent.model_copy(update={"cost_per_call_usd": 0.01})
    r = await call_mcp_tool(priced, "hello", timeout_s=5)
    assert (r.error_class, r.cost_usd, r.cost_source) == ("connection", 0.0, "no_token_cost")


@pytest.mark.anyio
async def test_a_server_that_dies_at_start_says_why_in_the_failure(tmp_path: Path) -> None:
    missing = tmp_path / "my_search_server.py"
    agent = McpAgentConnection(id="dies", kind="mcp", command=sys.executable, args=(str(missing),), tool="search")
    r = await call_mcp_tool(agent, "hello", timeout_s=5)
    assert r.error_class == "connection" and r.message is not None
    assert "the server's stderr ended:" in r.message and "can't open file" in r.message and str(missing) in r.message


@pytest.mark.anyio
async def test_unreachable_url_is_a_connection_failure() -> None:
    agent = McpAgentConnection(id="remote", kind="mcp", url="http://127.0.0.1:9/mcp", tool="search")
    r = await call_mcp_tool(agent, "hello", timeout_s=5)
    assert r.error_class == "connection", r.message


@pytest.mark.anyio
async def test_relative_paths_in_agents_toml_resolve_against_its_directory(tmp_path: Path) -> None:
    """A host starts our server from anywhere (often /): the README's `args = ["my_search_server.py"]` used to
    resolve against that directory and fail as a closed connection."""
    (tmp_path / "tools").mkdir()
    shutil.copy(ECHO, tmp_path / "tools" / "search_server.py")
    toml = tmp_path / "agents.toml"
    toml.write_text(
        f'[agents.web]\nkind = "mcp"\ncommand = {json.dumps(sys.executable)}\nargs = ["tools/search_server.py"]\n'
        'tool = "search"\n\n[agents.pinned]\nkind = "mcp"\ncommand = "x"\ncwd = "tools"\ntool = "search"\n',
        encoding="utf-8",
    )
    agents = load_agent_configs(toml)
    assert agents["pinned"].cwd == str(tmp_path.resolve() / "tools")  # type: ignore[union-attr]
    web = agents["web"]
    assert isinstance(web, McpAgentConnection) and web.cwd == str(tmp_path.resolve())
    assert Path.cwd() != tmp_path
    r = await call_mcp_tool(web, "find cats", timeout_s=20)
    assert r.ok and r.answer == "results for: find cats", r.message
