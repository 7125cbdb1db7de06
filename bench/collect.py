"""`make bench`: run every benchmark in bench/ and collect what they print into docs/benchmarks.md.

Each benchmark prints its own figures (medians, ratios, target checks) and exits 0, also when it must skip a
part (it says why). The collected file is dated and names the machine and its load, since 2-core machines are
noisy: compare medians and ratios, not single runs.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = (
    "route_latency",
    "cold_start",
    "record_throughput",
    "delegate_overhead",
    "matcher_quality",
    "embed_speed",
    "learn_cost",
    "eval_tables",
    "eval_seeds",
    "llmrouter_ceiling",
    "calibration",
    "memory",
)
INTRO = """# Benchmarks

Collected by `make bench` (bench/collect.py) on {date}: {machine}, {cores} cores, Python {python}.
Each section is what the script printed; targets are the issues'. Load average at the start of each run is shown:
these machines are shared and noisy, so read medians and ratios.
"""


def machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def run(name: str) -> str:
    script = BENCH / f"{name}.py"
    if not script.exists():
        return "(missing)"
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=dict(os.environ))
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    tail = f"\n(exit {done.returncode}; stderr: {done.stderr.strip()[-400:]})" if done.returncode else ""
    return f"load average {load}; {time.perf_counter() - start:.0f} s\n\n```\n" + "\n".join(lines) + tail + "\n```\n"


def sections(text: str) -> dict[str, str]:
    """The collected file's sections by benchmark name (headings outside code blocks)."""
    found: dict[str, list[str]] = {}
    current, fenced = None, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## ") and line[3:].strip() in ORDER:
            current = line[3:].strip()
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return {name: "\n".join(lines).strip("\n") + "\n" for name, lines in found.items()}


def main() -> None:
    """All benchmarks, or only the named ones (their sections are replaced, the others kept)."""
    out = BENCH.parent / "docs" / "benchmarks.md"
    names = sys.argv[1:] or list(ORDER)
    kept = sections(out.read_text()) if sys.argv[1:] and out.exists() else {}
    intro = INTRO.format(
        date=datetime.date.today().isoformat(),
        machine=machine(),
        cores=os.cpu_count(),
        python=platform.python_version(),
    )
    for name in names:
        print(f"== {name}", flush=True)
        kept[name] = run(name)
    parts = [intro] + [f"## {name}\n\n{kept[name]}" for name in ORDER if name in kept]
    out.write_text("\n".join(parts))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
