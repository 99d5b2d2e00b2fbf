"""The first bank actor, answering by value (kept as the baseline of ``benchmarks/bench_bank_scale.py``).

The training runs use :mod:`raycontrast.bank.actor` (records travel through the object store). Here

Each step every worker sends the records it selected (``exchange``). The actor waits until all ranks have
sent their records for that step, applies them in rank order (deterministic: the bank is a pure function
of the workers' records) and answers each worker with every record batch written since that worker's
last version, so replicas apply exactly what the actor applied, in the same order, and stay bit-identical.
Traffic per step is proportional to the records written, never to the bank size.

A worker whose replica cannot be brought up to date from the retained log (after the actor restarted,
or a worker restarted) receives the full bank state once instead.

The actor is restarted by Ray after a crash (``max_restarts=-1``, calls retried); its ``__init__`` then
reloads the last snapshot (written at every checkpoint and every ``snapshot_every`` steps). Until every
rank has resynchronised with the new incarnation (one full-state answer each), contributions are applied
on arrival instead of per step, because ranks answered by the old incarnation will not send that step
again. Replicas are then identical to the actor again; entries written between the snapshot and the
crash are dropped (a few steps of a FIFO memory that refills itself).
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import uuid
from typing import Any

import ray
import torch
import torch.distributed as dist

from raycontrast import storage
from raycontrast._distributed import is_distributed
from raycontrast.bank._wire import (
    concat_packed,
    pack_records,
    pack_state,
    unpack_records,
    unpack_state,
    wire_nbytes,
)
from raycontrast.bank.actor import NAMESPACE
from raycontrast.bank.sync import BankSync
from raycontrast.contrast import BankRecords, MemoryBank

__all__ = ["InlineActorSync", "InlineBankActor", "create_inline_bank_actor"]


class InlineBankActor:
    """Authoritative global bank (see module docstring). Create with :func:`create_inline_bank_actor`.

    Args:
        spec: ``MemoryBank`` keyword arguments (num_classes, dim, size, kinds, dtype).
        world_size: number of Train workers that exchange each step.
        snapshot_uri: file (local path or URI) for snapshots; ``None`` disables them.
        snapshot_every: also snapshot every N applied steps (0: only when asked).
    """

    def __init__(
        self,
        spec: dict[str, Any],
        world_size: int,
        snapshot_uri: str | None = None,
        snapshot_every: int = 0,
    ):
        self.spec = dict(spec)
        self.world_size = world_size
        self.snapshot_uri = snapshot_uri
        self.snapshot_every = snapshot_every
        self.incarnation = uuid.uuid4().hex
        self.bank = MemoryBank(**self.spec, device="cpu")
        self.version = 0
        self.log: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, dict[int, dict[str, Any]]] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.acked: dict[int, int] = {}
        self.informed: set[int] = set()  # ranks answered by this incarnation while recovering
        self.recovering = True  # until a run (re)starts with load() or every rank resynchronised
        self.restored_from = None
        self.stats = {"exchanges": 0, "full_syncs": 0, "steps_applied": 0, "bytes_out": 0}
        if snapshot_uri and storage.exists(snapshot_uri):
            snap = torch.load(io.BytesIO(storage.read_bytes(snapshot_uri)), weights_only=True)
            self.bank.load_state_dict(snap["bank"])
            self.version = int(snap["version"])
            self.restored_from = {"uri": snapshot_uri, "version": self.version}

    # ------------------------------------------------------------------------------------ stepping

    async def exchange(
        self, rank: int, step: int, packed: dict[str, Any], since: int, incarnation: str | None
    ) -> dict[str, Any]:
        """Contribute ``packed`` records for ``step``; return the records of versions ``since+1..step+1``
        (or the full state when the caller's replica cannot be updated from the log)."""
        self.stats["exchanges"] += 1
        answer = await self._exchange(rank, step, packed, since, incarnation)
        self.stats["bytes_out"] += wire_nbytes(answer)
        return answer

    async def _exchange(
        self, rank: int, step: int, packed: dict[str, Any], since: int, incarnation: str | None
    ) -> dict[str, Any]:
        if self.recovering:
            # After a restart some ranks may have been answered by the old incarnation for a step that
            # others retry here: waiting for all ranks could wait forever, so each contribution is
            # applied on arrival until every rank has been answered by this incarnation.
            if step >= self.version:
                self._write(step, packed)
            self.informed.add(rank)
            if len(self.informed) == self.world_size:
                self.recovering = False
            return self._delta(since, incarnation, self.version)
        if step >= self.version:
            self.pending.setdefault(step, {})[rank] = packed
            event = self.done.setdefault(step, asyncio.Event())
            self._apply_ready()
            await event.wait()
        self.acked[rank] = since
        self._trim()
        return self._delta(since, incarnation, step + 1)

    def _write(self, step: int, records: dict[str, Any]) -> None:
        self.bank.write(unpack_records(records))
        self.version = step + 1  # a jump over lost steps after a restart is intended
        self.log[self.version] = records
        self.stats["steps_applied"] += 1
        if self.snapshot_every and self.stats["steps_applied"] % self.snapshot_every == 0:
            self.snapshot()

    def _apply_ready(self) -> None:
        while self.pending:
            step = min(self.pending)
            parts = self.pending[step]
            if len(parts) < self.world_size:
                return
            if step < self.version:  # already applied (a retried call); just release waiters
                del self.pending[step]
                self.done.pop(step, asyncio.Event()).set()
                continue
            self._write(step, concat_packed([parts[r] for r in sorted(parts)]))
            del self.pending[step]
            self.done.pop(step).set()

    def _delta(self, since: int, incarnation: str | None, upto: int) -> dict[str, Any]:
        upto = min(upto, self.version)
        needed = range(since + 1, upto + 1)
        if incarnation == self.incarnation and since <= upto and all(v in self.log for v in needed):
            return {
                "incarnation": self.incarnation,
                "version": upto,
                "records": [self.log[v] for v in needed],
            }
        self.stats["full_syncs"] += 1
        return {
            "incarnation": self.incarnation,
            "version": self.version,
            "state": pack_state(self.bank),
        }

    def _trim(self) -> None:
        if len(self.acked) < self.world_size:
            return
        oldest_needed = min(self.acked.values())
        for v in [v for v in self.log if v <= oldest_needed]:
            del self.log[v]

    # ---------------------------------------------------------------------------- state management

    def load(self, packed_state: dict[str, Any] | None, version: int) -> dict[str, Any]:
        """Reset to a checkpoint's bank (or empty with ``None``) at ``version``; drops all pending work."""
        for event in self.done.values():
            event.set()  # release calls of a worker group that no longer exists
        self.pending.clear()
        self.done.clear()
        self.log.clear()
        self.acked.clear()
        if packed_state is None:
            self.bank.reset()
            self.bank.writes = 0
        else:
            self.bank.load_state_dict(unpack_state(packed_state))
        self.version = version
        self.incarnation = uuid.uuid4().hex
        self.informed.clear()
        self.recovering = False
        return self.describe()

    def describe(self) -> dict[str, Any]:
        """Version, incarnation, fill, node and counters (cheap)."""
        return {
            "incarnation": self.incarnation,
            "version": self.version,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "entries": len(self.bank),
            "restored_from": self.restored_from,
            "recovering": self.recovering,
            "stats": dict(self.stats),
        }

    def digest(self) -> dict[str, Any]:
        """The bank's SHA-1 (see :meth:`MemoryBank.digest`) with its version."""
        return {"version": self.version, "digest": self.bank.digest()}

    def state(self) -> dict[str, Any]:
        """The full bank state (packed) with its version."""
        return {"version": self.version, "state": pack_state(self.bank)}

    def snapshot(self) -> str | None:
        """Write the bank and its version to ``snapshot_uri`` (what a restarted actor reloads)."""
        if not self.snapshot_uri:
            return None
        buf = io.BytesIO()
        torch.save(
            {"bank": self.bank.state_dict(), "version": self.version, "time": time.time()}, buf
        )
        storage.write_bytes(self.snapshot_uri, buf.getvalue(), atomic=True)
        return self.snapshot_uri

    def ping(self) -> bool:
        return True


def create_inline_bank_actor(
    name: str, spec: dict[str, Any], world_size: int, snapshot_uri: str | None = None
) -> ray.actor.ActorHandle:
    """Start an :class:`InlineBankActor` named ``name`` (replacing one of that name)."""
    try:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ray.get_actor(name, namespace=NAMESPACE)
            time.sleep(0.1)
    except ValueError:
        pass
    actor_cls = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(InlineBankActor)
    handle = actor_cls.options(name=name, namespace=NAMESPACE, max_concurrency=1000).remote(
        spec, world_size, snapshot_uri
    )
    ray.get(handle.ping.remote())
    return handle


class InlineActorSync(BankSync):
    """Worker side of :class:`InlineBankActor`: records and answers travel by value."""

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
        if is_distributed():
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
