"""The public API is what the API reference says: each sub-package's ``__all__``, documented,
referenced in docs/reference/, and made of public objects only."""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "raycontrast",
    "raycontrast.config",
    "raycontrast.contrast",
    "raycontrast.data",
    "raycontrast.models",
    "raycontrast.models.heads",
    "raycontrast.bank",
    "raycontrast.eval",
    "raycontrast.train",
    "raycontrast.tune",
]


def _public(pkg: str) -> list[tuple[str, object]]:
    module = importlib.import_module(pkg)
    return [(name, getattr(module, name)) for name in module.__all__]


def _attribute_docstring(module_name: str, name: str) -> str | None:
    """The string literal right under ``NAME = ...`` in the module that assigns it."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    for node, after in itertools.pairwise(tree.body):
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        doc = getattr(getattr(after, "value", None), "value", None)
        if (
            getattr(target, "id", None) == name
            and isinstance(after, ast.Expr)
            and isinstance(doc, str)
        ):
            return doc
    return None


def _home(pkg: str, name: str) -> str:
    """The module that defines ``pkg.name`` (where a package's ``__init__`` takes it from)."""
    module = importlib.import_module(pkg)
    path = Path(module.__file__)
    if path.name == "__init__.py":
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and any(
                (a.asname or a.name) == name for a in node.names
            ):
                return node.module
    return pkg


def _referenced() -> set[str]:
    pages = sorted((ROOT / "docs" / "reference").rglob("*.md"))
    assert pages, "docs/reference/ has no page"
    text = "\n".join(p.read_text() for p in pages)
    return set(re.findall(r"^:::\s*(raycontrast(?:\.\w+)*)\s*$", text, re.M))


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_public_name_is_documented_and_in_the_reference(pkg):
    assert pkg in _referenced(), f"docs/reference/ has no '::: {pkg}'"
    missing = []
    for name, obj in _public(pkg):
        if name == "__version__":
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            doc = inspect.getdoc(obj)
        else:  # a constant: its attribute docstring in the module that defines it
            doc = _attribute_docstring(_home(pkg, name), name)
        if not (doc and doc.strip()):
            missing.append(name)
    assert missing == [], f"{pkg}: public names without a docstring: {missing}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_nothing_private_is_re_exported(pkg):
    private = []
    for name, obj in _public(pkg):
        home = _home(pkg, name)
        owner = getattr(obj, "__module__", None) or home
        if name.startswith("_") and name != "__version__":
            private.append(name)
        elif any(part.startswith("_") for part in f"{home}.{owner}".split(".")):
            private.append(f"{name} (from {home if '._' in home else owner})")
    assert private == [], f"{pkg} re-exports private objects: {private}"


@pytest.mark.parametrize(
    "pkg", [p for p in PACKAGES if p not in ("raycontrast", "raycontrast.config")]
)
def test_a_package_hands_on_exactly_its_all(pkg):
    """A name an ``__init__`` imports is in ``__all__`` unless the ``__init__``'s own code uses it."""
    tree = ast.parse(Path(importlib.import_module(pkg).__file__).read_text())
    imported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raycontrast")
        for alias in node.names
    }
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    hidden = imported - set(importlib.import_module(pkg).__all__) - used
    assert hidden == set(), f"{pkg} imports names it neither uses nor lists in __all__: {hidden}"


def test_the_package_states_its_version_and_entry_points():
    import raycontrast

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert raycontrast.__version__ == pyproject["project"]["version"]
    for name in raycontrast.__all__:
        assert getattr(raycontrast, name) is not None
    from raycontrast.train import run_training

    assert raycontrast.run_training is run_training
