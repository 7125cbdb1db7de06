"""The command line: `skillorchestra <command>` and `skillorchestra-mcp` (= `skillorchestra serve`).

Errors exit with status 2 and one line on stderr naming the argument or field and what was expected.
"""

from __future__ import annotations

import os

# One BLAS thread per call: the server scores on several worker threads at once, and OpenBLAS's own threads on
# top of those oversubscribe small machines (measured on 2 cores: 10x slower semantic routing under load).
# Set before anything imports numpy; a value the user chose wins.
for _blas in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas, "1")

import argparse
import contextlib
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from skillorchestra.handbook.errors import HandbookError
from skillorchestra.server.argtypes import db_arg, depth_arg, name_arg, path_arg, seed_arg
from skillorchestra.server.log_format import LOG_FORMATS, LogFormat, announce, configure_logging
from skillorchestra.server.opened_stores import closing_opened

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# the subparsers of a command (argparse keeps the class private)
Subparsers = argparse._SubParsersAction


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class _DescribedCommands(argparse._SubParsersAction):
    """Subcommands whose own --help starts with what they do: their one-line help (QA: it went straight to the
    options)."""

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        text = kwargs.get("help")
        if isinstance(text, str) and "description" not in kwargs:
            kwargs["description"] = text[:1].upper() + text[1:] + "."
        return super().add_parser(name, **kwargs)  # type: ignore[arg-type]


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.register("action", "parsers", _DescribedCommands)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _version() -> str:
    """The release and the handbook schema it reads: two installs that print one release number can still be told
    apart when one refuses a file the other wrote (schema numbers grow with every migration)."""
    from skillorchestra.handbook.schema import schema_version
    from skillorchestra.server.version import package_version  # not server.app: that imports the MCP SDK

    return f"{package_version()} (handbook schema {schema_version()})"


def _common(parser: argparse.ArgumentParser, *, db: bool) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # SUPPRESS: a subcommand's default must not overwrite a value given before it on the command line
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default=argparse.SUPPRESS, help="log level (stderr)"
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS,
        help="log records as text lines or JSON objects, one a line (default: SKILLORCHESTRA_LOG_FORMAT, else text)",
    )
    if db:
        parser.add_argument(
            "--db",
            type=db_arg,
            default=argparse.SUPPRESS,
            help="handbook database (default: SKILLORCHESTRA_DB, else the user data directory)",
        )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, db=True)
    parser.add_argument(
        "--transport",
        type=lambda value: "http" if value == "streamable-http" else value,  # the SDK's name for it
        choices=("stdio", "sse", "http"),
        default="stdio",
        help="stdio, sse, or http (streamable HTTP; 'streamable-http' is accepted too)",
    )
    # None: not given (a stdio server refuses them), the settings' defaults 127.0.0.1 and 8765 otherwise
    parser.add_argument("--host", default=None, help="bind address for sse/http (loopback by default)")
    parser.add_argument("--port", type=int, default=None, help="port for sse/http (default 8765)")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        dest="allowed_hosts",
        help="extra Host header value to accept over HTTP (repeatable)",
    )
    parser.add_argument(
        "--matcher",
        choices=("auto", "lexical", "semantic"),
        default=None,
        help="skill inference (auto: semantic when the MiniLM weights are installed; env SKILLORCHESTRA_MATCHER)",
    )
    parser.add_argument(
        "--no-example", action="store_true", help="do not load the shipped example handbook into a new database"
    )


def build_parser() -> argparse.ArgumentParser:
    """The `skillorchestra` command line: one subparser per command, added in the order --help lists them."""
    parser = Parser(prog="skillorchestra", description="Skill-aware routing of LLM agents, served over MCP.")
    _common(parser, db=True)  # `skillorchestra --db X handbook show` as well as `... handbook show --db X`
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_serve(sub)
    _add_handbook(sub)
    _add_agents(sub)
    _add_data(sub)
    _add_eval(sub)
    _add_explore(sub)
    _add_learn(sub)
    _add_demo(sub)
    return parser


def _add_serve(sub: Subparsers) -> None:
    """`serve`: the same arguments as `skillorchestra-mcp`."""
    from skillorchestra.server import commands

    serve = sub.add_parser("serve", help="run the MCP server")
    add_serve_arguments(serve)
    serve.set_defaults(handler=commands.serve)


def _add_handbook(sub: Subparsers) -> None:
    """`handbook <action>`: the handbook as an artifact (its actions in the order --help lists them)."""
    from skillorchestra.server import commands_learn

    handbook = sub.add_parser("handbook", help="the handbook as an artifact")
    _common(handbook, db=True)
    hb = handbook.add_subparsers(dest="action", required=True, parser_class=Parser)
    _add_handbook_export_import(hb)
    _add_handbook_inspection(hb)
    commands_learn.add_handbook_actions(hb, _common)  # diff A B, promote V, rollback
    _add_handbook_select(hb)
    _add_handbook_prune(hb)


def _add_handbook_export_import(hb: Subparsers) -> None:
    """`handbook export FILE` and `handbook import [FILE|--example]`: the document in and out."""
    from skillorchestra.server import commands

    export = hb.add_parser("export", help="write the live handbook as one JSON document")
    _common(export, db=True)
    export.add_argument("file", help="output path, or - for stdout")
    export.set_defaults(handler=commands.handbook_export)
    imp = hb.add_parser("import", help="validate a handbook JSON document and make it the live version")
    _common(imp, db=True)
    imp.add_argument("file", nargs="?", help="a document written by export (or --example)")
    imp.add_argument("--example", action="store_true", help="import the example handbook shipped with the package")
    imp.set_defaults(handler=commands.handbook_import)


def _add_handbook_inspection(hb: Subparsers) -> None:
    """`handbook show`, `rebuild` and `versions`: looking at the live handbook and its history."""
    from skillorchestra.server import commands

    show = hb.add_parser("show", help="summary of the live handbook")
    _common(show, db=True)
    show.set_defaults(handler=commands.handbook_show)
    rebuild = hb.add_parser("rebuild", help="the version's snapshot plus a replay of its events")
    _common(rebuild, db=True)
    rebuild.set_defaults(handler=commands.handbook_rebuild)
    versions = hb.add_parser("versions", help="list handbook versions")
    _common(versions, db=True)
    versions.add_argument("--metrics", action="store_true", help="print each version's full metrics as JSON")
    versions.set_defaults(handler=commands.handbook_versions)


def _add_handbook_select(hb: Subparsers) -> None:
    """`handbook select NAME DEPTH|--drop`: the depth an orchestrator's steps are read at, without learning."""
    from skillorchestra.server import commands

    select = hb.add_parser(
        "select",
        help="set the skill depth consult_handbook, route_step and delegate read for an orchestrator (an edit of the"
        " live version; --drop: back to full depth)",
    )
    _common(select, db=True)
    select.add_argument("orchestrator", type=name_arg, metavar="NAME", help="the name tools are sent as orchestrator")
    select.add_argument(
        "depth", type=depth_arg, nargs="?", metavar="DEPTH", help="0 (mode level), 1 (top-level skills), 2, ..."
    )
    select.add_argument("--drop", action="store_true", help="remove NAME's selection (its steps read full depth)")
    select.set_defaults(handler=commands.handbook_select)


def _add_handbook_prune(hb: Subparsers) -> None:
    """`handbook prune --before DATE [--vacuum]`: retention."""
    from skillorchestra.server import commands

    prune = hb.add_parser("prune", help="fold old events into a new snapshot; delete old decisions and outcomes")
    _common(prune, db=True)
    prune.add_argument(
        "--before",
        required=True,
        metavar="DATE",
        help="ISO date or date-time (UTC unless an offset is given), e.g. 2026-01-31",
    )
    prune.add_argument(
        "--vacuum",
        action="store_true",
        help="then give the freed space back to the disk: rewrites the file (needs its size free again) holding the"
        " write lock throughout, so stop servers on the file first",
    )
    prune.set_defaults(handler=commands.handbook_prune)


def _add_agents(sub: Subparsers) -> None:
    """`agents load FILE` and `agents show`: connection settings come only from files, never from MCP tools."""
    from skillorchestra.server import commands

    agents = sub.add_parser("agents", help="agent connection settings (only from files, never from MCP tools)")
    _common(agents, db=True)
    asub = agents.add_subparsers(dest="action", required=True, parser_class=Parser)
    load = asub.add_parser("load", help="load agents.toml: connection settings, and the agents into the handbook")
    _common(load, db=True)
    load.add_argument(
        "file",
        type=path_arg,
        metavar="FILE",
        help="agents.toml: [agents.<id>] tables (model, api_base, api_key_env = the NAME of the key's variable, "
        "or an MCP command/url)",
    )
    load.set_defaults(handler=commands.agents_load)
    show_agents = asub.add_parser("show", help="the loaded connection settings (no secrets are stored)")
    _common(show_agents, db=True)
    show_agents.set_defaults(handler=commands.agents_show)


def _add_data(sub: Subparsers) -> None:
    """`data convert`: works on files only, so it takes no --db."""
    from skillorchestra.server import commands

    data = sub.add_parser("data", help="datasets")
    _common(data, db=False)
    data.set_defaults(uses_db=False)  # a --db given before `data` is refused, not silently ignored
    dsub = data.add_subparsers(dest="action", required=True, parser_class=Parser)
    convert = dsub.add_parser("convert", help="turn a real dataset into the generic outcome format")
    _common(convert, db=False)
    convert.add_argument(
        "--format", required=True, choices=("llmrouter", "routellm"), help="the layout of SRC: which dataset it is"
    )
    convert.add_argument(
        "--seed", type=seed_arg, default=None, help="seed of the routellm 50/50 split (>= 0; default 0; routellm only)"
    )
    convert.add_argument(
        "src",
        type=path_arg,
        metavar="SRC",
        help="the dataset's folder (llmrouter: its score and query files; routellm: mmlu/ and gsm8k files)",
    )
    convert.add_argument(
        "outdir",
        type=path_arg,
        metavar="OUTDIR",
        help="folder to write train.jsonl, test.jsonl and agents.json in (routellm: one subfolder per dataset)",
    )
    convert.set_defaults(handler=commands.data_convert)


def _add_eval(sub: Subparsers) -> None:
    """`eval`: its arguments live with its handler (commands_eval)."""
    from skillorchestra.server import commands_eval

    evaluate = sub.add_parser("eval", help="compare routing policies on recorded outcomes")
    _common(evaluate, db=True)
    commands_eval.add_arguments(evaluate)
    evaluate.set_defaults(handler=commands_eval.run)


def _add_explore(sub: Subparsers) -> None:
    """`explore`: its arguments live with its handler (commands_explore)."""
    from skillorchestra.server import commands_explore

    explore = sub.add_parser("explore", help="run every agent of a pool on tasks and write outcome traces")
    _common(explore, db=True)
    commands_explore.add_arguments(explore)
    explore.set_defaults(handler=commands_explore.run)


def _add_learn(sub: Subparsers) -> None:
    """`learn`: its arguments live with its handler (commands_learn)."""
    from skillorchestra.server import commands_learn

    learn = sub.add_parser("learn", help="learn, refine and select a handbook from outcome traces (a new version)")
    _common(learn, db=True)
    commands_learn.add_learn_arguments(learn)
    learn.set_defaults(handler=commands_learn.learn)


def _add_demo(sub: Subparsers) -> None:
    """`demo`: its arguments live with its handler (commands_learn)."""
    from skillorchestra.server import commands_learn

    demo = sub.add_parser("demo", help="the newcomer's tour, offline: learn from a shipped sample, then route")
    _common(demo, db=True)
    commands_learn.add_demo_arguments(demo)
    demo.set_defaults(handler=commands_learn.demo)


def _configure_logging(level: str, log_format: LogFormat | None) -> None:
    # one line per record: untrusted text in a message cannot forge one (log_format.py)
    configure_logging(level, log_format or _env_log_format())


def _env_log_format() -> LogFormat:
    raw = os.environ.get("SKILLORCHESTRA_LOG_FORMAT", "")
    given = raw.strip().lower()
    if given in ("", "text", "json"):
        return "json" if given == "json" else "text"
    raise UsageError(f"SKILLORCHESTRA_LOG_FORMAT={raw!r}: expected text or json")


def _run(argv: Sequence[str] | None, build: Callable[[], argparse.ArgumentParser]) -> int:
    try:
        try:
            return _dispatch(argv, build)
        finally:
            sys.stdout.flush()  # a reader that went away (`| head -1`) shows here, not at interpreter exit
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """The reader of stdout closed it early (`| head`): stop quietly, as a tool killed by SIGPIPE does (exit 141).
    Python ignores SIGPIPE, so this is the recipe of its `signal` docs: point stdout at devnull so the flush at exit
    does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor behind stdout (an embedding or a test capture)
        pass
    return 128 + 13  # 128 + SIGPIPE


def _dispatch(argv: Sequence[str] | None, build: Callable[[], argparse.ArgumentParser]) -> int:
    try:
        args = build().parse_args(argv)
        if not getattr(args, "uses_db", True) and getattr(args, "db", None) is not None:
            raise UsageError(f"skillorchestra {args.command}: argument --db: this command does not use a handbook")
        _configure_logging(getattr(args, "log_level", "WARNING"), getattr(args, "log_format", None))
        with contextlib.suppress(AttributeError, ValueError):  # QA: handbook show on a cp1252 console: a traceback
            sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]  # (stdio serve: its own)
        with closing_opened():  # the handbooks the command opened (commands._store, existing_store)
            return int(args.handler(args) or 0)
    except UsageError as exc:
        announce(str(exc), "ERROR")
        return 2
    except HandbookError as exc:
        announce(f"error: {exc}", "ERROR")
        return 2
    except sqlite3.DatabaseError as exc:
        parsed = locals().get("args")
        db = getattr(parsed, "db", None)
        # without --db, eval and demo work in a temporary file: only the others' trouble is the default handbook's
        falls_back = getattr(parsed, "command", "serve") not in ("eval", "demo", "data")  # skillorchestra-mcp: serve
        where = f"--db {db}: " if db is not None else (f"{_default_db_source()}: " if falls_back else "")
        from skillorchestra.handbook.sqlite_file import file_trouble  # loaded with the store already, if it ran

        trouble = file_trouble(exc)  # a full disk, an I/O error, a read-only or damaged file: what to do
        if trouble is not None:
            announce(f"error: {where}{trouble}", "ERROR")
        elif isinstance(exc, sqlite3.OperationalError):  # e.g. "database is locked": the file is fine, the moment
            from skillorchestra.handbook.sqlite_file import busy_text  # is not

            announce(f"error: {busy_text(exc, db or _default_db()) or exc}", "ERROR")
        else:  # e.g. --db names a file that is not SQLite
            announce(f"error: {where}not a usable handbook database ({exc})", "ERROR")
        return 2
    except BrokenPipeError:
        raise  # stdout's reader went away: _run exits quietly
    except (OSError, sqlite3.Error) as exc:  # a path that cannot be read, written or opened
        announce(f"error: {exc}", "ERROR")
        return 2
    except KeyboardInterrupt:
        return 130


def _default_db() -> str:
    from skillorchestra.server.settings import default_db_path

    return str(default_db_path())


def _default_db_source() -> str:
    """Where the handbook's path came from without --db, for an error about the file: its user never typed it (QA:
    "the handbook file is damaged ... move the file away" named no file)."""
    try:
        path = _default_db()
    except HandbookError:
        return "the default handbook"
    return f"SKILLORCHESTRA_DB={path}" if os.environ.get("SKILLORCHESTRA_DB") else f"the default handbook {path}"


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(_run(argv, build_parser))


def build_serve_parser() -> argparse.ArgumentParser:
    from skillorchestra.server import commands

    parser = Parser(prog="skillorchestra-mcp", description="The SkillOrchestra MCP server (stdio by default).")
    add_serve_arguments(parser)
    parser.set_defaults(handler=commands.serve)
    return parser


def serve_main(argv: Sequence[str] | None = None) -> None:
    sys.exit(_run(argv, build_serve_parser))
