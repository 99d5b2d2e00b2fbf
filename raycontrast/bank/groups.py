"""The worker group's collectives the bank needs: gather every rank's records, agree on a flag,
wait for each other. ``torch.distributed`` in training; threads of one process in tests."""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.distributed as dist

from raycontrast._distributed import is_distributed
from raycontrast.contrast import BankRecords

__all__ = ["ThreadGroup", "TorchGroup", "gather_records"]


def gather_records(records: BankRecords, flag: bool = False) -> tuple[list[BankRecords], bool, int]:
    """Every rank's ``records`` (rank order) with ``torch.distributed.all_gather``, padded to the
    largest; also whether any rank raised ``flag``. Returns (parts, any flag, bytes this rank put in)."""
    if not is_distributed():
        return [records], flag, 0
    world = dist.get_world_size()
    device = records.vec.device
    head = torch.tensor([len(records), int(flag)], device=device, dtype=torch.long)
    heads = [torch.zeros_like(head) for _ in range(world)]
    dist.all_gather(heads, head)
    counts = [int(h[0]) for h in heads]
    raised = any(int(h[1]) for h in heads)
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
    parts = [
        BankRecords(m[:n, 0], m[:n, 1], p[:n].view(vec.dtype))
        for n, m, p in zip(counts, metas, payloads)
    ]
    return parts, raised, size + head.numel() * head.element_size()


class TorchGroup:
    """The worker group's collectives: ``torch.distributed`` when initialised, else a group of one."""

    def all_gather_records(
        self, records: BankRecords, flag: bool = False
    ) -> tuple[list[BankRecords], bool, int]:
        return gather_records(records, flag)

    def any(self, flag: bool) -> bool:
        """Whether any rank raised ``flag`` (a collective: every rank calls it)."""
        if not is_distributed():
            return flag
        t = torch.tensor([int(flag)], dtype=torch.long)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if is_distributed():
            dist.barrier()


class ThreadGroup:
    """The same collectives between threads of one process (tests and benchmarks simulate ranks)."""

    def __init__(self, world: int):
        self.world = world
        self._barrier = threading.Barrier(world)
        self._slots: list[Any] = [None] * world

    def _gather(self, rank: int, value: Any) -> list[Any]:
        self._slots[rank] = value
        self._barrier.wait()
        out = list(self._slots)
        self._barrier.wait()  # nobody overwrites a slot before every rank has read them
        return out

    def rank_view(self, rank: int) -> _ThreadRank:
        return _ThreadRank(self, rank)


class _ThreadRank:
    def __init__(self, group: ThreadGroup, rank: int):
        self.group, self.rank = group, rank

    def all_gather_records(
        self, records: BankRecords, flag: bool = False
    ) -> tuple[list[BankRecords], bool, int]:
        out = self.group._gather(self.rank, (records, flag))
        return [r for r, _ in out], any(f for _, f in out), 0

    def any(self, flag: bool) -> bool:
        return any(self.group._gather(self.rank, flag))

    def barrier(self) -> None:
        self.group._gather(self.rank, None)
