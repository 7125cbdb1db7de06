"""Added latency of the `delegate` tool over calling litellm directly, against the same loopback fake server.

Both arms run in this process on one event loop, interleaved call by call, after a warm-up: (a) litellm.acompletion
with the arguments the server sends (max_retries=0, timeout, max_tokens), (b) the delegate tool through an
in-memory MCP client on create_server (the example handbook seeded), with the agent named and with routing
between two agents, under the default skill matcher (semantic MiniLM when its weights are installed) and the
lexical one; and the Delegator alone (no MCP: what transport and validation cost). The fake OpenAI-compatible
server (tests/fake_openai.py) answers at once, so the difference is what the server adds: MCP transport and
validation, skill inference and routing, the decision row, the call's cost accounting. Target: median added
latency <= 5 ms per call.
Usage: .venv/bin/python bench/delegate_overhead.py [CALLS]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: one BLAS thread, as on a busy 2-core host
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import BENCH_DIR, machine_line, summary, verdict  # noqa: E402
from mcp import Client  # noqa: E402

sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
from fake_openai import FakeOpenAI  # noqa: E402

from skillorchestra.handbook.service import DelegateRequest, RouteRequest  # noqa: E402
from skillorchestra.handbook.store import HandbookStore  # noqa: E402
from skillorchestra.server.app import create_server, make_matcher, open_handbook  # noqa: E402
from skillorchestra.server.cli import main as cli_main  # noqa: E402
from skillorchestra.server.delegation import Delegator  # noqa: E402
from skillorchestra.server.llm_backend import PLACEHOLDER_API_KEY, ensure_litellm  # noqa: E402
from skillorchestra.server.settings import ServerSettings  # noqa: E402

CALLS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
WARMUP = 20
MAX_TOKENS = 64
TIMEOUT_S = 30.0
TEXTS = [
    "Write a SQL query that lists the ten largest customers by revenue",
    "Summarise the attached meeting notes in three bullet points",
    "Find the derivative of x^3 * sin(x)",
    "Translate 'the invoice is overdue' into French",
    "Explain why the unit test for the date parser fails on leap years",
]


def step_text(n: int) -> str:
    """A different text on every call, so no arm profits from the semantic matcher's cache of recent steps."""
    return f"{TEXTS[n % len(TEXTS)]} (request {n})"


def write_agents(path: Path, api_base: str) -> None:
    path.write_text(
        f"""
[agents.fast]
model = "openai/fast-model"
api_base = "{api_base}"
input_per_mtok = 0.2
output_per_mtok = 0.4
timeout_s = {TIMEOUT_S}
max_output_tokens = {MAX_TOKENS}

[agents.careful]
model = "openai/careful-model"
api_base = "{api_base}"
input_per_mtok = 2.0
output_per_mtok = 8.0
timeout_s = {TIMEOUT_S}
max_output_tokens = {MAX_TOKENS}
"""
    )


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


def prepare(directory: Path, api_base: str, matcher: str) -> ServerSettings:
    """A handbook file with the example handbook seeded, then the two agents loaded by the CLI."""
    directory.mkdir()
    db, toml = directory / "handbook.db", directory / "agents.toml"
    write_agents(toml, api_base)
    settings = ServerSettings(db_path=db, seed_example=True, matcher=matcher)  # type: ignore[arg-type]
    open_handbook(settings).store.close()  # create and seed the file before the agents are loaded into it
    try:
        cli_main(["agents", "load", str(toml), "--db", str(db)])
    except SystemExit as exited:
        assert exited.code == 0, "agents load failed"
    return settings


async def main() -> int:
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as fake:
        default = prepare(Path(tmp) / "default", fake.api_base, "auto")
        lexical = prepare(Path(tmp) / "lexical", fake.api_base, "lexical")
        litellm = await ensure_litellm()
        step = iter(range(10**9))

        async def direct() -> None:
            text = step_text(next(step))
            response = await litellm.acompletion(
                model="openai/fast-model",
                api_base=fake.api_base,
                api_key=PLACEHOLDER_API_KEY,
                messages=[{"role": "user", "content": text}],
                timeout=TIMEOUT_S,
                max_tokens=MAX_TOKENS,
                max_retries=0,
            )
            assert response.choices[0].message.content

        def delegate(client: Client, **extra: Any) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                result = await client.call_tool("delegate", {"text": step_text(next(step)), **extra})
                assert not result.is_error, result.content
                assert result.structured_content and result.structured_content["answer"]

            return call

        # its own file: two handbooks writing to one file would invalidate each other's cached arrays every call
        handbook = open_handbook(prepare(Path(tmp) / "in-process", fake.api_base, "lexical"))
        delegator = Delegator(handbook)

        async def in_process() -> None:
            route = RouteRequest(text=step_text(next(step)), allowed_agents=["fast", "careful"])
            assert (await delegator.delegate(DelegateRequest(route=route))).answer

        async with Client(create_server(default)) as client, Client(create_server(lexical)) as lex_client:
            arms: dict[str, Callable[[], Awaitable[None]]] = {
                "litellm.acompletion (direct)": direct,
                "delegate, agent named": delegate(client, agent_id="fast"),
                "delegate, routed (2 agents)": delegate(client, allowed_agents=["fast", "careful"]),
                "delegate, routed, lexical": delegate(lex_client, allowed_agents=["fast", "careful"]),
                "Delegator only (no MCP), lexical": in_process,
            }
            for fn in arms.values():
                for _ in range(WARMUP):
                    await fn()
            samples: dict[str, list[float]] = {name: [] for name in arms}
            names = list(arms)
            for i in range(CALLS):
                order = names[i % len(names) :] + names[: i % len(names)]  # rotate: no arm always goes first
                for name in order:
                    samples[name].append(await timed(arms[name]))
        handbook.store.close()
        requests = len(fake.chat_requests())
    matcher = type(make_matcher(HandbookStore(":memory:"), "auto")).__name__
    print(f"{CALLS} calls per arm after {WARMUP} warm-up calls, interleaved; {requests} HTTP requests served")
    print(f"skill inference: default matcher 'auto' = {matcher} here; 'lexical' = LexicalMatcher")
    base = samples[names[0]]
    for name, values in samples.items():
        s = summary(values)
        print(f"{name:<33} p50 {s['p50']:7.2f} ms  p90 {s['p90']:7.2f} ms  mean {s['mean']:7.2f} ms")
    for name in names[1:]:
        added = (statistics.median(samples[name]) - statistics.median(base)) * 1e3
        paired = statistics.median(a - b for a, b in zip(samples[name], base, strict=True)) * 1e3
        print(
            f"added by {name:<33} median {added:5.2f} ms (median of paired differences {paired:5.2f} ms)"
            f"  target 5 ms: {verdict(added, 5.0)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
