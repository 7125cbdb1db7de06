"""A CLI command closes the handbook it opened before it returns (Python 3.13 QA: `handbook show`, `export`,
`versions`, `import`, `agents load|show` left the connection to the garbage collector, and 3.13 warns of every such
connection: `ResourceWarning: unclosed database`). SQLite removes a WAL file when its last connection closes, so a
leftover `-wal` beside the file after the command returned means an open connection, on every Python version."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from skillorchestra.server.cli import main

AGENTS_TOML = '[agents.cheap]\nmodel = "openai/cheap"\napi_base = "http://127.0.0.1:9/v1"\nmodes = ["answer"]\n'


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return int(exited.value.code or 0)


COMMANDS = [
    ["handbook", "show"],
    ["handbook", "export", "-"],
    ["handbook", "versions"],
    ["handbook", "rebuild"],
    ["handbook", "import", "--example"],
    ["agents", "load", "AGENTS"],
    ["agents", "show"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_command_leaves_no_connection_open(
    command: list[str], tmp_path: Path, no_collection: None, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS_TOML)
    assert run(["handbook", "import", "--example", "--db", str(db)]) == 0
    gc.collect()  # the set-up's own connection is not what is checked
    assert not Path(f"{db}-wal").exists()
    argv = [str(agents) if part == "AGENTS" else part for part in command]
    assert run([*argv, "--db", str(db)]) == 0, capsys.readouterr().err
    assert not Path(f"{db}-wal").exists(), f"`skillorchestra {' '.join(command)}` left its handbook open"
