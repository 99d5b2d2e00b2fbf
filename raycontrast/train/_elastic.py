"""Elastic runs (``train.num_workers: [min, max]``): the record of a run's worker groups.

Ray Train restarts the whole worker group, from the last reported checkpoint, whenever a worker is
lost or the group resizes. Rank 0 of every group appends one line to ``<run dir>/workers/groups.jsonl``
when it starts: the iteration it resumes from, its world size and, in ``bank.mode=actor``, where each
bank shard's queues came from (``live``: the actor's bank, kept; ``checkpoint``; ``empty``). The
driver copies the list into ``summary.json`` (``worker_groups``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from raycontrast import storage

__all__ = ["GROUPS_FILE", "record_worker_group", "worker_groups"]

GROUPS_FILE = "workers/groups.jsonl"


def record_worker_group(
    run_dir: str, start: int, world_size: int, bank: list[dict[str, Any] | None] | None = None
) -> dict[str, Any]:
    """Append this worker group's line (rank 0 calls it once per group); returns the record."""
    record = {"start": start, "world_size": world_size, "time": time.time()}
    if bank is not None:
        record["bank"] = [
            None
            if b is None
            else {k: b[k] for k in ("source", "live_version", "entries") if k in b}
            for b in bank
        ]
    uri = storage.join(run_dir, GROUPS_FILE)
    old = storage.read_bytes(uri) if storage.exists(uri) else b""
    storage.write_bytes(uri, old + (json.dumps(record) + "\n").encode(), atomic=True)
    return record


def worker_groups(run_dir: str) -> list[dict[str, Any]]:
    """Every worker group the run has started, oldest first (``[]`` before the first)."""
    uri = storage.join(run_dir, GROUPS_FILE)
    try:
        if not storage.exists(uri):
            return []
        lines = storage.read_bytes(uri).decode().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]
