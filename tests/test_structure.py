"""The package's shape (issue 20, acceptance 3): small files with one job, and layers without circles.

Read statically (ast), so the check needs no import of torch or Lightning: every `import` and
`from ... import` anywhere in a module counts, function-level ones included (a circle through
imports inside functions is still a circle: neither module can be understood without the other).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> folder, as pyproject's package-dir maps them
PACKAGES = {
    "stuffed_mamba": ROOT / "src" / "stuffed_mamba",
    "stuffed_mamba.data": ROOT / "data",
    "stuffed_mamba.callbacks": ROOT / "callbacks",
}
MAX_LINES = 300


def package_modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    modules = {}
    for name, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([name, *parts])] = path
    return modules


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that module `name` imports (a name imported from a package counts as
    the submodule when there is one of that name, else the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                found.add(target)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_file_of_the_package_is_over_300_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in package_modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split by concern (at most {MAX_LINES} lines a file): {long}"


def test_no_import_cycle_among_the_packages_modules():
    modules = package_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 100 and graph["stuffed_mamba.training.fit"]  # the check reads the real tree
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_circle_through_function_level_imports(tmp_path):
    """The check itself, on the shape of the circle that was in probes/ (plots <-> position_loss)."""
    (tmp_path / "plots.py").write_text("def draw():\n    from pkg.position_loss import buckets\n")
    (tmp_path / "position_loss.py").write_text("def buckets():\n    pass\n\n\ndef figure():\n    from . import plots\n")
    (tmp_path / "other.py").write_text("import pkg.plots\n")
    known = {f"pkg.{p.stem}": p for p in tmp_path.glob("*.py")}
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    assert graph == {
        "pkg.plots": {"pkg.position_loss"},
        "pkg.position_loss": {"pkg.plots"},
        "pkg.other": {"pkg.plots"},
    }
    assert import_cycles(graph) == [["pkg.plots", "pkg.position_loss"]]
