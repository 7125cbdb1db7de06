"""`skillorchestra explore`: arguments and handler (the work is in server/explore.py).

The pool comes from `--pool agents.toml` (same format as `agents load`), else from the connection settings
already loaded into the database (`--db`). The summary (tasks run, calls, errors, cost, accuracy per agent)
is printed as one JSON object on stdout; the progress bar and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import anyio

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import INFRASTRUCTURE_ERRORS
from skillorchestra.server.argtypes import path_arg, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=path_arg, required=True, help='JSONL: {"id", "query", "reference"?, "grader"?}')
    parser.add_argument(
        "--pool", type=path_arg, default=None, help="agents.toml (default: the connections loaded in the database)"
    )
    parser.add_argument(
        "--out", type=path_arg, required=True, help="trace JSONL (appended; finished tasks are skipped)"
    )
    parser.add_argument("--concurrency", type=positive_int, default=4, help="tasks in flight (default 4)")
    parser.add_argument(
        "--grader",
        choices=("auto", "exact", "contains", "numeric"),
        default="auto",
        help="for tasks without their own grader (auto: numeric for numeric references, else exact)",
    )
    parser.add_argument("--timeout", type=positive_float, default=None, help="seconds per call (capped by the agent's)")
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="output tokens per call (capped)")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N tasks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _pool(args: argparse.Namespace) -> dict:
    from skillorchestra.server.agent_config import load_agent_configs, parse_agent

    if args.pool is not None:
        return load_agent_configs(args.pool, argument="--pool")
    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.server.commands import db_path

    db = db_path(args)
    if not Path(db).is_file():  # QA: "--pool=None", not saying that the database is not there
        raise InvalidInput(
            "--pool",
            "(missing)",
            f"an agents.toml file, or a database with connections loaded by `skillorchestra agents load` ({db} "
            "does not exist)",
        )
    store = HandbookStore(db)
    try:
        stored = store.connections()
    finally:
        store.close()  # not left to the garbage collector (Python 3.13 warns of an unclosed database)
    if not stored:
        raise InvalidInput("--pool", "(missing)", f"an agents.toml file (no connections are loaded in {db})")
    return {a: parse_agent(a, {k: v for k, v in raw.items() if k != "id"}, str(db)) for a, raw in stored.items()}


def run(args: argparse.Namespace) -> int:
    quiet = getattr(args, "log_level", "WARNING") == "WARNING"  # failures are in the traces and the summary
    loggers = [logging.getLogger(n) for n in ("skillorchestra.server.llm_backend", "skillorchestra.server.mcp_backend")]
    levels = [logger.level for logger in loggers]
    if quiet:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
    try:
        return _run(args)
    except KeyboardInterrupt:  # every finished task is already a complete line of --out
        print(
            f"explore: interrupted; the finished tasks are in {args.out}: run the same command again to resume",
            file=sys.stderr,
        )
        raise
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    from skillorchestra.server.explore import explore, read_explore_tasks
    from skillorchestra.server.outputs import check_output_file

    check_output_file("--out", args.out)  # before any agent is called: a bad path must not waste a paid run
    tasks = read_explore_tasks(args.tasks)
    if args.limit is not None:
        tasks = tasks[: args.limit]
    pool = _pool(args)
    summary = anyio.run(
        lambda: explore(
            tasks,
            pool,
            args.out,
            concurrency=args.concurrency,
            grader=args.grader,
            timeout_s=args.timeout,
            max_tokens=args.max_tokens,
            progress=not args.no_progress,
        )
    )
    print(json.dumps(summary.as_dict(), sort_keys=True))
    if summary.errors:
        failed = sum(summary.errors.values())
        print(
            f"explore: {failed} calls failed ({', '.join(summary.errors)}); an infrastructure failure's score is null. "
            f"A rerun skips every task already in {args.out}: remove a task's line from it to run that task again",
            file=sys.stderr,
        )
    if summary.unpriced_agents:
        unpriced = ", ".join(sorted(summary.unpriced_agents))
        print(f"explore: cost unknown for {unpriced} (no price in the pool file or litellm's table)", file=sys.stderr)
    # QA: a run in which no agent could be reached exited 0 like a good one (an agent's refusal of a task is an
    # answer, scored: review)
    outages = sum(n for error_class, n in summary.errors.items() if error_class in INFRASTRUCTURE_ERRORS)
    return 1 if summary.calls and outages >= summary.calls else 0
