"""Regenerate the documentation's pictures (docs/assets/*.png) from a trained run.

    .venv/bin/python docs/make_pictures.py runs/synthetic

Writes, with the functions training and ``raycontrast predict`` use:

- ``docs/assets/val_samples.png``: the validation sample grid (image | ground truth | prediction | errors);
- ``docs/assets/confusion.png``: the row-normalised confusion heatmap of the validation split;
- ``docs/assets/predict_overlays.png``: ``raycontrast predict`` on a folder of unseen synthetic scenes
  (top: the inputs, bottom: the overlays it wrote).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from raycontrast.data import build_dataset, dataset_info, generate_scene
from raycontrast.eval import evaluate, predict
from raycontrast.eval._visualize import pick_val_samples, write_confusion, write_val_samples
from raycontrast.eval.predict import find_checkpoint
from raycontrast.eval.run import resolve_eval_config
from raycontrast.models import load_segmentor

ASSETS = Path(__file__).resolve().parent / "assets"


def _small(image: Image.Image, path: Path) -> None:
    """Save with a 256-colour palette: the documentation's copies stay small."""
    image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(run_dir: str) -> None:
    ckpt = find_checkpoint(run_dir)
    seg, cfg = load_segmentor(ckpt)
    info = dataset_info(cfg.data)
    eval_cfg = resolve_eval_config(cfg)
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_val_samples(
            seg.predict,
            pick_val_samples(val, 4),
            tmp,
            0,
            palette=info.palette,
            mean=cfg.data.mean,
            std=cfg.data.std,
            ignore_index=cfg.data.ignore_index,
            class_names=info.class_names,
            eval_cfg=eval_cfg,
            height=144,
        )
        _small(Image.open(tmp / "plots" / "val_samples_000000.png"), ASSETS / "val_samples.png")

        metrics = evaluate(seg.predict, val, info.num_classes, cfg.data.ignore_index, eval_cfg)
        miou = 100 * metrics.compute()["mIoU"]
        png = write_confusion(
            metrics.confusion,
            info.class_names,
            tmp,
            title=f"synthetic val, {metrics.num_images} images (mIoU {miou:.1f} %), rows normalised",
        )
        shutil.copy(png, ASSETS / "confusion.png")

        images = tmp / "images"
        images.mkdir()
        size = tuple(cfg.data.synthetic.image_size)
        inputs = []
        for i in range(4):  # scenes of the test split: never seen in training or validation
            image = generate_scene(cfg.data.synthetic.seed, "test", i, size)[0]
            Image.fromarray(image).save(images / f"scene{i}.png")
            inputs.append(image)
        predict(run_dir, images, tmp / "pred", show_progress=False)
        overlays = [
            np.array(Image.open(tmp / "pred" / "overlays" / f"scene{i}.png")) for i in range(4)
        ]
        gap = np.full((size[0], 4, 3), 24, np.uint8)
        top = np.concatenate([x for img in inputs for x in (img, gap)][:-1], axis=1)
        bottom = np.concatenate([x for img in overlays for x in (img, gap)][:-1], axis=1)
        sep = np.full((4, top.shape[1], 3), 24, np.uint8)
        montage = Image.fromarray(np.concatenate([top, sep, bottom], axis=0))
        montage = montage.resize((montage.width * 2, montage.height * 2), Image.Resampling.NEAREST)
        _small(montage, ASSETS / "predict_overlays.png")
    for name in ("val_samples.png", "confusion.png", "predict_overlays.png"):
        path = ASSETS / name
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic")
