"""Shared pieces of the benchmarks: a synthetic handbook, percentile summaries, and server processes.

Benchmarks are scripts that print figures (never timed assertions). Run them from the repository root with the
project's interpreter, e.g. `.venv/bin/python bench/route_latency.py`.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from skillorchestra.handbook.models import Agent, Competence, CostStats, HandbookDocument, Mode, Skill

BENCH_DIR = Path(__file__).resolve().parent
MODES = ("search", "code", "answer", "math")
N_CATEGORIES = 20  # 20 categories + 180 leaves = 200 skills
WORDS = (
    "parse sort merge index query join cache retry stream batch vector matrix integral derivative proof lemma "
    "theorem graph tree path shortest flow network schema table column migrate compile link debug trace profile "
    "latency throughput summarise translate classify extract entity sentiment citation source fact verify date "
    "currency unit convert estimate forecast regression cluster outlier sample bootstrap interval hypothesis test "
    "unit integration fixture mock refactor rename extract inline module package release version semantic diff "
    "patch review lint format type annotate docstring tutorial explain compare contrast plan schedule budget "
    "legal contract clause policy medical dose symptom chemistry reaction molecule physics force energy orbit "
    "geometry triangle circle probability dice card poker chess puzzle riddle logic knight knave syllogism "
    "poem story essay letter email slogan headline tweet abstract outline bullet table chart plot axis legend"
).split()


def machine_line() -> str:
    """Printed first by every benchmark: figures only mean something next to the machine and its load."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{time.strftime('%Y-%m-%d')}  {os.cpu_count()} cores  load average {load}  python {sys.version.split()[0]}"


def synthetic_document(n_agents: int = 50, n_skills: int = 200, seed: int = 0) -> HandbookDocument:
    """A deterministic handbook: modes, a two-level skill hierarchy, and evidence for every agent on every leaf."""
    rng = random.Random(seed)
    modes = [Mode(id=m, description=f"{m} stage", insights=[f"prefer cheap agents for easy {m} steps"]) for m in MODES]
    skills: list[Skill] = []
    n_leaves = n_skills - N_CATEGORIES
    for c in range(N_CATEGORIES):
        words = rng.sample(WORDS, 3)
        skills.append(Skill(id=f"cat{c:02d}", mode=MODES[c % len(MODES)], description=" ".join(words)))
    for leaf in range(n_leaves):
        c = leaf % N_CATEGORIES
        words = rng.sample(WORDS, 6)
        skills.append(
            Skill(
                id=f"cat{c:02d}.skill{leaf:03d}",
                mode=MODES[c % len(MODES)],
                parent_id=f"cat{c:02d}",
                description=" ".join(words[:4]),
                indicators=[" ".join(words[2:5])],
                examples=[" ".join(words[3:6])],
            )
        )
    agents = [
        Agent(
            id=f"vendor{a % 7}/model-{a:02d}",
            description=f"synthetic agent {a}",
            input_per_mtok=round(rng.uniform(0.05, 15.0), 3),
            output_per_mtok=round(rng.uniform(0.2, 60.0), 3),
        )
        for a in range(n_agents)
    ]
    competence, cost = [], []
    for agent in agents:
        skill_level = rng.uniform(0.3, 0.9)
        for skill in skills[N_CATEGORIES:]:
            n = rng.randint(0, 40)
            wins = sum(rng.random() < skill_level for _ in range(n))
            competence.append(Competence(agent_id=agent.id, skill_id=skill.id, alpha=1 + wins, beta=1 + n - wins))
            if n:
                cost.append(CostStats(agent_id=agent.id, skill_id=skill.id, n=n, mean_cost_usd=rng.uniform(1e-4, 0.05)))
    return HandbookDocument(modes=modes, skills=skills, agents=agents, competence=competence, cost=cost)


def step_texts(document: HandbookDocument, n: int, seed: int = 1) -> list[str]:
    """Step texts that mention a random leaf skill's words among filler, as an orchestrator would write them."""
    rng = random.Random(seed)
    leaves = [s for s in document.skills if s.parent_id]
    texts = []
    for _ in range(n):
        skill = rng.choice(leaves)
        words = skill.description.split()[:3] + rng.sample(WORDS, 3)
        rng.shuffle(words)
        texts.append(f"Please {' '.join(words)} for the customer report and check the result")
    return texts


def summary(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/mean in milliseconds."""
    ordered = sorted(samples_s)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return {"p50": statistics.median(ordered) * 1e3, "p90": p90 * 1e3, "mean": statistics.fmean(ordered) * 1e3}


def fmt(samples_s: Sequence[float]) -> str:
    s = summary(samples_s)
    return f"p50 {s['p50']:8.3f} ms  p90 {s['p90']:8.3f} ms  (n={len(samples_s)})"


def verdict(value: float, target: float, *, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "OK" if ok else "MISSED"


def timed(fn: object, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t)
    return samples


def script(name: str) -> str:
    """A console script installed next to this interpreter (the venv's bin/)."""
    return str(Path(sys.executable).parent / name)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLORCHESTRA_")}
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}, **extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_server(db: Path, transport: str = "http", timeout_s: float = 60.0, **env: str) -> Iterator[str]:
    """`skillorchestra serve --transport ...` on a free loopback port (extra environment in `env`); yields the base
    URL and always kills the process."""
    port = free_port()
    args = [script("skillorchestra"), "serve", "--transport", transport, "--port", str(port), "--db", str(db)]
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server must never block on a full pipe
    proc = subprocess.Popen(args, env=child_env(**env), stdout=subprocess.DEVNULL, stderr=errors)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                errors.seek(0)
                raise RuntimeError(f"server exited {proc.returncode}: {errors.read().decode()}")
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become healthy") from None
                time.sleep(0.05)
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=10)
        errors.close()
