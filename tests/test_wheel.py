"""The built wheel installs the three packages under the skillorchestra namespace, and nothing generic."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_into_a_fresh_venv_and_imports(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("skillorchestra_mcp-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("skillorchestra_mcp-")}
    assert top_level == {"skillorchestra"}
    assert "skillorchestra/handbook/data/example_handbook.json" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    # Dependencies come from the test interpreter's site-packages, appended after the fresh venv's own.
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    code = (
        "import sys; sys.path.append(sys.argv[1]);"
        "import skillorchestra.handbook.service, skillorchestra.tools, skillorchestra.server.app as app;"
        "from skillorchestra.handbook.example import example_document;"
        "print(app.__file__, len(example_document().skills))"
    )
    out = subprocess.run([python, "-c", code, deps], check=True, capture_output=True, text=True, timeout=120)
    assert str(env_dir) in out.stdout
    assert int(out.stdout.split()[-1]) > 0  # the shipped example handbook is read from the installed package
