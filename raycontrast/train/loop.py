"""The per-worker training loop run by Ray Train (``TorchTrainer``).

One iteration: forward, cross-entropy (+ aux) + weighted pixel contrast (zero with a graph during the
warm-up), backward and SGD step with a poly schedule, then the step's bank records are exchanged so the
next step contrasts against the global memory. Every ``train.eval_every`` iterations (and at the end) the
workers evaluate disjoint shares of the validation split, sum their confusion matrices, and report the
metrics with a checkpoint (rank 0 writes it) to Ray Train, which keeps the best by mIoU and the latest.
"""

from __future__ import annotations

import copy
import os
import signal
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist

from raycontrast import storage
from raycontrast.config import ExperimentConfig, config_from_dict, config_to_dict, save_config
from raycontrast.contrast import MemoryBank, PixelContrastLoss, memory_kinds, select_records
from raycontrast.data import dataset_info
from raycontrast.eval import evaluate, resolve_eval_config
from raycontrast.models import (
    build_segmentor,
    check_compatible,
    convert_sync_batchnorm,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from raycontrast.train.data import train_batches, val_shard
from raycontrast.train.logger import RunLogger, console
from raycontrast.train.losses import step_losses
from raycontrast.train.state import get_rng_state, seed_everything, set_rng_state

__all__ = ["NonFiniteLoss", "train_loop_per_worker"]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf and ``train.on_nonfinite`` is ``stop``."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _gather_objects(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _poly(iterations: int, power: float):
    return lambda it: max(0.0, 1.0 - it / iterations) ** power


def _autocast(cfg: ExperimentConfig, device: torch.device):
    if cfg.train.amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _first_time(run_dir: str, what: str) -> bool:
    """True once per run directory for ``what`` (fault injections must not repeat after a restart)."""
    marker = storage.join(run_dir, "debug", what)
    if storage.exists(marker):
        return False
    storage.write_bytes(marker, b"1")
    return True


def _inject_faults(cfg: ExperimentConfig, run_dir: str, iteration: int, rank: int, sync) -> None:
    """``debug.*`` fault injection for the reliability tests."""
    d = cfg.debug  # iterations are counted from 1, as in the logs
    worker_fault = iteration == d.fail_at_iteration and rank == d.fail_rank
    if worker_fault and _first_time(run_dir, f"worker_failed_at_{iteration}"):
        console(f"[debug] killing rank {rank} (pid {os.getpid()}) at iteration {iteration}")
        os.kill(os.getpid(), signal.SIGKILL)
    has_actor = sync is not None and sync.mode == "actor"
    bank_fault = iteration == d.kill_bank_at_iteration and rank == 0 and has_actor
    if bank_fault and _first_time(run_dir, f"bank_killed_at_{iteration}"):
        import ray

        console(f"[debug] killing the bank actor at iteration {iteration}")
        ray.kill(sync.actor, no_restart=False)


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


def _write_worker_info(run_dir: str, rank: int, world: int) -> None:
    """``<run dir>/workers/rank-<r>.json``: pid and node of each worker (for operators and tests)."""
    import json
    import socket

    import ray

    info = {
        "rank": rank,
        "world_size": world,
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "started": time.time(),
    }
    storage.write_bytes(
        storage.join(run_dir, "workers", f"rank-{rank}.json"), json.dumps(info).encode()
    )


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point. ``config``: ``experiment`` (config dict), ``run_dir``, ``bank_actor``."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(ExperimentConfig, config["experiment"])
    run_dir = config["run_dir"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(cfg.train.seed)  # identical initial weights on every rank
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank)

    info = dataset_info(cfg.data)
    num_classes, ignore = info.num_classes, cfg.data.ignore_index
    use_contrast = cfg.contrast.enabled
    model = build_segmentor(cfg.model, num_classes, projection=use_contrast)
    if cfg.train.sync_bn:
        model = convert_sync_batchnorm(model)
    ddp_kwargs = {"find_unused_parameters": world > 1 and _has_unused_parameters(model)}
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs)
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.SGD(
        core.parameters(),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _poly(cfg.train.iterations, cfg.optim.poly_power)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    criterion = PixelContrastLoss(cfg.contrast, ignore_index=ignore) if use_contrast else None

    kinds = memory_kinds(cfg.contrast) if use_contrast else ()
    replica = sync = None
    if kinds:
        from raycontrast.bank import make_bank_sync

        replica = MemoryBank(
            num_classes,
            cfg.model.proj_dim,
            cfg.contrast.memory_size,
            kinds=kinds,
            dtype=cfg.contrast.memory_dtype,
            device=device,
        )
        actor = None
        if cfg.bank.mode == "actor":
            import ray

            from raycontrast.bank.actor import NAMESPACE

            actor = ray.get_actor(config["bank_actor"], namespace=NAMESPACE)
        sync = make_bank_sync(
            cfg.bank.mode,
            replica,
            rank=rank,
            actor=actor,
            overlap=cfg.bank.overlap,
            timeout_s=cfg.train.collective_timeout_s,
        )

    start, best, metrics = 0, {"mIoU": -1.0, "iteration": 0}, {}
    bank_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_checkpoint(ckpt_dir)
        source = f"{checkpoint.path} (resuming run {cfg.name!r}; use another name for a new run)"
        check_compatible(state, cfg, num_classes, source)
        load_state_dict_strict(core, state["model"], source)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        best = dict(state["best"])
        metrics = dict(state["metrics"])
        bank_state = state.get("bank")
        rng = state["rng"]
        set_rng_state(rng[rank] if rank < len(rng) else rng[0], generator)
        if rank == 0:
            console(f"[{cfg.name}] resumed from iteration {start}")
    if sync is not None:
        sync.start(bank_state, version=start)

    _write_worker_info(run_dir, rank, world)
    logger = None
    if rank == 0:
        logger = RunLogger(run_dir, cfg.name, start, cfg.train.iterations, info.class_names)
        if start == 0 and not storage.is_uri(run_dir):
            save_config(cfg, os.path.join(run_dir, "config.yaml"))
    val_data = val_shard(cfg, rank, world)
    batches = train_batches(cfg, rank, world, start, device)

    totals = {"skipped_samples": 0, "skipped_steps": 0}
    window: dict[str, float] = {}
    window_n = 0
    last_epoch = -1
    status = "completed"
    done = start
    bank_check: dict[str, Any] = {}
    t_start = time.perf_counter()
    model.train()
    for it in range(start, cfg.train.iterations):
        _inject_faults(cfg, run_dir, it + 1, rank, sync)
        epoch, batch = next(batches)
        if replica is not None and cfg.contrast.reset_every_epoch and epoch != last_epoch:
            replica.reset()  # every rank sees the same epoch boundary, so replicas stay identical
        last_epoch = epoch
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        totals["skipped_samples"] += int(torch.as_tensor(batch.get("skipped", 0)).sum())

        with _autocast(cfg, device):
            out = model(images)
        poison = it + 1 == cfg.debug.nonfinite_at_iteration and rank == 0  # fault injection
        losses = step_losses(cfg, out, labels, it, criterion, replica, generator, poison)
        loss, terms, contrast = losses.total, losses.terms, losses.contrast
        finite = torch.tensor([1.0 if bool(torch.isfinite(loss)) else 0.0], device=device)
        if float(_all_reduce(finite, dist.ReduceOp.MIN if _distributed() else None)) < 1.0:
            bad = [k for k, v in terms.items() if not bool(torch.isfinite(v.detach()))]
            culprits = [b for b in _gather_objects(bad) if b]
            names = ", ".join(sorted({t for c in culprits for t in c})) or "loss"
            detail = f"non-finite loss in iteration {it + 1} (terms: {names})"
            if cfg.train.on_nonfinite == "stop":
                status = f"stopped: {detail}"
                if rank == 0:
                    console(f"[{cfg.name}] {status}")
                break
            totals["skipped_steps"] += 1
            optimizer.zero_grad(set_to_none=True)
            if rank == 0:
                console(f"[{cfg.name}] skipping step: {detail}")
        else:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

        # Enqueue after the step's loss (a batch never contrasts with itself through memory).
        if sync is not None:
            records = select_records(
                out["embed"].detach().float(),
                contrast.labels_small,
                num_classes,
                pixel_update_freq=cfg.contrast.pixel_update_freq,
                kinds=kinds,
                ignore_index=ignore,
                dtype=replica.dtype,
                generator=generator,
            )
            sync.exchange(it, records)

        for key, value in terms.items():
            window[key] = window.get(key, 0.0) + float(value.detach())
        window["loss"] = window.get("loss", 0.0) + float(loss.detach())
        window_n += 1
        done = it + 1
        if logger is not None and (done % cfg.train.log_every == 0 or done == cfg.train.iterations):
            row = {k: v / window_n for k, v in window.items()}
            row.update(
                iteration=done,
                epoch=epoch,
                lr=optimizer.param_groups[0]["lr"],
                it_per_s=logger.speed(done),
                anchors=contrast.num_anchors if contrast is not None else 0,
                bank_entries=len(replica) if replica is not None else 0,
                skipped_samples=totals["skipped_samples"],
            )
            logger.train(row)
        if done % cfg.train.log_every == 0:
            window, window_n = {}, 0

        if done % cfg.train.eval_every == 0 or done == cfg.train.iterations:
            if sync is not None:
                sync.flush()
            metrics = _evaluate(cfg, core, val_data, num_classes, device)
            if metrics["mIoU"] > best["mIoU"]:
                best = {"mIoU": metrics["mIoU"], "iteration": done, "metrics": metrics}
            if logger is not None:
                logger.val(done, metrics)
                logger.sync()
            rng_states = _gather_objects(get_rng_state(generator))
            report = {
                "iteration": done,
                "epoch": epoch,
                "mIoU": metrics["mIoU"],
                "mAcc": metrics["mAcc"],
                "aAcc": metrics["aAcc"],
                "fwIoU": metrics["fwIoU"],
                "best_mIoU": best["mIoU"],
                "loss": float(loss.detach()),
            }
            if sync is not None:
                report["bank_bytes_per_step"] = sync.traffic()["bytes_per_step"]
                check = _check_replicas(sync, rank, cfg.train.collective_timeout_s)
                report.update(check)
                # the summary holds whether the invariant held at *every* evaluation
                for key, value in check.items():
                    if isinstance(value, bool):
                        value = bank_check.get(key, True) and value
                    bank_check[key] = value
            _report(
                cfg,
                rank,
                report,
                {
                    "format": "raycontrast",
                    "version": 1,
                    "config": config_to_dict(cfg),
                    "num_classes": num_classes,
                    "class_names": list(info.class_names),
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "iteration": done,
                    "best": best,
                    "metrics": metrics,
                    "rng": rng_states,
                    "bank": replica.state_dict() if replica is not None else None,
                },
            )
            if rank == 0 and sync is not None and sync.mode == "actor":
                import ray

                ray.get(sync.actor.snapshot.remote(), timeout=cfg.train.collective_timeout_s)
            model.train()

    if sync is not None:
        sync.flush()
    wall = time.perf_counter() - t_start
    if logger is not None:
        logger.close()
    if rank != 0:
        return {}
    return {
        "status": status,
        "iterations": done,
        "metrics": metrics,
        "best": {k: v for k, v in best.items() if k != "metrics"},
        "class_names": list(info.class_names),
        "train_wall_s": wall,
        "skipped_samples": totals["skipped_samples"],
        "skipped_steps": totals["skipped_steps"],
        "bank": (sync.traffic() | {"mode": sync.mode, **bank_check}) if sync is not None else None,
    }


def _check_replicas(sync, rank: int, timeout_s: float) -> dict[str, Any]:
    """Digest every rank's replica (and the actor's bank): the invariant of a shared bank."""
    digests = _gather_objects(sync.replica.digest())
    check = {"bank_replicas_identical": len(set(digests)) == 1, "bank_entries": len(sync.replica)}
    if sync.mode == "actor":
        import ray

        actor = ray.get(sync.actor.digest.remote(), timeout=timeout_s)
        check["bank_matches_actor"] = actor["digest"] == digests[0]
    if rank == 0 and sync.mode != "local" and not check["bank_replicas_identical"]:
        console(f"[bank] replicas differ: {digests}")
    return check


def _evaluate(cfg: ExperimentConfig, core, val_data, num_classes: int, device) -> dict[str, Any]:
    """Each rank evaluates its share; confusion matrices are summed across ranks."""
    core.eval()
    with torch.no_grad():
        seg = evaluate(
            core.predict,
            val_data,
            num_classes,
            cfg.data.ignore_index,
            resolve_eval_config(cfg),
            device=device,
        )
    seg.all_reduce()
    return seg.compute()


def _report(
    cfg: ExperimentConfig, rank: int, metrics: dict[str, Any], state: dict[str, Any]
) -> None:
    """``ray.train.report`` on every rank (a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="raycontrast-ckpt-") as tmp:
        save_checkpoint(tmp, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
