"""YAML without silent ambiguity: a key written twice in one mapping is an error, not "the last wins".

Every YAML file the project reads (experiment configs, sweeps, studies) goes through :func:`load`, so a
study that names an arm twice, or a config that sets ``train.lr`` in two places of one mapping, fails
naming the key, the file and both lines.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "StrictLoader", "load"]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice (``problem_mark`` is the second occurrence)."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping (merge keys ``<<`` excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise DuplicateKeyError(
                    f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    first.start_mark,
                    f"key {key!r} is written again here",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping
)


def load(text: str, name: str = "<string>") -> Any:
    """Parse ``text`` like ``yaml.safe_load``; a duplicate key raises :class:`DuplicateKeyError`.

    Args:
        text: the YAML document.
        name: the file name reported in marks (line numbers are 1-based in messages).
    """
    loader = StrictLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def duplicate_message(err: DuplicateKeyError, path: str) -> str:
    """``FILE:LINE: duplicate key 'k' (first at line N)``: one line naming the key, file and lines."""
    line = err.problem_mark.line + 1 if err.problem_mark else "?"
    return f"{path}:{line}: {err.context}; each key may appear once per mapping"
