"""The eval tables of docs/benchmarks.md: `skillorchestra eval` on the shared datasets.

Converts LLMRouter and RouteLLM (seeded 50/50) into a temporary folder, runs the eval on each, and prints the
policy table, the per-family table, and the target checks. A script, not a test: it takes a few minutes.

    python bench/eval_tables.py [--data ../shared/data] [--seed 0] [--out DIR] [--only llmrouter,mmlu,gsm8k]

`--out DIR` keeps each dataset's JSON and its pareto.png / shares.png under DIR/<dataset>/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from skillorchestra.handbook.datasets import convert_llmrouter, convert_routellm
from skillorchestra.handbook.evaluation.report import family_table, summary
from skillorchestra.handbook.evaluation.runner import EvalConfig, run_eval
from skillorchestra.handbook.traces import read_prices, read_tasks

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = ("llmrouter", "mmlu", "gsm8k")
KNN_APGR_REFERENCE = {"mmlu": 0.635, "gsm8k": 0.575}  # measured with TF-IDF kNN when the issue was filed


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores, {cpu}, Python {platform.python_version()}"


LLMROUTER_ACCURACY, LLMROUTER_COST_SHARE = 0.62, 0.5  # the LLMRouter target


def row(rows: list[dict[str, Any]], policy: str, lambda_: float | None = None) -> dict[str, Any]:
    """The eval row of `policy` (at `lambda_` when the policy is swept)."""
    return next(r for r in rows if r["policy"] == policy and (lambda_ is None or r["lambda"] == lambda_))


def meets_llmrouter_target(accuracy: float, cost_share: float) -> bool:
    return accuracy >= LLMROUTER_ACCURACY and cost_share <= LLMROUTER_COST_SHARE


def targets(name: str, result: dict[str, Any]) -> list[str]:
    """The issue's targets, each with the measured figure and PASS/MISS."""
    rows = result["rows"]
    best = row(rows, "best-single")
    op = result["operating_point"]["lambda"]
    ours = row(rows, "skillorchestra", op)
    lines = []
    if name == "llmrouter":
        ratio = ours["avg_cost"] / best["avg_cost"]
        ok = meets_llmrouter_target(ours["accuracy"], ratio)
        lines.append(
            f"target acc >= 0.62 at <= 50% of best-single's cost (operating point lambda {op}): "
            f"{ours['accuracy']:.3f} at {ratio:.0%} -> {'PASS' if ok else 'MISS'}"
        )
        cheap = [r for r in rows if r["policy"] == "skillorchestra" and r["avg_cost"] <= 0.5 * best["avg_cost"]]
        if cheap:
            top = max(cheap, key=lambda r: r["accuracy"])
            lines.append(
                f"  best swept point within 50% of best-single's cost (not a selection, on test): "
                f"lambda {top['lambda']} acc {top['accuracy']:.3f}"
            )
        vs = result["diagnostics"]["curve_vs_knn"]
        lines.append(
            f"target curve above kNN: {vs['share_at_or_above']:.0%} of kNN points at or below ours, mean "
            f"margin {vs['mean_margin']:+.3f} -> {'PASS' if vs['share_at_or_above'] == 1.0 else 'MISS'}"
        )
        col = result["diagnostics"]["collapse"]
        lines.append(
            f"target no agent > 60% unless cheapest: {col['top_agent']} {col['top_share']:.0%} -> "
            f"{'PASS' if col['ok'] else 'MISS'}"
        )
    else:
        two = result["two_agent"]
        for metric in ("apgr", "cpt50"):
            ours_v, knn_v = two["skillorchestra"][metric], two["knn"][metric]
            ok = beats_knn(two, metric)
            note = f" (issue's kNN APGR {KNN_APGR_REFERENCE[name]})" if metric == "apgr" else ""
            lines.append(
                f"target {metric} better than kNN: ours {fmt(ours_v)} vs kNN {fmt(knn_v)}{note} -> "
                f"{'PASS' if ok else 'MISS'}"
            )
    return lines


def beats_knn(two_agent: dict[str, Any], metric: str) -> bool:
    """Whether skillorchestra's APGR is higher (CPT(50%) lower) than kNN's; False when either is undefined."""
    ours, knn = two_agent["skillorchestra"][metric], two_agent["knn"][metric]
    if ours is None or knn is None:
        return False
    return ours > knn if metric == "apgr" else ours < knn


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def convert(data: Path, tmp: Path, seed: int) -> dict[str, Path]:
    convert_llmrouter(data / "llmrouter", tmp / "llmrouter")
    convert_routellm(data / "routellm", tmp / "routellm", seed=seed)
    return {"llmrouter": tmp / "llmrouter", "mmlu": tmp / "routellm" / "mmlu", "gsm8k": tmp / "routellm" / "gsm8k"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default=",".join(DATASETS))
    args = parser.parse_args()
    wanted = [name for name in args.only.split(",") if name]
    print(f"# eval tables, {datetime.date.today().isoformat()}, {machine()}, seed {args.seed}\n")
    with tempfile.TemporaryDirectory(prefix="skillorchestra-bench-") as tmp:
        folders = convert(args.data, Path(tmp), args.seed)
        for name in wanted:
            folder = folders[name]
            started = time.perf_counter()
            result = run_eval(
                read_tasks(folder / "train.jsonl"),
                read_tasks(folder / "test.jsonl"),
                read_prices(folder / "agents.json"),
                EvalConfig(seed=args.seed),
            )
            wall = time.perf_counter() - started
            print(f"## {name} (eval wall time {wall:.0f} s)\n")
            print(summary(result))
            print()
            print("\n".join(targets(name, result)))
            if name == "llmrouter":
                print()
                print(family_table(result))
            print()
            sys.stdout.flush()
            if args.out is not None:
                from skillorchestra.server.plots import write_plots

                target = args.out / name
                target.mkdir(parents=True, exist_ok=True)
                (target / "eval.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
                write_plots(result, target, label=name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
