"""Cost of offline learning on LLMRouter's train split (5,608 tasks x 9 agents): time, peak memory, LLM calls.

Issue 5's targets: 0 LLM calls, <= 60 s on 2 cores with embeddings cached, peak memory <= 1 GiB. Each
configuration runs in its own process so its peak memory (getrusage ru_maxrss) is its own:
  lexical  - TF-IDF features (no embedder: the fallback when the MiniLM weights are absent)
  minilm   - MiniLM features from bench/.cache/ (the first run embeds every query and reports that time apart)
It also replays the unseen test tasks (queries not in train) through the learned handbook at the same lambda
and prints accuracy and average cost next to the best single agent's (chosen on train). Wall time depends on
the machine's load: CPU seconds are printed too.

    python bench/learn_cost.py [--lambda 0.05] [--seed 0] [--skip-minilm] [--fresh-embeddings]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
SOURCE = Path("/work/shared/data/llmrouter")
EMBED_CACHE = CACHE / "minilm_llmrouter.npz"


def data_dir() -> Path:
    out = CACHE / "llmrouter"
    if not (out / "train.jsonl").is_file():
        from skillorchestra.handbook.datasets import convert_llmrouter

        out.mkdir(parents=True, exist_ok=True)
        convert_llmrouter(SOURCE, out)
    return out


def child(mode: str, lambda_: float, seed: int) -> dict[str, object]:
    """One configuration, measured in this process; returns the figures as a dict."""
    import numpy as np

    from skillorchestra.handbook.learning.pipeline import learn
    from skillorchestra.handbook.learning.profile import Outcomes
    from skillorchestra.handbook.learning.replay import replay
    from skillorchestra.handbook.traces import read_prices, read_tasks

    folder = data_dir()
    train, test = read_tasks(folder / "train.jsonl"), read_tasks(folder / "test.jsonl")
    prices = read_prices(folder / "agents.json")
    seen = {t.query for t in train}
    test = [t for t in test if t.query not in seen]
    figures: dict[str, object] = {"mode": mode, "train": len(train), "test_unseen": len(test)}

    embedder = None
    if mode == "minilm":
        from skillorchestra.handbook.embedding import load_default_embedder
        from skillorchestra.handbook.learning.features import CachedEmbedder, NpzVectorCache

        model, reason = load_default_embedder()
        if model is None:
            return {"mode": mode, "skipped": reason}
        cache = NpzVectorCache(EMBED_CACHE)
        embedder = CachedEmbedder(model, cache)
        queries = list(dict.fromkeys([t.query for t in train] + [t.query for t in test]))
        started = time.perf_counter()
        embedder.encode(queries)
        figures["embedded_now"] = embedder.computed
        figures["embedding_seconds"] = round(time.perf_counter() - started, 1) if embedder.computed else 0.0
        if embedder.computed:
            cache.save()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = learn(train, prices, lambda_=lambda_, seed=seed, embedder=embedder)
    figures.update(
        seconds=round(time.perf_counter() - wall0, 2),
        cpu_seconds=round(time.process_time() - cpu0, 2),
        llm_calls=result.llm_calls,
        usd=result.usd,
        selected=result.selected,
        n_skills=result.metrics["n_skills"],
        val_accuracy=round(result.metrics["val"]["accuracy"], 4),
        label_agreement_val=result.metrics["label_agreement_val_depth1"],
        timings=result.metrics["timings"],
    )
    routed = replay(result.document, result.labeller, test, prices, lambda_)
    train_out = Outcomes.build(train, prices)
    test_out = Outcomes.build(test, prices, train_out.agent_ids)
    best = int(np.nanargmax(np.nanmean(train_out.scores, axis=0)))
    best_cost = float(np.nanmean(test_out.costs[:, best]))
    figures.update(
        test_accuracy=round(routed.accuracy, 4),
        test_avg_cost=routed.avg_cost,
        best_single=train_out.agent_ids[best],
        best_single_accuracy=round(float(np.nanmean(test_out.scores[:, best])), 4),
        best_single_cost=best_cost,
        cost_ratio=round(routed.avg_cost / best_cost, 3),
        peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lambda", dest="lambda_", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--fresh-embeddings", action="store_true", help="delete the embedding cache first")
    parser.add_argument("--child", choices=["lexical", "minilm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.lambda_, args.seed)))
        return 0
    if not SOURCE.is_dir():
        print(f"skipped: {SOURCE} not present")
        return 0
    data_dir()
    if args.fresh_embeddings and EMBED_CACHE.exists():
        EMBED_CACHE.unlink()
    modes = ["lexical"] + ([] if args.skip_minilm else ["minilm"])
    for mode in modes:
        cmd = [sys.executable, __file__, "--child", mode, "--lambda", str(args.lambda_), "--seed", str(args.seed)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{mode}: failed\n{done.stderr[-2000:]}")
            continue
        f = json.loads(done.stdout.strip().splitlines()[-1])
        if "skipped" in f:
            print(f"{mode}: skipped ({f['skipped']})")
            continue
        if mode == "minilm":
            first = (
                f"first run: embedded {f['embedded_now']} queries in {f['embedding_seconds']} s"
                if f["embedded_now"]
                else "embeddings cached"
            )
            print(f"minilm: {first}")
        print(
            f"{mode}: learn {f['seconds']} s wall ({f['cpu_seconds']} s CPU), peak memory {f['peak_memory_mb']} MB, "
            f"LLM calls {f['llm_calls']}, ${f['usd']:.2f}; selected {f['selected']} ({f['n_skills']} skills), "
            f"val accuracy {f['val_accuracy']}, label agreement {f['label_agreement_val']:.3f}"
        )
        print(f"  stages: {f['timings']}")
        print(
            f"  unseen test ({f['test_unseen']} tasks, lambda {args.lambda_}): accuracy {f['test_accuracy']}, "
            f"avg cost ${f['test_avg_cost']:.3g} = {f['cost_ratio']:.0%} of best single {f['best_single']} "
            f"({f['best_single_accuracy']}, ${f['best_single_cost']:.3g})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
