"""Class-sharded banks: which classes each shard owns, and the whole bank assembled from its shards.

With ``bank.shards: S`` actor ``s`` holds the queues of the classes ``c % S == s`` only; this module is
the one place that says so.
"""

from __future__ import annotations

from typing import Any

from raycontrast.bank._wire import insert_classes
from raycontrast.contrast import MemoryBank

__all__ = ["assemble_bank", "shard_classes"]


def shard_classes(num_classes: int, shards: int, shard: int) -> list[int]:
    """Classes owned by ``shard`` of ``shards``: round robin (``c % shards == shard``), so frequent
    low-index classes spread over the shards."""
    if not 1 <= shards <= num_classes:
        raise ValueError(
            f"bank.shards must be between 1 and the class count {num_classes}, got {shards}"
        )
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
    return list(range(shard, num_classes, shards))


def assemble_bank(spec: dict[str, Any], parts: list[dict[str, Any]]) -> MemoryBank:
    """The whole bank from every shard's ``{"classes", "state", "version"}`` (what ``BankActor.state``
    returns); ``writes`` is the newest version."""
    bank = MemoryBank(**spec)
    owned = sorted(c for part in parts for c in part["classes"])
    if owned != list(range(bank.num_classes)):
        raise ValueError(f"shards must own every class exactly once, got classes {owned}")
    for part in parts:
        insert_classes(bank, part["classes"], part["state"])
    bank.writes = max(int(part["version"]) for part in parts)
    return bank
