"""Bank records and bank state as plain numpy for shipping between processes (Ray object store).

16-bit float vectors travel as their raw 16-bit patterns (numpy has no bfloat16), so what arrives is
bit-for-bit what was selected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raycontrast.contrast import BankRecords, MemoryBank

__all__ = [
    "concat_packed",
    "insert_classes",
    "pack_records",
    "pack_state",
    "select_classes",
    "take_classes",
    "unpack_records",
    "unpack_state",
    "wire_nbytes",
]

_RAW16 = {torch.float16, torch.bfloat16}


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in _RAW16:
        t = t.view(torch.int16)
    return t.numpy()


def _to_torch(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True))  # object-store arrays are read-only
    if dtype in _RAW16:
        t = t.view(dtype)
    return t.to(device)


def pack_records(records: BankRecords) -> dict[str, Any]:
    """Records as ``{"cls", "kind", "vec", "dtype"}`` numpy arrays (``kind`` as int8)."""
    return {
        "cls": _to_numpy(records.cls).astype(np.int64, copy=False),
        "kind": _to_numpy(records.kind).astype(np.int8),
        "vec": _to_numpy(records.vec),
        "dtype": str(records.vec.dtype).removeprefix("torch."),
    }


def unpack_records(packed: dict[str, Any], device: torch.device | str = "cpu") -> BankRecords:
    dtype = getattr(torch, packed["dtype"])
    return BankRecords(
        torch.from_numpy(np.array(packed["cls"], dtype=np.int64)).to(device),
        torch.from_numpy(np.array(packed["kind"], dtype=np.int64)).to(device),
        _to_torch(packed["vec"], dtype, device),
    )


def concat_packed(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate packed records in the given order."""
    return {
        "cls": np.concatenate([p["cls"] for p in parts]),
        "kind": np.concatenate([p["kind"] for p in parts]),
        "vec": np.concatenate([p["vec"] for p in parts]),
        "dtype": parts[0]["dtype"],
    }


def wire_nbytes(obj: Any) -> int:
    """Payload bytes of packed records / states (numpy buffers; small metadata ignored)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(wire_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(wire_nbytes(v) for v in obj)
    return 0


def pack_state(bank: MemoryBank) -> dict[str, Any]:
    """A bank's full state in numpy form."""
    state = bank.state_dict()
    return {k: (_to_numpy(v) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def unpack_state(packed: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Inverse of :func:`pack_state`: a state dict for :meth:`MemoryBank.load_state_dict`."""
    dtype = getattr(torch, packed["dtype"])
    out = dict(packed)
    out["data"] = _to_torch(packed["data"], dtype, device)
    out["ptr"] = _to_torch(packed["ptr"], torch.int64, device)
    out["count"] = _to_torch(packed["count"], torch.int64, device)
    return out


# ------------------------------------------------------------------------------------ class shards


def select_classes(
    packed: dict[str, Any], classes: list[int], num_classes: int, renumber: bool = True
) -> dict[str, Any]:
    """Packed records of ``classes`` only, in their order; with ``renumber`` classes become
    ``0..len(classes)-1`` (the numbering of a shard's own bank)."""
    local = np.full(num_classes, -1, dtype=np.int64)
    local[classes] = np.arange(len(classes))
    cls = np.asarray(packed["cls"], dtype=np.int64)
    ids = local[cls]
    keep = ids >= 0
    return {
        "cls": ids[keep] if renumber else cls[keep],
        "kind": np.asarray(packed["kind"])[keep],
        "vec": np.asarray(packed["vec"])[keep],
        "dtype": packed["dtype"],
    }


_PER_CLASS = ("data", "ptr", "count", "written")  # state entries indexed [kind, class, ...]


def take_classes(state: dict[str, Any], classes: list[int]) -> dict[str, Any]:
    """A shard's part of a full packed state: the queues of ``classes`` (a bank of those classes)."""
    out = dict(state)
    for key in _PER_CLASS:
        if key in state:
            out[key] = np.ascontiguousarray(np.asarray(state[key])[:, classes])
    out["num_classes"] = len(classes)
    return out


def insert_classes(bank: MemoryBank, classes: list[int], part: dict[str, Any]) -> None:
    """Overwrite ``bank``'s queues of ``classes`` with a shard's packed state ``part`` (other classes
    untouched; ``bank.writes`` is left to the caller)."""
    index = torch.tensor(classes, dtype=torch.long, device=bank.device)
    dtype = getattr(torch, part["dtype"])
    bank.data[:, index] = _to_torch(part["data"], dtype, bank.device).to(bank.dtype)
    bank.ptr[:, index] = _to_torch(part["ptr"], torch.int64, bank.device)
    bank.count[:, index] = _to_torch(part["count"], torch.int64, bank.device)
    if part.get("written") is not None:
        bank.written[:, index] = _to_torch(part["written"], torch.int64, bank.device)
    else:
        bank.written[:, index] = -1
