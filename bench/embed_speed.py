"""Speed of the numpy MiniLM embedder: load time, batch throughput, single-query latency.

A script, not a test: figures depend on the machine. Run ``python bench/embed_speed.py``; prints
``skipped: <reason>`` and exits 0 when the weights package is not installed, so CI can call it blindly.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

N_TEXTS = 256
BATCH_SIZE = 32
N_QUERIES = 30
THROUGHPUT_REPEATS = 3

SUBJECTS = [
    "the integral of x squared",
    "a SQL join between orders and customers",
    "a French paragraph about the weather",
    "a failing unit test in the parser module",
    "the quarterly revenue spreadsheet",
    "a recursive function that overflows the stack",
    "the summary of a long research paper",
    "an HTTP timeout when calling the billing API",
]
VERBS = ["compute", "explain", "fix", "translate", "summarise", "optimise", "review", "plot"]
TAILS = ["", " quickly", " and report the result in a table", " step by step, citing every assumption made"]


def make_texts(n: int) -> list[str]:
    """Deterministic mix of short and long task-step-like texts (lengths matter for padding)."""
    return [
        f"{VERBS[i % len(VERBS)]} {SUBJECTS[(i * 3) % len(SUBJECTS)]}{TAILS[(i * 5) % len(TAILS)]} #{i}"
        for i in range(n)
    ]


def main() -> int:
    t0 = time.perf_counter()
    from skillorchestra.handbook.embedding import load_default_embedder

    model, reason = load_default_embedder()
    load_s = time.perf_counter() - t0
    if model is None:
        print(f"skipped: {reason}")
        return 0

    texts = make_texts(N_TEXTS)
    model.encode(texts[:BATCH_SIZE])  # warm-up: first BLAS calls allocate buffers
    runs = []
    for _ in range(THROUGHPUT_REPEATS):
        t = time.perf_counter()
        model.encode(texts, batch_size=BATCH_SIZE)
        runs.append(time.perf_counter() - t)
    batch_s = statistics.median(runs)

    latencies = []
    for i in range(N_QUERIES):
        t = time.perf_counter()
        model.encode([texts[(i * 7) % N_TEXTS]])
        latencies.append(time.perf_counter() - t)

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"model:            {model.model_name} ({model.model_dir})")
    print(f"load (import+weights): {load_s:.2f} s")
    print(
        f"throughput:       {N_TEXTS / batch_s:.1f} texts/s ({N_TEXTS} texts, batch {BATCH_SIZE}, "
        f"median of {THROUGHPUT_REPEATS})"
    )
    print(f"single query:     median {statistics.median(latencies) * 1000:.1f} ms over {N_QUERIES} queries")
    print(f"max RSS:          {rss_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
