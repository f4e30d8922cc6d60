"""Layering of ``src/xrayfm``: no import cycle between modules, no import against the package map.

Imports are read with ``ast`` from every module, those inside functions included (a lazy import
is still a dependency). :data:`ALLOWED` is the package map, one line per package: the other
xrayfm packages it may import. It is the map the README describes; change both together.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "xrayfm"  # the package's own __init__ (public names)

#: package -> the xrayfm packages it may import, lowest layer first.
# fmt: off
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    ROOT: {"errors"},  # the public root re-exports the errors and __version__
    "progress": {"errors", ROOT},
    "tasks": {"errors", ROOT},
    "io": {"errors", ROOT, "progress", "tasks"},
    "data": {"errors", ROOT, "progress", "tasks", "io"},
    "models": {"errors", ROOT, "progress", "tasks", "io", "data"},
    "train": {"errors", ROOT, "progress", "tasks", "io", "data", "models"},  # the shared loop, under the methods
    "report": {"errors", ROOT, "progress", "tasks", "io", "data"},  # rendering: evaluate imports report, not back
    "evaluate": {"errors", ROOT, "progress", "tasks", "io", "data", "models", "report"},
    "explain": {"errors", ROOT, "progress", "tasks", "io", "data", "models", "evaluate"},
    "pretrain": {"errors", ROOT, "progress", "tasks", "io", "data", "models", "train"},
    "finetune": {"errors", ROOT, "progress", "tasks", "io", "data", "models", "train", "evaluate", "report"},
    "serve": {"errors", ROOT, "progress", "tasks", "io", "data", "models", "evaluate", "explain"},
    "cli": {"errors", ROOT, "progress", "tasks", "io", "data", "models", "train", "report", "evaluate", "explain", "pretrain", "finetune", "serve"},
    "console": {"cli"},  # the console script's entry point: imports the command line only when called
}
# fmt: on


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``target`` at ``line``; ``runtime`` is False under ``if TYPE_CHECKING:``."""

    importer: str
    target: str
    line: int
    runtime: bool


def discover(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Every module under ``src/xrayfm``: dotted name -> (file, is a package ``__init__``)."""
    modules = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(modules: dict[str, tuple[Path, bool]]) -> list[Edge]:
    """All imports of xrayfm modules, resolved to module names (``from P import sub`` -> ``P.sub``)."""
    edges = []
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        type_only = _type_checking_lines(tree)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                subs = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
                names = [alias.name for alias in node.names if f"{source}.{alias.name}" not in modules]
                targets = subs + ([source] if names else [])
            for target in targets:
                while target not in modules and "." in target:  # `import xrayfm.a.b` of a name: its module
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    edges.append(Edge(name, target, node.lineno, node.lineno not in type_only))
    return edges


def package(module: str) -> str:
    """The top-level xrayfm package of a module (``xrayfm.data.datasets.nih`` -> ``data``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def cycles(edges: list[Edge]) -> list[list[str]]:
    """One concrete cycle per strongly connected component of the runtime import graph (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        if e.runtime:
            graph[e.importer].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(sorted(c)[0], c, graph) for c in components]


def _one_cycle(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside the component (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def violations(edges: list[Edge]) -> list[str]:
    """Imports between packages that :data:`ALLOWED` does not permit, as table rows."""
    rows = []
    for e in sorted(edges, key=lambda e: (e.importer, e.line)):
        src, dst = package(e.importer), package(e.target)
        if src != dst and dst not in ALLOWED.get(src, set()):
            rows.append(f"{src:>9} -> {dst:<9} {e.importer}:{e.line} imports {e.target}")
    return rows


# ---------------------------------------------------------------- the checks


def test_every_package_has_a_line_in_the_map() -> None:
    found = {package(m) for m in discover()}
    assert found == set(ALLOWED), (
        f"packages without a line: {found - set(ALLOWED)}; stale lines: {set(ALLOWED) - found}"
    )
    assert all(deps <= set(ALLOWED) - {p} for p, deps in ALLOWED.items())


def test_the_map_itself_has_no_cycle() -> None:
    """The allowed package dependencies form layers: no two packages may import each other, however indirectly."""
    edges = [Edge(p, d, 0, True) for p, deps in ALLOWED.items() for d in deps]
    assert not cycles(edges)
    importers = {p for p, deps in ALLOWED.items() if "cli" in deps}
    assert importers == {"console"}, "nothing in the library but the console script's entry point imports the CLI"


def test_no_import_cycle_between_modules() -> None:
    found = cycles(imports(discover()))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_against_the_package_map() -> None:
    rows = violations(imports(discover()))
    assert not rows, "imports the package map does not allow (importer -> imported):\n" + "\n".join(rows)


def test_the_checks_see_cycles_and_upward_imports(tmp_path: Path) -> None:
    """The parser resolves absolute, relative and function-level imports, so the checks above can fail."""
    pkg = tmp_path / ROOT
    for sub in ("train", "pretrain"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from xrayfm.errors import XrayfmError\n")
    (pkg / "errors.py").write_text("class XrayfmError(Exception): ...\n")
    (pkg / "train" / "loop.py").write_text("def run():\n    from xrayfm.pretrain import mim\n")
    (pkg / "pretrain" / "mim.py").write_text("from ..train import loop\nfrom . import helpers\n")
    (pkg / "pretrain" / "helpers.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import mim\n"
    )
    edges = imports(discover(tmp_path))
    assert cycles(edges) == [["xrayfm.pretrain.mim", "xrayfm.train.loop", "xrayfm.pretrain.mim"]]
    assert [r.split()[:3] for r in violations(edges)] == [["train", "->", "pretrain"]]
    assert Edge("xrayfm.pretrain.helpers", "xrayfm.pretrain.mim", 3, False) in edges  # type-only: no runtime cycle
