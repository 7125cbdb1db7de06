"""`skillorchestra demo` end to end, as a newcomer runs it: a real subprocess that starts the real stdio server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server.demo import EPISODES

SCRIPT = Path(sys.executable).parent / "skillorchestra"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [str(SCRIPT), "demo", *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_demo_runs_the_tour_and_compares_with_the_strongest_agent(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    done = run_demo("--db", str(db), "--seed", "0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    steps = len(EPISODES) * 3
    for title, _ in EPISODES:
        assert f"== {title}" in out
    for number in range(1, steps + 1):
        assert re.search(rf"^step {number} \[[\w-]+\] \S", out, re.MULTILINE), number
    assert out.count("   skills:  ") == steps
    assert out.count("   chosen:  ") == steps
    assert len(re.findall(r"^   result:  (solved|failed), \$\d+\.\d{6}", out, re.MULTILINE)) == steps
    assert "Learned " in out and "0 LLM calls" in out
    recorded = re.findall(r"; recorded: \S+ on (.+) now \d\.\d\d \(\d+ outcomes? there\)$", out, re.MULTILINE)
    assert len(recorded) == steps
    # QA: the root column read "its overall record" with its own raw mean (0.67 over one step, against 0.55 over 831)
    assert "steps matching no skill" in recorded and "overall record" not in out
    for shown in re.findall(r"on steps matching no skill now (\d\.\d\d) \(1 outcome there\)", out):
        assert shown not in ("0.67", "0.33")  # the competence routing uses, not one step's raw Beta mean
    totals = re.search(r"^  skill-aware routing\s+(\d+)/(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.MULTILINE)
    strongest = re.search(r"^  always (\S+)\s+(\d+)/(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.MULTILINE)
    assert totals and strongest, out[-1500:]
    assert int(totals.group(2)) == int(strongest.group(3)) == steps
    assert float(totals.group(4)) > 0 and float(strongest.group(5)) > 0
    assert f"at {float(totals.group(4)) / float(strongest.group(5)):.2f}x the cost" in out
    assert "Traceback" not in done.stderr

    store = HandbookStore(db)  # --db keeps the demo's handbook and its decisions
    try:
        info = store.versions()[-1]
        assert info["source"] == "learn" and info["metrics"]["candidates"]
        assert store.counts()["outcomes"] == steps
    finally:
        store.close()


def test_demo_rejects_a_bad_argument(tmp_path: Path) -> None:
    done = run_demo("--lambda", "-2", "--db", str(tmp_path / "x.db"))
    assert done.returncode == 2
    assert "--lambda" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_demo_refuses_a_database_that_holds_a_handbook(tmp_path: Path) -> None:
    db = tmp_path / "mine.db"
    imported = subprocess.run([str(SCRIPT), "handbook", "import", "--example", "--db", str(db)], check=False)
    assert imported.returncode == 0
    before = db.read_bytes()
    done = run_demo("--db", str(db))
    assert done.returncode == 2 and "--db" in done.stderr and "20 skills, 9 agents" in done.stderr
    assert db.read_bytes() == before
