"""Which bank sync a run uses: ``bank.mode`` (and, for ``actor``, ``bank.data_plane``) to a
:class:`~raycontrast.bank.sync.BankSync`."""

from __future__ import annotations

import ray

from raycontrast.bank.collective import CollectiveSync
from raycontrast.bank.sync import BANK_SYNCS, ActorSync, BankSync
from raycontrast.contrast import MemoryBank

__all__ = ["make_bank_sync"]


def make_bank_sync(
    mode: str,
    replica: MemoryBank,
    rank: int = 0,
    actor: ray.actor.ActorHandle | None = None,
    overlap: bool = False,
    timeout_s: float = 600.0,
    data_plane: str = "object_store",
    max_in_flight: int = 8,
) -> BankSync:
    """The sync strategy for ``bank.mode`` (one of :data:`BANK_SYNCS`; for ``actor``, ``bank.data_plane``)."""
    if mode not in BANK_SYNCS:
        raise ValueError(f"bank.mode must be one of {', '.join(BANK_SYNCS)}, got {mode!r}")
    if mode != "actor":
        return BANK_SYNCS[mode](replica)
    if actor is None:
        raise ValueError("bank.mode=actor needs the run's bank actor handle")
    if data_plane == "collective":
        if overlap:
            raise ValueError("bank.overlap=true applies to bank.data_plane=object_store")
        return CollectiveSync(
            replica, actor, rank, timeout_s=timeout_s, max_in_flight=max_in_flight
        )
    if data_plane != "object_store":
        raise ValueError(f"bank.data_plane must be collective or object_store, got {data_plane!r}")
    return ActorSync(replica, actor, rank, overlap=overlap, timeout_s=timeout_s)
