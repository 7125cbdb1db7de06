"""Output files are replaced whole or not at all: a write that fails for real (EFBIG under a file-size limit, an
interrupt) leaves the previous file byte-identical and usable, and no temporary file behind."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skillorchestra.handbook.atomic_file import atomic_writer, write_text_atomic
from skillorchestra.handbook.traces import AgentOutcome, TraceTask, read_tasks, write_tasks

resource = pytest.importorskip("resource")  # POSIX only
if not hasattr(signal, "SIGXFSZ"):
    pytest.skip("no file-size limit signal on this platform", allow_module_level=True)

CLI = Path(sys.executable).with_name("skillorchestra")
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no .pyc writes under the limit


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn: writes past `max_bytes` fail with EFBIG (an OSError in Python) instead of killing the child."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def cli(args: list[str], max_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    limit = file_size_limit(max_bytes) if max_bytes is not None else None
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, env=ENV, preexec_fn=limit, timeout=120, check=False
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden temporary files included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_that_hits_the_file_size_limit_leaves_the_previous_export_whole_and_importable(
    tmp_path: Path,
) -> None:
    db, backups = tmp_path / "h.db", tmp_path / "backups"
    backups.mkdir()
    backup = backups / "nightly.json"
    assert cli(["handbook", "import", "--example", "--db", str(db)]).returncode == 0
    assert cli(["handbook", "export", str(backup), "--db", str(db)]).returncode == 0
    assert cli(["handbook", "import", "--example", "--db", str(db)]).returncode == 0  # the next export differs
    before = backup.read_bytes()
    assert len(before) > 40_000  # so the limit below cuts the new export midway

    failed = cli(["handbook", "export", str(backup), "--db", str(db)], max_bytes=40_000)

    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.startswith("error: file='") and failed.stderr.endswith(
        "expected a writable file path, or - for stdout (File too large)\n"
    )
    assert snapshot(backups) == {"nightly.json": before}  # byte-identical, and no temporary file left
    restored = tmp_path / "restored.db"
    imported = cli(["handbook", "import", str(backup), "--db", str(restored)])
    assert imported.returncode == 0 and "20 skills, 9 agents" in imported.stdout

    assert cli(["handbook", "export", str(backup), "--db", str(db)]).returncode == 0  # without the limit: replaced
    assert json.loads(backup.read_text(encoding="utf-8"))["version"] == json.loads(before)["version"] + 1
    assert sorted(p.name for p in backups.iterdir()) == ["nightly.json"]


def llmrouter_source(folder: Path, rows: int) -> Path:
    """A small LLMRouter-shaped source folder: two agents, `rows` questions per split."""
    folder.mkdir()
    for split in ("train", "test"):
        questions = [f"{split} question {i}: " + "why is the sky blue? " * 10 for i in range(rows)]
        scores = [{"question": q, "scores": {"a": 1.0, "b": float(i % 2)}} for i, q in enumerate(questions)]
        (folder / f"scores_{split}.json").write_text(json.dumps(scores), encoding="utf-8")
        queries = "".join(json.dumps({"task_name": "sky", "query": q}) + "\n" for q in questions)
        (folder / f"default_query_{split}.jsonl").write_text(queries, encoding="utf-8")
    prices = {"a": {"input_price": 1.0, "output_price": 2.0}, "b": {"input_price": 0.1, "output_price": 0.2}}
    (folder / "default_llm.json").write_text(json.dumps(prices), encoding="utf-8")
    return folder


def test_a_data_convert_that_hits_the_file_size_limit_leaves_the_previous_output_whole(tmp_path: Path) -> None:
    out = tmp_path / "converted"
    small, large = llmrouter_source(tmp_path / "small", 5), llmrouter_source(tmp_path / "large", 200)
    assert cli(["data", "convert", "--format", "llmrouter", str(small), str(out)]).returncode == 0
    before = snapshot(out)
    assert sorted(before) == ["agents.json", "test.jsonl", "train.jsonl"]

    failed = cli(["data", "convert", "--format", "llmrouter", str(large), str(out)], max_bytes=20_000)

    assert failed.returncode == 2 and "File too large" in failed.stderr
    assert snapshot(out) == before
    assert len(read_tasks(out / "train.jsonl")) == 5
    assert cli(["data", "convert", "--format", "llmrouter", str(large), str(out)]).returncode == 0
    assert len(read_tasks(out / "train.jsonl")) == 200 and sorted(snapshot(out)) == sorted(before)


# Runs the CLI with the file-size limit set only once the evaluation is done (when run_eval returns): the
# evaluation's own scratch database needs more room than the --json report, so only the report's write must fail.
LIMIT_AT_REPORT = """
import resource, signal, sys
from skillorchestra.handbook.evaluation import runner
from skillorchestra.server.cli import main

evaluated = runner.run_eval

def run_then_limit(*args, **kwargs):
    result = evaluated(*args, **kwargs)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return result

runner.run_eval = run_then_limit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
main(sys.argv[1:])
"""


def test_an_eval_report_that_hits_the_file_size_limit_leaves_the_previous_report_whole(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_tasks(data / "train.jsonl", [task(f"r{i}", 1.0, i % 2) for i in range(20)])
    write_tasks(data / "test.jsonl", [task(f"s{i}", 1.0, 0.0) for i in range(8)])
    prices = {
        "a": {"input_per_mtok": 10.0, "output_per_mtok": 30.0},
        "b": {"input_per_mtok": 0.5, "output_per_mtok": 1},
    }
    (data / "agents.json").write_text(json.dumps(prices), encoding="utf-8")
    reports = tmp_path / "reports"
    reports.mkdir()
    report = reports / "eval.json"
    args = ["eval", "--train", str(data / "train.jsonl"), "--test", str(data / "test.jsonl"), "--lambda", "0.1"]
    args += ["--episodes", "3", "--json", str(report)]
    assert cli(args).returncode == 0
    before = report.read_bytes()
    assert len(before) > 2000

    failed = subprocess.run(
        [sys.executable, "-c", LIMIT_AT_REPORT, *args], capture_output=True, text=True, env=ENV, timeout=120
    )

    assert failed.returncode == 2 and "File too large" in failed.stderr, failed.stderr
    assert "accuracy" in failed.stdout  # the evaluation ran; only its report could not be written
    assert snapshot(reports) == {"eval.json": before}
    assert json.loads(before)["rows"]


def task(task_id: str, a: float, b: float) -> TraceTask:
    return TraceTask(
        id=task_id, query=f"question {task_id}", outcomes={"a": AgentOutcome(score=a), "b": AgentOutcome(score=b)}
    )


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_tasks_whose_writing_is_interrupted_midway_leave_the_old_file_whole(
    tmp_path: Path, failure: type[BaseException]
) -> None:
    path = tmp_path / "train.jsonl"
    write_tasks(path, [task("old", 1.0, 0.0)])
    before = path.read_bytes()

    def interrupted() -> Iterator[TraceTask]:
        yield task("new-1", 0.0, 1.0)
        yield task("new-2", 0.0, 1.0)
        raise failure()

    with pytest.raises(failure):
        write_tasks(path, interrupted())
    assert snapshot(tmp_path) == {"train.jsonl": before}


def test_a_new_file_gets_the_umask_permissions_and_an_existing_one_keeps_its_mode(tmp_path: Path) -> None:
    old_umask = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "new.json", "{}\n")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
    backup = tmp_path / "backup.json"
    backup.write_text("old\n", encoding="utf-8")
    backup.chmod(0o600)
    write_text_atomic(backup, "new\n")
    assert backup.read_text(encoding="utf-8") == "new\n" and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.json", "new.json"]


def test_a_link_stays_a_link_to_the_replaced_file(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    real, link = tmp_path / "real" / "export.json", tmp_path / "latest.json"
    real.write_text("old\n", encoding="utf-8")
    link.symlink_to(real)
    write_text_atomic(link, "new\n")
    assert link.is_symlink() and real.read_text(encoding="utf-8") == "new\n"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["export.json"]


def test_a_device_is_written_directly_never_replaced(tmp_path: Path) -> None:
    before = os.stat("/dev/null")
    write_text_atomic("/dev/null", "discarded\n")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    with pytest.raises(IsADirectoryError):
        write_text_atomic(tmp_path, "x")
    with pytest.raises(FileNotFoundError):
        write_text_atomic(tmp_path / "missing" / "x.json", "x")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_inside_the_block_keeps_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), atomic_writer(path) as handle:
        handle.write("half of the new")
        raise KeyboardInterrupt
    assert snapshot(tmp_path) == {"report.json": b"old\n"}


def test_a_hard_linked_file_is_written_in_place_so_every_name_sees_it(tmp_path: Path) -> None:
    first, second = tmp_path / "h1.json", tmp_path / "h2.json"
    first.write_text("old")
    os.link(first, second)
    write_text_atomic(first, "new")
    assert second.read_text() == "new" and os.stat(first).st_ino == os.stat(second).st_ino


@pytest.mark.parametrize("stem", ["e" * 245, "€" * 80])  # 250 and 245 bytes: the limit counts bytes
def test_a_name_near_the_file_systems_limit_still_gets_a_temporary_file(tmp_path: Path, stem: str) -> None:
    target = tmp_path / f"{stem}.json"
    write_text_atomic(target, "whole")
    assert target.read_text() == "whole" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
