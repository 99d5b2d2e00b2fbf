"""Training and validation data for one Train worker: torch DataLoader or Ray Data shards."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from raycontrast.config import ExperimentConfig
from raycontrast.data import build_dataset, build_transforms
from raycontrast.data.transforms import sample_rng

__all__ = ["ShardSampler", "steps_per_epoch", "train_batches", "val_shard"]


def steps_per_epoch(num_samples: int, world_size: int, local_batch: int) -> int:
    """Full global batches (``world_size x local_batch`` samples) per epoch."""
    steps = num_samples // (world_size * local_batch)
    if steps < 1:
        raise ValueError(
            f"the training split has {num_samples} samples: too few for {world_size} workers x "
            f"batch {local_batch} per worker; lower train.batch_size or add data"
        )
    return steps


class ShardSampler(Sampler[int]):
    """This rank's share of a per-epoch shuffle, resumable at a step inside the epoch.

    Epoch ``e`` shuffles the whole split with seed ``(seed, e)``; step ``k`` of the epoch is the global
    batch ``perm[k*G:(k+1)*G]`` (``G = world x batch``), of which rank ``r`` reads the ``r``-th run of
    ``batch`` samples. Which samples a step sees depends on the global batch only, not on the world
    size, so a run resumed at a step boundary with another number of workers (an elastic resize)
    neither repeats nor skips a sample of the epoch. The last ``num_samples mod G`` samples of each
    shuffle are left out (whole steps only); ``start_batch`` skips the steps already trained.
    """

    def __init__(self, num_samples: int, rank: int, world: int, batch: int, seed: int = 0):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world} workers")
        self.num_samples, self.rank, self.world, self.batch, self.seed = (
            num_samples,
            rank,
            world,
            batch,
            seed,
        )
        self.steps = steps_per_epoch(num_samples, world, batch)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        steps = perm[: self.steps * self.world * self.batch].view(
            self.steps, self.world, self.batch
        )
        return iter(steps[self.start_batch :, self.rank].reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.steps - self.start_batch) * self.batch


def _torch_batches(cfg: ExperimentConfig, rank: int, world: int, start_iteration: int):
    import ray.train.torch

    local = cfg.train.batch_size // world
    dataset = build_dataset(cfg.data, cfg.data.train_split, train=True)
    dataset.seed = cfg.train.seed
    sampler = ShardSampler(len(dataset), rank, world, local, seed=cfg.train.seed)
    loader = DataLoader(
        dataset,
        batch_size=local,
        sampler=sampler,
        num_workers=cfg.data.loader_workers,
        persistent_workers=cfg.data.loader_workers > 0,
        drop_last=True,
    )
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    epoch, offset = divmod(start_iteration, sampler.steps)
    while True:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, offset)
        for batch in loader:
            yield epoch, batch
        epoch, offset = epoch + 1, 0


def _ray_data_batches(cfg: ExperimentConfig, world: int, device):
    """Rows of this worker's Ray Data shard, augmented here with the same transforms as torch ingest.

    Ray Data streams cannot start mid-epoch: a resumed run starts a fresh pass over the shard.
    """
    import ray.train

    local = cfg.train.batch_size // world
    shard = ray.train.get_dataset_shard("train")
    transform = build_transforms(cfg.data, train=True)
    epoch = 0
    while True:
        empty = True
        for rows in shard.iter_batches(batch_size=local, batch_format="numpy", drop_last=True):
            empty = False
            images, labels = [], []
            for image, label, ident in zip(rows["image"], rows["label"], rows["id"]):
                rng = sample_rng(cfg.train.seed, epoch, zlib.crc32(str(ident).encode()))
                img, lab = transform(np.asarray(image), np.asarray(label).astype(np.int64), rng)
                images.append(img)
                labels.append(lab)
            yield (
                epoch,
                {
                    "image": torch.stack(images).to(device),
                    "label": torch.stack(labels).to(device),
                    "skipped": torch.zeros(len(images), dtype=torch.long),
                },
            )
        if empty:
            raise ValueError(
                "this worker's Ray Data shard yielded no full batch: too few rows for "
                f"train.batch_size={cfg.train.batch_size} over {world} workers"
            )
        epoch += 1


def train_batches(
    cfg: ExperimentConfig, rank: int, world: int, start_iteration: int, device
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Endless ``(epoch, batch)`` pairs for this worker, starting where ``start_iteration`` left off."""
    if cfg.data.ingest == "ray_data":
        return _ray_data_batches(cfg, world, device)
    return _torch_batches(cfg, rank, world, start_iteration)


def val_shard(cfg: ExperimentConfig, rank: int, world: int) -> Dataset:
    """This rank's disjoint share of the validation split (at most ``eval.max_images`` in total)."""
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    total = len(dataset) if cfg.eval.max_images is None else min(len(dataset), cfg.eval.max_images)
    return Subset(dataset, list(range(rank, total, world)))
