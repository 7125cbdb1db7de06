"""Type-check the package with mypy (the configuration is pyproject.toml's [tool.mypy]).

The three root folders install as `skillorchestra.handbook`, `.server` and `.tools` through setuptools' package-dir
mapping, which mypy cannot follow (it maps module names to folders by path, and an editable install's import hook is
invisible to it). So this lays the package out as it imports, a `skillorchestra/` folder of symbolic links to the
root folders, in a temporary directory, and checks that. Usage: python scripts/typecheck.py [MYPY ARGS...]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("handbook", "server", "tools")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="skillorchestra-typecheck-") as tmp:
        package = Path(tmp) / "skillorchestra"
        package.mkdir()
        for name in SUBPACKAGES:
            (package / name).symlink_to(ROOT / name, target_is_directory=True)
        command = [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            *sys.argv[1:],
            "-p",
            "skillorchestra",
        ]
        return subprocess.run(command, cwd=tmp).returncode


if __name__ == "__main__":
    raise SystemExit(main())
