"""How much the eval's verdicts depend on the seed: `skillorchestra eval` on the shared datasets at several seeds.

eval_tables.py reports the issue's figures at seed 0. One split can flatter or wrong a learner, so this script
repeats the eval at seeds 0..N-1 and prints, per seed, what the targets compare:
- RouteLLM MMLU and GSM8K (the seed draws the 50/50 split, the validation split and the learner's clusters):
  APGR and CPT(50%) of skillorchestra against kNN and a random router;
- LLMRouter (fixed test split; the seed draws the validation split and the clusters): the operating lambda chosen
  on validation and skillorchestra's accuracy and cost share there, against kNN at the same lambda.

    python bench/eval_seeds.py [--data ../shared/data] [--seeds 4] [--only llmrouter,mmlu,gsm8k]

A script, not a test: MMLU takes one to two minutes a seed on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

from eval_tables import DEFAULT_DATA, beats_knn, convert, fmt, machine, meets_llmrouter_target, row

from skillorchestra.handbook.evaluation.runner import EvalConfig, run_eval
from skillorchestra.handbook.traces import read_prices, read_tasks

DATASETS = ("llmrouter", "mmlu", "gsm8k")


def _length(result: dict[str, Any]) -> str:
    """Whether the learner kept a length effect: for the test (and for the operating point's validation run)."""
    learning = result["learning"]
    if not learning.get("length_effect") and not (learning.get("selection") or {}).get("length_effect"):
        return ""
    selection = "yes" if (learning.get("selection") or {}).get("length_effect") else "no"
    return f"; length effect {'yes' if learning.get('length_effect') else 'no'} (operating-point run: {selection})"


def two_agent_line(seed: int, result: dict[str, Any]) -> tuple[str, bool, bool]:
    two = result["two_agent"]
    ours, knn, rnd = two["skillorchestra"], two["knn"], two["random"]
    apgr_win, cpt_win = beats_knn(two, "apgr"), beats_knn(two, "cpt50")
    line = (
        f"seed {seed}: APGR ours {fmt(ours['apgr'])} knn {fmt(knn['apgr'])} random {fmt(rnd['apgr'])} "
        f"({'win' if apgr_win else 'loss'});  CPT(50%) ours {fmt(ours['cpt50'])} knn {fmt(knn['cpt50'])} "
        f"({'win' if cpt_win else 'loss'});  learned skills {result['learning']['skills']}{_length(result)}"
    )
    return line, apgr_win, cpt_win


def llmrouter_line(seed: int, result: dict[str, Any]) -> tuple[str, float, float]:
    rows = result["rows"]
    best = row(rows, "best-single")["avg_cost"]
    op = result["operating_point"]["lambda"]
    ours, knn = row(rows, "skillorchestra", op), row(rows, "knn", op)
    share = ours["avg_cost"] / best
    line = (
        f"seed {seed}: operating lambda {op:.4g}: ours {ours['accuracy']:.3f} at {share:.0%} of best-single's cost; "
        f"knn {knn['accuracy']:.3f} at {knn['avg_cost'] / best:.0%}; top agent {max(ours['agent_share'].values()):.0%}"
        f"{_length(result)}"
    )
    return line, ours["accuracy"], share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=4, help="run seeds 0..N-1")
    parser.add_argument("--only", default=",".join(DATASETS))
    args = parser.parse_args()
    wanted = [name for name in args.only.split(",") if name]
    print(f"# eval across seeds 0..{args.seeds - 1}, {machine()}\n")
    results: dict[str, list[tuple[int, dict[str, Any]]]] = {name: [] for name in wanted}
    started = time.perf_counter()
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="skillorchestra-seeds-") as tmp:
            folders = convert(args.data, Path(tmp), seed)
            for name in wanted:
                folder = folders[name]
                result = run_eval(
                    read_tasks(folder / "train.jsonl"),
                    read_tasks(folder / "test.jsonl"),
                    read_prices(folder / "agents.json"),
                    EvalConfig(seed=seed),
                )
                results[name].append((seed, result))
    for name in wanted:
        print(f"## {name}")
        if name == "llmrouter":
            accs, shares = [], []
            for seed, result in results[name]:
                line, acc, share = llmrouter_line(seed, result)
                accs.append(acc)
                shares.append(share)
                print(line)
            print(
                f"mean: {mean(accs):.3f} at {mean(shares):.0%}; target 0.62 at <= 50% met at "
                f"{sum(meets_llmrouter_target(a, s) for a, s in zip(accs, shares, strict=True))} of {len(accs)} seeds"
            )
        else:
            apgr_wins = cpt_wins = 0
            for seed, result in results[name]:
                line, apgr_win, cpt_win = two_agent_line(seed, result)
                apgr_wins += apgr_win
                cpt_wins += cpt_win
                print(line)
            n = len(results[name])
            print(f"better than kNN: APGR at {apgr_wins} of {n} seeds, CPT(50%) at {cpt_wins} of {n} seeds")
        print()
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
