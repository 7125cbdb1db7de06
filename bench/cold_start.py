"""Cold start over stdio: process spawn -> first `tools/list` answer, for `skillorchestra-mcp` beside a minimal
MCPServer with one tool (bench/minimal_server.py) started the same way (the venv's interpreter running a script),
interleaved, median of >= 5 runs each (target ratio <= 1.3x).

The product runs on an existing database (created by an untimed first start, as a host's second launch would);
the first-ever start, which also creates, migrates and seeds the file, is printed apart.
Usage: .venv/bin/python bench/cold_start.py [RUNS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import BENCH_DIR, child_env, machine_line, script, verdict
from mcp import Client, StdioServerParameters

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7


async def first_list(command: str, args: list[str]) -> float:
    """Seconds from spawning the process to the first tools/list answer (the SDK's default auto mode)."""
    params = StdioServerParameters(command=command, args=args, env=child_env())
    t = time.perf_counter()
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        elapsed = time.perf_counter() - t
    assert tools, "no tools listed"
    return elapsed


async def main() -> int:
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "handbook.db"
        product = (script("skillorchestra-mcp"), ["--db", str(db)])
        minimal = (sys.executable, [str(BENCH_DIR / "minimal_server.py")])
        first_ever = await first_list(*product)  # creates, migrates and seeds the database
        await first_list(*minimal)  # warm the page cache for both
        times: dict[str, list[float]] = {"skillorchestra-mcp": [], "minimal MCPServer": []}
        for run in range(RUNS):
            order = [("skillorchestra-mcp", product), ("minimal MCPServer", minimal)]
            if run % 2:
                order.reverse()
            for name, (command, args) in order:
                times[name].append(await first_list(command, args))
    for name, samples in times.items():
        print(
            f"{name:<20} median {statistics.median(samples):.3f} s  min {min(samples):.3f} s  "
            f"max {max(samples):.3f} s  (n={len(samples)})"
        )
    print(f"{'first-ever start':<20} {first_ever:.3f} s  (new database: create, migrate, seed the example)")
    ratio = statistics.median(times["skillorchestra-mcp"]) / statistics.median(times["minimal MCPServer"])
    print(f"ratio skillorchestra-mcp / minimal (medians) {ratio:.2f}x  target 1.3x: {verdict(ratio, 1.3)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
