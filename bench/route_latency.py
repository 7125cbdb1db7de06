"""Routing overhead on a synthetic handbook of 50 agents x 200 skills (20 categories, 180 leaves).

Prints p50/p90 of:
1. the pure router (`handbook.router.route`) with `mean` (target p50 <= 0.5 ms) and `thompson` with its
   propensity (target p50 <= 2 ms), on three demanded skills;
2. the service path (`Handbook.route`: validation, cached arrays, costs, eligibility, scoring, decision row);
3. skill inference per step: lexical (FTS5) and semantic (numpy MiniLM, when the weights are installed);
4. the round trip over stdio with the SDK client: route_step vs a trivial echo tool on the same benchmark-only
   server (bench/bench_server.py), interleaved (target ratio of p50s <= 1.5x), with the lexical matcher and
   with the default one (semantic where installed); `replay_decision` returns a stored route_step result
   without routing, the floor that the result's size alone sets.
Usage: .venv/bin/python bench/route_latency.py [--quick]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import BENCH_DIR, child_env, fmt, machine_line, step_texts, summary, synthetic_document, timed, verdict
from mcp import Client, StdioServerParameters

from skillorchestra.handbook import costing
from skillorchestra.handbook.embedding import load_default_embedder, locate_minilm_weights
from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.models import SkillDemand
from skillorchestra.handbook.router import route
from skillorchestra.handbook.semantic import SemanticMatcher
from skillorchestra.handbook.service import Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore

QUICK = "--quick" in sys.argv
REPEATS = 300 if QUICK else 1000
SERVICE_REPEATS = 200 if QUICK else 500
RTT_REPEATS = 60 if QUICK else 150


def router_figures(handbook: Handbook) -> None:
    arrays = handbook.arrays()
    rng = np.random.default_rng(0)
    leaves = [s.id for s in arrays.skills if s.parent_id]
    pick = random.Random(0)
    demand_sets = [pick.sample(leaves, 3) for _ in range(64)]
    inputs_list = []
    for demanded in demand_sets:
        cols = np.array([arrays.column_of_skill(s) for s in demanded])
        weights = np.array([0.5, 0.3, 0.2])
        tokens = float(costing.prompt_tokens(["x" * 400])[0])  # the service's own cost rule for a 400-character step
        cost, _, c_ref = costing.step_costs(arrays, tokens, cols, weights)
        inputs_list.append(arrays.route_inputs(cols, weights, cost, c_ref, arrays.enabled.copy()))
    counter = iter(range(10**9))

    def one(strategy: str) -> None:
        route(inputs_list[next(counter) % len(inputs_list)], 0.1, strategy, rng)  # type: ignore[arg-type]

    for strategy in ("mean", "thompson"):
        timed(lambda s=strategy: one(s), 50)  # warm-up
    mean_s = timed(lambda: one("mean"), REPEATS)
    thompson_s = timed(lambda: one("thompson"), REPEATS)
    print(f"router  mean                      {fmt(mean_s)}  target 0.5 ms: {verdict(summary(mean_s)['p50'], 0.5)}")
    print(
        f"router  thompson + propensity     {fmt(thompson_s)}  target 2 ms:   "
        f"{verdict(summary(thompson_s)['p50'], 2.0)}"
    )


def service_figures(handbook: Handbook, texts: list[str]) -> None:
    arrays = handbook.arrays()
    leaves = [s.id for s in arrays.skills if s.parent_id]
    pick = random.Random(1)
    counter = iter(range(10**9))

    def explicit(strategy: str) -> None:
        i = next(counter)
        chosen = zip(pick.sample(leaves, 3), (0.5, 0.3, 0.2), strict=True)
        skills = [SkillDemand(skill_id=s, weight=w) for s, w in chosen]
        handbook.route(RouteRequest(text=texts[i % len(texts)], skills=skills, strategy=strategy, seed=i))  # type: ignore[arg-type]

    def inferred() -> None:
        i = next(counter)
        handbook.route(RouteRequest(text=texts[i % len(texts)]))

    timed(lambda: explicit("mean"), 30)
    print(f"service route, given skills, mean {fmt(timed(lambda: explicit('mean'), SERVICE_REPEATS))}")
    print(f"service route, given, thompson    {fmt(timed(lambda: explicit('thompson'), SERVICE_REPEATS))}")
    print(f"service route, lexical inference  {fmt(timed(inferred, SERVICE_REPEATS))}")


def inference_figures(store: HandbookStore, texts: list[str]) -> SemanticMatcher | None:
    counter = iter(range(10**9))
    lexical = LexicalMatcher(store)
    samples = timed(lambda: lexical.infer(next_text(texts, counter), None, 3), 1000)
    print(f"skill inference, lexical (FTS5)   {fmt(samples)}")
    if locate_minilm_weights() is None:
        _, reason = load_default_embedder()
        print(f"semantic: skipped ({reason})")
        return None
    semantic = SemanticMatcher(store)
    t = time.perf_counter()
    _, source = semantic.infer(texts[-1], None, 3)  # loads the model and encodes (or reads cached) skill vectors
    first_s = time.perf_counter() - t
    if source != "semantic":
        print(f"semantic: skipped ({source})")
        return None
    repeats = 20 if QUICK else 40  # ~10-30 ms each on 2 cores; far more under load
    per_step = timed(lambda: semantic.infer(next_text(texts, counter), None, 3), repeats)
    embedder = semantic.embedder()
    assert embedder is not None
    encode_only = timed(lambda: embedder.encode([next_text(texts, counter)]), repeats)
    first = f"first call {first_s:.2f} s: model load + skill vectors"
    print(f"skill inference, semantic MiniLM  {fmt(per_step)}  ({first})")
    print(f"  of which MiniLM encode of step  {fmt(encode_only)}")
    return semantic


def next_text(texts: list[str], counter: Iterator[int]) -> str:
    return texts[next(counter) % len(texts)]


async def round_trip(db: Path, texts: list[str], matcher: str, repeats: int) -> dict[str, list[float]]:
    """p50 samples per tool from one benchmark server (SKILLORCHESTRA_MATCHER=matcher), calls interleaved."""
    env = child_env(SKILLORCHESTRA_MATCHER=matcher)
    params = StdioServerParameters(command=sys.executable, args=[str(BENCH_DIR / "bench_server.py"), str(db)], env=env)
    document_skills = [s.id for s in HandbookStore(db).skills() if "." in s.id]
    samples: dict[str, list[float]] = {
        "route_step": [],
        "route_step (given skills)": [],
        "echo": [],
        "replay_decision": [],
    }
    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"route_step", "echo", "replay_decision"} <= names, names
        for i in range(repeats + 20):
            text = texts[i % len(texts)]
            given = [{"skill_id": s, "weight": 1.0} for s in random.Random(i).sample(document_skills, 2)]
            calls = list(samples.items())
            random.Random(i).shuffle(calls)  # interleaved in a varying order, so drift hits every tool alike
            for label, sink in calls:
                name = label.split(" ")[0]
                args = {"text": text, "skills": given} if "given" in label else {"text": text}
                t = time.perf_counter()
                result = await client.call_tool(name, args)
                elapsed = time.perf_counter() - t
                assert not result.is_error, result.content
                if i >= 20:  # the first calls warm caches (arrays, FTS pages, pydantic, the model)
                    sink.append(elapsed)
    return samples


async def round_trip_figures(db: Path, texts: list[str], semantic: bool) -> None:
    for matcher in ("lexical", "auto") if semantic else ("lexical",):
        samples = await round_trip(db, texts, matcher, RTT_REPEATS if matcher == "lexical" else RTT_REPEATS // 3)
        echo = statistics.median(samples["echo"])
        print(f"stdio round trip, server matcher={matcher}" + (" (= semantic here)" if matcher == "auto" else ""))
        for label, values in samples.items():
            ratio = statistics.median(values) / echo
            target = f"  target 1.5x: {verdict(ratio, 1.5)}" if label == "route_step" else ""
            print(f"  {label:<26} {fmt(values)}  {ratio:5.2f}x echo{target}")


def main() -> int:
    print(machine_line())
    document = synthetic_document()
    texts = step_texts(document, 500)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        store = HandbookStore(db)
        store.create_version(document, source="import", summary="synthetic 50x200")
        handbook = Handbook(store, matcher=LexicalMatcher(store))  # the semantic path is measured apart
        arrays = handbook.arrays()
        print(
            f"handbook: {len(arrays.agent_ids)} agents x {len(arrays.skill_ids)} skills "
            f"({sum(1 for s in arrays.skills if not s.parent_id)} categories), {len(arrays.mode_ids)} modes; "
            f"{'quick' if QUICK else 'full'} run"
        )
        router_figures(handbook)
        service_figures(handbook, texts)
        semantic = inference_figures(store, texts)
        if semantic is not None:
            handbook_semantic = Handbook(store, matcher=semantic)
            counter = iter(range(len(texts) // 2, 10**9))  # steps the inference figures above did not see
            samples = timed(lambda: handbook_semantic.route(RouteRequest(text=next_text(texts, counter))), 40)
            print(f"service route, semantic inference {fmt(samples)}")
            again = timed(lambda: handbook_semantic.route(RouteRequest(text=texts[len(texts) // 2])), 40)
            print(f"  the same step routed again      {fmt(again)}  (its vector is kept: consult, then route)")
        store.close()
        asyncio.run(round_trip_figures(db, texts, semantic is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
