"""Read and write run artifacts on a local path, an NFS mount or a URI (s3://, gs://) via pyarrow.fs.

Local paths need no extra dependency; URIs use pyarrow's filesystems (credentials from the environment).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["exists", "is_uri", "join", "makedirs", "read_bytes", "resolve", "write_bytes"]


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> str:
    """An absolute local path, or the URI unchanged (Ray Train and workers need absolute paths)."""
    return str(path) if is_uri(path) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def _fs(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def makedirs(path: str) -> None:
    if is_uri(path):
        fs, p = _fs(path)
        fs.create_dir(p, recursive=True)
    else:
        Path(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes(path: str, data: bytes, atomic: bool = False) -> None:
    """Write ``data``; ``atomic`` writes a temporary sibling first and renames it (local paths)."""
    if is_uri(path):
        fs, p = _fs(path)
        parent = p.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not atomic:
        target.write_bytes(data)
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
