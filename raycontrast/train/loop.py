"""The per-worker training loop run by Ray Train (``TorchTrainer``), as a small :class:`Trainer`.

One iteration (:meth:`Trainer.step`): forward, cross-entropy (+ aux) + weighted pixel contrast (zero
with a graph during the warm-up), backward and SGD step with a poly schedule, then the step's bank
records are exchanged so the next step contrasts against the global memory. Every
``train.eval_every`` iterations and at the end (:meth:`Trainer.evaluate_and_checkpoint`) the workers
evaluate disjoint shares of the validation split, sum their confusion matrices, and report the metrics
with a checkpoint (rank 0 writes it) to Ray Train, which keeps the best by mIoU and the latest.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from raycontrast import storage
from raycontrast._distributed import all_reduce, gather_objects
from raycontrast.config import ExperimentConfig, config_from_dict, save_config
from raycontrast.contrast import (
    BankRecords,
    MemoryBank,
    PixelContrastLoss,
    select_records,
)
from raycontrast.contrast.health import bank_health, sample_bank
from raycontrast.data import build_dataset, dataset_info
from raycontrast.eval import evaluate
from raycontrast.eval._visualize import pick_val_samples, write_confusion, write_val_samples
from raycontrast.eval.run import resolve_eval_config
from raycontrast.models import build_segmentor, check_compatible, load_checkpoint, save_checkpoint
from raycontrast.models._sync_bn import convert_sync_batchnorm
from raycontrast.models.checkpoint import restore_training, training_state
from raycontrast.models.segmentor import unwrap_model
from raycontrast.train._data import train_batches, val_shard
from raycontrast.train._debug import DebugHooks
from raycontrast.train._elastic import record_worker_group
from raycontrast.train._logger import RunLogger, console
from raycontrast.train._losses import StepLosses, step_losses
from raycontrast.train._state import get_rng_state, seed_everything, set_rng_state
from raycontrast.train.tracking import open_tracking

__all__ = ["NonFiniteLoss", "Trainer", "train_loop_per_worker"]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf and ``train.on_nonfinite`` is ``stop``."""


class _StopRun(Exception):
    """Ends the loop early on every rank; the message becomes the run's status."""


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point. ``config``: ``experiment`` (config dict), ``run_dir``, ``bank_actor``."""
    cfg = config_from_dict(ExperimentConfig, config["experiment"])
    trainer = Trainer(cfg, config["run_dir"], config.get("bank_actor"))
    if os.environ.get("RAYCONTRAST_PHASES"):  # opt-in step timing (benchmarks/bench_real_scale.py)
        from raycontrast.train.phases import instrument

        return instrument(trainer, ray.train.get_checkpoint(), sys.modules[__name__])
    trainer.resume(ray.train.get_checkpoint())
    return trainer.fit()


def _poly(iterations: int, power: float):
    return lambda it: max(0.0, 1.0 - it / iterations) ** power


def _stream_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s sampling generator (anchors, memory sampling, bank records)."""
    return seed * 1000 + rank


def _has_unused_parameters(model: torch.nn.Module) -> bool:
    """Whether some trainable parameter gets no gradient (e.g. an HRNet branch no head reads).

    DDP must then be told (``find_unused_parameters``), which costs a graph traversal per step, so
    it is only enabled when a tiny probe forward/backward shows it is needed.
    """
    probe_model = copy.deepcopy(model)  # the probe must not touch BatchNorm statistics or grads
    probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = probe_model(probe)
    sum(t.float().sum() for t in out.values()).backward()
    return any(p.requires_grad and p.grad is None for p in probe_model.parameters())


class Trainer:
    """One Ray Train worker's share of a run: setup (here), :meth:`resume`, :meth:`fit`.

    Every rank builds identical initial weights (same seed) and its own sampling stream; the bank
    replica is kept in step with the run's global bank by ``bank.mode``'s sync.

    Args:
        cfg: the experiment.
        run_dir: the run directory (absolute path or URI).
        bank_actor: name of the run's bank actor (``bank.mode: actor``).
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str, bank_actor: str | None = None):
        ctx = ray.train.get_context()
        self.cfg, self.run_dir = cfg, run_dir
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        self.generator = torch.Generator().manual_seed(_stream_seed(cfg.train.seed, self.rank))
        self.info = dataset_info(cfg.data)
        self.num_classes = self.info.num_classes

        model = build_segmentor(cfg.model, self.num_classes, projection=cfg.contrast.enabled)
        if cfg.train.sync_bn:
            model = convert_sync_batchnorm(model)
        ddp = {"find_unused_parameters": self.world > 1 and _has_unused_parameters(model)}
        self.model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp)
        self.core = unwrap_model(self.model)
        self.optimizer = torch.optim.SGD(
            self.core.parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _poly(cfg.train.iterations, cfg.optim.poly_power)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        self.criterion = (
            PixelContrastLoss(cfg.contrast, ignore_index=cfg.data.ignore_index)
            if cfg.contrast.enabled
            else None
        )
        self.kinds = cfg.bank_kinds
        self.replica, self.sync = self._build_bank(bank_actor)
        self.debug = DebugHooks(cfg.debug, run_dir, self.rank)

        self.start = 0
        self.best: dict[str, Any] = {"mIoU": -1.0, "iteration": 0}
        self.metrics: dict[str, Any] = {}
        self.totals = {"skipped_samples": 0, "skipped_steps": 0}
        self.bank_check: dict[str, Any] = {}
        self.confusion = None  # of the last evaluation, summed over ranks
        self._loss_stats: dict[str, float] = {}  # what the memory loss saw, at evaluation steps
        self._epoch = -1

    def _build_bank(self, bank_actor: str | None):
        """This worker's replica of the global bank and the sync that keeps it current."""
        if not self.kinds:
            return None, None
        from raycontrast.bank import make_bank_sync
        from raycontrast.bank.actor import NAMESPACE

        cfg = self.cfg
        replica = MemoryBank(
            self.num_classes,
            cfg.model.proj_dim,
            cfg.contrast.memory_size,
            kinds=self.kinds,
            dtype=cfg.contrast.memory_dtype,
            device=self.device,
        )
        actor = None
        if cfg.bank.mode == "actor":
            actor = ray.get_actor(bank_actor, namespace=NAMESPACE)
        sync = make_bank_sync(
            cfg.bank.mode,
            replica,
            rank=self.rank,
            actor=actor,
            overlap=cfg.bank.overlap,
            timeout_s=cfg.train.collective_timeout_s,
            data_plane=cfg.bank.data_plane,
            max_in_flight=cfg.bank.max_in_flight,
        )
        return replica, sync

    @property
    def _bank_actor(self):
        return self.sync.actor if self.sync is not None and self.sync.mode == "actor" else None

    # -- resume ---------------------------------------------------------------------------------

    def resume(self, checkpoint: ray.train.Checkpoint | None) -> None:
        """Continue from ``checkpoint`` (Ray Train's latest) if any, and start the bank sync."""
        bank_state = None
        if checkpoint is not None:
            with checkpoint.as_directory() as ckpt_dir:
                state = load_checkpoint(ckpt_dir)
            source = f"{checkpoint.path} (resuming run {self.cfg.name!r}; use another name for a new run)"
            check_compatible(state, self.cfg, self.num_classes, source)
            run = restore_training(
                state, self.core, self.optimizer, self.scheduler, self.scaler, source
            )
            self.start, self.best, self.metrics = run["iteration"], run["best"], run["metrics"]
            bank_state = run["bank"]
            self._restore_rng(run["rng"])
            if self.rank == 0:
                console(f"[{self.cfg.name}] resumed from iteration {self.start}")
        if self.sync is not None:
            # a worker group (re)starts: the bank actor adopts its world size and keeps its live bank
            # when that holds this checkpoint's version or newer (elastic resizes, worker failures)
            self.sync.start(bank_state, version=self.start, world_size=self.world, keep_live=True)

    def _restore_rng(self, states: list[dict[str, Any]]) -> None:
        """This rank's saved RNG streams; a rank the checkpoint did not have (the run grew) gets a
        fresh stream of its own, derived from the seed, rank and resume point."""
        if self.rank < len(states):
            set_rng_state(states[self.rank], self.generator)
            return
        # hashed, not summed: seed + rank + start would give rank 1 at iteration 7 the global
        # stream of rank 2 at iteration 6 (a later resize)
        entropy = [self.cfg.train.seed % 2**63, self.rank, self.start]
        global_seed, sampling_seed = np.random.SeedSequence(entropy).generate_state(2)
        seed_everything(int(global_seed))
        self.generator.manual_seed(int(sampling_seed))

    # -- the loop -------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train from :attr:`start` to ``train.iterations``; returns rank 0's summary (``{}`` else)."""
        cfg = self.cfg
        self._write_worker_info()
        self.logger = None
        if self.rank == 0:
            record_worker_group(
                self.run_dir, self.start, self.world, getattr(self.sync, "adopted", None)
            )
            self.logger = RunLogger(
                self.run_dir, cfg.name, self.start, cfg.train.iterations, self.info.class_names
            )
            self.logger.tracker = open_tracking(cfg, self.run_dir)
            if self.start == 0 and not storage.is_uri(self.run_dir):
                save_config(cfg, os.path.join(self.run_dir, "config.yaml"))
            console(f"[{cfg.name}] loading data")
            # the same few validation images at every evaluation (from the whole split)
            val_split = build_dataset(cfg.data, cfg.data.val_split, train=False)
            self.val_samples = pick_val_samples(val_split, 4)
        self.val_data = val_shard(cfg, self.rank, self.world)
        batches = train_batches(cfg, self.rank, self.world, self.start, self.device)
        window = _Window()
        status, done = "completed", self.start
        t_start = time.perf_counter()
        self.model.train()
        for it in range(self.start, cfg.train.iterations):
            self.debug.before_step(it + 1, self._bank_actor)
            epoch, batch = next(batches)
            try:
                losses = self.step(it, epoch, batch)
            except _StopRun as stop:
                status = f"stopped: {stop}"
                if self.rank == 0:
                    console(f"[{cfg.name}] {status}")
                break
            done = it + 1
            window.add(losses)
            self._log(done, epoch, losses, window)
            if self._evaluates_at(done):
                self.evaluate_and_checkpoint(done, epoch, float(losses.total.detach()))
                self.model.train()
        if self.sync is not None:
            self.sync.flush()
        wall = time.perf_counter() - t_start
        if self.logger is not None:
            if self.confusion is not None:
                write_confusion(self.confusion, self.info.class_names, self.logger.local)
            self.logger.close()
        if self.rank == 0 and cfg.data.test_split and status == "completed":
            self._final_test(done)
        return self._result(status, done, wall) if self.rank == 0 else {}

    def _final_test(self, done: int) -> None:
        """Rank 0, once, after the last iteration: ``data.test_split`` with the last weights."""
        from raycontrast.eval.final_test import per_image_confusion, write_final_test

        cfg = self.cfg
        dataset = build_dataset(cfg.data, cfg.data.test_split, train=False)
        self.core.eval()
        confusion, ids = per_image_confusion(
            self.core.predict,
            dataset,
            self.num_classes,
            cfg.data.ignore_index,
            resolve_eval_config(cfg),
            self.device,
        )
        record = write_final_test(
            self.run_dir, confusion, ids, list(self.info.class_names), done, cfg.data.test_split
        )
        console(
            f"[{cfg.name}] {cfg.data.test_split} (last weights): mIoU {100 * record['mIoU']:.2f}"
        )

    def step(self, it: int, epoch: int, batch: dict[str, Any]) -> StepLosses:
        """One iteration on this worker's ``batch``; raises :class:`_StopRun` on a non-finite loss
        under ``train.on_nonfinite=stop``."""
        cfg = self.cfg
        if self.replica is not None and cfg.contrast.reset_every_epoch and epoch != self._epoch:
            self.replica.reset()  # every rank sees the same epoch boundary: replicas stay identical
        self._epoch = epoch
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        self.totals["skipped_samples"] += int(torch.as_tensor(batch.get("skipped", 0)).sum())

        with self._autocast():
            out = self.model(images)
        at_eval = self._evaluates_at(it + 1)
        losses = step_losses(
            cfg,
            out,
            labels,
            it,
            self.criterion,
            self.replica,
            generator=self.generator,
            stats=at_eval and self.rank == 0,
        )
        if at_eval and losses.contrast is not None:
            self._loss_stats = losses.contrast.stats
        losses = self.debug.after_losses(it + 1, losses)
        applied = self._apply_gradients(it, losses)
        # Enqueue after the step's loss (a batch never contrasts with itself through memory); a
        # skipped step enqueues nothing, but still takes part in the exchange (a per-step barrier).
        if self.sync is not None:
            if applied:
                records = select_records(
                    out["embed"].detach().float(),
                    losses.contrast.labels_small,
                    self.num_classes,
                    pixel_update_freq=cfg.contrast.pixel_update_freq,
                    kinds=self.kinds,
                    ignore_index=cfg.data.ignore_index,
                    dtype=self.replica.dtype,
                    generator=self.generator,
                )
            else:
                records = BankRecords.empty(cfg.model.proj_dim, self.replica.dtype, self.device)
            self.sync.exchange(it, records)
        return losses

    def _evaluates_at(self, done: int) -> bool:
        """Whether the evaluation (and checkpoint) follows the iteration that makes ``done``."""
        return done % self.cfg.train.eval_every == 0 or done == self.cfg.train.iterations

    def _apply_gradients(self, it: int, losses: StepLosses) -> bool:
        """Backward and optimiser step when every rank's loss is finite; else skip (or stop)."""
        finite = torch.tensor([float(bool(torch.isfinite(losses.total)))], device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        if float(all_reduce(finite, "min")) < 1.0:
            bad = [k for k, v in losses.terms.items() if not bool(torch.isfinite(v.detach()))]
            names = ", ".join(sorted({t for b in gather_objects(bad) for t in b})) or "loss"
            detail = f"non-finite loss in iteration {it + 1} (terms: {names})"
            if self.cfg.train.on_nonfinite == "stop":
                raise _StopRun(detail)
            self.totals["skipped_steps"] += 1
            if self.rank == 0:
                console(f"[{self.cfg.name}] skipping step: {detail}")
            return False
        self.scaler.scale(losses.total).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.core.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return True

    def _autocast(self):
        if self.cfg.train.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.train.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _log(self, done: int, epoch: int, losses: StepLosses, window: _Window) -> None:
        log_every = self.cfg.train.log_every
        if self.logger is not None and (done % log_every == 0 or done == self.cfg.train.iterations):
            row = window.means()
            row.update(
                iteration=done,
                epoch=epoch,
                lr=self.optimizer.param_groups[0]["lr"],
                it_per_s=self.logger.speed(done),
                anchors=losses.contrast.num_anchors if losses.contrast is not None else 0,
                bank_entries=len(self.replica) if self.replica is not None else 0,
                bank_dropped=self.replica.dropped if self.replica is not None else 0,
                skipped_samples=self.totals["skipped_samples"],
            )
            self.logger.train(row)
        if done % log_every == 0:
            window.clear()

    # -- evaluation and checkpoints -------------------------------------------------------------

    def evaluate_and_checkpoint(self, done: int, epoch: int, loss: float) -> dict[str, Any]:
        """Evaluate on every rank, log (rank 0), check the bank, report metrics with a checkpoint."""
        if self.sync is not None:
            self.sync.flush()
        self.metrics = metrics = self._evaluate()
        if metrics["mIoU"] > self.best["mIoU"]:
            self.best = {"mIoU": metrics["mIoU"], "iteration": done, "metrics": metrics}
        if self.logger is not None:
            self.logger.val(done, metrics)
            self._log_pictures(done)
            if self.replica is not None:
                sample = sample_bank(self.replica)
                health = bank_health(
                    self.replica, self.info.class_names, sample=sample, loss_stats=self._loss_stats
                )
                self.logger.bank(done, health, sample)
            self.logger.sync()
        rng_states = gather_objects(get_rng_state(self.generator))
        report = {
            "iteration": done,
            "epoch": epoch,
            **{k: metrics[k] for k in ("mIoU", "mAcc", "aAcc", "fwIoU")},
            "best_mIoU": self.best["mIoU"],
            "loss": loss,
        }
        if self.sync is not None:
            report["bank_bytes_per_step"] = self.sync.traffic()["bytes_per_step"]
            report.update(self._check_bank())
        state = None
        if self.rank == 0:
            state = training_state(
                self.cfg,
                list(self.info.class_names),
                self.core,
                self.optimizer,
                self.scheduler,
                self.scaler,
                done,
                self.best,
                metrics,
                rng_states,
                self.replica,
            )
        self._report(report, state)
        if self.sync is not None and self.rank == 0:
            self.sync.snapshot()
        return report

    def _evaluate(self) -> dict[str, Any]:
        """Each rank evaluates its share; confusion matrices are summed across ranks."""
        self.core.eval()
        with torch.no_grad():
            seg = evaluate(
                self.core.predict,
                self.val_data,
                self.num_classes,
                self.cfg.data.ignore_index,
                resolve_eval_config(self.cfg),
                device=self.device,
            )
        seg.all_reduce()
        self.confusion = seg.confusion
        return seg.compute()

    def _log_pictures(self, done: int) -> None:
        """Rank 0: the validation sample grid (image | truth | prediction | errors)."""
        cfg = self.cfg
        grid = write_val_samples(
            self.core.predict,
            self.val_samples,
            self.logger.local,
            done,
            palette=self.info.palette,
            mean=cfg.data.mean,
            std=cfg.data.std,
            ignore_index=cfg.data.ignore_index,
            class_names=self.info.class_names,
            eval_cfg=resolve_eval_config(cfg),
            device=self.device,
        )
        self.logger.val_samples(done, grid)

    def _check_bank(self) -> dict[str, Any]:
        """Digest every rank's replica (and the actor's bank): the invariant of a shared bank.

        The summary keeps whether it held at *every* evaluation (:attr:`bank_check`).
        """
        digests = gather_objects(self.sync.replica.digest())
        check = {
            "bank_replicas_identical": len(set(digests)) == 1,
            "bank_entries": len(self.sync.replica),
        }
        authoritative = self.sync.actor_digest()
        if authoritative is not None:
            check["bank_matches_actor"] = authoritative["digest"] == digests[0]
        if self.rank == 0 and self.sync.mode != "local" and not check["bank_replicas_identical"]:
            console(f"[bank] replicas differ: {digests}")
        for key, value in check.items():
            if isinstance(value, bool):
                value = self.bank_check.get(key, True) and value
            self.bank_check[key] = value
        return check

    def _report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        """``ray.train.report`` on every rank (a barrier); rank 0 attaches the checkpoint."""
        if state is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="raycontrast-ckpt-") as tmp:
            save_checkpoint(tmp, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    # -- bookkeeping ----------------------------------------------------------------------------

    def _write_worker_info(self) -> None:
        """``<run dir>/workers/rank-<r>.json``: pid and node of each worker (operators and tests)."""
        info = {
            "rank": self.rank,
            "world_size": self.world,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "started": time.time(),
        }
        path = storage.join(self.run_dir, "workers", f"rank-{self.rank}.json")
        storage.write_bytes(path, json.dumps(info).encode())

    def _result(self, status: str, done: int, wall: float) -> dict[str, Any]:
        sync = self.sync
        bank = None
        if sync is not None:
            bank = sync.traffic() | {
                "mode": sync.mode,
                "dropped_records": self.replica.dropped,
                **self.bank_check,
            }
        return {
            "status": status,
            "iterations": done,
            "metrics": self.metrics,
            "best": {k: v for k, v in self.best.items() if k != "metrics"},
            "class_names": list(self.info.class_names),
            # every segment of a resumed run, each up to the checkpoint the next resumed from
            "train_wall_s": wall + (self.logger.previous_wall if self.logger is not None else 0.0),
            "train_wall_s_this_segment": wall,
            "skipped_samples": self.totals["skipped_samples"],
            "skipped_steps": self.totals["skipped_steps"],
            "bank": bank,
            "bank_health": (self.logger.last_bank or None) if self.logger is not None else None,
        }


class _Window:
    """Running sums of the loss terms between two log lines."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, losses: StepLosses) -> None:
        for key, value in losses.terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())
        self.sums["loss"] = self.sums.get("loss", 0.0) + float(losses.total.detach())
        self.n += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}

    def clear(self) -> None:
        self.sums, self.n = {}, 0
