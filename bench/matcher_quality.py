"""Skill inference quality: lexical (FTS5/BM25) vs semantic (MiniLM) on real queries with known families.

The example handbook's leaf skills are LLMRouter's task families; each test query's family is known, so the
share of queries whose top inferred skill is their family's skill measures the matcher. Also prints the
per-query latency of each. Needs ../shared/data (the real data); prints 'skipped' without it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from skillorchestra.handbook.datasets import convert_llmrouter
from skillorchestra.handbook.example import example_document
from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.semantic import SemanticMatcher
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.traces import read_tasks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmrouter"
FAMILY_TO_SKILL = {  # the example handbook's leaves (scripts/build_example_handbook.py)
    "natural_qa": "knowledge.open_domain_qa",
    "trivia_qa": "knowledge.trivia",
    "mmlu": "reasoning.academic_exam",
    "gpqa": "reasoning.graduate_science",
    "arc_challenge": "reasoning.grade_school_science",
    "openbook_qa": "reasoning.elementary_science_facts",
    "commonsense_qa": "reasoning.commonsense",
    "gsm8k": "math.word_problems",
    "math": "math.competition",
    "agentverse-mgsm": "math.multilingual_word_problems",
    "mbpp": "code.python_functions",
    "human_eval": "code.function_completion",
    "agentverse-logicgrid": "logic.grid_puzzles",
    "commongen": "writing.constrained_generation",
}


def evaluate(matcher: object, queries: list[tuple[str, str]]) -> tuple[float, float, float]:
    leaf_hits = category_hits = 0
    latencies = []
    for query, family in queries:
        start = time.perf_counter()
        weights, _ = matcher.infer(query, None, 3)  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - start)
        top = max(weights, key=lambda item: item[1])[0] if weights else ""
        leaf_hits += top == FAMILY_TO_SKILL[family]
        category_hits += top.split(".")[0] == FAMILY_TO_SKILL[family].split(".")[0]
    n = len(queries)
    return leaf_hits / n, category_hits / n, statistics.median(latencies) * 1000


def main() -> None:
    if not SHARED.exists():
        print(f"skipped: {SHARED} not found (the shared real data)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        convert_llmrouter(SHARED, Path(tmp))
        tasks = read_tasks(Path(tmp) / "test.jsonl")
        store = HandbookStore(Path(tmp) / "h.db")
        store.create_version(example_document(), source="import")
        queries = [(t.query, t.task) for t in tasks if t.task in FAMILY_TO_SKILL]
        print(f"{len(queries)} LLMRouter test queries, 14 families; top inferred skill vs the query's family")
        print(f"{'matcher':<10} {'leaf top-1':>10} {'category':>10} {'median ms':>10}")
        for name, matcher in (("lexical", LexicalMatcher(store)), ("semantic", SemanticMatcher(store))):
            if isinstance(matcher, SemanticMatcher) and matcher.embedder() is None:
                print(f"semantic: skipped ({matcher.unavailable_reason})")
                continue
            leaf, category, ms = evaluate(matcher, queries)
            print(f"{name:<10} {leaf:>10.3f} {category:>10.3f} {ms:>10.2f}")
        store.close()


if __name__ == "__main__":
    sys.exit(main())
