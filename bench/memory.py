"""Memory of the server over time: resident set size (RSS) of the real `skillorchestra serve` process, read from
/proc/<pid>/status (VmRSS, RssAnon, VmHWM) while a real mcp.Client drives it over a real transport. Each server
is its own process, so its figures are its own. The server is meant to run for days beside a desktop host or as a
shared HTTP service: what matters is whether memory plateaus.

1. start: RSS of `skillorchestra serve` over stdio right after the initialize handshake (default example handbook,
   second start of its file), then after the first tools/list and the matcher's warm-up; beside a minimal
   MCPServer with one tool (bench/minimal_server.py) started the same way;
2. soak: one stdio client, --calls mixed calls (route_step, record_outcome on those decisions, consult_handbook,
   resources handbook://skills and handbook://stats, tools/list) over 1,200 distinct step texts (more than the
   semantic matcher keeps vectors of); RSS every --every calls; growth per 1,000 calls over the second half (least
   squares). A leak is steady growth after warm-up; caches (SQLite pages, arrays, step vectors) plateau. Lexical
   matcher by default (~200 calls/s here); --soak-matcher auto adds MiniLM's encodes (~60 calls/s);
3. large: a handbook of --skills skills x --agents agents with evidence on every leaf (imported as a document),
   RSS after start, after the warm-up (skill vectors encoded) and after --routes route_step calls;
4. http: --sessions streamable HTTP client sessions (the 2025-11-25 handshake: one server session each) opened,
   3 calls each, closed; RSS after each 50 (session objects must be freed);
5. learn: peak RSS of bench/learn_cost.py's learner on LLMRouter's train split (/work/shared/data), in its own
   process per feature kind; --learn-cli adds the whole `skillorchestra learn` command (os.wait4: that child's
   own rusage), which embeds every query itself (minutes);
6. trace (--trace, minutes): the server in this process under tracemalloc, which sources still grow after the
   caches filled (see trace_figures).

Linux only (/proc). 2-core shared machines are noisy: the soak's slope is the figure to read, not single samples.
Usage: .venv/bin/python bench/memory.py [--calls 20000] [--every 1000] [--skills 2000] [--agents 20]
       [--routes 1000] [--sessions 200] [--matcher auto|lexical] [--soak-matcher lexical|auto] [--learn-cli]
       [--skip PART ...] [--trace [--trace-calls N]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import BENCH_DIR, child_env, free_port, machine_line, script, step_texts, synthetic_document
from mcp import Client, StdioServerParameters

from skillorchestra.handbook.store import HandbookStore

PARTS = ("start", "soak", "large", "http", "learn", "trace")
STEP_POOL = 1200  # distinct step texts of the soak: more than the semantic matcher keeps (STEP_VECTORS_KEPT)
MB = 1024.0


def status(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM of a live process, in MB."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "VmHWM"}
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            figures[key] = int(value.split()[0]) / MB
    return figures


def rss(pid: int) -> str:
    f = status(pid)
    return f"RSS {f['VmRSS']:6.1f} MB (anon {f['RssAnon']:6.1f}, file {f['RssFile']:5.1f})  peak {f['VmHWM']:6.1f} MB"


def child_pid(marker: str) -> int:
    """The pid of this process's child whose command line contains `marker` (the stdio client spawned it)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and marker in cmdline:
            return int(entry.name)
    raise RuntimeError(f"no child process with {marker!r} in its command line")


def serve_params(db: Path, matcher: str) -> StdioServerParameters:
    env = child_env(SKILLORCHESTRA_MATCHER=matcher)
    return StdioServerParameters(command=script("skillorchestra"), args=["serve", "--db", str(db)], env=env)


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    if result.is_error:
        raise RuntimeError(f"{tool}: {result.content}")
    return result.structured_content or {}


async def warmed(client: Client, text: str, deadline_s: float = 180.0) -> str:
    """Route until the matcher's warm-up is over (the first steps take the lexical matcher meanwhile)."""
    end = time.monotonic() + deadline_s
    while True:
        source = (await call(client, "route_step", {"text": text}))["skills_source"]
        if "loading" not in source or time.monotonic() > end:
            return source
        await asyncio.sleep(0.2)


def slope_per_1000(points: list[tuple[int, float]]) -> float:
    """Least-squares growth in MB per 1,000 calls."""
    if len(points) < 2:
        return float("nan")
    return statistics.linear_regression([c for c, _ in points], [m for _, m in points]).slope * 1000


# -- 1. start -------------------------------------------------------------------------------------------------------


async def start_figures(tmp: Path, matcher: str) -> None:
    db = tmp / "start.db"
    async with Client(serve_params(db, matcher), mode="legacy"):
        pass  # the first start creates, migrates and seeds the file: a host's second launch is the usual one
    samples: dict[str, list[float]] = {"initialize": [], "warm": [], "minimal": []}
    for _ in range(3):
        async with Client(serve_params(db, matcher), mode="legacy") as client:
            pid = child_pid(str(db))
            samples["initialize"].append(status(pid)["VmRSS"])
            after_init = rss(pid)
            await client.list_tools()
            source = await warmed(client, "Write a Python function that parses ISO dates and add unit tests")
            samples["warm"].append(status(pid)["VmRSS"])
            after_warm = rss(pid)
        minimal = StdioServerParameters(
            command=sys.executable, args=[str(BENCH_DIR / "minimal_server.py")], env=child_env()
        )
        async with Client(minimal, mode="legacy"):
            samples["minimal"].append(status(child_pid("minimal_server.py"))["VmRSS"])
    print(f"start (stdio, example handbook, matcher={matcher}; median of 3 starts, last start's detail)")
    print(
        f"  after initialize               median RSS {statistics.median(samples['initialize']):6.1f} MB  {after_init}"
    )
    print(f"  after tools/list + warm-up     median RSS {statistics.median(samples['warm']):6.1f} MB  {after_warm}")
    print(f"    (first route after warm-up: skills_source={source})")
    print(f"  minimal MCPServer, initialized median RSS {statistics.median(samples['minimal']):6.1f} MB")


# -- 2. soak --------------------------------------------------------------------------------------------------------


class Mix:
    """The soak's calls in a fixed rotation: a step is routed, reported, consulted; resources and the tool list are
    read between steps, as a host browsing would."""

    def __init__(self, client: Client, texts: list[str], seed: int = 0) -> None:
        self.client, self.texts, self.rng = client, texts, random.Random(seed)
        self.pending: list[str] = []
        self.calls = 0
        self.rotation: list[Callable[[], Awaitable[None]]] = [
            self.route,
            self.report,
            self.consult,
            self.route,
            self.report,
            self.skills,
            self.route,
            self.report,
            self.stats,
            self.tools,
        ]

    def text(self) -> str:
        return self.texts[self.rng.randrange(len(self.texts))]

    async def one(self) -> None:
        await self.rotation[self.calls % len(self.rotation)]()
        self.calls += 1

    async def route(self) -> None:
        strategy = "thompson" if self.rng.random() < 0.3 else "mean"
        args = {"text": self.text(), "strategy": strategy, "session_id": f"s{self.calls // 500}"}
        self.pending.append((await call(self.client, "route_step", args))["decision_id"])

    async def report(self) -> None:
        decision = self.pending.pop(0)
        await call(self.client, "record_outcome", {"decision_id": decision, "success": self.rng.random() < 0.7})

    async def consult(self) -> None:
        await call(self.client, "consult_handbook", {"text": self.text()})

    async def skills(self) -> None:
        await self.client.read_resource("handbook://skills")

    async def stats(self) -> None:
        await self.client.read_resource("handbook://stats")

    async def tools(self) -> None:
        await self.client.list_tools()


async def soak_figures(tmp: Path, matcher: str, calls: int, every: int) -> None:
    db = tmp / "soak.db"
    texts = step_texts(synthetic_document(n_agents=2, n_skills=200), STEP_POOL, seed=7)
    started = time.perf_counter()
    async with Client(serve_params(db, matcher), mode="legacy") as client:
        pid = child_pid(str(db))
        await client.list_tools()
        source = await warmed(client, texts[0])
        mix = Mix(client, texts)
        points: list[tuple[int, float]] = [(0, status(pid)["VmRSS"])]
        anon: list[tuple[int, float]] = [(0, status(pid)["RssAnon"])]
        print(f"soak (stdio, matcher={matcher}: {source}; {calls:,} calls over {len(texts):,} distinct steps)")
        print(f"  {0:>7,} calls  {rss(pid)}")
        while mix.calls < calls:
            await mix.one()
            if mix.calls % every == 0:
                points.append((mix.calls, status(pid)["VmRSS"]))
                anon.append((mix.calls, status(pid)["RssAnon"]))
                print(f"  {mix.calls:>7,} calls  {rss(pid)}  {time.perf_counter() - started:5.0f} s")
        half = [p for p in points if p[0] >= calls // 2]
        half_anon = [p for p in anon if p[0] >= calls // 2]
        print(
            f"  start {points[0][1]:.1f} MB, end {points[-1][1]:.1f} MB; second half: "
            f"{slope_per_1000(half):+.2f} MB RSS ({slope_per_1000(half_anon):+.2f} MB anon) per 1,000 calls; "
            f"file {db.stat().st_size / MB / MB:.1f} MB"
        )


async def trace_figures(tmp: Path, matcher: str, calls: int) -> None:
    """Where the soak's memory goes: the server in this process (create_server, an in-memory mcp.Client: the same
    tools, resources and caches, without the stdio transport), traced from after its first route, snapshots after
    1, 2 and 3 x `calls` mixed calls. Caches fill in the first interval; what still grows in both later ones (and
    the sources it grows at) is a leak."""
    import gc
    import tracemalloc

    from skillorchestra.server.app import create_server
    from skillorchestra.server.settings import ServerSettings

    settings = ServerSettings(db_path=tmp / "trace.db", matcher=matcher, seed_example=True)  # type: ignore[arg-type]
    texts = step_texts(synthetic_document(n_agents=2, n_skills=200), STEP_POOL, seed=7)
    snapshots = []
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    async with Client(create_server(settings)) as client:
        await call(client, "route_step", {"text": texts[0]})  # the matcher loads here (no warm-up thread)
        mix = Mix(client, texts)
        tracemalloc.start(10)
        for _ in range(3):
            for _ in range(calls):
                await mix.one()
            gc.collect()
            snapshots.append(tracemalloc.take_snapshot().filter_traces(keep))
        tracemalloc.stop()
    grown = [b.compare_to(a, "traceback") for a, b in zip(snapshots, snapshots[1:], strict=False)]
    totals = ", ".join(f"{sum(d.size_diff for d in g) / MB:+.1f} KB" for g in grown)
    print(f"trace (in-process, matcher={matcher}): traced heap growth per {calls:,} calls after the first: {totals}")
    for diff in grown[-1][:6]:
        if diff.size_diff <= 0:
            break
        print(f"  {diff.size_diff / MB:+9.1f} KB in {diff.count_diff:+6d} blocks:")
        for frame in list(diff.traceback)[-5:]:
            print(f"      {frame.filename.removeprefix(str(BENCH_DIR.parent) + '/')}:{frame.lineno}")


# -- 3. large handbook ----------------------------------------------------------------------------------------------


async def large_figures(tmp: Path, matcher: str, n_skills: int, n_agents: int, routes: int) -> None:
    db = tmp / "large.db"
    document = synthetic_document(n_agents=n_agents, n_skills=n_skills)
    store = HandbookStore(db)
    store.create_version(document, source="import", summary=f"synthetic {n_agents}x{n_skills}")
    store.close()
    texts = step_texts(document, 500, seed=3)
    label = f"{n_skills:,} skills x {n_agents} agents, {len(document.competence):,} competence rows"
    async with Client(serve_params(db, matcher), mode="legacy") as client:
        pid = child_pid(str(db))
        print(f"large handbook ({label}; matcher={matcher})")
        print(f"  after initialize               {rss(pid)}")
        await client.list_tools()
        t = time.perf_counter()
        source = await warmed(client, texts[0], deadline_s=600.0)
        print(f"  after warm-up + first route    {rss(pid)}  ({time.perf_counter() - t:.1f} s; {source})")
        t = time.perf_counter()
        for i in range(routes):
            await call(client, "route_step", {"text": texts[i % len(texts)]})
        print(f"  after {routes:,} routes             {rss(pid)}  ({time.perf_counter() - t:.1f} s)")


# -- 4. streamable HTTP sessions ------------------------------------------------------------------------------------


async def http_figures(tmp: Path, sessions: int) -> None:
    db = tmp / "http.db"
    port = free_port()
    args = [script("skillorchestra"), "serve", "--transport", "http", "--port", str(port), "--db", str(db)]
    env = child_env(SKILLORCHESTRA_MATCHER="lexical")  # the sessions are the subject here, not the matcher
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        await _healthy(f"http://127.0.0.1:{port}/healthz", proc)
        print(f"http (streamable HTTP, {sessions} client sessions, 2025-11-25 handshake, 3 calls each; lexical)")
        print(f"  {0:>4} sessions  {rss(proc.pid)}")
        points: list[tuple[int, float]] = []
        for i in range(1, sessions + 1):
            async with Client(url, mode="legacy") as client:
                await client.list_tools()
                decision = (await call(client, "route_step", {"text": f"parse and sort the records of batch {i}"}))[
                    "decision_id"
                ]
                await call(client, "record_outcome", {"decision_id": decision, "success": i % 3 != 0})
            if i % 50 == 0:
                points.append((i, status(proc.pid)["VmRSS"]))
                print(f"  {i:>4} sessions  {rss(proc.pid)}")
        half = [p for p in points if p[0] >= sessions // 2]
        print(f"  second half: {slope_per_1000(half) / 10:+.2f} MB per 100 sessions")
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def _healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy") from None
            await asyncio.sleep(0.05)


# -- 5. learning ----------------------------------------------------------------------------------------------------


def learn_figures(tmp: Path, cli: bool) -> None:
    """bench/learn_cost.py's learner in its own process per feature kind (its peak_memory_mb: getrusage of that
    process), and with `cli` the whole `skillorchestra learn` command (embeds every query itself: minutes)."""
    from learn_cost import SOURCE, data_dir

    if not SOURCE.is_dir():
        print(f"learn: skipped ({SOURCE} not present)")
        return
    folder = data_dir()
    n = sum(1 for _ in (folder / "train.jsonl").open())
    print(f"learn (LLMRouter train, {n:,} tasks x 9 agents; peak RSS of the learning process alone)")
    for mode in ("lexical", "minilm"):
        done = subprocess.run(
            [sys.executable, str(BENCH_DIR / "learn_cost.py"), "--child", mode], capture_output=True, text=True
        )
        if done.returncode:
            print(f"  learn_cost {mode}: failed: {done.stderr[-300:]}")
            continue
        f = json.loads(done.stdout.strip().splitlines()[-1])
        if "skipped" in f:
            print(f"  learn_cost {mode}: skipped ({f['skipped']})")
            continue
        cached = "embeddings cached" if mode == "minilm" and not f["embedded_now"] else "features computed"
        print(f"  in-process learner, {mode:<8} peak RSS {f['peak_memory_mb']:6.1f} MB  ({f['seconds']} s; {cached})")
    if not cli:
        print("  (`skillorchestra learn`, which embeds every query itself: --learn-cli, minutes)")
        return
    cmd = [script("skillorchestra"), "learn", "--data", str(folder / "train.jsonl")]
    cmd += ["--agents", str(folder / "agents.json"), "--db", str(tmp / "learn.db")]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    errors = proc.stderr.read()
    _, code, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
    proc.returncode = os.waitstatus_to_exitcode(code)
    if proc.returncode:
        print(f"  skillorchestra learn: failed (exit {proc.returncode}): {errors.decode()[-400:]}")
        return
    print(
        f"  skillorchestra learn      peak RSS {usage.ru_maxrss / MB:6.1f} MB  ({time.perf_counter() - started:.0f} s)"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="soak calls")
    parser.add_argument("--every", type=int, default=1_000, help="soak calls between RSS samples")
    parser.add_argument("--skills", type=int, default=2_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--routes", type=int, default=1_000, help="routes on the large handbook")
    parser.add_argument("--sessions", type=int, default=200, help="HTTP client sessions")
    parser.add_argument("--matcher", choices=["auto", "lexical"], default="auto", help="start, large, trace")
    parser.add_argument(
        "--soak-matcher",
        choices=["auto", "lexical"],
        default="lexical",
        help="auto: the semantic matcher's step vectors too (MiniLM encodes: ~3x slower a call)",
    )
    parser.add_argument("--learn-cli", action="store_true", help="also `skillorchestra learn` (minutes)")
    parser.add_argument("--skip", nargs="*", choices=PARTS, default=[], help="parts left out")
    parser.add_argument("--trace", action="store_true", help="also the in-process tracemalloc diff (minutes)")
    parser.add_argument("--trace-calls", type=int, default=2_000, help="calls between the trace's two snapshots")
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for part in PARTS:
            if part in args.skip or (part == "trace" and not args.trace):
                continue
            t = time.perf_counter()
            if part == "start":
                await start_figures(tmp, args.matcher)
            elif part == "soak":
                await soak_figures(tmp, args.soak_matcher, args.calls, args.every)
            elif part == "large":
                await large_figures(tmp, args.matcher, args.skills, args.agents, args.routes)
            elif part == "http":
                await http_figures(tmp, args.sessions)
            elif part == "trace":
                await trace_figures(tmp, args.matcher, args.trace_calls)
            elif part == "learn":
                learn_figures(tmp, args.learn_cli)
            print(f"  ({part}: {time.perf_counter() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
