"""End to end over stdio against the installed console script: the host's view of the server."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from raw_jsonrpc import OPENING, tool_call

from skillorchestra.handbook.embedding import locate_minilm_weights
from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.server.settings import ServerSettings

pytestmark = pytest.mark.anyio

SCRIPT = shutil.which("skillorchestra-mcp", path=str(Path(sys.executable).parent))


def server_params(db: Path, *args: str) -> StdioServerParameters:
    assert SCRIPT, "the skillorchestra-mcp console script is not installed next to this interpreter"
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    return StdioServerParameters(command=SCRIPT, args=["--db", str(db), *args], env=env)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_console_script_serves_the_example_handbook(tmp_path: Path, mode: str) -> None:
    async with Client(server_params(tmp_path / "h.db"), mode=mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"consult_handbook", "route_step", "record_outcome"} <= tools
        decision = await client.call_tool("route_step", {"text": "write a python function that sorts a list"})
        assert not decision.is_error
        content = decision.structured_content
        assert content is not None and content["skills"][0]["skill_id"].startswith("code")
        outcome = await client.call_tool("record_outcome", {"decision_id": content["decision_id"], "success": True})
        assert not outcome.is_error and outcome.structured_content["updated"]  # type: ignore[index]


LOADING = "lexical (semantic model still loading)"


async def test_the_skill_matcher_is_loaded_once_tools_are_listed_not_by_the_first_step(tmp_path: Path) -> None:
    """The served process loads MiniLM and the skill vectors in the background after the first tools/list: no tool
    is called here, so only that warm-up can write the example's skill vectors into the file."""
    if locate_minilm_weights() is None:
        pytest.skip("the MiniLM weights are not installed (`make embeddings`)")
    db = tmp_path / "h.db"

    def counts() -> tuple[int, int]:
        with contextlib.closing(sqlite3.connect(db)) as conn:  # a reader beside the server (WAL)
            return tuple(
                conn.execute("SELECT (SELECT COUNT(*) FROM embeddings), (SELECT COUNT(*) FROM skills)").fetchone()
            )

    async with Client(server_params(db)) as client:
        await client.list_tools()
        with anyio.fail_after(120):  # a guard against a hang, not a speed check
            while (seen := counts())[0] < seen[1]:
                await anyio.sleep(0.05)
        assert seen[1] > 0 and seen[0] == seen[1]
        step = {"text": "write a python function that sorts a list"}
        with anyio.fail_after(60):  # the vectors are stored a moment before the warm-up says it is done
            while (await client.call_tool("consult_handbook", step)).structured_content["skills_source"] == LOADING:  # type: ignore[index]
                await anyio.sleep(0.05)
        decision = await client.call_tool("route_step", step)
        assert decision.structured_content is not None and decision.structured_content["skills_source"] == "semantic"


def test_stdout_carries_only_protocol_messages(tmp_path: Path) -> None:
    """Raw JSON-RPC over the pipe: every stdout line must parse as a JSON-RPC message."""
    assert SCRIPT
    requests = [
        *OPENING,
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        tool_call(3, "route_step", {"text": "who wrote hamlet", "lambda_": -1}),
        tool_call(4, "consult_handbook", {"text": "who wrote hamlet"}),
    ]
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    proc = subprocess.Popen(
        [SCRIPT, "--db", str(tmp_path / "h.db"), "--log-level", "DEBUG"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    messages = []
    try:
        proc.stdin.write("".join(json.dumps(r) + "\n" for r in requests))
        proc.stdin.flush()
        while len([m for m in messages if "id" in m]) < 4:
            line = proc.stdout.readline()
            assert line, "the server closed stdout before answering every request"
            messages.append(json.loads(line))  # raises on any stray print
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    rest = proc.stdout.read()
    assert rest.strip() == "", f"unexpected stdout after the answers: {rest[:200]!r}"
    assert all(m.get("jsonrpc") == "2.0" for m in messages)
    answered = {m["id"]: m for m in messages if "id" in m}
    assert set(answered) == {1, 2, 3, 4}
    assert answered[3]["result"]["isError"] is True
    assert answered[4]["result"]["structuredContent"]["skills"]


def _raw_server(db: Path, **env: str) -> subprocess.Popen[str]:
    """The console script over pipes, for tests that write JSON-RPC lines by hand and read stdout and stderr."""
    assert SCRIPT
    proc = subprocess.Popen(
        [SCRIPT, "--db", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", **env),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    return proc


def test_every_line_gets_an_answer_even_one_the_sdk_cannot_parse(tmp_path: Path) -> None:
    """QA: a lone surrogate escape (JavaScript's JSON.stringify of a cut emoji), a line that is not JSON and a
    batch were dropped without a word, and the client waited for its timeout. The first is served with the half
    character replaced; the others get their JSON-RPC error, with the request's id where it has one."""
    assert SCRIPT
    lines = [
        *(json.dumps(r) for r in OPENING),
        '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"route_step","arguments":'
        '{"text":"summarise this \\ud83d"}}}',
        "not json",
        '[{"jsonrpc":"2.0","id":4,"method":"ping"}]',
        '{"jsonrpc":"2.0","id":5,"method":7}',
        json.dumps({"jsonrpc": "2.0", "id": 6, "method": "ping"}),
        # QA: a list as the name answered "unhashable type: 'list'" with error code 0 and a logged traceback
        json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": ["route_step"]}}),
        json.dumps(
            {"jsonrpc": "2.0", "id": 8, "method": "prompts/get", "params": {"name": "orchestrate", "arguments": "g"}}
        ),
        "",  # a blank line: no answer (review: it was answered -32700)
        "[" * 5000,  # review: nesting past the parser's limit ended the server
        '{"id": 9, "result": 7}',  # a malformed response of the client's: answered, but not as its request 9's answer
        '{"jsonrpc":"2.0","id":10,"method":"tools/call","params":["\\ud83d"]}',  # a half emoji and a bad shape
        # QA: the low half (JS's "🚀x".slice(1)) was answered -32700 without the request's id
        '{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"route_step","arguments":'
        '{"text":"\\ude80 summarise this"}}}',
    ]
    proc = _raw_server(tmp_path / "h.db", SKILLORCHESTRA_MATCHER="lexical")
    answers = []
    stdout_lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [stdout_lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        proc.stdin.write("".join(line + "\n" for line in lines))
        proc.stdin.flush()
        while len(answers) < 12:  # initialize, 2 routes, 2 parse errors, 4 invalid requests, ping, 2 bad params
            try:
                answers.append(json.loads(stdout_lines.get(timeout=60)))
            except queue.Empty:
                pytest.fail(f"a line went unanswered; answers so far: {answers}")
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    by_id = {m.get("id"): m for m in answers if m.get("id") is not None}
    assert by_id[2]["result"]["structuredContent"]["agent_id"]  # routed: the half emoji read as U+FFFD
    assert by_id[11]["result"]["structuredContent"]["agent_id"]  # and its other half
    assert by_id[5]["error"]["code"] == -32600 and "result" in by_id[6]
    assert "name must be a string" in by_id[7]["error"]["message"] and by_id[7]["error"]["code"] == -32602
    assert "arguments must be an object" in by_id[8]["error"]["message"] and by_id[8]["error"]["code"] == -32602
    unnamed = sorted(m["error"]["code"] for m in answers if m.get("id") is None)
    assert unnamed == [-32700, -32700, -32600, -32600]  # not JSON, too deep; a batch, a response (no request id)
    assert 9 not in by_id and by_id[10]["error"]["code"] == -32600  # review: it was -32700 with no id
    warned = proc.stderr.read()
    assert "is not JSON" in warned and "a batch" in warned


def test_cli_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    cli = shutil.which("skillorchestra", path=str(Path(sys.executable).parent))
    assert cli
    bad = tmp_path / "bad.json"
    document = {"format": "skillorchestra-handbook", "schema_version": 1, "version": 0, "modes": [], "agents": []}
    document.update(skills=[{"id": "a", "parent_id": "zz"}], competence=[], cost=[])
    bad.write_text(json.dumps(document))
    proc = subprocess.run(
        [cli, "handbook", "import", str(bad), "--db", str(tmp_path / "h.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "zz" in proc.stderr
    assert not (tmp_path / "h.db").exists()  # a refused import creates no database
    imported = [cli, "handbook", "import", "--example", "--db", str(tmp_path / "h.db")]
    subprocess.run(imported, check=True, capture_output=True, timeout=60)
    proc = subprocess.run(
        [cli, "handbook", "export", str(tmp_path / "no" / "such" / "dir.json"), "--db", str(tmp_path / "h.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "No such file" in proc.stderr
    proc = subprocess.run([cli, "serve", "--transport", "carrier-pigeon"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--transport" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_a_bad_environment_variable_is_named_as_such(tmp_path: Path) -> None:
    cli = shutil.which("skillorchestra", path=str(Path(sys.executable).parent))
    assert cli
    env = dict(os.environ, SKILLORCHESTRA_FORGETTING="2")
    proc = subprocess.run(
        [cli, "serve", "--db", str(tmp_path / "h.db")], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: SKILLORCHESTRA_FORGETTING=")
    assert not (tmp_path / "h.db").exists()


@pytest.mark.parametrize("raw", ["inf", "nan", "1e309", "-1", "0", "soon"])
def test_a_decision_ttl_that_is_not_a_finite_positive_number_is_refused_at_start(
    raw: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An infinite TTL used to start the server and then break every route_step (an expiry of inf or null)."""
    monkeypatch.setenv("SKILLORCHESTRA_DECISION_TTL", raw)
    with pytest.raises(InvalidInput, match="SKILLORCHESTRA_DECISION_TTL") as refused:
        ServerSettings.from_env(db_path=tmp_path / "h.db")
    assert "at most 1e+09" in str(refused.value)


def test_a_long_finite_decision_ttl_is_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKILLORCHESTRA_DECISION_TTL", "31536000")
    assert ServerSettings.from_env(db_path=tmp_path / "h.db").decision_ttl_s == 31_536_000.0


def test_ctrl_c_stops_a_stdio_server(tmp_path: Path) -> None:
    """QA: after SIGINT a stdio server stopped answering but stayed until its stdin closed (Ctrl-C in a terminal did
    nothing); it exits as on SIGTERM, having answered what it had, with status 130."""
    proc = _raw_server(tmp_path / "h.db")
    try:
        proc.stdin.write("".join(json.dumps(r) + "\n" for r in OPENING))
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1  # serving
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130  # with stdin still open
    finally:
        proc.kill()
        proc.stdin.close()
    assert "SIGINT: the server stops" in proc.stderr.read()


def test_sigterm_mid_call_stops_as_closing_stdin_does(tmp_path: Path) -> None:
    """Start-up QA: SIGTERM (a host's second step of shutting a server down) ended the process at once: the tool
    agent's process was left running under PID 1 and its call was never recorded. It is now cancelled and recorded,
    the tool agent's process ended, and the exit status is 128 + SIGTERM."""
    db = tmp_path / "h.db"
    toml = tmp_path / "agents.toml"
    toml.write_text(
        f"""
[agents.sleepy]
kind = "mcp"
command = "{sys.executable}"
args = ["{Path(__file__).with_name("echo_mcp_server.py")}"]
tool = "slow"
arguments = {{ seconds = 60 }}
timeout_s = 120
"""
    )
    cli = Path(sys.executable).with_name("skillorchestra")
    subprocess.run([cli, "agents", "load", str(toml), "--db", str(db)], check=True, capture_output=True, timeout=60)
    proc = _raw_server(db)
    try:
        proc.stdin.write("".join(json.dumps(r) + "\n" for r in OPENING))
        proc.stdin.write(json.dumps(tool_call(2, "delegate", {"text": "wait", "agent_id": "sleepy"})) + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1
        err_lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [err_lines.put(line) for line in proc.stderr], daemon=True).start()
        while "echo_mcp_server starting" not in err_lines.get(timeout=60):  # the tool agent's process is up
            pass
        with contextlib.closing(sqlite3.connect(db)) as conn:  # and its call under way: delegate claimed the decision
            for _ in range(600):
                if conn.execute("SELECT COUNT(*) FROM decisions WHERE claimed_at IS NOT NULL").fetchone()[0]:
                    break
                threading.Event().wait(0.05)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the tool agent's process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.stdin.close()
    for child in children:  # ended with the server, not left to PID 1
        assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT call_error_class FROM decisions").fetchall() == [("cancelled",)]
