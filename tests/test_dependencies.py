"""pyproject.toml declares what the code imports: every third-party module the product code
imports is a dependency of the extra it needs, and no declared dependency goes unused."""

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ["src/stuffed_mamba", "data", "callbacks"]
# modules of an optional group: imported only where the code says how to install them. "cuda" is
# what `scripts/install.sh cuda` builds against the installed torch with --no-build-isolation (no
# pyproject extra can ask for that, so there is none).
EXTRA_FILES = {"src/stuffed_mamba/ops/mamba_ssm_backend.py": "cuda"}
# declared but reached through another package rather than imported: Lightning imports
# deepspeed for trainer.strategy=deepspeed
INDIRECT = {"deepspeed"}
TOOLS = {"import-linter", "ruff"}  # run by .ci/run, never imported


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    groups["cuda"] = re.findall(r'--no-build-isolation "([^"]+)"', (ROOT / "scripts" / "install.sh").read_text())
    return {g: {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs} for g, reqs in groups.items()}


def _imports(folders) -> dict[str, set[str]]:
    """Top-level third-party modules -> the files (relative to the repo) that import them."""
    out: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                )
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("stuffed_mamba", "tests"):
                        out.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return out


@functools.cache
def _distributions() -> dict:
    return importlib.metadata.packages_distributions()


def _distribution(module: str) -> str:
    dists = _distributions().get(module)
    return _norm(dists[0]) if dists else _norm(module)  # an extra not installed here: its usual name


def test_product_imports_are_declared_in_the_extra_they_need():
    declared = _declared()
    used: dict[str, set[str]] = {}
    for module, files in _imports(PRODUCT).items():
        extras = {EXTRA_FILES.get(f, "base") for f in files}
        group = "base" if "base" in extras else extras.pop()
        dist = _distribution(module)
        assert dist in declared[group], f"{module} (imported by {sorted(files)}) is not in the {group} dependencies"
        used.setdefault(group, set()).add(dist)
    for group in ("base", "cuda"):
        unused = declared[group] - used.get(group, set()) - INDIRECT
        assert not unused, f"declared in {group} but never imported by the product code: {sorted(unused)}"


def test_dev_extra_is_what_the_tests_import_plus_the_ci_tools():
    declared = _declared()
    tests = {_distribution(m) for m in _imports(["tests"])}
    unused = declared["dev"] - tests - TOOLS
    assert not unused, f"dev extra entries no test imports: {sorted(unused)}"
