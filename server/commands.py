"""What each CLI command does; argument parsing lives in cli.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from skillorchestra.handbook.atomic_file import write_text_atomic
from skillorchestra.handbook.document_checks import check_document
from skillorchestra.handbook.errors import (
    HandbookError,
    InvalidInput,
    counted,
    field_path,
    first_problem,
    named,
    not_utf8,
)
from skillorchestra.handbook.inert_text import one_line
from skillorchestra.handbook.models import Agent, HandbookDocument, Mode
from skillorchestra.handbook.store import BOOKKEEPING_METRICS, HandbookStore
from skillorchestra.server.opened_stores import opening
from skillorchestra.server.settings import ServerSettings, default_db_path

if TYPE_CHECKING:
    from skillorchestra.handbook.arrays import HandbookArrays
    from skillorchestra.handbook.service import Handbook
    from skillorchestra.server.agent_config import LlmAgentConnection, McpAgentConnection


def db_path(args: argparse.Namespace) -> Path:
    """The handbook a command works on: --db, else SKILLORCHESTRA_DB, else the user data directory."""
    return getattr(args, "db", None) or default_db_path()


def _store(args: argparse.Namespace) -> HandbookStore:
    """Open the handbook, creating it if it is new: for the commands that make one (import, agents load)."""
    # closed when the command's dispatch ends (opened_stores); a handler called directly leaves it to its caller
    return opening(HandbookStore(db_path(args)))


class NoHandbook(HandbookError):
    """A command that reads or changes an existing handbook was pointed at a file that does not exist."""


def existing_store(args: argparse.Namespace) -> HandbookStore:
    """Open a handbook that must already exist: a mistyped --db must not leave a new empty database behind."""
    path = Path(db_path(args))
    if not path.is_file() or path.stat().st_size == 0:  # an empty file is none (QA: show made one inside it)
        raise NoHandbook(
            f"no handbook at {path} (create one with `skillorchestra handbook import FILE`, `learn` or `serve`, "
            "or name an existing file with --db)"
        )
    return opening(HandbookStore(path))  # closed as _store's is


def serve(args: argparse.Namespace) -> int:
    from skillorchestra.server.app import serve as serve_async

    if args.transport == "stdio":  # QA: `serve --port 8765` served stdio, with no word of it
        given = [(flag, value) for flag, value in (("--host", args.host), ("--port", args.port)) if value is not None]
        given += [("--allowed-host", host) for host in args.allowed_hosts]
        if given:
            flag, value = given[0]
            raise InvalidInput(flag, value, "--transport http or sse with it (a stdio server listens on no port)")
    try:
        settings = ServerSettings.from_env(
            db_path=db_path(args),
            transport=args.transport,
            host=args.host,
            port=args.port,
            allowed_hosts=args.allowed_hosts,
            log_level=getattr(args, "log_level", "WARNING"),
            seed_example=not args.no_example,
            matcher=args.matcher,
        )
    except ValidationError as exc:
        where, value, expected = first_problem(exc)
        raise InvalidInput("--" + where.split(".")[0].replace("_", "-"), value, expected) from None
    asyncio.run(serve_async(settings))
    return 0


def read_document(path: Path) -> HandbookDocument:
    """Parse and validate a handbook document; errors name the JSON path of the bad field."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput("file", str(path), f"a readable handbook JSON file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    try:
        document = HandbookDocument.model_validate_json(text, strict=True)  # "8" is not a count (QA)
    except ValidationError as exc:
        where, value, expected = first_problem(exc)
        if exc.errors(include_url=False)[0]["type"] == "extra_forbidden":  # a field that has no place here: its
            value = "(its value not shown)"  # value says nothing, and may be a key (QA: api_key='sk-...' echoed)
        raise InvalidInput(f"{path.name}:{where or 'document'}", "" if value is None else value, expected) from None
    missing = [key for key in DOCUMENT_KEYS if key not in document.model_fields_set]
    if (
        missing
    ):  # the model's defaults would make {"format": ...} an empty handbook, and importing it empty the live one
        raise InvalidInput(
            f"{path.name}:{missing[0]}", "(missing)", f"the keys of an exported handbook ({', '.join(DOCUMENT_KEYS)})"
        )
    for i, row in enumerate(document.competence):  # the model's prior (1, 1) would stand in for a missing count
        lacking = [key for key in ("alpha", "beta") if key not in row.model_fields_set]
        if lacking:
            where = f"{path.name}:{field_path(('competence', i, lacking[0]))}"
            raise InvalidInput(where, "(missing)", "a number > 0 (a row needs both alpha and beta)")
    return document


METRICS_INDENT = " " * 6  # `handbook versions --metrics`: deeper than any version line starts

# interface.md: a handbook document has at least these keys
DOCUMENT_KEYS = ("format", "schema_version", "version", "modes", "skills", "agents", "competence", "cost")


def handbook_import(args: argparse.Namespace) -> int:
    from skillorchestra.handbook.example import example_document

    if args.example == bool(args.file):
        raise InvalidInput("file", args.file, "either a FILE or --example")
    document = example_document() if args.example else read_document(Path(args.file))
    # before the file is opened: a refused import creates no database either. Texts as the store takes a learned
    # version's (unchecked): the export of a file written before the text rules must import back
    try:
        check_document(document, texts=False)
    except HandbookError as exc:  # the file it is in, as its schema errors say (fuzz QA)
        exc.args = (f"{args.file}: {exc}",) if args.file else exc.args
        raise
    store = _store(args)
    live = store.selections()
    version = store.create_version(document, source="import", summary=f"imported {args.file or 'example'}")
    print(f"imported version {version}: {len(document.skills)} skills, {len(document.agents)} agents")
    if dropped := {name: depth for name, depth in live.items() if name not in document.selections}:  # (review)
        shown = ", ".join(f"{name!r} (depth {depth})" for name, depth in sorted(dropped.items()))
        print(f"the live handbook's depth selections the file lacks were dropped: {shown}; `handbook select` sets one")
    warn_unconnected(store)
    return 0


def handbook_select(args: argparse.Namespace) -> int:
    if args.drop and args.depth is not None:
        raise InvalidInput("DEPTH", args.depth, "either a DEPTH or --drop, not both")
    if not args.drop and args.depth is None:
        raise InvalidInput("DEPTH", "(missing)", "a DEPTH, or --drop to remove the selection")
    store = existing_store(args)
    try:
        name = args.orchestrator
        before = store.select_depth(name, None if args.drop else args.depth)
        was = "none" if before is None else f"depth {before}"
        if args.drop:
            print(f"orchestrator {name!r}: selection dropped (was {was}); its steps read the full skills")
            return 0
        shown = f"depth {args.depth}{' (mode level)' if args.depth == 0 else ''}"
        line = f"orchestrator {name!r}: {shown} " + ("(unchanged)" if before == args.depth else f"(was {was})")
        deepest = store.skill_levels()
        if not deepest:
            line += "; the handbook has no skills yet, so its steps read the agents' records"
        elif args.depth > deepest:
            line += f"; no skill is deeper than depth {deepest}, so its steps read the full skills"
        print(line)
    finally:
        store.close()
    return 0


def handbook_export(args: argparse.Namespace) -> int:
    text = existing_store(args).document().model_dump_json(indent=1)
    if args.file == "-":
        from skillorchestra.server.outputs import write_stdout_utf8

        write_stdout_utf8(text + "\n")
    else:
        try:
            write_text_atomic(args.file, text + "\n")  # a failed export leaves the previous one whole
        except OSError as exc:  # a directory, a missing folder, no permission: name the argument
            raise InvalidInput(
                "file", args.file, f"a writable file path, or - for stdout ({exc.strerror or exc})"
            ) from None
    return 0


def handbook_show(args: argparse.Namespace) -> int:
    from skillorchestra.handbook.arrays import document_arrays  # numpy: only the commands that score load it

    store = existing_store(args)
    document = store.document()
    arrays = document_arrays(document)  # the numbers routing uses (QA: show printed prices alone)
    lines = [f"handbook {db_path(args)}: version {document.version}, schema {store.schema_version()}"]
    counts = store.counts()
    lines.append(", ".join(f"{k} {v}" for k, v in counts.items()))
    for mode in document.modes:
        lines.append(f"mode {mode.id}: {mode.description}")
        for skill in document.skills:
            if skill.mode == mode.id:
                indent = "    " if skill.parent_id else "  "
                lines.append(f"{indent}{skill.id}: {skill.description}{_best_on(arrays, skill.id)}")
    for agent in document.agents:
        lines.append(_agent_line(arrays, arrays.agent_index[agent.id], agent))  # the arrays order agents by id
    if document.ci_inflation is not None:  # route_step's ci_widened_by, per agent
        widened = ", ".join(f"{a} x{arrays.ci_scale[i]:.2f}" for i, a in enumerate(arrays.agent_ids))
        lines.append(
            f"ci90 widened (learned x{document.ci_inflation.factor:.2f} on validation, fading with new outcomes):"
            f" {widened}"
        )
    if document.selections:  # what consult_handbook's and route_step's `orchestrator` read
        chosen = ", ".join(f"{name} {depth}" for name, depth in sorted(document.selections.items()))
        lines.append(f"depth selected per orchestrator: {chosen}")
    print("\n".join(one_line(line) for line in lines))  # a file's texts may hold escapes: inert on a terminal
    return 0


def _best_on(arrays: HandbookArrays, skill_id: str) -> str:
    """The enabled agent routing rates highest on a skill, with the evidence behind it (none: nothing shown)."""
    import numpy as np

    col = arrays.column_of_skill(skill_id)
    seen = arrays.enabled & (arrays.evidence[:, col] > 0)
    if not seen.any():
        return ""
    best = int(np.argmax(np.where(seen, arrays.mean[:, col], -np.inf)))
    return f" (best: {arrays.agent_ids[best]} {arrays.mean[best, col]:.2f}, n {arrays.evidence[best, col]:g})"


def _agent_line(arrays: HandbookArrays, i: int, agent: Agent) -> str:
    """Prices as set (a free local model's $0 is a price; none is "unknown"), then what routing has measured."""
    import numpy as np

    prices = [agent.input_per_mtok, agent.output_per_mtok]
    parts = []
    if any(p is not None for p in prices):
        parts.append("$" + "/$".join("?" if p is None else f"{p:g}" for p in prices) + " per Mtok")
    if agent.cost_per_call_usd is not None:  # QA: an MCP tool priced per call read "price unknown"
        parts.append(f"${agent.cost_per_call_usd:g} per call")
    price = " + ".join(parts) or "price unknown"
    root = arrays.root_column
    measured = f"; competence {arrays.mean[i, root]:.2f} overall (n {arrays.evidence[i, root]:g})"
    if not math.isnan(arrays.agent_cost[i]):
        cost = np.format_float_positional(arrays.agent_cost[i], precision=3, fractional=False)  # no e-05
        measured += f", ${cost} per call recorded"
    slopes = arrays.length_slope
    slope = f", length slope {slopes[i]:+.3f} per ln(characters)" if slopes[i] != 0.0 else ""
    return f"agent {agent.id} {'' if agent.enabled else '(disabled) '}{price}{measured}{slope}"


def handbook_rebuild(args: argparse.Namespace) -> int:
    store = existing_store(args)
    before = store.rebuild()
    after = store.document()
    version = store.current_version()
    events = store.event_count(version)
    if before == after:
        print(f"rebuilt version {version} from its snapshot and {events} events: identical to the live state")
        return 0
    print(
        f"rebuilt version {version} from its snapshot and {events} events: the live state differed and was "
        "replaced by the rebuilt one",
        file=sys.stderr,
    )
    return 1


def handbook_versions(args: argparse.Namespace) -> int:
    store = existing_store(args)
    current = store.current_version()
    for v in store.versions():
        marker = "*" if v["version"] == current else " "
        metrics = v["metrics"] or {}
        digest = _metrics_digest(metrics)
        print(
            f"{marker} {v['version']:>4}  parent {v['parent'] or '-':>4}  {v['source']:<8} {v['summary']}"
            + (f"  {digest}" if digest else "")
        )
        if args.metrics and metrics:  # below its line, indented past any version number: readable and parseable
            print(textwrap.indent(json.dumps(metrics, indent=2), METRICS_INDENT))
    return 0


def _metrics_digest(metrics: dict[str, Any]) -> str:
    """A learned version's headline figures on its line (the full metrics, several KB, with --metrics). A promotion's
    bookkeeping is no learning metric (the summary already says what was promoted), so it is not counted as one."""
    parts = []
    if "selected" in metrics:
        parts.append(f"{metrics.get('n_skills')} skills ('{metrics['selected']}', depth {metrics.get('depth')})")
    if "lambda" in metrics:
        parts.append(f"lambda {metrics['lambda']:g}")
    val = metrics.get("val") or {}
    if "accuracy" in val:
        parts.append(f"validation accuracy {val['accuracy']:.3f}, utility {val.get('utility', float('nan')):.3f}")
    learned = [key for key in metrics if key not in BOOKKEEPING_METRICS]
    if not parts and learned:
        parts.append(f"{len(learned)} metrics (--metrics shows them)")
    return "; ".join(parts)


def handbook_prune(args: argparse.Namespace) -> int:
    from skillorchestra.handbook.retention import parse_cutoff, prune

    cutoff = parse_cutoff(args.before)  # before opening the file: a bad date writes nothing
    print(prune(existing_store(args), cutoff, vacuum=args.vacuum).summary())
    return 0


def data_convert(args: argparse.Namespace) -> int:
    from skillorchestra.handbook.datasets import convert_llmrouter, convert_routellm

    expected = "a folder to write train.jsonl, test.jsonl and agents.json in"
    if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
        raise InvalidInput("OUTDIR", str(args.outdir), expected)
    if args.format == "llmrouter" and args.seed is not None:  # QA: accepted and ignored, as if it had split anew
        raise InvalidInput("--seed", args.seed, "no seed with --format llmrouter (its train/test split is its own)")
    try:
        if args.format == "llmrouter":
            summary = convert_llmrouter(args.src, args.outdir)
        else:
            summary = convert_routellm(args.src, args.outdir, seed=args.seed if args.seed is not None else 0)
    except OSError as exc:  # QA: a folder under a file read "[Errno 20] Not a directory", naming no argument
        written = Path(str(exc.filename or "")).resolve()
        if exc.filename is None or not written.is_relative_to(Path(args.outdir).resolve()):
            raise
        raise InvalidInput("OUTDIR", str(args.outdir), f"{expected} ({exc.strerror}: {exc.filename})") from None
    print(json.dumps(summary, indent=1, default=str))
    return 0


def agents_load(args: argparse.Namespace) -> int:
    """Connection settings into the database; each agent is also registered (or updated) in the handbook."""
    from skillorchestra.handbook.service import Handbook
    from skillorchestra.server.agent_config import load_agent_configs

    configs = load_agent_configs(args.file)  # validates the whole file before anything is written
    store = _store(args)
    handbook = Handbook(store)
    existing = {a.id: a for a in store.agents()}
    agents = {agent_id: _loaded_agent(agent_id, conn, existing.get(agent_id)) for agent_id, conn in configs.items()}
    agents, priced = _priced_from_table(agents, configs)  # before the transaction: it reads a file
    with store.write():  # one transaction: agents and their connection settings change together or not at all
        replaced = sorted(set(store.connections()) - set(configs))
        added = _add_missing_modes(handbook, [m for conn in configs.values() for m in conn.modes])
        for agent in agents.values():
            handbook.upsert_agent(agent)
        store.save_connections({agent_id: (c.kind, c.model_dump(mode="json")) for agent_id, c in configs.items()})
    # the result: stdout; notes: stderr
    print(f"loaded {counted(len(configs), 'agent')} from {args.file}: {', '.join(configs)}")
    if added:
        print(f"added modes the handbook did not have: {', '.join(added)}")
    if replaced:  # QA: a second file silently took the first one's agents out of delegation
        print(
            f"note: this file replaces the loaded settings: {named(replaced, 5)} (loaded before, not in it) "
            "can no longer be delegated to; load one file with every agent",
            file=sys.stderr,
        )
    for note in priced:
        print(f"note: {note}", file=sys.stderr)
    for note in _pool_notes(store, set(configs)):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _priced_from_table(
    agents: dict[str, Agent], configs: dict[str, LlmAgentConnection | McpAgentConnection]
) -> tuple[dict[str, Agent], list[str]]:
    """LLM agents the file (and the handbook) leave unpriced, priced from litellm's table where it knows the model,
    and a note for each: routing and session budgets then count the cost delegate bills (it charged such an agent
    $0, and parallel steps overspent a budget 900 times). The table is litellm's bundled file, read as JSON."""
    from skillorchestra.server.agent_config import LlmAgentConnection

    unpriced = [
        agent_id
        for agent_id, conn in configs.items()
        if isinstance(conn, LlmAgentConnection)
        and agents[agent_id].input_per_mtok is None
        and agents[agent_id].output_per_mtok is None
    ]
    if not unpriced:
        return agents, []
    from skillorchestra.server.llm_backend import table_prices

    notes = []
    for agent_id in unpriced:
        model = configs[agent_id].model  # type: ignore[union-attr]
        prices = table_prices(model)
        if prices is None:
            notes.append(
                f"{agent_id}: no price in the file and litellm's table does not know {model!r}: routing charges it "
                "the pool's reference cost until its cost is recorded (set input_per_mtok and output_per_mtok)"
            )
            continue
        agents[agent_id] = agents[agent_id].model_copy(
            update={"input_per_mtok": prices[0], "output_per_mtok": prices[1]}
        )
        notes.append(
            f"{agent_id}: priced from litellm's table for {model!r}: ${prices[0]:.6g} input, ${prices[1]:.6g} output "
            "per million tokens (set input_per_mtok and output_per_mtok in the file to override)"
        )
    return agents, notes


def _pool_notes(store: HandbookStore, connected: set[str]) -> list[str]:
    """What a user loading agents should know about the handbook around them (both surprised a reviewer)."""
    notes = []
    others = sorted(a.id for a in store.agents() if a.id not in connected)
    if others:
        shown = named(others, 5)
        notes.append(
            f"{len(others)} agents in the handbook have no connection settings ({shown}): delegate never calls "
            "them, route_step may still recommend them; remove them with the delete_agent tool if unwanted"
        )
    if not store.skills():
        notes.append(
            "the handbook has no skills yet, so routing sees each agent's overall record only: `learn` builds "
            "skills from traces and `skillorchestra handbook import --example` brings the shipped example; both "
            "replace the handbook's agents with their own, so run this `agents load` again after them"
        )
    return notes


def unconnected_loaded_agents(store: HandbookStore) -> list[str]:
    """Agents whose connection settings `agents load` stored but the live handbook no longer has (an import or a
    learned version brings its own agents): delegate cannot call them until they are loaded again."""
    live = {a.id for a in store.agents()}
    return sorted(agent_id for agent_id in store.connections() if agent_id not in live)


def warn_unconnected(store: HandbookStore) -> None:
    missing = unconnected_loaded_agents(store)
    if missing:
        shown = named(missing, 5)
        print(
            f"note: the live handbook no longer has {counted(len(missing), 'agent')} with connection settings "
            f"({shown}): delegate cannot call them; run `skillorchestra agents load FILE` again to add them",
            file=sys.stderr,
        )


@contextlib.contextmanager
def removed_if_refused(path: Path) -> Iterator[None]:
    """A command that creates the database file `path` removes it again when it fails: refused, it writes nothing.
    (Close the store inside the block.)"""
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed:
            for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                leftover.unlink(missing_ok=True)
        raise


def _add_missing_modes(handbook: Handbook, modes: list[str]) -> list[str]:
    """The modes an agents file names that the handbook lacks, added (an agent may only name existing modes)."""
    known = {m.id for m in handbook.store.modes()}
    added = [m for m in dict.fromkeys(modes) if m not in known]
    for mode in added:
        handbook.upsert_mode(Mode(id=mode))
    return added


def _loaded_agent(agent_id: str, conn: LlmAgentConnection | McpAgentConnection, old: Agent | None) -> Agent:
    """The handbook's agent after loading `conn`: the file's description, modes and prices win, else the old ones."""
    from skillorchestra.server.agent_config import LlmAgentConnection

    prices = (conn.input_per_mtok, conn.output_per_mtok) if isinstance(conn, LlmAgentConnection) else (None, None)
    per_call = None if isinstance(conn, LlmAgentConnection) else conn.cost_per_call_usd
    if per_call is None and not isinstance(conn, LlmAgentConnection) and not (old and old.cost_per_call_usd):
        # an unpriced tool call spends no tokens, and delegate bills it $0: routing charges it so too (QA: it was
        # charged the dearest agent's cost until a report recorded the $0)
        per_call = 0.0
    return Agent(
        id=agent_id,
        description=conn.description or (old.description if old else ""),
        modes=list(conn.modes) or (old.modes if old else []),
        input_per_mtok=prices[0] if prices[0] is not None else (old.input_per_mtok if old else None),
        output_per_mtok=prices[1] if prices[1] is not None else (old.output_per_mtok if old else None),
        enabled=old.enabled if old else True,
        cost_per_call_usd=per_call if per_call is not None else (old.cost_per_call_usd if old else None),
    )


def agents_show(args: argparse.Namespace) -> int:
    """The loaded settings, with whether each key's environment variable is set here (never the key)."""
    from skillorchestra.server.agent_config import parse_agent

    views = {}
    for agent_id, raw in existing_store(args).connections().items():
        conn = parse_agent(agent_id, {k: v for k, v in raw.items() if k != "id"}, "database")
        views[agent_id] = conn.public_view()
    print(json.dumps(views, indent=1, sort_keys=True))
    return 0
