"""Sharing the memory bank between Ray Train workers: one actor, all_gather, or private banks.

The bank math (queues, FIFO writes, record selection) lives in :mod:`raycontrast.contrast`; this package is
the thin distributed glue around it.
"""

from raycontrast.bank.actor import BankActor, bank_actor_name, create_bank_actor
from raycontrast.bank.sync import ActorSync, AllGatherSync, BankSync, LocalSync, make_bank_sync
from raycontrast.bank.wire import pack_records, pack_state, unpack_records, unpack_state

__all__ = [
    "ActorSync",
    "AllGatherSync",
    "BankActor",
    "BankSync",
    "LocalSync",
    "bank_actor_name",
    "create_bank_actor",
    "make_bank_sync",
    "pack_records",
    "pack_state",
    "unpack_records",
    "unpack_state",
]
