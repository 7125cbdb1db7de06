"""Agent connection settings: one TOML format, errors that name file, agent and field, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.server.agent_config import (
    LlmAgentConnection,
    McpAgentConnection,
    load_agent_configs,
    parse_agent_configs,
)

GOOD = """
[agents."openai/gpt-4o-mini"]
model = "openai/gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
input_per_mtok = 0.15
output_per_mtok = 0.6
description = "cheap generalist"
modes = ["code"]

[agents.local-smol]
model = "openai/smollm2"
api_base = "http://127.0.0.1:18081/v1"
timeout_s = 5
concurrency = 1

[agents.web-search]
kind = "mcp"
command = "python"
args = ["server.py"]
env_vars = ["SEARCH_KEY"]
tool = "search"
text_argument = "query"
arguments = { max_results = 3 }

[[agent]]
id = "meta/llama-2-70b-chat"
model = "openai/llama"
api_base = "http://127.0.0.1:9/v1"

[[agent]]
id = "remote-tool"
kind = "mcp"
url = "http://127.0.0.1:9000/mcp"
tool = "run"
cost_per_call_usd = 0.002
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    return path


def test_loads_both_forms_with_defaults(tmp_path: Path) -> None:
    agents = load_agent_configs(write(tmp_path, GOOD))
    assert list(agents) == [
        "openai/gpt-4o-mini",
        "local-smol",
        "web-search",
        "meta/llama-2-70b-chat",
        "remote-tool",
    ]
    gpt = agents["openai/gpt-4o-mini"]
    assert isinstance(gpt, LlmAgentConnection)
    assert (gpt.kind, gpt.timeout_s, gpt.max_output_tokens, gpt.concurrency) == ("llm", 30.0, 1024, 4)
    assert gpt.has_prices and gpt.input_per_mtok == 0.15
    smol = agents["local-smol"]
    assert isinstance(smol, LlmAgentConnection) and not smol.has_prices and smol.api_key_env is None
    tool = agents["web-search"]
    assert isinstance(tool, McpAgentConnection)
    assert (tool.command, tool.args, tool.text_argument, tool.arguments) == (
        "python",
        ("server.py",),
        "query",
        {"max_results": 3},
    )
    remote = agents["remote-tool"]
    assert isinstance(remote, McpAgentConnection) and remote.url and remote.cost_per_call_usd == 0.002
    assert agents["meta/llama-2-70b-chat"].id == "meta/llama-2-70b-chat"


def test_public_view_shows_env_name_and_whether_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET123")
    gpt = load_agent_configs(write(tmp_path, GOOD))["openai/gpt-4o-mini"]
    view = gpt.public_view()
    assert view["api_key_env"] == "OPENAI_API_KEY" and view["api_key_set"] is True
    assert "sk-test-SECRET123" not in repr(view)
    monkeypatch.delenv("OPENAI_API_KEY")
    assert gpt.public_view()["api_key_set"] is False


@pytest.mark.parametrize("field", ["api_key", "token", "API_KEY"])
def test_rejects_a_key_in_the_file_without_echoing_it(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, f'[agents.a]\nmodel = "openai/x"\n{field} = "sk-live-SECRET"\n')
    with pytest.raises(InvalidInput) as err:
        load_agent_configs(path)
    text = str(err.value)
    assert str(path) in text and "agents.a." + field in text and "api_key_env" in text
    assert "sk-live-SECRET" not in text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('[agents.a]\nmodel = "openai/x"\napi_key_env = "sk-live-SECRET"\n', "agents.a.api_key_env"),
        ('[agents.a]\nmodel = "openai/x"\napi_key_env = "sk-live-SECRET' + "x" * 200 + '"\n', "agents.a.api_key_env"),
        ('[agents.m]\nkind = "mcp"\ncommand = "c"\ntool = "t"\nenv_vars = ["OK", "sk-live-SECRET"]\n', "env_vars[1]"),
    ],
)
def test_a_key_pasted_where_a_variable_name_goes_is_not_echoed(tmp_path: Path, body: str, field: str) -> None:
    """api_key_env and env_vars take variable NAMES; a value there is usually the key itself, so it is masked."""
    path = write(tmp_path, body)
    with pytest.raises(InvalidInput) as err:
        load_agent_configs(path)
    text = str(err.value)
    assert field in text and "'***'" in text and "NAME of an environment variable" in text, text
    assert "SECRET" not in text


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[agents.a]\nmodel = "openai/x"\ntimeout_s = -1\n', "agents.a.timeout_s=-1"),
        ('[agents.a]\nmodel = "openai/x"\nconcurrency = 0\n', "agents.a.concurrency=0"),
        ("[agents.a]\ndescription = 'no model'\n", "agents.a.model"),
        ('[agents.a]\nmodel = "m"\napi_base = "ftp://x"\n', "agents.a.api_base"),
        ('[agents.a]\nmodel = "m"\napi_base = "http://u:p@host/v1"\n', "agents.a.api_base"),
        ('[agents.a]\nmodel = "m"\napi_key_env = "not a name"\n', "agents.a.api_key_env"),
        ('[agents.a]\nmodel = "m"\ninput_per_mtok = 1.0\n', "agents.a="),
        ('[agents.a]\nmodel = "m"\nmodle = "typo"\n', "agents.a.modle"),
        ('[agents.a]\nmodel = "m"\ninput_per_mtok = inf\n', "agents.a.input_per_mtok"),  # TOML has inf and nan
        ('[agents.a]\nmodel = "m"\nmodes = ["' + "m" * 201 + '"]\n', "agents.a.modes"),  # was a traceback
        ('[agents.a]\nmodel = "m"\noutput_per_mtok = nan\n', "agents.a.output_per_mtok"),
        ('[agents.a]\nmodel = "m"\noutput_per_mtok = 1e300\n', "agents.a.output_per_mtok"),
        ('[agents.a]\nkind = "shell"\n', "agents.a.kind"),
        ('[agents.t]\nkind = "mcp"\ntool = "x"\n', "agents.t="),
        ('[agents.t]\nkind = "mcp"\ntool = "x"\ncommand = "c"\nurl = "http://h/mcp"\n', "agents.t="),
        ('[agents."a/b"]\nmodel = "m"\nmax_output_tokens = 0\n', 'agents."a/b".max_output_tokens'),
        ('[[agent]]\nmodel = "m"\n', "agent[0].id"),
        ('[[agent]]\nid = "a"\nmodel = "m"\n[agents.a]\nmodel = "m"\n', "agents.a="),
        ('[agnets.a]\nmodel = "m"\n', "agnets"),
        ('[agent.x]\nmodel = "m"\n', "tables [agents.<id>] (note the s"),
        ("", "at least one"),
    ],
)
def test_errors_name_file_agent_and_field(tmp_path: Path, body: str, needle: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(InvalidInput) as err:
        load_agent_configs(path)
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)


def test_unquoted_dotted_id_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r'must be quoted: \[agents\."gpt-4\.1"\]'):
        load_agent_configs(write(tmp_path, '[agents.gpt-4.1]\nmodel = "m"\n'))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r'valid TOML .*; quote ids containing "/" or "."'):
        load_agent_configs(write(tmp_path, '[agents.meta/llama]\nmodel = "m"\n'))
    # other syntax errors are not about quoting (QA: an unterminated array was told to quote ids)
    for broken in ("x = [\n", '[agents.a]\nmodel = "m"\n[agents.a]\nmodel = "n"\n', '[agents."a"\n'):
        with pytest.raises(InvalidInput, match="valid TOML") as refused:
            load_agent_configs(write(tmp_path, broken))
        assert "quote ids" not in str(refused.value)
    with pytest.raises(InvalidInput, match=r"^file='.*absent\.toml': expected a readable TOML file"):
        load_agent_configs(tmp_path / "absent.toml")  # the argument named, then the path (not the path twice)
    with pytest.raises(InvalidInput, match=r"^--pool='.*absent\.toml': expected a readable TOML file"):
        load_agent_configs(tmp_path / "absent.toml", argument="--pool")


def test_other_sections_and_dict_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, '[judge]\nagent = "a"\n[agents.a]\nmodel = "m"\n')
    assert list(load_agent_configs(path, other_sections={"judge"})) == ["a"]
    agents = parse_agent_configs({"agents": {"x": {"model": "m"}}}, "inline")
    assert agents["x"].kind == "llm"


def test_settings_are_frozen(tmp_path: Path) -> None:
    gpt = load_agent_configs(write(tmp_path, GOOD))["local-smol"]
    with pytest.raises(ValueError):
        gpt.api_base = "http://evil.example/v1"  # type: ignore[misc]


def test_agents_load_is_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while storing the connections leaves the handbook's agents as they were (a disk error, injected)."""
    import sqlite3

    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.server.cli import main as cli_main

    db = tmp_path / "h.db"
    first = tmp_path / "first.toml"
    first.write_text('[agents."openai/a"]\nmodel = "openai/a"\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n')
    with pytest.raises(SystemExit) as exited:
        cli_main(["agents", "load", str(first), "--db", str(db)])
    assert exited.value.code == 0
    before = {a.id: a for a in HandbookStore(db).agents()}
    second = tmp_path / "second.toml"
    second.write_text(
        '[agents."openai/a"]\nmodel = "openai/a"\ninput_per_mtok = 5.0\noutput_per_mtok = 9.0\n'
        '[agents."openai/b"]\nmodel = "openai/b"\n'
    )

    def disk_error(self: HandbookStore, connections: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(HandbookStore, "save_connections", disk_error)
    with pytest.raises((sqlite3.OperationalError, SystemExit)):
        cli_main(["agents", "load", str(second), "--db", str(db)])
    store = HandbookStore(db)
    assert {a.id: a for a in store.agents()} == before  # neither the new prices nor agent b
    assert set(store.connections()) == {"openai/a"}
    store.close()


def test_agents_load_help_names_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    from skillorchestra.server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["agents", "load", "-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0 and "FILE agents.toml" in out and "the NAME of the key's variable" in out


def test_an_id_with_surrounding_spaces_is_the_handbooks_stripped_id(tmp_path: Path) -> None:
    """The handbook strips ids; a connection kept as ' m1 ' could never be found for agent m1 (QA)."""
    spaced = '[agents." m1 "]\nmodel = "openai/m1"\n[[agent]]\nid = "m2 "\nmodel = "openai/m2"\n'
    agents = load_agent_configs(write(tmp_path, spaced))
    assert list(agents) == ["m1", "m2"] and agents["m1"].id == "m1"
    twice = '[agents.m1]\nmodel = "openai/m1"\n[agents." m1"]\nmodel = "openai/m1"\n'
    with pytest.raises(InvalidInput, match="each agent id defined once"):
        load_agent_configs(write(tmp_path, twice))
    with pytest.raises(InvalidInput, match="agents.toml"):
        load_agent_configs(write(tmp_path, '[agents."  "]\nmodel = "openai/x"\n'))


def test_a_dot_id_is_refused_as_the_tools_refuse_it(tmp_path: Path) -> None:
    """`agents load` took [agents.".."], which MCP could then neither read, edit nor delete (final review)."""
    with pytest.raises(InvalidInput, match=r"other than '\.' or '\.\.'"):
        load_agent_configs(write(tmp_path, '[agents.".."]\nmodel = "openai/x"\n'))


def test_agents_load_prices_an_unpriced_model_from_litellms_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: agents priced only by litellm's table were billed by delegate but charged $0 by routing, so parallel steps
    overspent a session budget 900 times. The handbook now holds the table's prices (the file's win)."""
    from skillorchestra.handbook.service import Handbook, RouteRequest
    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.server.cli import main as cli_main

    db = tmp_path / "h.db"
    toml = write(
        tmp_path,
        '[agents.mini]\nmodel = "openai/gpt-4o-mini"\n'
        '[agents.own]\nmodel = "openai/gpt-4o"\ninput_per_mtok = 1.0\noutput_per_mtok = 3.0\n'
        '[agents.house]\nmodel = "openai/house-model-7"\n',
    )
    with pytest.raises(SystemExit) as exited:
        cli_main(["agents", "load", str(toml), "--db", str(db)])
    err = capsys.readouterr().err
    assert exited.value.code == 0
    assert "mini: priced from litellm's table for 'openai/gpt-4o-mini': $0.15 input, $0.6 output" in err
    assert "house: no price in the file and litellm's table does not know 'openai/house-model-7'" in err
    assert "own:" not in err
    store = HandbookStore(db)
    try:
        prices = {a.id: (a.input_per_mtok, a.output_per_mtok) for a in store.agents()}
        assert prices == {"mini": (0.15, 0.6), "own": (1.0, 3.0), "house": (None, None)}
        routed = Handbook(store).route(RouteRequest(text="Summarise this paragraph.", allowed_agents=["mini"]))
        assert routed.candidates[0].expected_cost_usd is not None and routed.candidates[0].expected_cost_usd > 0
    finally:
        store.close()


def test_agents_load_gives_an_mcp_agents_price_per_call_to_the_handbook(tmp_path: Path) -> None:
    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.server.cli import main as cli_main

    db = tmp_path / "h.db"
    toml = write(
        tmp_path,
        '[agents.search]\nkind = "mcp"\ncommand = "search-server"\ntool = "search"\ncost_per_call_usd = 0.003\n',
    )
    with pytest.raises(SystemExit) as exited:
        cli_main(["agents", "load", str(toml), "--db", str(db)])
    assert exited.value.code == 0
    store = HandbookStore(db)
    try:
        assert [(a.id, a.cost_per_call_usd, a.input_per_mtok) for a in store.agents()] == [("search", 0.003, None)]
    finally:
        store.close()


def test_an_unpriced_tool_agent_is_routed_at_the_zero_delegate_bills_it(tmp_path: Path) -> None:
    """QA: delegate bills an unpriced MCP tool call $0 (no tokens), but routing charged it the dearest agent's cost
    until a report recorded the $0."""
    from skillorchestra.handbook.service import Handbook, RouteRequest
    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.server.cli import main as cli_main

    db = tmp_path / "h.db"
    toml = write(tmp_path, '[agents.search]\nkind = "mcp"\ncommand = "search-server"\ntool = "search"\n')
    with pytest.raises(SystemExit) as exited:
        cli_main(["agents", "load", str(toml), "--db", str(db)])
    assert exited.value.code == 0
    store = HandbookStore(db)
    try:
        assert [(a.id, a.cost_per_call_usd) for a in store.agents()] == [("search", 0.0)]
        routed = Handbook(store).route(RouteRequest(text="find the news"))
        assert routed.candidates[0].expected_cost_usd == 0.0
    finally:
        store.close()


def test_a_second_load_names_the_agents_it_takes_out_of_delegation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: loading pool.toml after badpool.toml silently dropped badpool's connection settings."""
    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.server.cli import main as cli_main

    db = tmp_path / "h.db"
    for name, ids in (("first", ["a", "b"]), ("second", ["b", "c"])):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            "".join(f'[agents.{i}]\nmodel = "openai/{i}"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n' for i in ids)
        )
        with pytest.raises(SystemExit) as exited:
            cli_main(["agents", "load", str(path), "--db", str(db)])
        assert exited.value.code == 0
    err = capsys.readouterr().err
    assert err.count("this file replaces the loaded settings") == 1 and "settings: a (loaded before, not in it)" in err
    assert set(HandbookStore(db).connections()) == {"b", "c"}


def test_an_agents_file_saved_with_a_bom_loads(tmp_path: Path) -> None:
    """QA: Windows editors' byte order mark read as a TOML error at line 1, column 1."""
    path = tmp_path / "agents.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_agent_configs(path) == load_agent_configs(write(tmp_path, GOOD))


def test_a_type_error_is_worded_in_the_files_terms(tmp_path: Path) -> None:
    """QA: `modes = "answer"` read "expected a valid tuple", a Python word a TOML author never sees."""
    with pytest.raises(InvalidInput, match=r"agents\.a\.modes='answer': expected a list \(an array: \[\.\.\.\]\)"):
        load_agent_configs(write(tmp_path, '[agents.a]\nmodel = "openai/a"\nmodes = "answer"\n'))


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("timeout_s = true", r"agents\.a\.timeout_s=True: expected a valid number"),
        ('concurrency = "4"', r"agents\.a\.concurrency='4': expected a valid integer"),
        ("concurrency = 2.5", r"agents\.a\.concurrency=2\.5: expected a valid integer"),
        ("max_output_tokens = true", r"agents\.a\.max_output_tokens=True: expected a valid integer"),
        ('input_per_mtok = "0.5"\noutput_per_mtok = 1', r"agents\.a\.input_per_mtok='0\.5': expected a valid number"),
    ],
)
def test_a_number_is_a_toml_number(tmp_path: Path, setting: str, needle: str) -> None:
    """A quoted number or a boolean is a typo in the file, not a setting: `timeout_s = true` had run with 1 s and
    `max_output_tokens = true` had capped every answer at one token."""
    with pytest.raises(InvalidInput, match=needle):
        load_agent_configs(write(tmp_path, f'[agents.a]\nmodel = "openai/a"\n{setting}\n'))


def test_an_integer_is_a_number_of_seconds_and_dollars(tmp_path: Path) -> None:
    body = '[agents.a]\nmodel = "openai/a"\ntimeout_s = 5\ninput_per_mtok = 1\noutput_per_mtok = 2\n'
    conn = load_agent_configs(write(tmp_path, body))["a"]
    assert isinstance(conn, LlmAgentConnection)
    assert (conn.timeout_s, conn.input_per_mtok, conn.output_per_mtok) == (5.0, 1.0, 2.0)


def test_the_judges_numbers_are_toml_numbers(tmp_path: Path) -> None:
    body = '[agents.a]\nmodel = "openai/a"\n\n[judge]\nagent = "a"\nmax_tokens = "32"\n'
    with pytest.raises(InvalidInput, match=r"judge\.max_tokens='32': expected a valid integer"):
        load_agent_configs(write(tmp_path, body))


def test_an_mcp_agents_price_per_call_is_bounded_as_the_handbooks(tmp_path: Path) -> None:
    """Review: agents.toml took any cost_per_call_usd, while the handbook's agent and the trace reader stop at
    MAX_USD, so explore could write traces its own reader refused."""
    body = '[agents.t]\nkind = "mcp"\ncommand = "python"\ntool = "search"\ncost_per_call_usd = 1e7\n'
    with pytest.raises(InvalidInput, match=r"agents\.t\.cost_per_call_usd=10000000\.0: expected less than or equal"):
        load_agent_configs(write(tmp_path, body))


def test_a_bearer_token_is_named_for_a_url_server_only(tmp_path: Path) -> None:
    body = '[agents.t]\nkind = "mcp"\nurl = "http://127.0.0.1:9/mcp"\ntool = "s"\nbearer_token_env = "SO_TOKEN"\n'
    conn = load_agent_configs(write(tmp_path, body))["t"]
    assert isinstance(conn, McpAgentConnection) and conn.bearer_token_env == "SO_TOKEN"
    stdio = '[agents.t]\nkind = "mcp"\ncommand = "python"\ntool = "s"\nbearer_token_env = "SO_TOKEN"\n'
    with pytest.raises(InvalidInput, match="bearer_token_env only with url"):
        load_agent_configs(write(tmp_path, stdio))


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ('model = "openai/a"\ntoken = "x"', "api_key_env"),
        ('kind = "mcp"\ncommand = "python"\ntool = "s"\ntoken = "x"', "env_vars"),
        ('kind = "mcp"\nurl = "http://127.0.0.1:9/mcp"\ntool = "s"\ntoken = "x"', "bearer_token_env"),
        ('kind = "mcp"\nurl = "http://127.0.0.1:9/mcp"\ntool = "s"\narguments = { token = "x" }', "bearer_token_env"),
    ],
)
def test_a_secret_in_the_file_is_sent_to_the_field_its_agent_takes(tmp_path: Path, table: str, field: str) -> None:
    """Review: a url tool agent was told to use api_key_env (an LLM's) or env_vars (a stdio server's)."""
    with pytest.raises(InvalidInput, match=f"no secret in the file: .* name it with {field}|named in {field}"):
        load_agent_configs(write(tmp_path, f"[agents.a]\n{table}\n"))


def test_agents_show_says_whether_a_bearer_token_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = '[agents.t]\nkind = "mcp"\nurl = "http://127.0.0.1:9/mcp"\ntool = "s"\nbearer_token_env = "SO_TEST_TOK"\n'
    conn = load_agent_configs(write(tmp_path, body))["t"]
    monkeypatch.delenv("SO_TEST_TOK", raising=False)
    assert conn.public_view()["bearer_token_set"] is False
    monkeypatch.setenv("SO_TEST_TOK", "abc")
    view = conn.public_view()
    assert view["bearer_token_set"] is True and "abc" not in str(view)
