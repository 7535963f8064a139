"""The package's shape, read from its source: no import cycle between modules (counting imports
inside functions, which only move a cycle to run time), and the per-rank side never reaching
back into the application (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mimo_launch"
PER_RANK = ("rank", "checks", "groups", "layout")


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST):
    """Every import statement, but those under `if TYPE_CHECKING:` (never executed)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from the source of `package`."""
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
                continue
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            deps.update({base} & files.keys())
            deps.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "mimo_launch.rank.rank_job" in graph["mimo_launch.rank.rank_runner"]
    assert "mimo_launch.errors" in graph["mimo_launch.cli"]
    # an import inside a function counts; one under TYPE_CHECKING does not
    assert "mimo_launch.launchers.slurm_launcher" in graph["mimo_launch.cli"]
    assert "mimo_launch.settings.app_config" not in graph["mimo_launch.rank.rank_job"]


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "mimo_launch"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "one.py").write_text("from ..two import f\n")
    (pkg / "two.py").write_text("def f():\n    from .a import one\n")
    (pkg / "three.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from .two import f\n")
    assert cycles(import_graph(pkg)) == [["mimo_launch.a.one", "mimo_launch.two"]]


def test_no_module_imports_itself_back_through_others():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("folder", PER_RANK)
def test_the_per_rank_side_never_imports_the_application(folder):
    graph = import_graph()
    reaching = {m: sorted(d for d in deps if d.startswith("mimo_launch.app"))
                for m, deps in graph.items() if m.startswith(f"mimo_launch.{folder}.")}
    assert {m: d for m, d in reaching.items() if d} == {}
