"""Griffe extension for the API reference: reads the package's docstrings as they are written.

The docstrings are Google style with two reStructuredText habits that Markdown misreads:

- an ``Example:`` section (Markdown has no such section; griffe knows ``Examples:``), whose
  ``>>>`` lines would otherwise be read as Markdown, ``x["key"][:2]`` as a broken link;
- roles such as ``:class:`~raycontrast.models.CheckpointError``` , shown here as inline code
  (the name after ``~`` only, as Sphinx does).

It also settles one clash: a package that exports a function named like one of its submodules
(``raycontrast.train`` exports ``preflight`` from ``raycontrast.train.preflight``) has, for Python,
the function under that name (the import runs after the submodule is bound), while griffe keeps the
submodule; the exported object is put back under its name so that the reference shows it.

Nothing else changes; the text of the docstrings stays the single source.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import griffe

EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"``{target.rsplit('.', 1)[-1] if short else target}``"


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    """``obj`` and every object defined under it (aliases are not followed)."""
    found = [obj]
    for member in list(obj.members.values()):
        if not member.is_alias:
            found += _objects(member)
    return found


def _resolve(alias: griffe.Alias) -> None:
    """Resolve an alias now, while every submodule is still reachable by its path."""
    # an alias into another package (torch, ray) does not resolve: it is rendered as its name
    with contextlib.suppress(griffe.AliasResolutionError, griffe.CyclicAliasError):
        alias.final_target  # noqa: B018 (resolving caches the target)


def _exported_over_submodule(module: griffe.Module) -> None:
    """Where ``__all__`` names a submodule that defines an object of the same name, export the object."""
    for name in [str(n) for n in (module.exports or ())]:
        member = module.members.get(name)
        if member is None or member.is_alias or not member.is_module:
            continue
        target = member.members.get(name)
        if target is not None and not target.is_module:
            module.set_member(name, griffe.Alias(name, target, parent=module))


class RstDocstrings(griffe.Extension):
    """Rewrite ``Example:`` to ``Examples:`` and Sphinx roles to inline code before parsing; export
    objects that share their name with a submodule."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        objects = _objects(pkg)
        for obj in objects:
            if obj.docstring is not None:
                text = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
                obj.docstring.value = ROLE.sub(_role, text)
            for member in list(obj.members.values()):
                if member.is_alias:
                    _resolve(member)
        for obj in objects:
            if obj.is_module:
                _exported_over_submodule(obj)
