"""Crafted outcome data where the right skills are known, for the learning and replay tests.

Queries of a sub-family share a vocabulary of their own (so text features can find them); each agent succeeds
with a fixed probability per sub-family (seeded Bernoulli draws), so which agent should win where is known.
"""

from __future__ import annotations

import numpy as np

from skillorchestra.handbook.traces import AgentOutcome, AgentPrice, TraceTask

WORDS = {
    "chemistry": "acid molecule reaction oxide titration catalyst enzyme solvent ion bond electron isotope".split(),
    "poetry": "sonnet rhyme stanza meter verse haiku ballad elegy couplet lyric ode limerick".split(),
    "sports": "football tennis marathon goalkeeper referee stadium sprint league tournament relay dribble".split(),
    "cooking": "recipe oven simmer garlic pastry saute marinade dough broth skillet spice whisk".split(),
    "travel": "passport airline hotel luggage itinerary visa cruise hostel backpack ferry tourist map".split(),
    "finance": "invoice ledger dividend mortgage audit equity bond payroll budget tax loan interest".split(),
}
FILLER = "please explain describe the about a for question with".split()

PRICES = {
    "alpha": AgentPrice(input_per_mtok=1.0, output_per_mtok=1.0, description="strong on chemistry"),
    "beta": AgentPrice(input_per_mtok=1.1, output_per_mtok=1.1, description="strong on poetry"),
    "gamma": AgentPrice(input_per_mtok=0.5, output_per_mtok=0.5, description="middling everywhere"),
}


def query(rng: np.random.Generator, topic: str) -> str:
    words = list(rng.choice(WORDS[topic], size=6, replace=False)) + list(rng.choice(FILLER, size=2, replace=False))
    rng.shuffle(words)
    return " ".join(words) + f" {int(rng.integers(1000))}"


def family(
    rng: np.random.Generator,
    topic: str,
    n: int,
    success: dict[str, float],
    label: str | None,
    prefix: str,
) -> list[TraceTask]:
    tasks = []
    for i in range(n):
        outcomes = {a: AgentOutcome(score=float(rng.random() < p)) for a, p in success.items()}
        tasks.append(TraceTask(id=f"{prefix}-{i}", query=query(rng, topic), task=label, outcomes=outcomes))
    return tasks


SWAP = {"chemistry": {"alpha": 0.9, "beta": 0.15, "gamma": 0.5}, "poetry": {"alpha": 0.15, "beta": 0.9, "gamma": 0.5}}
ALIKE = {"alpha": 0.6, "beta": 0.6, "gamma": 0.6}


def swapped_and_alike(seed: int = 0, n: int = 160) -> list[TraceTask]:
    """Family 'mixed' hides two sub-families on which alpha and beta swap strengths; on 'same' all agree."""
    rng = np.random.default_rng(seed)
    tasks = (
        family(rng, "chemistry", n, SWAP["chemistry"], "mixed", "chem")
        + family(rng, "poetry", n, SWAP["poetry"], "mixed", "poem")
        + family(rng, "sports", n, ALIKE, "same", "sport")
        + family(rng, "cooking", n, ALIKE, "same", "cook")
    )
    order = rng.permutation(len(tasks))
    return [tasks[i] for i in order]


def unlabelled_swap(seed: int = 0, n: int = 150) -> list[TraceTask]:
    """Two families without any task label on which alpha and beta swap strengths."""
    rng = np.random.default_rng(seed)
    tasks = family(rng, "chemistry", n, SWAP["chemistry"], None, "chem") + family(
        rng, "poetry", n, SWAP["poetry"], None, "poem"
    )
    return [tasks[i] for i in rng.permutation(len(tasks))]


LENGTH_PRICES = {
    "small": AgentPrice(input_per_mtok=0.1, output_per_mtok=0.1, description="cheap, loses its way in long problems"),
    "large": AgentPrice(input_per_mtok=10.0, output_per_mtok=10.0, description="dear, steady at any length"),
}


def small_success(characters: int) -> float:
    """The small agent's success rate: 0.95 on a one-liner, falling with ln(length) to 0.1 on long problems."""
    return float(np.clip(0.95 - 0.4 * np.log(characters / 60.0), 0.1, 0.95))


def length_query(rng: np.random.Generator, sentences: int) -> str:
    head = query(rng, "finance")
    body = [" ".join(rng.choice(WORDS["finance"] + FILLER, size=8)) + "." for _ in range(sentences)]
    return " ".join([head, *body])


def length_dependent(seed: int = 0, n: int = 400) -> list[TraceTask]:
    """One family, one vocabulary, lengths from one line to ~40 sentences: only the length tells the small
    agent's failures apart (large succeeds 85% of the time whatever the length)."""
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(n):
        text = length_query(rng, int(rng.integers(0, 40)))
        outcomes = {
            "small": AgentOutcome(score=float(rng.random() < small_success(len(text)))),
            "large": AgentOutcome(score=float(rng.random() < 0.85)),
        }
        tasks.append(TraceTask(id=f"len-{i}", query=text, task="finance", outcomes=outcomes))
    return tasks
