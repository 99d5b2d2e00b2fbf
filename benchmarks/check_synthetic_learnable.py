"""One-off check that the synthetic dataset is learnable but not solvable by colour alone.

Trains a small CNN (timm resnet18 from scratch, output stride 8, a 1x1 conv head, SGD, batch 8,
96x96 crops, the training transforms of raycontrast.data) on 2 CPU threads, for a wall-clock budget
or a number of iterations, and reports val mIoU next to the best colour-only rule (a quantised-RGB
histogram Bayes classifier fitted on the same training scenes).

    .venv/bin/python benchmarks/check_synthetic_learnable.py --iterations 200  # machine-independent
    .venv/bin/python benchmarks/check_synthetic_learnable.py --seconds 180

Measured (2 shared CPU cores): 200 iterations -> CNN val mIoU 0.444, colour-only 0.191. An
iteration takes about 1 s on 2 idle cores, so 200 iterations are about 3.5 minutes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from raycontrast.config import DataConfig, SyntheticConfig
from raycontrast.data import build_dataset
from raycontrast.data.synthetic import SYNTHETIC_CLASSES, generate_scene

NUM_CLASSES = len(SYNTHETIC_CLASSES)


def confusion(pred: np.ndarray, label: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    keep = label < n
    return np.bincount(label[keep] * n + pred[keep], minlength=n * n).reshape(n, n)


def miou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    iou = inter / np.maximum(union, 1)
    return float(iou.mean()), iou


def colour_baseline(cfg: SyntheticConfig, bins: int = 16) -> float:
    """Best of two quantised-RGB Bayes rules (empirical and class-balanced prior)."""
    size = tuple(cfg.image_size)

    def quantise(image):
        q = image.astype(np.int64) * bins // 256
        return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]

    counts = np.zeros((bins**3, NUM_CLASSES))
    for i in range(cfg.num_train):
        image, label = generate_scene(cfg.seed, "train", i, size)
        np.add.at(counts, (quantise(image).ravel(), label.ravel()), 1)
    prior = counts.sum(0) / counts.sum()
    best = 0.0
    for table in (counts.argmax(1), (counts / prior).argmax(1)):
        conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        for i in range(cfg.num_val):
            image, label = generate_scene(cfg.seed, "val", i, size)
            conf += confusion(table[quantise(image)].ravel(), label.ravel().astype(np.int64))
        best = max(best, miou(conf)[0])
    return best


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            "resnet18", pretrained=False, features_only=True, output_stride=8, out_indices=(4,)
        )
        self.head = nn.Conv2d(self.backbone.feature_info.channels()[-1], NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(x)[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def evaluate(model: nn.Module, cfg: DataConfig, show: bool = False) -> tuple[float, np.ndarray]:
    model.eval()
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    with torch.no_grad():
        for item in build_dataset(cfg, "val", train=False):
            pred = model(item["image"][None]).argmax(1)[0]
            conf += confusion(pred.numpy().ravel(), item["label"].numpy().ravel())
    model.train()
    if show:
        print("confusion (rows: true class, % of its pixels):")
        for name, row in zip(SYNTHETIC_CLASSES, conf):
            print(f"  {name:>10} " + " ".join(f"{v:4.0f}" for v in 100 * row / max(row.sum(), 1)))
    return miou(conf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0, help="training time budget")
    parser.add_argument(
        "--iterations", type=int, default=0, help="train this many steps instead (0: use --seconds)"
    )
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--num-val", type=int, default=48)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--eval-every", type=float, default=0.0, help="seconds; 0 = only at the end"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = DataConfig(
        dataset="synthetic",
        crop_size=[args.size, args.size],
        scale_range=[0.75, 1.5],
        synthetic=SyntheticConfig(
            num_train=args.num_train, num_val=args.num_val, image_size=[args.size, args.size]
        ),
    )
    start = time.perf_counter()
    colour = colour_baseline(cfg.synthetic)
    print(f"colour-only mIoU {colour:.3f} ({time.perf_counter() - start:.1f}s)", flush=True)

    dataset = build_dataset(cfg, "train", train=True)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    start, it, epoch = time.perf_counter(), 0, 0
    done, next_eval, eval_s = False, args.eval_every, 0.0
    while not done:
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True, num_workers=0)
        for batch in loader:
            elapsed = time.perf_counter() - start - eval_s
            if args.eval_every and elapsed > next_eval:
                t0 = time.perf_counter()
                print(f"  eval at it {it} ({elapsed:.0f}s): mIoU {evaluate(model, cfg)[0]:.3f}")
                eval_s += time.perf_counter() - t0
                next_eval += args.eval_every
            progress = it / args.iterations if args.iterations else elapsed / args.seconds
            if progress >= 1:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = args.lr * (1 - progress) ** 0.9
            logits = model(batch["image"])
            loss = F.cross_entropy(logits, batch["label"], ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            if it % 50 == 0:
                print(f"it {it} {elapsed:.0f}s loss {loss.item():.3f}", flush=True)
        epoch += 1
    train_s = time.perf_counter() - start - eval_s
    value, per_class = evaluate(model, cfg, show=True)
    print(f"CNN val mIoU {value:.3f} after {it} iterations / {train_s:.0f}s of training")
    print("per class IoU:", " ".join(f"{n}={v:.2f}" for n, v in zip(SYNTHETIC_CLASSES, per_class)))
    print(f"colour-only mIoU {colour:.3f}")


if __name__ == "__main__":
    main()
