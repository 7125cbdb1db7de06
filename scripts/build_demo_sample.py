"""Build the demo's compact sample of real outcomes (LLMRouter, MIT licence; see handbook/data/NOTICE.md).

Stratified by task family and seeded; queries longer than 1,500 characters are left out to keep the file small.
Run: python scripts/build_demo_sample.py ../shared/data/llmrouter handbook/data
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from skillorchestra.handbook.datasets import convert_llmrouter
from skillorchestra.handbook.traces import read_tasks, write_tasks

PER_FAMILY = 60
SEED = 2026


def main(src: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        convert_llmrouter(src, Path(tmp))
        tasks = read_tasks(Path(tmp) / "train.jsonl")
        agents = json.loads((Path(tmp) / "agents.json").read_text())
    by_family = defaultdict(list)
    for task in tasks:
        if len(task.query) <= 1500:
            by_family[task.task].append(task)
    rng = random.Random(SEED)
    sample = []
    for family in sorted(by_family):
        sample.extend(rng.sample(by_family[family], min(PER_FAMILY, len(by_family[family]))))
    rng.shuffle(sample)
    for task in sample:
        task.__pydantic_extra__.pop("cluster_id", None)  # type: ignore[union-attr]
    write_tasks(out / "demo_tasks.jsonl", sample)
    prices = {
        a: {"input_per_mtok": v["input_per_mtok"], "output_per_mtok": v["output_per_mtok"]} for a, v in agents.items()
    }
    (out / "demo_agents.json").write_text(json.dumps(prices, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(sample)} tasks over {len(by_family)} families")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
