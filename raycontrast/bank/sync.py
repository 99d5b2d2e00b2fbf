"""Worker-side bank sharing: keep this worker's replica in step with the run's global bank.

Three modes (``bank.mode``):
- ``actor``: records go to the run's :class:`~raycontrast.bank.actor.BankActor`, which answers with what
  to apply; with ``overlap`` the answer is collected one step later (the replica is one step stale, the
  exchange hides behind the next step's compute).
- ``allgather``: records are exchanged with ``torch.distributed.all_gather`` and written in rank order.
- ``local``: each worker writes only its own records (no sharing).

``actor`` and ``allgather`` apply the same records in the same (rank) order, so they build identical banks.
"""

from __future__ import annotations

import time
from typing import Any

import ray
import torch
import torch.distributed as dist

from raycontrast.bank.wire import (
    pack_records,
    pack_state,
    unpack_records,
    unpack_state,
    wire_nbytes,
)
from raycontrast.contrast import BankRecords, MemoryBank

__all__ = ["ActorSync", "AllGatherSync", "BankSync", "LocalSync", "make_bank_sync"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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

    def start(self, state: dict[str, Any] | None, version: int) -> None:
        """Begin (or resume) from a checkpoint's bank state, or empty with ``None``."""
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
        if not _distributed():
            self.replica.write(records)
            self.version = step + 1
            return
        world = dist.get_world_size()
        device = self.replica.device
        records = records.to(device)
        count = torch.tensor([len(records)], device=device, dtype=torch.long)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        counts = [int(c) for c in counts]
        width = max(counts)
        vec = records.vec.contiguous()
        raw = vec.view(torch.uint8)  # any storage dtype travels as bytes (gloo lacks 16-bit ints)
        meta = torch.zeros((width, 2), dtype=torch.long, device=device)
        meta[: len(records), 0] = records.cls
        meta[: len(records), 1] = records.kind
        payload = torch.zeros((width, raw.shape[1]), dtype=raw.dtype, device=device)
        payload[: len(records)] = raw
        metas = [torch.empty_like(meta) for _ in range(world)]
        payloads = [torch.empty_like(payload) for _ in range(world)]
        dist.all_gather(metas, meta)
        dist.all_gather(payloads, payload)
        size = meta.numel() * meta.element_size() + payload.numel() * payload.element_size()
        self.bytes_sent += size
        self.bytes_received += size * (world - 1)
        parts = []
        for n, m, p in zip(counts, metas, payloads):
            parts.append(BankRecords(m[:n, 0], m[:n, 1], p[:n].view(vec.dtype)))
        self.replica.write(BankRecords.cat(parts))
        self.version = step + 1


class ActorSync(BankSync):
    """Exchange with the run's bank actor (optionally overlapped with the next step)."""

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
        self.incarnation: str | None = None
        self.full_syncs = 0
        self._pending: ray.ObjectRef | None = None

    def start(self, state: dict[str, Any] | None, version: int) -> None:
        """Rank 0 resets the actor to this state; then every rank adopts the actor's incarnation."""
        super().start(state, version)
        self._pending = None
        if self.rank == 0:
            packed = pack_state(self.replica) if state is not None else None
            ray.get(self.actor.load.remote(packed, version), timeout=self.timeout_s)
        if _distributed():
            dist.barrier()
        info = ray.get(self.actor.describe.remote(), timeout=self.timeout_s)
        self.incarnation = info["incarnation"] if info["version"] == version else None

    def _exchange(self, step: int, records: BankRecords) -> None:
        packed = pack_records(records)
        self.bytes_sent += wire_nbytes(packed)
        if not self.overlap:
            ref = self.actor.exchange.remote(
                self.rank, step, packed, self.version, self.incarnation
            )
            self._apply(ray.get(ref, timeout=self.timeout_s))
            return
        self._flush()  # the previous step's answer, normally already waiting
        self._pending = self.actor.exchange.remote(
            self.rank, step, packed, self.version, self.incarnation
        )

    def _flush(self) -> None:
        if self._pending is not None:
            ref, self._pending = self._pending, None
            self._apply(ray.get(ref, timeout=self.timeout_s))

    def _apply(self, answer: dict[str, Any]) -> None:
        self.bytes_received += wire_nbytes(answer)
        if "state" in answer:
            self.replica.load_state_dict(unpack_state(answer["state"], self.replica.device))
            self.full_syncs += 1
        else:
            for packed in answer["records"]:
                self.replica.write(unpack_records(packed, self.replica.device))
        self.version = answer["version"]
        self.incarnation = answer["incarnation"]


def make_bank_sync(
    mode: str,
    replica: MemoryBank,
    rank: int = 0,
    actor: ray.actor.ActorHandle | None = None,
    overlap: bool = False,
    timeout_s: float = 600.0,
) -> BankSync:
    """The sync strategy for ``bank.mode``."""
    if mode == "local":
        return LocalSync(replica)
    if mode == "allgather":
        return AllGatherSync(replica)
    if mode == "actor":
        if actor is None:
            raise ValueError("bank.mode=actor needs the run's bank actor handle")
        return ActorSync(replica, actor, rank, overlap=overlap, timeout_s=timeout_s)
    raise ValueError(f"bank.mode must be actor, allgather or local, got {mode!r}")
