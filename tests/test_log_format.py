"""`--log-format json` / SKILLORCHESTRA_LOG_FORMAT=json: every record one JSON object a line, masked as the text
lines are; the served address too, so a log shipper's stream stays all JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from skillorchestra.server.log_format import JsonLineFormatter
from skillorchestra.server.masking import remember_keys

SKILLORCHESTRA = str(Path(sys.executable).with_name("skillorchestra"))


def _record(message: str, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("skillorchestra.delegate", logging.WARNING, __file__, 1, message, None, exc_info)


def test_a_json_record_is_one_line_with_its_fields_and_no_secret() -> None:
    secret = "sk-test-json-log-0123456789abcdef"
    remember_keys([secret])
    line = JsonLineFormatter().format(_record(f"provider said: one\nCRITICAL forged \x1b]0;title\x07 key {secret}"))
    assert "\n" not in line and "\x1b" not in line and line.isascii()
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message"}
    assert (entry["level"], entry["logger"]) == ("WARNING", "skillorchestra.delegate")
    assert entry["time"].endswith("Z") and entry["time"][10] == "T"
    assert entry["message"].startswith("provider said: one\nCRITICAL forged \x1b]0;title\x07 key ")  # as sent
    assert secret not in entry["message"]


def test_a_json_record_carries_its_traceback_masked() -> None:
    secret = "sk-test-json-trace-0123456789abcdef"
    remember_keys([secret])
    try:
        raise RuntimeError(f"upstream refused key {secret}")
    except RuntimeError:
        entry = json.loads(JsonLineFormatter().format(_record("call failed", sys.exc_info())))
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: upstream refused key" in entry["exception"] and secret not in entry["exception"]


def _serve_until_announced(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The HTTP server's stderr up to the line that says where it serves (then the server is stopped)."""
    proc = subprocess.Popen(
        [SKILLORCHESTRA, *args, "serve", "--transport", "http", "--port", "0", "--db", str(tmp_path / "h.db")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "serving http at" in line:
                break
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert out == ""  # stdout is never a log channel
    return lines


def test_serve_logs_json_from_the_flag_and_from_the_environment(tmp_path: Path) -> None:
    for args, env in (
        (("--log-format", "json", "--log-level", "info"), None),
        (("--log-level", "info"), {"SKILLORCHESTRA_LOG_FORMAT": "JSON"}),
    ):
        lines = _serve_until_announced(tmp_path, *args, env=env)
        entries = [json.loads(line) for line in lines]  # every line, the served address included
        assert any(e["logger"] == "skillorchestra" and e["message"].startswith("handbook ") for e in entries)
        assert entries[-1]["message"].startswith("skillorchestra: serving http at http://127.0.0.1:")


def test_the_error_a_command_stops_on_is_a_json_record_too(tmp_path: Path) -> None:
    """Review: `error: ...` lines (a bad --db, a busy file) had stayed plain text in a JSON stream."""
    (tmp_path / "not.db").write_text("not a database")
    failed = subprocess.run(
        [SKILLORCHESTRA, "--log-format", "json", "handbook", "show", "--db", str(tmp_path / "not.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2 and failed.stdout == ""
    entry = json.loads(failed.stderr)
    assert (entry["level"], entry["logger"]) == ("ERROR", "skillorchestra")
    assert entry["message"].startswith(f"error: --db {tmp_path / 'not.db'}: not a usable handbook database")


def test_text_stays_the_default_and_an_unknown_format_is_refused(tmp_path: Path) -> None:
    lines = _serve_until_announced(tmp_path)
    assert lines[-1].startswith("skillorchestra: serving http at http://127.0.0.1:")
    refused = subprocess.run(
        [SKILLORCHESTRA, "handbook", "show", "--db", str(tmp_path / "h.db")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SKILLORCHESTRA_LOG_FORMAT": "XML"},
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == "SKILLORCHESTRA_LOG_FORMAT='XML': expected text or json"
    flag = subprocess.run([SKILLORCHESTRA, "--log-format", "xml", "handbook", "show"], capture_output=True, text=True)
    assert flag.returncode == 2 and "--log-format: invalid choice: 'xml'" in flag.stderr
