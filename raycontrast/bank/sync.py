"""Worker-side bank sharing: keep this worker's replica in step with the run's global bank.

Three modes (``bank.mode``):
- ``actor``: the run's :class:`~raycontrast.bank.actor.BankActor` holds the authoritative bank. Its data
  plane (``bank.data_plane``) is ``collective`` by default: replicas by all_gather, the actor fed
  asynchronously (:mod:`raycontrast.bank.collective`); or ``object_store``: records go to the actor,
  which answers with what to apply; with ``overlap`` the answer is collected one step later (the
  replica is one step stale, the exchange hides behind the next step's compute).
- ``allgather``: records are exchanged with ``torch.distributed.all_gather`` and written in rank order.
- ``local``: each worker writes only its own records (no sharing).

``actor`` and ``allgather`` apply the same records in the same (rank) order, so they build identical banks.
"""

from __future__ import annotations

import time
from typing import Any

import ray
import torch.distributed as dist

from raycontrast._distributed import is_distributed
from raycontrast.bank._wire import (
    concat_packed,
    insert_classes,
    pack_records,
    pack_state,
    select_classes,
    take_classes,
    unpack_records,
    wire_nbytes,
)
from raycontrast.bank.actor import NAMESPACE
from raycontrast.bank.groups import gather_records
from raycontrast.bank.shards import shard_classes
from raycontrast.contrast import BankRecords, MemoryBank

__all__ = ["BANK_SYNCS", "ActorSync", "AllGatherSync", "BankSync", "LocalSync"]


class BankSync:
    """Base: a replica, its version (steps applied) and traffic counters."""

    mode = "base"

    def __init__(self, replica: MemoryBank):
        self.replica = replica
        self.version = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.exchanges = 0
        self.seconds = 0.0  # wall time spent inside exchange() and flush()

    def start(
        self,
        state: dict[str, Any] | None,
        version: int,
        world_size: int | None = None,
        keep_live: bool = False,
    ) -> None:
        """Begin (or resume) from a checkpoint's bank state, or empty with ``None``. ``world_size`` and
        ``keep_live`` concern the authoritative bank of ``actor`` mode (see :class:`ActorSync`)."""
        if state is None:
            self.replica.reset()
            self.replica.writes = 0
        else:
            self.replica.load_state_dict(state)
        self.version = version

    def exchange(self, step: int, records: BankRecords) -> None:
        """Contribute this worker's records of ``step`` and update the replica (timed)."""
        t0 = time.perf_counter()
        self.exchanges += 1
        self._exchange(step, records)
        self.seconds += time.perf_counter() - t0

    def flush(self) -> None:
        """Apply anything still in flight (before checkpoints and at the end)."""
        t0 = time.perf_counter()
        self._flush()
        self.seconds += time.perf_counter() - t0

    def _exchange(self, step: int, records: BankRecords) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        pass

    def snapshot(self) -> list[str]:
        """Ask the authoritative bank to write its snapshots (actor mode; nothing to do otherwise)."""
        return []

    def actor_digest(self) -> dict[str, Any] | None:
        """The authoritative bank's digest (actor mode), else ``None``."""
        return None

    def traffic(self) -> dict[str, float]:
        n = max(self.exchanges, 1)
        return {
            "bytes_sent_per_step": self.bytes_sent / n,
            "bytes_received_per_step": self.bytes_received / n,
            "bytes_per_step": (self.bytes_sent + self.bytes_received) / n,
            "exchange_s_per_step": self.seconds / n,
        }


class LocalSync(BankSync):
    """A private bank per worker."""

    mode = "local"

    def _exchange(self, step: int, records: BankRecords) -> None:
        self.replica.write(records)
        self.version = step + 1


class AllGatherSync(BankSync):
    """Records of every rank via ``all_gather`` (padded to the largest), written in rank order."""

    mode = "allgather"

    def _exchange(self, step: int, records: BankRecords) -> None:
        if not is_distributed():
            self.replica.write(records)
            self.version = step + 1
            return
        parts, _, size = gather_records(records.to(self.replica.device))
        self.bytes_sent += size
        self.bytes_received += size * (len(parts) - 1)
        self.replica.write(BankRecords.cat(parts))
        self.version = step + 1


class ActorSync(BankSync):
    """Exchange with the run's bank actors through the object store (optionally overlapped).

    Each step: ``ray.put`` the batch once, send its reference to every shard, then read the log
    entries the shards answer with and the batches they name, and write them in rank order (see
    :mod:`raycontrast.bank.actor`). ``actor`` is shard 0's handle; the other shards are found by name.
    """

    mode = "actor"

    def __init__(
        self,
        replica: MemoryBank,
        actor: ray.actor.ActorHandle,
        rank: int,
        overlap: bool = False,
        timeout_s: float = 600.0,
    ):
        super().__init__(replica)
        self.actor = actor
        self.rank = rank
        self.overlap = overlap
        self.timeout_s = timeout_s
        self.shards: list[ray.actor.ActorHandle] = [actor]
        self.classes: list[list[int]] = [list(range(replica.num_classes))]
        self.versions = [0]
        self.incarnations: list[str | None] = [None]
        self.full_syncs = 0
        self.split_writes = 0  # steps written shard by shard (a shard answered differently)
        self._pending: list[ray.ObjectRef] | None = None

    def _connect(self) -> None:
        info = ray.get(self.actor.describe.remote(), timeout=self.timeout_s)
        if info["num_classes"] != self.replica.num_classes:
            raise ValueError(
                f"the bank actor holds {info['num_classes']} classes, this worker's replica "
                f"{self.replica.num_classes}"
            )
        self.shards = [self.actor, *(ray.get_actor(n, namespace=NAMESPACE) for n in info["peers"])]
        self.classes = [
            shard_classes(self.replica.num_classes, info["shards"], s)
            for s in range(info["shards"])
        ]

    def start(
        self,
        state: dict[str, Any] | None,
        version: int,
        world_size: int | None = None,
        keep_live: bool = False,
    ) -> None:
        """Rank 0 has every shard adopt this worker group of ``world_size`` ranks (``None``: as many as
        before) resuming at ``version``: it loads its part of ``state``, or with ``keep_live`` keeps
        its live bank when that holds ``version`` or newer (see :meth:`BankActor.adopt`). Then every
        rank copies the kept shards' queues into its replica and adopts the shards' incarnations."""
        super().start(state, version)
        self.replica.writes = version
        self._pending = None
        self._connect()
        if self.rank == 0:
            packed = pack_state(self.replica) if state is not None else None
            adopts = [
                shard.adopt.remote(
                    take_classes(packed, cls) if packed else None, version, world_size, keep_live
                )
                for shard, cls in zip(self.shards, self.classes)
            ]
            ray.get(adopts, timeout=self.timeout_s)
        if is_distributed():
            dist.barrier()
        infos = ray.get([s.describe.remote() for s in self.shards], timeout=self.timeout_s)
        kept = [
            s
            for s, info in enumerate(infos)
            if info["adoptions"]
            and info["adoptions"][-1]["source"] == "live"
            and (info["adoptions"][-1]["entries"] or state is not None)  # else both are empty
        ]
        for s, part in zip(
            kept, ray.get([self.shards[s].state.remote() for s in kept], timeout=self.timeout_s)
        ):
            insert_classes(self.replica, self.classes[s], part["state"])
            self.bytes_received += wire_nbytes(part["state"])
        self.adopted = [info["adoptions"][-1] if info["adoptions"] else None for info in infos]
        self.versions = [version] * len(self.shards)
        self.incarnations = [i["incarnation"] if i["version"] == version else None for i in infos]

    def _exchange(self, step: int, records: BankRecords) -> None:
        if self.overlap:
            self._flush()  # the previous step's answers, normally already waiting
        packed = pack_records(records)
        self.bytes_sent += wire_nbytes(packed)
        batch = [ray.put(packed)]  # in a list: the actors receive the reference, not the data
        calls = [
            shard.exchange.remote(self.rank, step, batch, v, inc)
            for shard, v, inc in zip(self.shards, self.versions, self.incarnations)
        ]
        if self.overlap:
            self._pending = calls
        else:
            self._apply(ray.get(calls, timeout=self.timeout_s))

    def _flush(self) -> None:
        if self._pending is not None:
            calls, self._pending = self._pending, None
            self._apply(ray.get(calls, timeout=self.timeout_s))

    def _apply(self, answers: list[dict[str, Any]]) -> None:
        entries: dict[int, dict[int, list[ray.ObjectRef]]] = {}  # version -> shard -> batch refs
        for s, answer in enumerate(answers):
            if "state" in answer:
                self.bytes_received += wire_nbytes(answer["state"])
                insert_classes(self.replica, self.classes[s], answer["state"])
                self.full_syncs += 1
            else:
                for v, refs in enumerate(answer["entries"], start=answer["first"]):
                    entries.setdefault(v, {})[s] = refs
            self.versions[s] = answer["version"]
            self.incarnations[s] = answer["incarnation"]
        if entries:
            unique = {
                ref: None for parts in entries.values() for refs in parts.values() for ref in refs
            }
            batches = dict(zip(unique, ray.get(list(unique), timeout=self.timeout_s)))
            self.bytes_received += sum(wire_nbytes(b) for b in batches.values())
            for v in sorted(entries):
                self._write_version(v, entries[v], batches)
        self.version = min(self.versions)
        self.replica.writes = max(self.versions)

    def _write_version(
        self, version: int, parts: dict[int, list[ray.ObjectRef]], batches: dict[Any, Any]
    ) -> None:
        """Write version ``version``: whole when every shard names the same batches, else each shard's
        classes from its own entry. Write counters are versions (as in the actors)."""
        device = self.replica.device
        lists = list(parts.values())
        if len(parts) == len(self.shards) and all(refs == lists[0] for refs in lists):
            self.replica.writes = version - 1
            packed = concat_packed([batches[ref] for ref in lists[0]])
            self.replica.write(unpack_records(packed, device))
            return
        self.split_writes += 1
        num_classes = self.replica.num_classes
        for s, refs in parts.items():
            packed = concat_packed([batches[ref] for ref in refs])
            mine = select_classes(packed, self.classes[s], num_classes, renumber=False)
            self.replica.writes = version - 1
            self.replica.write(unpack_records(mine, device))

    def snapshot(self) -> list[str]:
        """Every shard writes its snapshot (the files written)."""
        return ray.get(self.actor.snapshot.remote(), timeout=self.timeout_s)

    def actor_digest(self) -> dict[str, Any]:
        """Digest of the whole authoritative bank (all shards), comparable to ``replica.digest()``."""
        return ray.get(self.actor.digest.remote(), timeout=self.timeout_s)

    def traffic(self) -> dict[str, float]:
        return super().traffic() | {"full_syncs": self.full_syncs, "shards": len(self.shards)}


BANK_SYNCS: dict[str, type[BankSync]] = {
    "actor": ActorSync,
    "allgather": AllGatherSync,
    "local": LocalSync,
}
"""Bank sync strategies by ``bank.mode`` name."""
