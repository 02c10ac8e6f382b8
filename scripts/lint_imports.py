"""Check the import contracts of pyproject.toml ([tool.importlinter]) with import-linter.

import-linter reads one folder per root package, but `stuffed_mamba.data` and
`stuffed_mamba.callbacks` live in data/ and callbacks/ (setuptools package-dir). So the
package's Python files are assembled into a temporary tree with the installed layout, and
`lint-imports` runs on that tree. Exit status: lint-imports' (0 when every contract is kept).

    python3 scripts/lint_imports.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def assemble(dest: Path) -> None:
    """Copy the .py files of every mapped package to where an install puts them, under `dest`."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, src in sorted(package_dir.items(), key=lambda kv: kv[0].count(".")):

        def not_python(folder, names):
            return [n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir()]

        shutil.copytree(ROOT / src, dest.joinpath(*name.split(".")), ignore=not_python, dirs_exist_ok=True)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        assemble(Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        cmd = [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
            "--no-cache",
        ]  # reads [tool.importlinter] of pyproject.toml in ROOT
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
