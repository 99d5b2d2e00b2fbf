"""Opt-in per-phase timing of the training step (benchmarks only; normal runs never load it).

When ``$RAYCONTRAST_PHASES`` names a folder, :func:`train_loop_per_worker` calls :func:`instrument`
on its :class:`~raycontrast.train.loop.Trainer`, which wraps (on that instance and in this worker
process only) the calls a step is made of, and at the end writes ``<folder>/<run>-rank<r>.json``:
per-iteration seconds of each phase, resume and checkpoint times, bank digests and peak RSS.

Phases of one iteration: ``data`` (waiting for the batch), ``forward`` (model), ``sampling`` (anchor
sampling), ``contrast`` (the in-batch and memory loss terms, forward and backward), ``backward``
(the rest of the backward pass), ``optimizer`` (SGD step), ``selection`` (choosing bank records)
and ``exchange`` (bank sync); ``step`` is the whole iteration, ``data`` included. The contrast
backward is timed between autograd marks placed on the terms' output and on their anchor input;
the autograd engine runs that stretch of the graph before the backbone's, so the split is close.

``$RAYCONTRAST_PREFILL_BANK=1`` fills a fresh run's bank to its full size with random unit vectors
before the first step, so that a few iterations already contrast against a full memory.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = ["ENV", "PREFILL_ENV", "full_bank_state", "instrument"]

ENV = "RAYCONTRAST_PHASES"
PREFILL_ENV = "RAYCONTRAST_PREFILL_BANK"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KB on Linux


class _Clock:
    """Per-iteration phase sums; ``sync`` waits for the GPU before reading the clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.rows: list[dict[str, float]] = []
        self.row: dict[str, float] = defaultdict(float)
        self.events: dict[str, Any] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def timed(self, phase: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.row[phase] += self.now() - t0

        return wrapper


class _Mark(torch.autograd.Function):
    """Identity whose backward calls ``hook()``: brackets a stretch of the backward pass."""

    @staticmethod
    def forward(ctx, x, hook):
        ctx.hook = hook
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.hook()
        return grad, None


def _bracketed(clock: _Clock, fn):
    """``fn(z, ...)`` timed forward, and backward from its output's gradient to ``z``'s."""

    @functools.wraps(fn)
    def wrapper(z, *args, **kwargs):
        start: list[float] = []

        def end() -> None:
            if start:
                clock.row["contrast_bwd"] += clock.now() - start.pop()

        z = _Mark.apply(z, end)
        t0 = clock.now()
        out = fn(z, *args, **kwargs)
        clock.row["contrast"] += clock.now() - t0
        return _Mark.apply(out, lambda: start.append(clock.now()))

    return wrapper


def full_bank_state(bank, seed: int = 0) -> dict[str, Any]:
    """A state dict of ``bank``'s shape with every slot filled by a random unit vector (made one
    queue at a time, so that no float32 copy of a large bank is ever held)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.empty_like(bank.data, device="cpu")
    for k in range(data.shape[0]):
        for c in range(data.shape[1]):
            queue = torch.randn(data.shape[2:], generator=g)
            data[k, c] = torch.nn.functional.normalize(queue, dim=-1).to(data.dtype)
    state = bank.state_dict()
    state.update(
        data=data,
        ptr=torch.zeros_like(bank.ptr),
        count=torch.full_like(bank.count, bank.size),
        written=torch.zeros_like(bank.written),
    )
    return state


_PATCHED_CONTRAST = ("sample_anchors", "inbatch_contrast_loss", "memory_contrast_loss_blocks")
_PATCHED_LOOP = ("select_records", "train_batches", "save_checkpoint")


def _patch_modules(clock: _Clock, loop: ModuleType) -> list[tuple[ModuleType, str, Any]]:
    """Wrap the module-level functions a step calls (in the contrast module and in ``loop``, the
    training loop's module, handed in by it); returns the originals (to restore)."""
    import raycontrast.contrast.module as module

    originals = [(module, attr, getattr(module, attr)) for attr in _PATCHED_CONTRAST]
    originals += [(loop, attr, getattr(loop, attr)) for attr in _PATCHED_LOOP]

    module.sample_anchors = clock.timed("sampling", module.sample_anchors)
    module.inbatch_contrast_loss = _bracketed(clock, module.inbatch_contrast_loss)
    module.memory_contrast_loss_blocks = _bracketed(clock, module.memory_contrast_loss_blocks)
    loop.select_records = clock.timed("selection", loop.select_records)
    batches = loop.train_batches

    def timed_batches(*args, **kwargs):
        it = batches(*args, **kwargs)
        while True:
            t0 = clock.now()
            item = next(it)
            clock.row["data"] += clock.now() - t0
            yield item

    loop.train_batches = timed_batches
    save = loop.save_checkpoint

    def timed_save(path, state):
        t0 = time.perf_counter()
        save(path, state)
        size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
        clock.events.setdefault("checkpoints", []).append(
            {"write_s": time.perf_counter() - t0, "bytes": size}
        )

    loop.save_checkpoint = timed_save
    return originals


def _patch_trainer(trainer, clock: _Clock) -> None:
    trainer.model.forward = clock.timed("forward", trainer.model.forward)
    trainer.optimizer.step = clock.timed("optimizer", trainer.optimizer.step)
    trainer._apply_gradients = clock.timed("apply", trainer._apply_gradients)
    if trainer.sync is not None:
        trainer.sync.exchange = clock.timed("exchange", trainer.sync.exchange)
        start = trainer.sync.start

        def prefilled_start(state, version, **kwargs):
            if state is None and os.environ.get(PREFILL_ENV) == "1":
                state = full_bank_state(trainer.replica, seed=trainer.cfg.train.seed)
                clock.events["prefilled_bank"] = True
            start(state, version, **kwargs)
            clock.events["bank_digest_after_start"] = trainer.replica.digest()

        trainer.sync.start = prefilled_start

    report = trainer._report

    def digest_report(metrics, state):
        if state is not None and trainer.replica is not None:
            clock.events.setdefault("bank_digest_at_checkpoint", []).append(
                trainer.replica.digest()
            )
        report(metrics, state)

    trainer._report = digest_report
    step = trainer.step

    def timed_step(it, epoch, batch):
        t0 = clock.now()
        out = step(it, epoch, batch)
        row = clock.row
        row["step"] = clock.now() - t0 + row.get("data", 0.0)
        row["backward"] = row.pop("apply", 0.0) - row.get("optimizer", 0.0)
        row["backward"] -= row.get("contrast_bwd", 0.0)
        row["contrast"] = row.get("contrast", 0.0) + row.get("contrast_bwd", 0.0)
        row["iteration"] = it + 1
        row["anchors"] = out.contrast.num_anchors if out.contrast is not None else 0
        clock.rows.append(dict(row))
        clock.row = defaultdict(float)
        return out

    trainer.step = timed_step


def _finish(trainer, clock: _Clock, folder: Path, resume_s: float) -> None:
    report: dict[str, Any] = {
        "rank": trainer.rank,
        "start": trainer.start,
        "resume_s": resume_s,
        "steps": clock.rows,
        "peak_rss_gb": _peak_rss_gb(),
        **clock.events,
    }
    if clock.cuda:
        report["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    if trainer.replica is not None:
        bank = trainer.replica
        report["bank_bytes"] = bank.data.numel() * bank.data.element_size()
        report["bank_digest_end"] = bank.digest()
        actor = trainer._bank_actor
        if actor is not None:
            import ray

            report["bank_actor_peak_rss_gb"] = ray.get(
                actor.__ray_call__.remote(lambda _self: _peak_rss_gb())
            )
    name = f"{trainer.cfg.name}-rank{trainer.rank}-start{trainer.start}.json"
    (folder / name).write_text(json.dumps(report, indent=1))


def instrument(trainer, checkpoint, loop: ModuleType) -> dict[str, Any]:
    """Time ``trainer``'s phases, resume from ``checkpoint``, fit, and write the timing file.
    ``loop``: the module of the training loop (it calls this), whose step functions are timed.

    Returns :meth:`Trainer.fit`'s result (what ``train_loop_per_worker`` returns)."""
    folder = Path(os.environ[ENV])
    folder.mkdir(parents=True, exist_ok=True)
    clock = _Clock(trainer.device)
    originals = _patch_modules(clock, loop)
    try:
        _patch_trainer(trainer, clock)
        t0 = time.perf_counter()
        trainer.resume(checkpoint)
        resume_s = time.perf_counter() - t0
        result = trainer.fit()
        _finish(trainer, clock, folder, resume_s)
    finally:  # a local-mode run shares this process with whatever runs next
        for mod, attr, fn in originals:
            setattr(mod, attr, fn)
    return result
