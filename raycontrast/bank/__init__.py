"""Sharing the memory bank between Ray Train workers: bank actors as the authority (records by
all_gather between workers, or through the object store; optionally class-sharded), all_gather, or
private banks.

The bank math (queues, FIFO writes, record selection) lives in :mod:`raycontrast.contrast`; this package is
the thin distributed glue around it. Which classes each shard owns is :mod:`raycontrast.bank.shards`; how records and bank states
travel (``_wire``) is internal.
"""

from raycontrast.bank.actor import BankActor, bank_actor_name, create_bank_actor
from raycontrast.bank.factory import make_bank_sync
from raycontrast.bank.shards import assemble_bank, shard_classes
from raycontrast.bank.sync import BANK_SYNCS, BankSync

__all__ = [
    "BANK_SYNCS",
    "BankActor",
    "BankSync",
    "assemble_bank",
    "bank_actor_name",
    "create_bank_actor",
    "make_bank_sync",
    "shard_classes",
]
