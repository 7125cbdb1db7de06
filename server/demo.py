"""`skillorchestra demo`: the newcomer's tour, offline.

It learns a handbook from a compact sample of real outcomes shipped with the package (LLMRouter: 9 open models,
14 task families, MIT licence), starts the real server over stdio, and drives it with the official SDK client
through multi-step tasks whose steps change what they need (a fact, then arithmetic, then code). Each step is
routed by the server; the chosen agent's *recorded* outcome on that exact question is reported back, so the
handbook learns as it goes. At the end it compares with always calling the strongest agent.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import anyio

from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import AgentPrice, TraceTask, estimate_cost_usd

EPISODES = (
    ("Plan a quiz night", ("trivia_qa", "gsm8k", "mbpp")),
    ("Help with homework", ("natural_qa", "math", "commonsense_qa")),
    ("Prepare a coding interview", ("human_eval", "agentverse-logicgrid", "arc_challenge")),
    ("Write a science newsletter", ("openbook_qa", "agentverse-mgsm", "commongen")),
)


@dataclass
class Step:
    episode: str
    task: TraceTask


def load_sample() -> tuple[list[TraceTask], dict[str, AgentPrice]]:
    data = resources.files("skillorchestra.handbook").joinpath("data")
    tasks = [TraceTask.model_validate_json(line) for line in data.joinpath("demo_tasks.jsonl").read_text().splitlines()]
    prices = {
        k: AgentPrice.model_validate(v) for k, v in json.loads(data.joinpath("demo_agents.json").read_text()).items()
    }
    return tasks, prices


def hold_out(tasks: Sequence[TraceTask], seed: int) -> tuple[list[TraceTask], list[Step]]:
    """One held-out question per episode step; the rest is what the handbook learns from."""
    rng = random.Random(seed)
    remaining = list(tasks)
    steps: list[Step] = []
    for title, families in EPISODES:
        for family in families:
            candidates = [t for t in remaining if t.task == family and len(t.query) < 400]
            chosen = rng.choice(candidates)
            remaining.remove(chosen)
            steps.append(Step(title, chosen))
    return remaining, steps


def learn_document(tasks: list[TraceTask], prices: dict[str, AgentPrice], seed: int, lambda_: float) -> object:
    from skillorchestra.handbook.learning.pipeline import learn

    return learn(tasks, prices, lambda_=lambda_, seed=seed)


def best_single(tasks: Sequence[TraceTask]) -> str:
    totals: dict[str, list[float]] = {}
    for task in tasks:
        for agent, outcome in task.outcomes.items():
            if outcome.score is not None:
                totals.setdefault(agent, []).append(outcome.score)
    return max(sorted(totals), key=lambda a: sum(totals[a]) / len(totals[a]))


def short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


async def tour(db: Path, steps: list[Step], prices: dict[str, AgentPrice], strongest: str, lambda_: float) -> None:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "skillorchestra.server", "--db", str(db), "--no-example"],
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"},
    )
    ours = {"score": 0.0, "cost": 0.0}
    theirs = {"score": 0.0, "cost": 0.0}
    async with Client(params) as client:
        current = None
        for number, step in enumerate(steps, start=1):
            if step.episode != current:
                current = step.episode
                print(f"\n== {current}")
            routed = await client.call_tool(
                "route_step", {"text": step.task.query, "lambda_": lambda_, "session_id": step.episode}
            )
            decision = routed.structured_content or {}
            agent = decision["agent_id"]
            outcome = step.task.outcomes[agent]
            cost = estimate_cost_usd(step.task.query, outcome, prices.get(agent)) or 0.0
            await client.call_tool(
                "record_outcome",
                {"decision_id": decision["decision_id"], "reward": outcome.score, "cost_usd": cost},
            )
            skills = ", ".join(f"{s['skill_id']} {s['weight']:.2f}" for s in decision["skills"]) or "(agent level)"
            top = decision["candidates"][:3]
            why = "; ".join(f"{c['agent_id']} q={c['quality']:.2f} ${c['expected_cost_usd'] or 0:.6f}" for c in top)
            print(f"step {number} [{step.task.task}] {short(step.task.query)}")
            print(f"   skills: {skills}")
            print(f"   chosen: {agent}  (top: {why})")
            print(f"   outcome: {'solved' if (outcome.score or 0) >= 0.5 else 'failed'}  cost ${cost:.6f}")
            ours["score"] += outcome.score or 0.0
            ours["cost"] += cost
            strong = step.task.outcomes[strongest]
            theirs["score"] += strong.score or 0.0
            theirs["cost"] += estimate_cost_usd(step.task.query, strong, prices.get(strongest)) or 0.0
    n = len(steps)
    print(f"\n{'':<28}{'solved':>8}{'cost (USD)':>14}")
    print(f"{'skill-aware routing':<28}{ours['score'] / n:>8.2f}{ours['cost']:>14.6f}")
    print(f"{'always ' + strongest:<28}{theirs['score'] / n:>8.2f}{theirs['cost']:>14.6f}")
    if theirs["cost"] > 0:
        print(f"cost ratio: {ours['cost'] / theirs['cost']:.2f}x of always using the strongest agent")
    print("(costs are list price x estimated tokens; outcomes are the models' recorded scores on these questions)")


def run_demo(db: Path | None, seed: int = 0, lambda_: float = 0.1) -> int:
    tasks, prices = load_sample()
    learning_tasks, steps = hold_out(tasks, seed)
    strongest = best_single(learning_tasks)
    print(f"Learning a Skill Handbook from {len(learning_tasks)} real tasks x {len(prices)} agents (offline)...")
    result = learn_document(learning_tasks, prices, seed, lambda_)
    document = result.document  # type: ignore[attr-defined]
    print(
        f"learned {len(document.skills)} skills in {result.seconds:.1f} s with {result.llm_calls} LLM calls; "  # type: ignore[attr-defined]
        f"selected: {result.selected}"  # type: ignore[attr-defined]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = db or Path(tmp) / "demo.db"
        store = HandbookStore(path)
        store.create_version(document, source="learn", summary="demo: learned from the shipped sample")
        store.close()
        anyio.run(tour, path, steps, prices, strongest, lambda_)
    return 0
