"""Sharing the memory bank between Ray Train workers: bank actors as the authority (records by
all_gather between workers, or through the object store; optionally class-sharded), all_gather, or
private banks.

The bank math (queues, FIFO writes, record selection) lives in :mod:`raycontrast.contrast`; this package is
the thin distributed glue around it. How records and bank states travel (``_wire``) is internal.
"""

from raycontrast.bank._wire import assemble_bank, shard_classes
from raycontrast.bank.actor import (
    BankActor,
    bank_actor_name,
    create_bank_actor,
    shard_actor_name,
    shard_snapshot_uri,
)
from raycontrast.bank.collective import CollectiveSync
from raycontrast.bank.sync import ActorSync, AllGatherSync, BankSync, LocalSync, make_bank_sync

__all__ = [
    "ActorSync",
    "AllGatherSync",
    "BankActor",
    "BankSync",
    "CollectiveSync",
    "LocalSync",
    "assemble_bank",
    "bank_actor_name",
    "create_bank_actor",
    "make_bank_sync",
    "shard_actor_name",
    "shard_classes",
    "shard_snapshot_uri",
]
