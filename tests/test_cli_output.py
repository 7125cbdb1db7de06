"""What the CLI says and where (a QA pass): a path that cannot be written is one line naming its argument; a
command's success summary is on stdout, its notes on stderr; `handbook versions` counts only learning metrics."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from skillorchestra.handbook.models import Agent, Competence, CostStats, HandbookDocument, Mode, Skill
from skillorchestra.handbook.schema import schema_version
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.cli import main
from skillorchestra.server.commands import METRICS_INDENT
from skillorchestra.server.version import package_version

CLI = Path(sys.executable).with_name("skillorchestra")
AGENTS_TOML = '[agents.cheap]\nmodel = "openai/cheap"\napi_base = "http://127.0.0.1:9/v1"\nmodes = ["answer"]\n'


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_version_names_the_handbook_schema_it_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two installs printing one release number could not be told apart when one refused the other's file."""
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"skillorchestra {package_version()} (handbook schema {schema_version()})"
    db = tmp_path / "h.db"
    assert run(["handbook", "import", "--example", "--db", str(db)], capsys)[0] == 0
    assert HandbookStore(db).schema_version() == schema_version()  # the number a file this release wrote carries


def test_export_to_a_folder_names_the_file_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    assert run(["handbook", "import", "--example", "--db", str(db)], capsys)[0] == 0
    folder = tmp_path / "exports"
    folder.mkdir()
    code, out, err = run(["handbook", "export", str(folder), "--db", str(db)], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: file='{folder}': expected a writable file path, or - for stdout (Is a directory")
    missing = tmp_path / "no" / "such" / "h.json"
    code, _, err = run(["handbook", "export", str(missing), "--db", str(db)], capsys)
    assert code == 2 and err.startswith(f"error: file='{missing}': expected a writable file path")
    assert list(folder.iterdir()) == [] and not (tmp_path / "no").exists()


def test_export_over_an_old_export_replaces_it_keeps_its_mode_and_leaves_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exports are written beside the target and renamed over it: the result is the same file, only newer."""
    db, folder = tmp_path / "h.db", tmp_path / "backups"
    folder.mkdir()
    backup = folder / "nightly.json"
    backup.write_text('{"old": true}\n', encoding="utf-8")
    backup.chmod(0o600)
    assert run(["handbook", "import", "--example", "--db", str(db)], capsys)[0] == 0
    assert run(["handbook", "export", str(backup), "--db", str(db)], capsys) == (0, "", "")
    exported = HandbookDocument.model_validate_json(backup.read_text(encoding="utf-8"))
    store = HandbookStore(db)
    try:
        assert exported == store.document() and (backup.stat().st_mode & 0o777) == 0o600
    finally:
        store.close()
    assert [p.name for p in folder.iterdir()] == ["nightly.json"]


@pytest.mark.parametrize("argv", [["serve"], ["handbook", "import", "--example"], ["learn", "--data", "events"]])
def test_a_db_that_is_a_directory_is_refused_naming_db(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*argv, "--db", str(tmp_path)], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "argument --db: expected a database file path" in err and "which is a directory" in err
    assert list(tmp_path.iterdir()) == []


def test_a_database_path_from_the_environment_that_is_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKILLORCHESTRA_DB", str(tmp_path))
    code, out, err = run(["handbook", "import", "--example"], capsys)
    assert (
        code == 2
        and out == ""
        and err.strip() == f"error: db='{tmp_path}': expected a database file path (this is a directory)"
    )


def test_the_mcp_entry_point_refuses_a_db_directory_too(tmp_path: Path) -> None:
    """`skillorchestra-mcp --db DIR` (what an MCP client starts) says which argument is wrong, then exits."""
    done = serve_mcp(tmp_path)
    assert done.returncode == 2 and "argument --db" in done.stderr and "which is a directory" in done.stderr


def test_success_summaries_are_on_stdout_and_notes_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, toml = tmp_path / "h.db", tmp_path / "agents.toml"
    toml.write_text(AGENTS_TOML, encoding="utf-8")
    code, out, err = run(["agents", "load", str(toml), "--db", str(db)], capsys)
    assert code == 0
    assert out == f"loaded 1 agent from {toml}: cheap\nadded modes the handbook did not have: answer\n"
    notes = err.splitlines()
    assert notes[0].startswith("note: cheap: no price in the file and litellm's table does not know 'openai/cheap'")
    assert notes[1].startswith("note: the handbook has no skills yet") and len(notes) == 2
    code, out, err = run(["handbook", "import", "--example", "--db", str(db)], capsys)
    assert code == 0 and out == "imported version 2: 20 skills, 9 agents\n"
    assert err.startswith("note: the live handbook no longer has 1 agent with connection settings (cheap)")
    for argv in (["handbook", "promote", "1"], ["handbook", "rollback"], ["handbook", "versions"]):
        code, out, err = run([*argv, "--db", str(db)], capsys)
        assert code == 0 and out and err == "", argv


def test_versions_count_learning_metrics_not_a_promotions_bookkeeping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    document = HandbookDocument(modes=[Mode(id="answer")])
    store.create_version(document, source="import", summary="plain")  # v2: no metrics
    store.create_version(document, source="import", summary="measured", metrics={"custom": 0.5, "other": 1})  # v3
    store.promote(2)  # v4: bookkeeping only
    store.rollback()  # v5: back to v3, its two metrics plus bookkeeping
    store.close()
    code, out, _ = run(["handbook", "versions", "--db", str(db)], capsys)
    lines = {int(line[1:].split()[0]): line for line in out.splitlines()}
    assert code == 0 and sorted(lines) == [1, 2, 3, 4, 5]
    assert lines[4].endswith("promoted version 2 (replacing 3): plain")  # the summary says what was promoted
    assert lines[5].endswith("rollback from version 4 to version 3  2 metrics (--metrics shows them)")
    assert lines[3].endswith("measured  2 metrics (--metrics shows them)")
    code, out, _ = run(["handbook", "versions", "--metrics", "--db", str(db)], capsys)  # the full record on demand
    blocks = metrics_blocks(out)
    assert code == 0 and sorted(blocks) == [1, 2, 3, 4, 5]  # each line as without --metrics, its metrics below
    assert blocks[4] == {"promoted_from": 2, "replaced": 3, "rollback": False, "with_events": True} and blocks[2] == {}
    assert blocks[3] == {"custom": 0.5, "other": 1}


def metrics_blocks(out: str) -> dict[int, dict[str, object]]:
    """`handbook versions --metrics` read back: each version's number and the JSON indented below its line."""
    blocks: dict[int, list[str]] = {}
    for line in out.splitlines():
        if line.startswith(METRICS_INDENT):
            blocks[max(blocks)].append(line)
        else:
            blocks[int(line[1:].split()[0])] = []
    return {version: json.loads("\n".join(lines)) if lines else {} for version, lines in blocks.items()}


def test_handbook_show_prints_an_unknown_price_as_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = HandbookStore(tmp_path / "h.db")
    agents = [
        Agent(id="half", input_per_mtok=2.0),
        Agent(id="free", input_per_mtok=0.0, output_per_mtok=0.0),
        Agent(id="unpriced"),
    ]
    store.create_version(HandbookDocument(agents=agents), source="import")
    store.close()
    code, out, _ = run(["handbook", "show", "--db", str(tmp_path / "h.db")], capsys)
    assert code == 0 and "agent half $2/$? per Mtok" in out and "None" not in out
    assert "agent free $0/$0 per Mtok" in out and "agent unpriced price unknown" in out  # a $0 price looked unknown


def test_handbook_show_prints_per_call_prices_and_what_routing_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: an MCP tool priced per call read "price unknown", and no competence or evidence was shown."""
    store = HandbookStore(tmp_path / "h.db")
    document = HandbookDocument(
        modes=[Mode(id="answer")],
        skills=[Skill(id="sql", mode="answer", description="writes SQL")],
        agents=[Agent(id="search", cost_per_call_usd=0.01), Agent(id="coder", input_per_mtok=1.0, output_per_mtok=2.0)],
        competence=[Competence(agent_id="coder", skill_id="sql", alpha=4.0, beta=1.0)],
        cost=[CostStats(agent_id="coder", skill_id="sql", n=3, mean_cost_usd=0.00004)],
    )
    store.create_version(document, source="import")
    store.close()
    code, out, _ = run(["handbook", "show", "--db", str(tmp_path / "h.db")], capsys)
    lines = out.splitlines()
    assert code == 0 and "  sql: writes SQL (best: coder 0." in out and ", n 3)" in out
    search = next(line for line in lines if line.startswith("agent search"))
    assert search.startswith("agent search $0.01 per call; competence 0.") and "(n 0)" in search
    coder = next(line for line in lines if line.startswith("agent coder"))
    assert coder.startswith("agent coder $1/$2 per Mtok; competence 0.") and coder.endswith(
        "(n 3), $0.00004 per call recorded"
    )


def test_global_options_go_before_the_command_as_well(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`skillorchestra --db X handbook show` is how most CLIs take a global option; argparse said "invalid choice"."""
    db = tmp_path / "h.db"
    assert run(["--db", str(db), "handbook", "import", "--example"], capsys)[0] == 0
    code, out, _ = run(["--db", str(db), "--log-level", "ERROR", "handbook", "show"], capsys)
    assert code == 0 and "agents" in out
    assert run(["handbook", "show", "--db", str(db)], capsys)[1] == out  # the same handbook either way
    code, out, err = run(["--db", str(db), "data", "convert", "--format", "llmrouter", str(tmp_path), "o"], capsys)
    assert code == 2 and out == "" and "argument --db: this command does not use a handbook" in err


def test_a_db_path_with_a_tilde_means_the_home_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts pass arguments without a shell: `--db ~/h.db` made a folder named `~` (SKILLORCHESTRA_DB expanded it)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert run(["handbook", "import", "--example", "--db", "~/h.db"], capsys)[0] == 0
    assert (tmp_path / "home" / "h.db").exists() and not (tmp_path / "~").exists()


def serve_mcp(db: Path) -> subprocess.CompletedProcess[str]:
    """`skillorchestra-mcp --db DB` as an MCP client starts it (stdin closed: it must refuse before serving)."""
    return subprocess.run(
        [str(CLI.with_name("skillorchestra-mcp")), "--db", str(db)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_handbook_a_newer_skillorchestra_wrote_is_refused_by_the_cli_and_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its schema may mean what this build would misread or break: both entry points refuse it, writing nothing."""
    db = tmp_path / "h.db"
    HandbookStore(db).close()
    conn = sqlite3.connect(db)
    with conn:  # what a newer build leaves: a migration of our set that this one does not know
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('skillorchestra', 'm099_future', '2027-01-01')"
        )
    conn.close()
    before = db.read_bytes()
    newer = (
        f"written by a newer skillorchestra: handbook schema {schema_version() + 1}, migrations m099_future unknown to "
        f"this release, which reads schema {schema_version()} at most (see --version); upgrade skillorchestra)"
    )
    code, out, err = run(["handbook", "show", "--db", str(db)], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: db=") and err.rstrip().endswith(newer)
    done = serve_mcp(db)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: db=") and done.stderr.rstrip().endswith(newer)
    assert db.read_bytes() == before and not db.with_name("h.db-wal").exists()  # nothing checkpointed, or left to


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_db_where_no_file_can_be_created_names_db_and_the_path(capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only file system or directory, simulated by /proc (no file can be created there, not even by root,
    which permission bits would not stop): SQLite said only "unable to open database file", naming nothing."""
    db = Path("/proc/skillorchestra-h.db")
    expected = f"error: db='{db}': expected a database file this process can create, open and write"
    code, out, err = run(["handbook", "import", "--example", "--db", str(db)], capsys)
    assert code == 2 and out == "" and err == f"{expected} (No such file or directory)\n"  # from creating it
    done = serve_mcp(db)
    assert done.returncode == 2 and done.stdout == "" and done.stderr == f"{expected} (No such file or directory)\n"


def test_a_db_whose_folder_is_a_file_names_db_and_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The folder of the path cannot be made (a file is in its place): mkdir said "File exists", naming no flag."""
    (tmp_path / "f").write_text("not a folder", encoding="utf-8")
    db = tmp_path / "f" / "h.db"
    code, out, err = run(["handbook", "import", "--example", "--db", str(db)], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: db=") and err.endswith(f"({tmp_path / 'f'} is not a directory)\n")
    assert (tmp_path / "f").read_text(encoding="utf-8") == "not a folder"


@pytest.mark.parametrize("flags", [["--port", "8765"], ["--host", "0.0.0.0"], ["--allowed-host", "example.com"]])
def test_a_network_flag_without_a_network_transport_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """QA: `serve --port 8765` served stdio, silently: no HTTP server and no word why."""
    code, out, err = run(["serve", *flags, "--db", str(tmp_path / "h.db")], capsys)
    shown = flags[1] if flags[0] == "--port" else repr(flags[1])
    assert code == 2 and out == "" and f"{flags[0]}={shown}: expected --transport http or sse with it" in err
    assert not (tmp_path / "h.db").exists()


def test_subcommands_say_what_they_do_and_log_levels_take_any_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: a subcommand's own --help went straight to its options; `--log-level debug` was refused."""
    code, out, _ = run(["eval", "--help"], capsys)
    assert code == 0 and "\nCompare routing policies on recorded outcomes.\n" in out
    code, out, _ = run(["handbook", "prune", "--help"], capsys)
    assert code == 0 and "\nFold old events into a new snapshot" in out
    db = tmp_path / "h.db"
    assert run(["handbook", "import", "--example", "--db", str(db), "--log-level", "debug"], capsys)[0] == 0
