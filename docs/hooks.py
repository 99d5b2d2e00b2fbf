"""MkDocs hook: pages generated from the code at build time, so they cannot drift from it.

- ``reference/config.md``: every experiment config key from the ``param()`` metadata of the config
  dataclasses, through :func:`raycontrast.config.describe_config` (what ``raycontrast config --keys``
  prints), with each section's docstring and each key's numeric bounds.
- ``reference/cli.md``: the ``--help`` of ``raycontrast`` and of every subcommand, from the parser the
  command line uses.
- ``index.md``: the README's front matter (what and why, set-up, the result, the commands), its links
  made relative to ``docs/``, so the home page and the README cannot disagree.

A page asks for a table with a marker line (``<!-- generated: config-keys -->``, ``<!-- generated:
cli -->``); a marker no generator knows is an error, not an empty section.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing
from pathlib import Path

# document the checkout this site belongs to, not whatever raycontrast is installed
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _bounds(meta: typing.Mapping[str, typing.Any]) -> str:
    """``>= 0, < 1`` from a field's ``ge`` / ``gt`` / ``le`` / ``lt`` metadata."""
    signs = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
    return ", ".join(f"{sign} {meta[key]}" for key, sign in signs if meta.get(key) is not None)


def _leaf_meta(cls: type, prefix: str = "") -> dict[str, typing.Mapping[str, typing.Any]]:
    """Dotted key -> the field's ``param()`` metadata, for every leaf field."""
    hints = typing.get_type_hints(cls)
    out: dict[str, typing.Mapping[str, typing.Any]] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_meta(tp, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f.metadata
    return out


def config_keys_markdown() -> str:
    """One table per config section: key, type, default, allowed values or range, meaning."""
    from raycontrast.config import ExperimentConfig, describe_config

    rows = describe_config()
    meta = _leaf_meta(ExperimentConfig)
    hints = typing.get_type_hints(ExperimentConfig)
    sections: dict[str, list[tuple[str, str, str, str]]] = {"": []}
    for row in rows:
        head, _, rest = row[0].partition(".")
        sections.setdefault(head if rest else "", []).append(row)
    out = []
    for section, section_rows in sections.items():
        if section:
            doc = (hints[section].__doc__ or "").strip()
            out += [f"## `{section}`", "", doc, ""]
        else:
            out += ["## Top level", ""]
        out += ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
        for key, tp, default, help_text in section_rows:
            cells = (f"`{key}`", tp, f"`{default}`", _bounds(meta[key]), help_text)
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def cli_markdown() -> str:
    """``raycontrast --help`` and each subcommand's help, as the parser prints them."""
    from raycontrast.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        out = ["## `raycontrast`", "", "```text", parser.format_help().rstrip(), "```", ""]
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, sub in subparsers.choices.items():
            out += [
                f"## `raycontrast {name}`",
                "",
                "```text",
                sub.format_help().rstrip(),
                "```",
                "",
            ]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out)


def readme_markdown() -> str:
    """The README from its first paragraph up to its own list of documentation pages."""
    readme = (REPO / "README.md").read_text()
    body = readme[readme.index("\n\n") + 2 : readme.index("\n## Documentation")]
    if re.search(r"\]\((?!docs/|https?://|#)", body):
        raise ValueError(
            "README.md links outside docs/ before '## Documentation': the home page has no such file"
        )
    return body.replace("](docs/", "](")


GENERATORS = {"config-keys": config_keys_markdown, "cli": cli_markdown, "readme": readme_markdown}


def _generate(match: re.Match) -> str:
    name = match.group(1)
    if name not in GENERATORS:
        raise ValueError(f"unknown generated block {name!r}; known: {', '.join(GENERATORS)}")
    return GENERATORS[name]()


def on_page_markdown(markdown: str, page: typing.Any, **kwargs: typing.Any) -> str:
    """Replace each ``<!-- generated: NAME -->`` line with what its generator writes."""
    return MARKER.sub(_generate, markdown)
