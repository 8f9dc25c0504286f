"""No import cycles inside ``dng_tgn.graph``, lazy (function-level) imports included.

A cycle hidden behind an import inside a function still ties two modules together: neither can be read,
tested or moved without the other, and the lazy import only postpones the error to the first call. So the
check parses every module with :mod:`ast` and counts every ``import`` statement wherever it stands.
Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``; those implicit parent-package
imports are Python's, not a module's choice, and are not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    # inside a package's __init__ one dot means the package itself, elsewhere the module's parent
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([module] if module else []))


def import_graph(package_dir: Path, root: Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` for every ``.py`` file under ``package_dir``.

    ``root`` is the folder that holds the top-level package, so module names come out absolute.
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``.
    """
    files = {_module_name(p, root): p for p in sorted(package_dir.rglob("*.py"))}
    package = _module_name(package_dir / "__init__.py", root)

    def inside(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module, node.level, name, is_package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                # ``import a.b.c`` names a.b.c; keep the longest prefix that is one of our modules
                while target and target not in files and inside(target):
                    target = target.rpartition(".")[0]
                if target in files and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_graph_package_has_no_import_cycle():
    graph = import_graph(ROOT / "dng_tgn" / "graph", ROOT)
    assert "dng_tgn.graph.events" in graph and "dng_tgn.graph.convert.module" in graph  # the walk found the package
    assert "dng_tgn.graph.events" in graph["dng_tgn.graph.export"]  # and reads imports
    assert "dng_tgn.graph.convert" in graph["dng_tgn.graph.batch"]  # function-level ones too
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_events_imports_no_view_module():
    """The event model sits at the bottom: snapshots and exports are built on it, never the reverse."""
    deps = import_graph(ROOT / "dng_tgn" / "graph", ROOT)["dng_tgn.graph.events"]
    assert deps <= {"dng_tgn.graph.edge_ops"}, sorted(deps)


def _write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_checker_flags_a_lazy_cycle(tmp_path):
    """Negative control: the cycle events.py used to have (a lazy import back into an importer) is caught."""
    pkg = _write_package(tmp_path, {
        "model.py": "def view(self):\n    from .view import View\n    return View(self)\n",
        "view.py": "from .model import thing\n",
        "other.py": "import os\n",
    })
    graph = import_graph(pkg, tmp_path)
    assert graph["pkg.model"] == {"pkg.view"} and graph["pkg.view"] == {"pkg.model"}
    assert find_cycle(graph) in (["pkg.model", "pkg.view", "pkg.model"], ["pkg.view", "pkg.model", "pkg.view"])


def test_checker_resolves_every_import_form(tmp_path):
    pkg = _write_package(tmp_path, {
        "a.py": "import pkg.sub.c\nfrom . import b\n",
        "b.py": "from .sub import c as alias\nfrom pkg.sub.c import x\n",
        "sub/__init__.py": "from . import c\nfrom .. import b\n",
        "sub/c.py": "from .. import a\n",
    })
    graph = import_graph(pkg, tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.c", "pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub"] == {"pkg.sub.c", "pkg.b"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycle(graph) is not None  # a -> sub.c -> a
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"y"}}) == ["y", "z", "y"]
