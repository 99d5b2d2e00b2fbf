"""The collective data plane with the bank actor as authority (``bank.mode: actor``,
``bank.data_plane: collective``, the default).

Each step the workers exchange their records with one ``all_gather`` of the worker group (nccl on the
device on GPU, gloo on CPU) and write them to their replicas in rank order, exactly as
``bank.mode: allgather`` does. Each worker also hands its own batch to the bank actors
(``ray.put`` once, one :meth:`~raycontrast.bank.actor.BankActor.contribute` call per shard) from a
background thread, so neither the copy to the object store nor the calls sit on the step's critical
path, and does not wait for the answer: at most ``max_in_flight`` steps of hand-offs and calls are
outstanding, older answers are collected when they are already there. The actor commits a step once every rank's batch has arrived,
with the batches in rank order: the replicas' order, so its bank stays bit-identical to theirs.

The actor stays the authority: digests, snapshots, elastic resizes and worker-group restarts
(:meth:`~raycontrast.bank.sync.ActorSync.start`) work as with the object-store plane. When the actor
restarts (its incarnation changes), contributions addressed to the old incarnation are dropped and
answered ``stale``; the next exchange (or flush) sees it on some rank, every rank learns it through the
same all_gather (a flag next to the record counts), and rank 0 loads its replica, at the step just
written, into every shard (a *resync*): the actor's bank equals the replicas again, nothing is lost.

See docs/concepts/bank-data-plane.md for the cost model.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ray

from raycontrast.bank._wire import pack_records, pack_state, take_classes, wire_nbytes
from raycontrast.bank.groups import TorchGroup
from raycontrast.bank.sync import ActorSync
from raycontrast.contrast import BankRecords, MemoryBank

__all__ = ["CollectiveSync"]


class CollectiveSync(ActorSync):
    """Replicas by all_gather; the bank actors receive the same records asynchronously and stay the
    authority (module docstring). ``flush`` is a collective here: every rank calls it (the training
    loop does, before checkpoints and at the end); afterwards the actors hold what the replicas hold.

    Args:
        group: the collectives (default :class:`TorchGroup`).
        max_in_flight: steps of unanswered actor calls before a step waits for the oldest.
    """

    data_plane = "collective"

    def __init__(
        self,
        replica: MemoryBank,
        actor: ray.actor.ActorHandle,
        rank: int,
        timeout_s: float = 600.0,
        max_in_flight: int = 8,
        group: Any = None,
    ):
        if max_in_flight < 1:
            raise ValueError(f"bank.max_in_flight must be >= 1, got {max_in_flight}")
        super().__init__(replica, actor, rank, overlap=False, timeout_s=timeout_s)
        self.group = group if group is not None else TorchGroup()
        self.max_in_flight = max_in_flight
        self._in_flight: deque[ray.ObjectRef] = deque()
        # hand-offs not yet made, in step order (one thread: the actors see a rank's steps in order)
        self._sending: deque[Future] = deque()
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="raycontrast-bank-send")
        self._stale = False
        self.resyncs = 0
        self.actor_bytes_sent = 0
        self.gather_bytes_sent = 0
        self.max_in_flight_seen = 0

    def start(
        self,
        state: dict[str, Any] | None,
        version: int,
        world_size: int | None = None,
        keep_live: bool = False,
    ) -> None:
        for future in self._sending:  # made before anything below reaches the actors
            future.exception(timeout=self.timeout_s)
        self._sending.clear()
        self._in_flight.clear()  # answers for a previous group's timeline: not needed
        self._stale = False
        super().start(state, version, world_size, keep_live)

    def _exchange(self, step: int, records: BankRecords) -> None:
        self._collect(block=False)
        records = records.to(self.replica.device)
        parts, stale, nbytes = self.group.all_gather_records(records, self._stale)
        self.gather_bytes_sent += nbytes
        self.bytes_sent += nbytes
        self.bytes_received += nbytes * (len(parts) - 1)
        self.replica.writes = step  # write counters are step versions, as in the actors
        self.replica.write(BankRecords.cat(parts))
        self.version = step + 1
        self.versions = [self.version] * len(self.shards)
        if stale:
            self._resync()
        else:
            self._contribute(step, records)

    def _contribute(self, step: int, records: BankRecords) -> None:
        targets = list(zip(self.shards, self.incarnations))
        self._sending.append(self._sender.submit(self._send, step, records, targets))
        per_step = len(self.shards)
        outstanding = len(self._in_flight) + per_step * len(self._sending)
        self.max_in_flight_seen = max(self.max_in_flight_seen, outstanding)
        while len(self._in_flight) + per_step * len(self._sending) > self.max_in_flight * per_step:
            if self._in_flight:
                self._note(ray.get(self._in_flight.popleft(), timeout=self.timeout_s))
            else:  # the oldest hand-off is not made yet: wait for it alone
                self._in_flight.extend(self._sending.popleft().result(timeout=self.timeout_s))

    def _send(self, step: int, records: BankRecords, targets: list) -> list[ray.ObjectRef]:
        """On the sender thread: pack, put once, one call per shard (the references to answers)."""
        packed = pack_records(records)
        self.actor_bytes_sent += wire_nbytes(packed)  # only this thread writes it
        batch = [ray.put(packed)]  # in a list: the actors receive the reference, not the data
        return [shard.contribute.remote(self.rank, step, batch, inc) for shard, inc in targets]

    def _take_sent(self, block: bool) -> None:
        """Move the calls of finished hand-offs (``block``: of all of them) to ``_in_flight``;
        a hand-off that failed raises here, on the training thread."""
        while self._sending and (block or self._sending[0].done()):
            self._in_flight.extend(self._sending.popleft().result(timeout=self.timeout_s))

    def _note(self, answer: dict[str, Any]) -> None:
        if answer.get("stale"):
            self._stale = True

    def _collect(self, block: bool) -> None:
        """Read the answers already there (``block``: all of them)."""
        self._take_sent(block)
        if not self._in_flight:
            return
        if block:
            answers = ray.get(list(self._in_flight), timeout=self.timeout_s)
            self._in_flight.clear()
        else:
            refs = list(self._in_flight)
            ready, rest = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
            if not ready:
                return
            answers = ray.get(ready, timeout=self.timeout_s)
            self._in_flight = deque(rest)
        for answer in answers:
            self._note(answer)

    def _resync(self) -> None:
        """Every rank: wait for its calls; rank 0 loads its replica (version ``self.version``) into
        every shard; every rank then addresses the new incarnations."""
        self._collect(block=True)
        self.group.barrier()  # every rank's calls have run: nothing late reaches the reloaded actor
        if self.rank == 0:
            packed = pack_state(self.replica)
            loads = [
                shard.load.remote(take_classes(packed, cls), self.version)
                for shard, cls in zip(self.shards, self.classes)
            ]
            ray.get(loads, timeout=self.timeout_s)
        self.group.barrier()
        infos = ray.get([s.describe.remote() for s in self.shards], timeout=self.timeout_s)
        self.incarnations = [info["incarnation"] for info in infos]
        self._stale = False
        self.resyncs += 1

    def _flush(self) -> None:
        self._collect(block=True)
        if self.group.any(self._stale):
            self._resync()

    def snapshot(self) -> list[str]:
        """Every shard writes its snapshot, at this rank's version (call after ``flush``)."""
        return ray.get(self.actor.snapshot.remote(True, self.version), timeout=self.timeout_s)

    def actor_digest(self) -> dict[str, Any]:
        """The authoritative bank's digest once it holds this replica's version (call after
        ``flush``: then it is comparable to ``replica.digest()``)."""
        return ray.get(self.actor.digest.remote(True, self.version), timeout=self.timeout_s)

    def traffic(self) -> dict[str, float]:
        n = max(self.exchanges, 1)
        return super().traffic() | {
            "data_plane": self.data_plane,
            "resyncs": self.resyncs,
            "actor_bytes_sent_per_step": self.actor_bytes_sent / n,
            "gather_bytes_sent_per_step": self.gather_bytes_sent / n,
            "max_in_flight_seen": self.max_in_flight_seen,
        }
