"""Sharing the memory bank between Ray Train workers: bank actors (records through the object store,
optionally class-sharded), all_gather, or private banks.

The bank math (queues, FIFO writes, record selection) lives in :mod:`raycontrast.contrast`; this package is
the thin distributed glue around it.
"""

from raycontrast.bank.actor import (
    BankActor,
    bank_actor_name,
    create_bank_actor,
    shard_actor_name,
    shard_snapshot_uri,
)
from raycontrast.bank.sync import ActorSync, AllGatherSync, BankSync, LocalSync, make_bank_sync
from raycontrast.bank.wire import (
    assemble_bank,
    pack_records,
    pack_state,
    shard_classes,
    unpack_records,
    unpack_state,
)

__all__ = [
    "ActorSync",
    "AllGatherSync",
    "BankActor",
    "BankSync",
    "LocalSync",
    "assemble_bank",
    "bank_actor_name",
    "create_bank_actor",
    "make_bank_sync",
    "pack_records",
    "pack_state",
    "shard_actor_name",
    "shard_classes",
    "shard_snapshot_uri",
    "unpack_records",
    "unpack_state",
]
