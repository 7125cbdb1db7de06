"""`skillorchestra eval`: compare routing policies on recorded outcomes (interface.md), print the table,
optionally write the JSON and the plots. It never opens the user's handbook: the online replay works in a
temporary database unless --db names one."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from skillorchestra.handbook.atomic_file import write_text_atomic
from skillorchestra.handbook.errors import InvalidInput, counted
from skillorchestra.handbook.evaluation import DEFAULT_EPISODES, MAX_EPISODES
from skillorchestra.server.argtypes import count_arg, lambda_arg, path_arg, seed_arg
from skillorchestra.server.outputs import progress_shown

if TYPE_CHECKING:  # the evaluation stack (numpy, the service) loads only when eval runs, not for every command
    from skillorchestra.handbook.embedding import Embedder
    from skillorchestra.handbook.store import HandbookStore
    from skillorchestra.handbook.traces import AgentPrice, TraceTask

log = logging.getLogger("skillorchestra.eval")


def _tasks(flag: str, path: Path) -> list[TraceTask]:
    from skillorchestra.handbook.traces import read_tasks

    if not path.is_file():
        raise InvalidInput(flag, str(path), "an existing generic outcome JSONL file")
    return read_tasks(path)


def _check_judged(args: argparse.Namespace, train: list[TraceTask], test: list[TraceTask]) -> None:
    """Refuse before learning when no test task can be scored: every row compares the agents of train on the
    unseen test tasks that at least one of them was judged on."""
    from skillorchestra.handbook.evaluation.data import SCORABLE_TEST, drop_seen, scorable

    try:
        tasks = scorable(train, test)
    except InvalidInput:  # train judged nobody
        raise InvalidInput("--train", str(args.train), "at least one task with a judged (non-null) score") from None
    if not tasks:  # says which rule dropped them (QA: a test file that repeats train read as merely unjudged)
        unseen, seen = drop_seen(train, test)
        why = f"of its {counted(len(test), 'task')}, {seen} repeat a query of --train"
        why += f" and {len(unseen)} are judged for no agent of --train" if unseen else ""
        raise InvalidInput("--test", str(args.test), f"{SCORABLE_TEST}; {why}")


def _check_outputs(args: argparse.Namespace) -> None:
    """--json and --plot-dir must be writable before the (long) run starts, so a bad path fails at once and the
    run writes nothing."""
    from skillorchestra.server.outputs import check_output_dir, check_output_file

    if args.json is not None and str(args.json) != "-":
        check_output_file("--json", args.json)
    if args.plot_dir is not None:
        from skillorchestra.server.plots import require_matplotlib

        require_matplotlib(args.plot_dir)
        check_output_dir("--plot-dir", args.plot_dir)


def _prices(args: argparse.Namespace, tasks: list[TraceTask]) -> tuple[dict[str, AgentPrice], Path | None]:
    """--agents, else an agents.json beside the train file (data convert writes one), else none; and its path."""
    from skillorchestra.handbook.evaluation.data import cost_basis
    from skillorchestra.handbook.traces import read_prices

    path = args.agents
    if path is None and (args.train.parent / "agents.json").is_file():
        path = args.train.parent / "agents.json"
        log.info("eval: prices from %s", path)
    if path is not None:
        if not Path(path).is_file():
            raise InvalidInput("--agents", str(path), "an existing agents.json")
        return read_prices(path), path
    if cost_basis(tasks) != "cost_usd":
        raise InvalidInput("--agents", "(not given)", "an agents.json with prices (the data does not record cost_usd)")
    return {}, None


def _check_costs(train: list[TraceTask], prices: dict[str, AgentPrice], path: Path | None) -> None:
    """Refuse before embedding or learning when no judged agent of train has a known cost (run_eval checks it
    too, for library callers): here the message can name the agents.json that priced none of them."""
    from skillorchestra.handbook.evaluation.data import judged_agents, mean_costs, raw_matrices, require_a_known_cost

    agents = judged_agents(train)
    _, costs = raw_matrices(train, agents, prices)
    require_a_known_cost(agents, mean_costs(costs, agents), None if path is None else str(path))


def _check_db(path: Path | None) -> None:
    """--db must be eval's own database (new, or written by an earlier eval): its online replay makes versions and
    logs outcomes there, so a user's handbook given by mistake would be replaced and its log filled (QA: a learned
    20-skill handbook became eval's 5-skill replay, and `learn --data events` then learned from the replay)."""
    if path is None or not path.is_file():
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            has_versions = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'versions'")
            if has_versions.fetchone() is None:
                return  # not a handbook: opening it refuses another program's file, and says so
            rows = conn.execute("SELECT id, source FROM versions WHERE source NOT IN ('init', 'eval') ORDER BY id")
            theirs = rows.fetchall()
            # a handbook built by edits stays on the initial version: its events and loaded agents tell it apart
            edits = conn.execute(
                "SELECT COUNT(*) FROM events WHERE version NOT IN (SELECT id FROM versions WHERE source = 'eval')"
            ).fetchone()[0]
            has_connections = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'connections'").fetchone()
            loaded = conn.execute("SELECT COUNT(*) FROM connections").fetchone()[0] if has_connections else 0
    except sqlite3.Error:
        return  # not a usable SQLite file: opening it says so
    if theirs or edits or loaded:
        sources = ", ".join(sorted({source for _, source in theirs}))
        held = [f"{counted(len(theirs), 'version')} from {sources}"] if theirs else []
        held += [f"{counted(edits, 'edit')} or outcomes"] if edits else []
        held += [f"{counted(loaded, 'loaded agent')}"] if loaded else []
        raise InvalidInput(
            "--db",
            str(path),
            f"a database of eval's own (a new file, or one an earlier eval wrote): this one holds a handbook "
            f"({'; '.join(held)}), which eval's online replay would replace; name another file",
        )


def run(args: argparse.Namespace) -> int:
    from skillorchestra.handbook.evaluation.report import summary
    from skillorchestra.handbook.evaluation.runner import EvalConfig, default_learn, run_eval
    from skillorchestra.handbook.evaluation.sweep import DEFAULT_LAMBDAS

    _check_db(getattr(args, "db", None))
    _check_outputs(args)
    train = _tasks("--train", args.train)
    test = _tasks("--test", args.test)
    _check_judged(args, train, test)
    prices, prices_path = _prices(args, train + test)
    _check_costs(train, prices, prices_path)
    embedder, cache = _embedder(args, train + test)
    config = EvalConfig(
        lambdas=tuple(args.lambdas) if args.lambdas else DEFAULT_LAMBDAS,
        seed=args.seed,
        db_path=getattr(args, "db", None),
        learn_fn=partial(default_learn, embedder=embedder),
        **({"episodes": args.episodes} if args.episodes is not None else {}),
    )
    try:
        result = run_eval(train, test, prices, config)
    finally:
        if cache is not None:
            cache.close()
    # the files first: `eval --json out.json | head` closes stdout after a line, and the run's result was lost;
    # the table all the same when a file cannot be written (the run's figures are not lost with it)
    to_stdout = args.json is None or str(args.json) != "-"
    text = None if args.json is None else json.dumps(result, indent=1, allow_nan=False, default=_json_default)
    try:
        if text is not None and to_stdout:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(args.json, text + "\n")  # a failed write leaves a previous report whole
        if args.plot_dir is not None:
            from skillorchestra.server.plots import write_plots

            for path in write_plots(result, args.plot_dir):
                print(f"wrote {path}", file=sys.stderr)
    finally:
        print(summary(result), file=sys.stdout if to_stdout else sys.stderr)
    if text is not None and not to_stdout:
        from skillorchestra.server.outputs import write_stdout_utf8

        write_stdout_utf8(text + "\n")
    return 0


def _embedder(args: argparse.Namespace, tasks: list[TraceTask]) -> tuple[Embedder | None, HandbookStore | None]:
    """--matcher's features for the learner: MiniLM vectors or None for TF-IDF; and the --db store that caches the
    vectors (opened only for MiniLM; the caller closes it)."""
    from skillorchestra.server.jobs import make_embedder, warm_embeddings

    store = None
    if args.matcher != "lexical" and getattr(args, "db", None) is not None:
        from skillorchestra.handbook.store import HandbookStore

        store = HandbookStore(args.db)
    embedder, features = make_embedder(args.matcher, store)
    log.info("eval: %s", features)
    if embedder is None:
        if store is not None:
            store.close()
        return None, None
    queries = list(dict.fromkeys(task.query for task in tasks))
    embedded = warm_embeddings(embedder, queries, _progress)
    if embedded:
        print(f"\rembedded {embedded} new queries{' ' * 40}", file=sys.stderr)
    return embedder, store


def _progress(fraction: float, message: str) -> None:
    if progress_shown():
        print(f"\r{message}", end="", file=sys.stderr, flush=True)


def _json_default(value: object) -> object:
    """numpy scalars and the like, as plain JSON numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:  # _common's --db help names the user's handbook; eval never defaults to it
        if action.dest == "db":
            action.help = "keep the online replay's handbook in this database (default: a temporary one)"
    parser.add_argument("--train", type=path_arg, required=True, help="generic outcome JSONL to learn from")
    parser.add_argument("--test", type=path_arg, required=True, help="generic outcome JSONL to evaluate on")
    parser.add_argument("--agents", type=path_arg, default=None, help="agents.json prices (default: beside --train)")
    parser.add_argument(
        "--lambda",
        type=lambda_arg,
        action="append",
        dest="lambdas",
        default=None,
        help="cost trade-off to sweep (repeatable; default 0 0.02 0.05 0.1 0.2 0.3 0.5 1.0)",
    )
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of splits, random policy, Thompson, episodes")
    parser.add_argument("--json", type=path_arg, default=None, help="write the JSON result here (- for stdout)")
    parser.add_argument("--plot-dir", type=path_arg, default=None, help="write pareto.png and shares.png here")
    parser.add_argument(
        "--episodes",
        type=count_arg(MAX_EPISODES),
        default=None,
        metavar="N",
        help=f"step-level episodes to build from the test tasks (default {DEFAULT_EPISODES}, at most {MAX_EPISODES})",
    )
    parser.add_argument(
        "--matcher",
        choices=("lexical", "semantic", "auto"),
        default="lexical",
        help="the learner's features: lexical TF-IDF (default: fast, and kNN's features too), or semantic MiniLM as "
        "`learn` uses by default when installed (auto); vectors are cached in --db when given",
    )
