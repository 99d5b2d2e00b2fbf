"""The memory bank: per-class ring queues of pixel and region embeddings (docs/concepts/spec.md).

Enqueueing is split in two steps so that a distributed bank can ship the middle product:

1. :func:`select_records` turns ``(embed, labels)`` of a batch into compact :class:`BankRecords`
   ``(class, kind, vector)``: up to ``pixel_update_freq`` random pixels of each (image, class), drawn
   among the pixels of that class, and one region entry per (image, class) = its normalised mean.
2. :meth:`MemoryBank.write` applies records to the queues deterministically (true FIFO: the oldest
   entries are replaced), so replicas that apply the same records in the same order stay bit-identical.

Only filled slots are ever handed to the loss (:meth:`MemoryBank.memory`). Because every queue is filled
from slot 0 and advances one slot per entry, the filled slots of a queue are always ``0:count``.

Example:
    >>> bank = MemoryBank(num_classes=19, dim=256, size=5000)
    >>> records = select_records(embed.detach(), labels_small, num_classes=19)  # after the loss
    >>> bank.write(records)
    >>> store, blocks = bank.memory()  # for memory_contrast_loss_blocks
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from raycontrast.contrast.loss import Block

__all__ = ["KINDS", "BankRecords", "MemoryBank", "select_records"]

KINDS = ("pixel", "region")
"""The bank's queues: pixel embeddings and per-image class means (regions)."""
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class BankRecords:
    """Entries to enqueue: ``cls (R,)`` int64, ``kind (R,)`` int64 (index into :data:`KINDS`),
    ``vec (R, D)`` in the bank's storage dtype. Order matters: it is the write order."""

    cls: Tensor
    kind: Tensor
    vec: Tensor

    def __len__(self) -> int:
        return int(self.cls.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.cls, self.kind, self.vec))

    def to(self, device: torch.device | str) -> BankRecords:
        return BankRecords(self.cls.to(device), self.kind.to(device), self.vec.to(device))

    @staticmethod
    def empty(dim: int, dtype: torch.dtype = torch.float32, device=None) -> BankRecords:
        long = torch.zeros(0, dtype=torch.long, device=device)
        return BankRecords(long, long.clone(), torch.zeros((0, dim), dtype=dtype, device=device))

    @staticmethod
    def cat(parts: Sequence[BankRecords]) -> BankRecords:
        """Concatenate in the given order (the order the writes will apply)."""
        if not parts:
            raise ValueError("BankRecords.cat needs at least one part")
        return BankRecords(
            torch.cat([p.cls for p in parts]),
            torch.cat([p.kind for p in parts]),
            torch.cat([p.vec for p in parts]),
        )


def select_records(
    embed: Tensor,
    labels: Tensor,
    num_classes: int,
    pixel_update_freq: int = 10,
    kinds: Sequence[str] = KINDS,
    ignore_index: int = 255,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> BankRecords:
    """Choose what a batch enqueues (vectorised over images and classes).

    Args:
        embed: ``(B, D, h, w)`` embeddings (detached keys).
        labels: ``(B, h, w)`` labels at the embedding resolution; ``ignore_index`` never enters.
        num_classes: classes ``0..num_classes-1`` (class 0 is a real class).
        pixel_update_freq: pixels per (image, class): ``min(n_pixels, pixel_update_freq)``.
        kinds: which queues to fill (``pixel``, ``region``).
        dtype: storage dtype of the vectors.
        generator: random source for the pixel choice.

    Returns:
        Pixel records ordered by (image, class), then region records ordered by (image, class).
    """
    b, d, h, w = embed.shape
    if labels.shape != (b, h, w):
        raise ValueError(
            f"labels must be {(b, h, w)} (the embedding's resolution), got {tuple(labels.shape)}"
        )
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown bank kind(s) {unknown}; expected a subset of {KINDS}")
    hw = h * w
    y = labels.reshape(b, hw).long()
    valid = y != ignore_index
    bad = valid & ((y < 0) | (y >= num_classes))
    if bool(bad.any()):
        values = torch.unique(y[bad]).tolist()[:10]
        raise ValueError(
            f"labels {values} are outside 0..{num_classes - 1} (ignore_index={ignore_index})"
        )
    keys = embed.detach().reshape(b, d, hw)  # gathered per pixel; never transposed whole
    n_groups = b * num_classes  # group = (image, class); ignore pixels go to slot n_groups
    offsets = torch.arange(b, device=y.device)[:, None] * num_classes
    group = torch.where(valid, y + offsets, n_groups).reshape(-1)
    counts = torch.bincount(group, minlength=n_groups + 1)[:n_groups]
    parts = []
    if "pixel" in kinds and bool(counts.any()):
        chosen = choose_pixels(group, counts, pixel_update_freq, generator)
        vec = F.normalize(keys[chosen // hw, :, chosen % hw].float(), dim=1)
        cls = group[chosen] % num_classes
        parts.append(BankRecords(cls, torch.zeros_like(cls), vec.to(dtype)))
    if "region" in kinds and bool(counts.any()):
        column = torch.where(valid, y, num_classes)
        sums = _class_sums(keys.float(), column, num_classes)
        sums = sums[:, :, :num_classes].transpose(1, 2).reshape(n_groups, d)
        present = torch.nonzero(counts).squeeze(1)
        vec = F.normalize(sums[present], dim=1)
        cls = present % num_classes
        parts.append(BankRecords(cls, torch.ones_like(cls), vec.to(dtype)))
    if not parts:
        return BankRecords.empty(d, dtype, embed.device)
    return BankRecords.cat(parts)


_SLACK_SIGMAS, _SLACK_EXTRA = 6.0, 8.0


def choose_pixels(
    group: Tensor, counts: Tensor, k: int, generator: torch.Generator | None = None
) -> Tensor:
    """A uniformly random ``min(count, k)``-subset of the items of every group, in random order.

    Every item gets an independent uniform key; a group's choice is its ``k`` smallest keys (so
    the subset and its order are uniform). Only items whose key is below a per-group threshold are
    sorted: a threshold of ``(k + 6 sqrt(k) + 8) / count`` keeps about ``k + 6 sqrt(k) + 8`` of
    each group's items, at least ``k`` of them but with negligible probability, in which case the
    whole batch is redone with every item kept. Either way the result is the ``k`` smallest keys:
    exact, not an approximation; the threshold only spares the sort of ~``count`` items per group.

    Args:
        group: ``(n,)`` group of each item in ``0..G``; ``G = counts.numel()`` marks items to skip.
        counts: ``(G,)`` items per group (``bincount(group)[:G]``).
        k: items to choose per group.
        generator: random source for the keys.

    Returns:
        Indices into ``group``, ordered by group, then by key.
    """
    take = counts.clamp(max=k)
    device = generator.device if generator is not None else group.device
    u = torch.rand(group.numel(), generator=generator, device=device).to(group.device)
    for slack in (True, False):
        if slack:
            kept = (take + _SLACK_SIGMAS * take.sqrt() + _SLACK_EXTRA) / counts.clamp(min=1)
        else:
            kept = torch.ones_like(take, dtype=torch.float32)
        threshold = torch.cat([kept.float(), kept.new_full((1,), -1.0)])  # skip slot: never
        candidate = torch.nonzero(u < threshold[group]).squeeze(1)
        order = torch.argsort(u[candidate])
        candidate = candidate[order]
        candidate = candidate[torch.argsort(group[candidate], stable=True)]
        cand_group = group[candidate]
        got = torch.bincount(cand_group, minlength=counts.numel())
        if slack and bool((got < take).any()):
            continue
        rank = (
            torch.arange(candidate.numel(), device=group.device) - (got.cumsum(0) - got)[cand_group]
        )
        return candidate[rank < take[cand_group]]
    raise AssertionError("unreachable: the second pass keeps every item")


_ONE_HOT_MAX_CLASSES = 32  # up to here a one-hot matmul beats scatter_add (measured on CPU)


def _class_sums(keys: Tensor, column: Tensor, num_classes: int) -> Tensor:
    """Per-image sums of ``keys (B, D, P)`` over pixels by ``column (B, P)`` in ``0..num_classes``
    (the last column collects ignore pixels): ``(B, D, num_classes + 1)``."""
    b, d, p = keys.shape
    if num_classes + 1 <= _ONE_HOT_MAX_CLASSES:
        one_hot = keys.new_zeros((b, p, num_classes + 1))
        one_hot.scatter_(2, column[:, :, None], 1.0)
        return torch.bmm(keys, one_hot)
    sums = keys.new_zeros((b, d, num_classes + 1))
    return sums.scatter_add_(2, column[:, None, :].expand(b, d, p), keys)


class MemoryBank:
    """Per-class ring queues for the kinds in ``kinds`` (``pixel``, ``region``).

    Args:
        num_classes: number of classes.
        dim: embedding dimension D.
        size: entries per class per queue (``memory_size``).
        kinds: which queues to hold.
        dtype: storage dtype (float32, float16, bfloat16); the loss computes in float32.
        device: where the queues live.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        size: int,
        kinds: Sequence[str] = KINDS,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ):
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"bank dtype must be one of {list(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"bank kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
        self.num_classes, self.dim, self.size = num_classes, dim, size
        self.kinds = tuple(k for k in KINDS if k in kinds)
        self.dtype = dtype
        nk = len(self.kinds)
        self.data = torch.zeros((nk, num_classes, size, dim), dtype=dtype, device=device)
        self.ptr = torch.zeros((nk, num_classes), dtype=torch.long, device=device)
        self.count = torch.zeros((nk, num_classes), dtype=torch.long, device=device)
        self.writes = 0
        self.dropped = 0  # non-finite records refused by write(), counted for logging
        # the write (one per training step) that filled each slot: entry ages; -1 = unknown
        self.written = torch.full((nk, num_classes, size), -1, dtype=torch.long, device=device)
        # global kind id -> local queue index (-1 when not held)
        self._local = torch.tensor([self.kinds.index(k) if k in self.kinds else -1 for k in KINDS])

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __len__(self) -> int:
        return int(self.count.sum())

    def reset(self) -> None:
        """Empty every queue (filled counts and pointers to 0); old vectors are never read again."""
        self.ptr.zero_()
        self.count.zero_()
        self.written.fill_(-1)

    def write(self, records: BankRecords) -> int:
        """Append records in order to their (kind, class) queue, replacing the oldest entries when full.

        Records holding a non-finite value are dropped (one NaN entry would make every later memory
        loss of its class NaN) and counted in :attr:`dropped`; which ones depends on the records alone,
        so replicas applying the same records stay identical. Returns the number dropped.
        """
        self.writes += 1
        if len(records) == 0:
            return 0
        if records.vec.shape[1] != self.dim:
            raise ValueError(f"records have D={records.vec.shape[1]}, bank has D={self.dim}")
        finite = torch.isfinite(records.vec).all(dim=1)
        n_bad = int(finite.numel() - finite.sum())
        if n_bad:
            self.dropped += n_bad
            records = BankRecords(records.cls[finite], records.kind[finite], records.vec[finite])
        n = len(records)
        if n == 0:
            return n_bad
        local = self._local.to(records.kind.device)[records.kind]
        if bool((local < 0).any()) or bool(
            ((records.cls < 0) | (records.cls >= self.num_classes)).any()
        ):
            raise ValueError(
                f"records hold kinds or classes this bank does not have (kinds {self.kinds}, "
                f"classes 0..{self.num_classes - 1})"
            )
        queue = (local * self.num_classes + records.cls).to(self.device)
        nq = self.ptr.numel()
        order = torch.argsort(queue, stable=True)
        q = queue[order]
        counts = torch.bincount(queue, minlength=nq)
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n, device=self.device) - start[q]
        keep = rank >= counts[q] - self.size  # only the newest `size` of one write can survive it
        ptr = self.ptr.view(-1)
        slot = (ptr[q] + rank) % self.size
        flat = self.data.view(nq, self.size, self.dim)
        flat[q[keep], slot[keep]] = records.vec.to(self.device, self.dtype)[order[keep]]
        self.written.view(nq, self.size)[q[keep], slot[keep]] = self.writes
        ptr.copy_((ptr + counts) % self.size)
        cnt = self.count.view(-1)
        cnt.copy_(torch.clamp(cnt + counts, max=self.size))
        return n_bad

    def memory(self, kinds: Sequence[str] | None = None) -> tuple[Tensor, list[Block]]:
        """The store ``(K*C*M, D)`` (a view, no copy) and the class blocks of its filled slots."""
        kinds = self.kinds if kinds is None else kinds
        store = self.data.view(-1, self.dim)
        counts = self.count.tolist()
        blocks = []
        for kind in kinds:
            k = self.kinds.index(kind)
            for c in range(self.num_classes):
                if counts[k][c]:
                    start = (k * self.num_classes + c) * self.size
                    blocks.append((c, start, start + counts[k][c]))
        return store, blocks

    def entries(self, kind: str, cls: int) -> Tensor:
        """Filled entries of one queue, oldest first."""
        k = self.kinds.index(kind)
        n, p = int(self.count[k, cls]), int(self.ptr[k, cls])
        slots = (torch.arange(n) + (p if n == self.size else 0)) % self.size
        return self.data[k, cls, slots.to(self.device)]

    def features(self, kinds: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """Every filled entry (a copy) and its class: ``(M, D)``, ``(M,)``."""
        store, blocks = self.memory(kinds)
        if not blocks:
            return store.new_zeros((0, self.dim)), torch.zeros(
                0, dtype=torch.long, device=self.device
            )
        feats = torch.cat([store[a:b] for _, a, b in blocks])
        labels = torch.cat([torch.full((b - a,), c, dtype=torch.long) for c, a, b in blocks])
        return feats, labels.to(self.device)

    def state_dict(self) -> dict:
        return {
            "kinds": list(self.kinds),
            "num_classes": self.num_classes,
            "dim": self.dim,
            "size": self.size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "data": self.data,
            "ptr": self.ptr,
            "count": self.count,
            "writes": self.writes,
            "written": self.written,
            "dropped": self.dropped,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved bank; a bank of another shape is a clear error."""
        mine = (list(self.kinds), self.num_classes, self.dim, self.size)
        theirs = (list(state["kinds"]), state["num_classes"], state["dim"], state["size"])
        if mine != theirs:
            raise ValueError(
                "saved memory bank does not match this run: saved (kinds, classes, dim, size) = "
                f"{theirs}, this run = {mine}"
            )
        self.data.copy_(state["data"].to(self.dtype))
        self.ptr.copy_(state["ptr"])
        self.count.copy_(state["count"])
        self.writes = int(state["writes"])
        self.dropped = int(state.get("dropped", 0))  # absent from banks saved before it was counted
        written = state.get("written")
        if written is None:  # saved before entry ages were kept: ages unknown
            self.written.fill_(-1)
        elif isinstance(written, Tensor):
            self.written.copy_(written)
        else:  # a numpy array (raycontrast.bank._wire)
            self.written.copy_(torch.tensor(written, dtype=torch.long))

    def digest(self) -> str:
        """SHA-1 of the queues, pointers, fill counts and write steps: equal digests mean bit-identical
        banks."""
        h = hashlib.sha1()
        for t in (self.ptr, self.count, self.data, self.written):
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def equal(self, other: MemoryBank) -> bool:
        """Bit-identical queues, pointers, fill counts and write steps."""
        return (
            torch.equal(self.ptr.cpu(), other.ptr.cpu())
            and torch.equal(self.count.cpu(), other.count.cpu())
            and torch.equal(self.data.cpu(), other.data.cpu())
            and torch.equal(self.written.cpu(), other.written.cpu())
        )
