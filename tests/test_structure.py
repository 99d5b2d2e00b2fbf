"""The package's floor plan: no import circle and no upward import.

Sub-packages stand on declared floors; a module may import from its own sub-package (without a
circle) or from a lower floor, never from a higher one or across its own floor. Every import counts,
those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raycontrast"

FLOORS = {
    # beneath the ground: the error types and the strict YAML reader the configuration stands on
    "errors": -1,
    "yaml_strict": -1,
    # the ground: configuration and helpers everything may use
    "config": 0,
    "outputs": 0,
    "console": 0,
    "storage": 0,
    "_distributed": 0,
    "_progress": 0,
    "experiments": 0,
    # pure libraries: the method, the data, the models
    "contrast": 1,
    "data": 1,
    "models": 1,
    # distributed glue and evaluation, on top of the libraries
    "bank": 2,
    "eval": 2,
    # the drivers
    "train": 3,
    "tune": 4,
    # the command line and the package's face
    "cli": 5,
    "__init__": 5,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _reexports(modules: dict[str, Path]) -> dict[str, dict[str, str]]:
    """For each package: name -> the module its ``__init__`` takes it from."""
    out: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        if path.name != "__init__.py":
            continue
        out[name] = {
            alias.asname or alias.name: node.module
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a name taken from a package's ``__init__`` counts as
    an import of the module that defines it; the ``__init__`` only hands it on)."""
    modules = _modules()
    reexports = _reexports(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in modules:
                        targets.append(sub)
                    else:
                        targets.append(reexports.get(node.module, {}).get(alias.name, node.module))
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != mod and target != "raycontrast":
                    graph[mod].add(target)
    return graph


def _floor(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in FLOORS, f"{module}: sub-package {top!r} has no floor in tests/test_structure.py"
    return top, FLOORS[top]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circle():
    assert _circles(import_graph()) == []


def test_no_module_imports_upward_or_across_its_floor():
    wrong = []
    for mod, targets in import_graph().items():
        home, floor = _floor(mod)
        for target in targets:
            there, level = _floor(target)
            if there != home and level >= floor:
                wrong.append(f"{mod} (floor {floor}) -> {target} (floor {level})")
    assert wrong == []


def test_the_checks_catch_a_circle_and_an_upward_import():
    graph = {"raycontrast.a.x": {"raycontrast.a.y"}, "raycontrast.a.y": {"raycontrast.a.x"}}
    assert _circles(graph) == [["raycontrast.a.x", "raycontrast.a.y"]]
    assert _floor("raycontrast.eval.compare")[1] < _floor("raycontrast.train._logger")[1]
