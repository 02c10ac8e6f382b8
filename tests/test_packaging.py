"""The distribution ships every package: the explicit list in pyproject.toml cannot drift from the tree."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _packages_in_tree(package_dir: dict[str, str]) -> set[str]:
    found = set()
    for pkg, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join((pkg, *rel.parts)) if rel.parts else pkg
            if not any(
                name.startswith(other + ".") or name == other
                for other in package_dir
                if other != pkg and other.startswith(pkg + ".")
            ):
                found.add(name)
    return found


def test_every_package_in_the_tree_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    in_tree = _packages_in_tree(cfg["package-dir"])
    assert in_tree - listed == set(), "packages missing from pyproject.toml"
    assert listed - in_tree == set(), "pyproject.toml lists packages that do not exist"


@pytest.mark.slow
def test_wheel_holds_the_mapped_packages_and_the_sample_corpus(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    # nothing in our pyproject draws a setuptools warning (licence table, would-be packages in data/sample)
    for warning in ("SetuptoolsDeprecationWarning", "is absent from the `packages` configuration"):
        assert warning not in build.stdout + build.stderr, warning
    wheel = next(tmp_path.glob("stuffed_mamba-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sample = ROOT / "data" / "sample"  # the corpus is package data: every file of it ships
    corpus = {f"stuffed_mamba/data/sample/{p.relative_to(sample).as_posix()}" for p in sample.rglob("*") if p.is_file()}
    assert corpus and corpus <= names, sorted(corpus - names)[:5]
    for f in (
        "stuffed_mamba/model/lm.py",
        "stuffed_mamba/data/loader.py",
        "stuffed_mamba/callbacks/base.py",
        "stuffed_mamba/sweep/runner.py",
        "stuffed_mamba/data/sample/tokenizer.json",
    ):
        assert f in names, f
    assert not any(n.startswith(("data/", "callbacks/")) for n in names), "no top-level data/callbacks modules"
