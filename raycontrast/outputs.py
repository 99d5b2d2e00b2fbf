"""Where a command may write: never over its inputs, and a run never outside its storage path.

One rule for every writing command (train, tune, study, convert, predict, eval, export, report,
fake-data): an output that *is*, *contains* or *lies inside* one of the command's inputs is refused
before anything is read or written, naming both paths and the relation. Run, sweep and study names
become folder names under ``storage_path``, so they must be plain names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from raycontrast.errors import ConfigError

__all__ = [
    "OutputError",
    "check_name",
    "check_output",
    "check_run_dir",
    "check_writable_file",
    "relation",
]


class OutputError(ConfigError):
    """An output path that would write over an input, or leave its storage path."""


def _local(path: str | Path | None) -> Path | None:
    if path is None or path is True or path is False or str(path).strip() == "":
        return None
    if "://" in str(path):
        return None  # URIs: object stores have no nesting to check here
    return Path(str(path)).expanduser().resolve()


def relation(out: str | Path, other: str | Path) -> str | None:
    """How ``out`` relates to ``other`` (local paths, symlinks resolved): ``"is"``, ``"is inside"``,
    ``"contains"``, or ``None`` when they are apart."""
    a, b = _local(out), _local(other)
    if a is None or b is None:
        return None
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def check_output(
    out: str | Path,
    inputs: Mapping[str, str | Path | None] | Iterable[tuple[str, str | Path | None]],
    flag: str = "--out",
    forbid: tuple[str, ...] = ("is", "is inside", "contains"),
) -> None:
    """Refuse ``out`` when it is, contains or lies inside one of ``inputs``.

    Args:
        out: the output file or folder.
        inputs: ``{what: path}``, e.g. ``{"--input": src, "the checkpoint": ckpt}``; ``None`` and
            empty paths are skipped.
        flag: how the caller names the output in messages (``--out``, ``the run folder``).
        forbid: the relations refused; a command whose own outputs live inside an input folder
            (``report`` writes ``RUN/plots``) passes ``("is", "contains")`` and names the files
            it reads as inputs too.

    Raises:
        OutputError: naming both paths and the relation.
    """
    items = inputs.items() if isinstance(inputs, Mapping) else inputs
    for what, path in items:
        rel = relation(out, path)
        if rel is None or rel not in forbid:
            continue
        why = {
            "is": "writing there would replace it",
            "is inside": "writing there would mix outputs into it and could overwrite its files",
            "contains": "writing there could overwrite its files",
        }[rel]
        raise OutputError(
            f"{flag} {out} {rel} {what} {path}: {why}. Choose an output outside every input"
        )


_BAD_NAME = re.compile(r"[\\/\x00]")


def check_name(name: str, key: str = "name") -> str:
    """A run, sweep or study name is one plain folder name: not empty, no ``/`` or ``\\``, not
    ``.`` or ``..``. Returns it.

    Raises:
        OutputError: naming the key and the value.
    """
    text = str(name) if name is not None else ""
    if not text.strip():
        raise OutputError(
            f"{key}={text!r} is empty; it names the run's folder under storage_path (e.g. "
            f"{key}=baseline)"
        )
    if _BAD_NAME.search(text) or text in (".", "..") or text != text.strip():
        raise OutputError(
            f"{key}={text!r} is not a plain folder name (no '/', '\\', '.', '..' or surrounding "
            f"spaces): it names the run's folder, which must lie inside storage_path"
        )
    return text


def check_run_dir(storage_path: str, name: str, key: str = "name") -> str:
    """``storage_path/name`` after :func:`check_name`, checked to lie strictly inside
    ``storage_path`` (a symlink named ``name`` pointing elsewhere is refused too)."""
    check_name(name, key)
    if "://" in str(storage_path):
        return "/".join([str(storage_path).rstrip("/"), name])
    root = Path(str(storage_path)).expanduser().resolve()
    run = (root / name).resolve()
    if root not in run.parents:
        raise OutputError(f"{key}={name!r}: the run folder {run} is not inside storage_path {root}")
    return str(root / name)


def check_writable_file(path: str | Path, flag: str = "--out") -> Path:
    """An output file may be new or a file (replaced); a folder in its place is refused."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputError(f"{flag} {target} is a folder; pass the file to write")
    return target
