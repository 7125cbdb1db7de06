"""Build the shipped example handbook from LLMRouter's real outcomes (MIT licence, see handbook/data/NOTICE.md).

Skills are the data's task families under six categories; competence is each model's Beta posterior from the
train split (one observation per task, weight 1 on its family); cost is the price-based estimate per call.
Run: python scripts/build_example_handbook.py ../shared/data/llmrouter handbook/data/example_handbook.json
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from skillorchestra.handbook.costing import CHARS_PER_TOKEN
from skillorchestra.handbook.datasets import convert_llmrouter
from skillorchestra.handbook.models import Agent, Competence, CostStats, HandbookDocument, Mode, Skill
from skillorchestra.handbook.traces import estimate_cost_usd, read_prices, read_tasks

CATEGORIES = {
    "knowledge": "Recalling facts about the world: people, places, events, definitions.",
    "reasoning": "Choosing the right answer among options with commonsense or scientific reasoning.",
    "math": "Solving arithmetic and mathematical problems that need several calculation steps.",
    "code": "Writing correct program code (Python functions) from a description and tests.",
    "logic": "Solving constraint puzzles by systematic deduction.",
    "writing": "Generating fluent text that satisfies explicit constraints.",
}
FAMILIES = {
    "natural_qa": (
        "knowledge.open_domain_qa",
        "Short factual answers to real search questions (who, when, where).",
        ["who", "when", "where", "what year", "name of"],
    ),
    "trivia_qa": (
        "knowledge.trivia",
        "Trivia questions about history, geography, culture and entertainment.",
        ["trivia", "which", "famous", "country", "film"],
    ),
    "mmlu": (
        "reasoning.academic_exam",
        "Multiple-choice exam questions across academic subjects.",
        ["multiple choice", "options", "law", "biology", "economics"],
    ),
    "gpqa": (
        "reasoning.graduate_science",
        "Graduate-level physics, chemistry and biology multiple choice.",
        ["molecule", "quantum", "reaction", "energy", "protein"],
    ),
    "arc_challenge": (
        "reasoning.grade_school_science",
        "Grade-school science questions needing reasoning.",
        ["science", "experiment", "plants", "heat", "which of the following"],
    ),
    "openbook_qa": (
        "reasoning.elementary_science_facts",
        "Elementary science facts applied to a situation.",
        ["animals", "sun", "water", "example of"],
    ),
    "commonsense_qa": (
        "reasoning.commonsense",
        "Everyday commonsense about people, objects and situations.",
        ["likely", "would", "someone", "feel", "where would you"],
    ),
    "gsm8k": (
        "math.word_problems",
        "Grade-school math word problems with several arithmetic steps.",
        ["how many", "total", "each", "dollars", "per"],
    ),
    "math": (
        "math.competition",
        "Competition mathematics: algebra, geometry, number theory, probability.",
        ["solve", "equation", "integer", "probability", "compute", "find the value"],
    ),
    "agentverse-mgsm": (
        "math.multilingual_word_problems",
        "Math word problems written in languages other than English.",
        ["multilingual", "translate", "language"],
    ),
    "mbpp": (
        "code.python_functions",
        "Short Python functions from a one-line description and asserts.",
        ["write a function", "python", "list", "string", "return"],
    ),
    "human_eval": (
        "code.function_completion",
        "Complete a Python function from its signature and docstring.",
        ["def", "docstring", "implement", ">>>", "return"],
    ),
    "agentverse-logicgrid": (
        "logic.grid_puzzles",
        "Logic grid puzzles: houses, people and attributes with clues.",
        ["houses", "clues", "puzzle", "each person", "left of"],
    ),
    "commongen": (
        "writing.constrained_generation",
        "Write a sentence that uses all the given concepts.",
        ["sentence", "concepts", "generate", "words"],
    ),
}


def build(src: Path) -> HandbookDocument:
    with tempfile.TemporaryDirectory() as tmp:
        convert_llmrouter(src, Path(tmp))
        tasks = read_tasks(Path(tmp) / "train.jsonl")
        prices = read_prices(Path(tmp) / "agents.json")
    skills = [Skill(id=c, mode="answer", description=d) for c, d in CATEGORIES.items()]
    examples: dict[str, list[str]] = defaultdict(list)
    for task in tasks:
        family = FAMILIES.get(task.task or "")
        if family and len(examples[family[0]]) < 2 and len(task.query) < 300:
            examples[family[0]].append(task.query.strip())
    for skill_id, description, indicators in FAMILIES.values():
        skills.append(
            Skill(
                id=skill_id,
                mode="answer",
                parent_id=skill_id.split(".")[0],
                description=description,
                indicators=indicators,
                examples=examples[skill_id],
            )
        )
    success: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    cost: dict[tuple[str, str], list[float]] = defaultdict(list)
    steps: dict[tuple[str, str], list[float]] = defaultdict(list)  # the router's token estimate of each query
    for task in tasks:
        family = FAMILIES.get(task.task or "")
        if family is None:
            continue
        for agent_id, outcome in task.outcomes.items():
            if outcome.score is None:
                continue
            key = (agent_id, family[0])
            success[key][0] += outcome.score
            success[key][1] += 1.0 - outcome.score
            cost[key].append(estimate_cost_usd(task.query, outcome, prices.get(agent_id)) or 0.0)
            steps[key].append(len(task.query) / CHARS_PER_TOKEN)
    agents = [
        Agent(
            id=a,
            description=(p.description or "")[:400],
            modes=["answer"],
            input_per_mtok=p.input_per_mtok,
            output_per_mtok=p.output_per_mtok,
        )
        for a, p in sorted(prices.items())
    ]
    competence = [
        Competence(agent_id=a, skill_id=s, alpha=1.0 + v[0], beta=1.0 + v[1]) for (a, s), v in sorted(success.items())
    ]
    costs = [
        CostStats(
            agent_id=a,
            skill_id=s,
            n=len(v),
            mean_cost_usd=sum(v) / len(v),
            mean_step_tokens=sum(steps[a, s]) / len(steps[a, s]),
            n_step_tokens=len(steps[a, s]),
        )
        for (a, s), v in sorted(cost.items())
    ]
    mode = Mode(
        id="answer",
        description="Answer a self-contained question or task in one call.",
        insights=[
            "Fact lookups are cheap to route to small models; multi-step math and code repay a stronger model.",
            "Report every outcome: the posteriors move with each one.",
        ],
    )
    return HandbookDocument(
        description="Example handbook learned from LLMRouter's real outcomes of 9 open models "
        "on 14 task families (5,608 tasks; MIT licence). Costs are estimated from list prices.",
        modes=[mode],
        skills=skills,
        agents=agents,
        competence=competence,
        cost=costs,
    )


if __name__ == "__main__":
    document = build(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(document.model_dump_json(indent=1) + "\n", encoding="utf-8")
    print(f"wrote {sys.argv[2]}: {len(document.skills)} skills, {len(document.agents)} agents")
