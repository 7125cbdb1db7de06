"""The CLI and the stdio server as hosts start them: paths nobody typed, blank settings, odd consoles, a closed
stdout (start-up QA). Each runs the real command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from skillorchestra.handbook.models import Agent, HandbookDocument
from skillorchestra.handbook.store import HandbookStore

BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if k != "SKILLORCHESTRA_DB"} | {"HF_HUB_OFFLINE": "1"}


def run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "skillorchestra"), *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        cwd=cwd,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_a_damaged_handbook_named_by_the_environment_is_named_in_the_error(tmp_path: Path) -> None:
    """QA: "not a usable handbook database" named no file when the path came from SKILLORCHESTRA_DB."""
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"not": "sqlite"}) * 100, encoding="utf-8")
    done = run(["handbook", "show"], env=ENV | {"SKILLORCHESTRA_DB": str(notes)})
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: SKILLORCHESTRA_DB={notes}: not a usable handbook database"), done.stderr
    served = subprocess.run(  # as a host starts it
        [str(BIN / "skillorchestra-mcp")],
        capture_output=True,
        text=True,
        env=ENV | {"SKILLORCHESTRA_DB": str(notes)},
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert served.returncode == 2 and f"SKILLORCHESTRA_DB={notes}: not a usable" in served.stderr, served.stderr


def test_blank_or_padded_database_paths_are_refused_naming_where_they_came_from(tmp_path: Path) -> None:
    """QA: SKILLORCHESTRA_DB='   ' made a handbook file named by three spaces, and --db ' ~/x.db' a folder ' ~'."""
    blank = run(["handbook", "show"], env=ENV | {"SKILLORCHESTRA_DB": "   "}, cwd=tmp_path)
    assert blank.returncode == 2 and "SKILLORCHESTRA_DB='   ': expected a database file path without blanks" in (
        blank.stderr
    )
    padded = run(["handbook", "show", "--db", " ~/x.db"], cwd=tmp_path)
    assert padded.returncode == 2 and "without blanks at its ends, got ' ~/x.db'" in padded.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_a_relative_database_path_is_named_with_the_folder_it_is_relative_to(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    done = run(["serve", "--db", "afile/h.db"], cwd=tmp_path)  # a host's config; the server creates the file
    assert done.returncode == 2 and f"db='afile/h.db (in {tmp_path})'" in done.stderr, done.stderr


def test_handbook_show_on_a_console_that_cannot_show_a_character_escapes_it(tmp_path: Path) -> None:
    """QA: a cp1252 console (Windows, stdout redirected) got a UnicodeEncodeError traceback for a non-ASCII id."""
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    store.create_version(HandbookDocument(agents=[Agent(id="本地-qwen", description="local")]), source="test")
    store.close()
    done = run(["handbook", "show", "--db", str(db)], env=ENV | {"PYTHONIOENCODING": "cp1252", "PYTHONUTF8": "0"})
    assert done.returncode == 0, done.stderr
    assert "\\u672c\\u5730-qwen" in done.stdout and "Traceback" not in done.stderr


def test_the_server_names_its_handbook_file_at_start(tmp_path: Path) -> None:
    served = subprocess.run(
        [str(BIN / "skillorchestra-mcp"), "--db", "h.db", "--log-level", "INFO"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert served.returncode == 0 and f"handbook {tmp_path / 'h.db'}" in served.stderr
    assert served.stdout == ""


def test_a_client_that_stops_reading_stdout_ends_the_server_quietly(tmp_path: Path) -> None:
    """QA: the SDK's BrokenPipeError came out as a 56-line exception-group traceback and exit status 1."""
    server = subprocess.Popen(
        [str(BIN / "skillorchestra-mcp"), "--db", str(tmp_path / "h.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert server.stdin is not None and server.stdout is not None and server.stderr is not None
    server.stdout.close()  # the reader goes away before the server answers anything
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    server.stdin.write((json.dumps(hello) + "\n").encode())
    server.stdin.flush()
    deadline = time.monotonic() + 60
    while server.poll() is None and time.monotonic() < deadline:  # its answer meets the closed pipe
        time.sleep(0.1)
        try:
            server.stdin.write(b"\n")  # a blank line is dropped; it wakes the reader to see the end
            server.stdin.flush()
        except BrokenPipeError:
            break
    try:
        server.stdin.close()
    except BrokenPipeError:
        pass
    assert server.wait(timeout=60) == 0
    err = server.stderr.read().decode()
    assert "Traceback" not in err and "the client closed the server's stdout: the server stops" in err


def test_json_on_stdout_stays_json_on_a_console_of_another_encoding(tmp_path: Path) -> None:
    """Review: with the console's escapes, `handbook export -` on cp1252 wrote \\u672c, which is no JSON escape."""
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    store.create_version(HandbookDocument(agents=[Agent(id="qwen", description="本地 😀 café")]), source="test")
    store.close()
    done = subprocess.run(
        [str(BIN / "skillorchestra"), "handbook", "export", "-", "--db", str(db)],
        capture_output=True,
        env=ENV | {"PYTHONIOENCODING": "cp1252", "PYTHONUTF8": "0"},
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.decode("utf-8"))["agents"][0]["description"] == "本地 😀 café"
