"""`skillorchestra demo`: the newcomer's tour, offline.

It learns a handbook from a compact sample of real outcomes shipped with the package (LLMRouter: 9 open models,
14 task families, MIT licence; see handbook/data/NOTICE.md), starts the real server over stdio, and drives it
with the official SDK client through multi-step tasks whose steps change what they need (a fact, then
arithmetic, then code). Each step is routed by the server; the chosen agent's *recorded* outcome on that exact
question is reported back with record_outcome, so the handbook learns as it goes. The tour's questions are held
out of the learning data. At the end it compares with always calling the strongest agent.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

from skillorchestra.handbook.arrays import ROOT_SKILL
from skillorchestra.handbook.errors import InvalidInput, counted
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import SUCCESS_THRESHOLD, AgentPrice, TraceTask, estimate_cost_usd

EPISODES = (
    ("Plan a quiz night", ("trivia_qa", "gsm8k", "mbpp")),
    ("Help with homework", ("natural_qa", "math", "commonsense_qa")),
    ("Prepare a coding interview", ("human_eval", "agentverse-logicgrid", "arc_challenge")),
    ("Write a science newsletter", ("openbook_qa", "agentverse-mgsm", "commongen")),
)
SHORTEST = 20  # each step is drawn from the family's shortest questions, so the tour stays readable
WIDTH = 100


@dataclass
class Step:
    episode: str
    task: TraceTask


@dataclass
class Tally:
    score: float = 0.0
    solved: int = 0
    cost: float = 0.0
    agents: dict[str, int] = field(default_factory=dict)

    def add(self, agent: str, score: float, cost: float) -> None:
        self.score += score
        self.solved += score >= SUCCESS_THRESHOLD
        self.cost += cost
        self.agents[agent] = self.agents.get(agent, 0) + 1


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
            candidates = sorted((t for t in remaining if t.task == family), key=lambda t: (len(t.query), t.id))
            chosen = rng.choice(candidates[:SHORTEST])
            remaining.remove(chosen)
            steps.append(Step(title, chosen))
    return remaining, steps


def best_single(tasks: Sequence[TraceTask]) -> tuple[str, float]:
    """The agent with the best mean score on the learning data, and that score."""
    totals: dict[str, list[float]] = {}
    for task in tasks:
        for agent, outcome in task.outcomes.items():
            if outcome.score is not None:
                totals.setdefault(agent, []).append(outcome.score)
    best = max(sorted(totals), key=lambda a: sum(totals[a]) / len(totals[a]))
    return best, sum(totals[best]) / len(totals[best])


def short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def skill_leaders(document: HandbookDocument) -> list[str]:
    """One line per skill: who is best at it (posterior mean success), so the skills' point is visible."""
    by_skill: dict[str, list[tuple[float, str]]] = {}
    for c in document.competence:
        by_skill.setdefault(c.skill_id, []).append((c.alpha / (c.alpha + c.beta), c.agent_id))
    width = max((len(s.id) for s in document.skills), default=0)
    lines = []
    for skill in sorted(document.skills, key=lambda s: s.id):
        ranked = sorted(by_skill.get(skill.id, []), key=lambda r: (-r[0], r[1]))[:2]
        best = ", ".join(f"{agent} {mean:.2f}" for mean, agent in ranked)
        indent = "       " if skill.parent_id else "     "
        lines.append(f"{indent}{skill.id:<{width}}  best: {best}")
    return lines


def learn_into(db: Path, tasks: list[TraceTask], prices: dict[str, AgentPrice], seed: int, lambda_: float) -> Any:
    from skillorchestra.server.jobs import learn_into_store

    store = HandbookStore(db)
    try:
        return learn_into_store(
            store,
            tasks,
            prices,
            data_label="the demo sample shipped with the package (LLMRouter outcomes, MIT licence)",
            price_source="demo_agents.json (shipped)",
            seed=seed,
            lambda_=lambda_,
        )
    finally:
        store.close()


def explain(decision: dict[str, Any], lambda_: float) -> list[str]:
    """Why the router chose this agent: its utility, the runner-up, and the most competent agent if not chosen."""
    candidates = decision["candidates"]
    chosen = next(c for c in candidates if c["agent_id"] == decision["agent_id"])
    c_ref = decision.get("c_ref_usd")
    lines = [
        f"   chosen:  {chosen['agent_id']}  utility {chosen['utility']:.2f} = quality {chosen['quality']:.2f}"
        + (
            f" - {lambda_:g} x {usd(chosen['expected_cost_usd'])} / {usd(c_ref)} (c_ref)"
            if c_ref and chosen["expected_cost_usd"] is not None
            else ""
        )
    ]
    others = [c for c in candidates if c["agent_id"] != chosen["agent_id"]]
    if others:
        runner = others[0]
        lines.append(
            f"   next:    {runner['agent_id']}  utility {runner['utility']:.2f} "
            f"(quality {runner['quality']:.2f}, {usd(runner['expected_cost_usd'])})"
        )
    smartest = max(candidates, key=lambda c: (c["quality"], -(c["expected_cost_usd"] or 0)))
    if smartest["agent_id"] != chosen["agent_id"]:
        gain = smartest["quality"] - chosen["quality"]
        if chosen["expected_cost_usd"] and smartest["expected_cost_usd"]:
            ratio = f"{smartest['expected_cost_usd'] / chosen['expected_cost_usd']:.1f}x the cost"
        else:
            ratio = "its cost"
        lines.append(
            f"   why not: {smartest['agent_id']}, the most competent ({smartest['quality']:.2f}): "
            f"+{gain:.2f} quality for {ratio}"
        )
    else:
        lines.append("   why:     it is also the most competent agent for these skills")
    return lines


async def tour(db: Path, steps: list[Step], prices: dict[str, AgentPrice], strongest: str, lambda_: float) -> None:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "skillorchestra.server", "--db", str(db), "--no-example"],
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"},
    )
    ours, theirs = Tally(), Tally()
    async with Client(params) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        print(f"Connected with the MCP SDK client over stdio ({len(tools)} tools). For each step: route_step picks")
        print("an agent, then record_outcome reports that agent's recorded score on this very question.")
        current = None
        for number, step in enumerate(steps, start=1):
            if step.episode != current:
                current = step.episode
                print(f"\n== {current}")
            routed = await client.call_tool(
                "route_step",
                {"text": step.task.query, "lambda_": lambda_, "session_id": step.episode, "top_k": len(prices)},
            )
            decision = routed.structured_content or {}
            agent = decision["agent_id"]
            outcome = step.task.outcomes[agent]
            score = outcome.score or 0.0
            cost = estimate_cost_usd(step.task.query, outcome, prices.get(agent)) or 0.0
            recorded = await client.call_tool(
                "record_outcome", {"decision_id": decision["decision_id"], "reward": score, "cost_usd": cost}
            )
            updated = (recorded.structured_content or {}).get("updated", [])
            skills = "  ".join(f"{s['skill_id']} {s['weight']:.2f}" for s in decision["skills"]) or "(agent level)"
            strong = step.task.outcomes[strongest]
            strong_score = strong.score or 0.0
            strong_cost = estimate_cost_usd(step.task.query, strong, prices.get(strongest)) or 0.0
            print(f"step {number} [{step.task.task}] {short(step.task.query)}")
            print(f"   skills:  {skills}")
            print("\n".join(explain(decision, lambda_)))
            verdict = "solved" if score >= SUCCESS_THRESHOLD else "failed"
            strong_verdict = "solved" if strong_score >= SUCCESS_THRESHOLD else "failed"
            learned = ""
            weights = {s["skill_id"]: s["weight"] for s in decision["skills"]}
            if updated:
                top = max(updated, key=lambda u: (weights.get(u["skill_id"], 0.0), u["skill_id"]))
                n_seen = top["alpha"] + top["beta"] - 2
                # QA: the root column was called "its overall record" and its raw Beta mean shown (0.67 over one
                # step) where routing uses 0.55 over 831: the competence routing uses now, and the column's own count
                on = "steps matching no skill" if top["skill_id"] == ROOT_SKILL else top["skill_id"]
                now = top["competence"] if top.get("competence") is not None else top["mean"]
                learned = f"; recorded: {agent} on {on} now {now:.2f} ({counted(round(n_seen), 'outcome')} there)"
            print(f"   result:  {verdict}, {usd(cost)}{learned}")
            print(f"            (always-{strongest}: {strong_verdict}, {usd(strong_cost)})")
            ours.add(agent, score, cost)
            theirs.add(strongest, strong_score, strong_cost)
    print_totals(len(steps), ours, theirs, strongest)


def print_totals(n: int, ours: Tally, theirs: Tally, strongest: str) -> None:
    rows = [("skill-aware routing", ours), (f"always {strongest}", theirs)]
    width = max(len(name) for name, _ in rows)
    print(f"\nTotals over the {n} steps")
    print(f"  {'policy':<{width}}  {'solved':>7}  {'mean score':>10}  {'cost (USD)':>11}")
    for name, tally in rows:
        solved = f"{tally.solved}/{n}"
        print(f"  {name:<{width}}  {solved:>7}  {tally.score / n:>10.2f}  {tally.cost:>11.6f}")
    used = ", ".join(f"{agent} x{count}" for agent, count in sorted(ours.agents.items(), key=lambda kv: -kv[1]))
    print(
        "\n".join(
            textwrap.wrap(
                f"skill-aware routing used: {used}",
                WIDTH,
                initial_indent="  ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        )
    )
    if theirs.cost > 0:
        diff = (ours.score - theirs.score) / n
        score = "the same mean score" if abs(diff) < 0.005 else f"mean score {diff:+.2f}"
        print(
            f"  => skill-aware routing solved {ours.solved} vs {theirs.solved}, {score}, "
            f"at {ours.cost / theirs.cost:.2f}x the cost."
        )
    print(
        "Costs are list price x estimated tokens; scores are the models' recorded results on these questions.\n"
        f"{n} questions show the mechanics, not a benchmark: `skillorchestra eval` compares policies on thousands."
    )


def _refuse_a_used_handbook(db: Path) -> None:
    """The demo makes its learned handbook live and routes 12 steps: never over a handbook someone uses."""
    store = HandbookStore(db)
    try:
        counts = store.counts()
    finally:
        store.close()
    if counts["skills"] or counts["agents"] or counts["decisions"]:
        raise InvalidInput(
            "--db",
            str(db),
            f"a new or empty database for the demo's handbook (this one holds {counts['skills']} skills, "
            f"{counts['agents']} agents and {counts['decisions']} decisions, which the demo would replace)",
        )


def run_demo(db: Path | None, seed: int = 0, lambda_: float = 0.1) -> int:
    if db is not None and db.exists():
        _refuse_a_used_handbook(db)
    tasks, prices = load_sample()
    learning_tasks, steps = hold_out(tasks, seed)
    strongest, strongest_score = best_single(learning_tasks)
    families = len({t.task for t in tasks})
    print("SkillOrchestra demo: learn a Skill Handbook offline, then route through the real MCP server.\n")
    print(
        f"1. Learning from {len(learning_tasks)} real questions of {families} benchmarks, each answered by "
        f"{len(prices)} open models\n   (LLMRouter data, MIT licence; {len(steps)} more questions are held out "
        "for the tour)..."
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = db or Path(tmp) / "demo.db"
        run = learn_into(path, learning_tasks, prices, seed, lambda_)
        m = run.metrics
        store = HandbookStore(path)
        try:
            document = store.document()
        finally:
            store.close()
        by_name = {c["name"]: c for c in m["candidates"]}
        flat = by_name.get("depth0")
        print(
            f"   Learned {m['n_skills']} skills in {m['seconds']:.1f} s with {m['llm_calls']} LLM calls; for each, "
            "the two agents most likely to succeed:"
        )
        print("\n".join(skill_leaders(document)))
        chosen = by_name[m["selected"]]
        print(
            f"   Checked on {m['n_val']} held-out learning questions: routing by these skills scores "
            f"{chosen['accuracy']:.2f} at ${chosen['avg_cost']:.6f} per question"
            + (
                f";\n   one competence per agent (no skills) scores {flat['accuracy']:.2f} at ${flat['avg_cost']:.6f}."
                if flat and flat is not chosen
                else "."
            )
        )
        print(
            f"   Strongest single agent on the learning data: {strongest} (mean score {strongest_score:.2f}).\n"
            f"   Routing rule: utility = quality - lambda x cost / c_ref, lambda = {lambda_:g} "
            "(c_ref: one call of the most expensive agent).\n"
        )
        print(f"2. Starting the MCP server: {sys.executable} -m skillorchestra.server --db {path}")
        anyio.run(tour, path, steps, prices, strongest, lambda_)
        kept = f"The demo's handbook is in {db} (version {run.version}).\n" if db else ""
        print(
            f"\n{kept}Next: `skillorchestra serve` for your MCP host; `skillorchestra learn --data FILE.jsonl` "
            "learns from your own outcomes."
        )
    return 0
