import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from raycontrast.config import EvalConfig
from raycontrast.eval._visualize import (
    ERROR_COLOR,
    IGNORE_COLOR,
    ValSamples,
    class_palette,
    colorize,
    denormalize,
    error_map,
    normalize_confusion,
    overlay,
    palette_for_classes,
    palette_image,
    pick_val_samples,
    read_confusion,
    sample_grid,
    write_confusion,
    write_val_samples,
)

PALETTE = [(0, 0, 0), (200, 10, 10), (10, 200, 10)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalise(image: np.ndarray) -> torch.Tensor:
    x = image.astype(np.float64) / 255.0
    x = (x - np.array(MEAN)) / np.array(STD)
    return torch.from_numpy(x.transpose(2, 0, 1)).float()


def test_colorize_maps_classes_and_ignore():
    labels = np.array([[0, 1], [2, 255]])
    out = colorize(labels, PALETTE, ignore_index=255)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert [tuple(v) for v in out.reshape(-1, 3)] == [*PALETTE, IGNORE_COLOR]
    with pytest.raises(ValueError, match=r"labels \[3\] are outside the palette's 3 classes"):
        colorize(np.array([[3]]), PALETTE)
    with pytest.raises(ValueError, match="outside"):  # 255 is a bad label when nothing is ignored
        colorize(labels, PALETTE, ignore_index=None)


def test_overlay_blends_by_alpha_and_keeps_ignored_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (5, 7))
    labels[0, 0] = 255
    out = overlay(image, labels, PALETTE, alpha=0.3, ignore_index=255)
    for y in range(5):
        for x in range(7):
            if labels[y, x] == 255:
                expect = image[y, x]
            else:
                expect = [
                    round(0.7 * float(image[y, x, c]) + 0.3 * PALETTE[labels[y, x]][c])
                    for c in range(3)
                ]
            assert np.abs(out[y, x].astype(int) - np.array(expect, int)).max() <= 1
    assert np.array_equal(overlay(image, labels, PALETTE, alpha=0.0), image)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, labels[:, :3], PALETTE)


def test_error_map_marks_wrong_and_ignored_pixels():
    image = np.full((2, 3, 3), 100, np.uint8)
    target = np.array([[0, 1, 2], [255, 1, 0]])
    pred = np.array([[0, 2, 2], [1, 1, 1]])
    out = error_map(image, pred, target, ignore_index=255)
    grey = round(100 * 0.4)
    assert tuple(out[0, 0]) == (grey, grey, grey)  # right
    assert tuple(out[0, 1]) == ERROR_COLOR and tuple(out[1, 2]) == ERROR_COLOR  # wrong
    assert tuple(out[1, 0]) == IGNORE_COLOR  # ignored, whatever was predicted


def test_palette_png_holds_class_ids_and_dataset_colours(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]])
    path = tmp_path / "p.png"
    palette_image(labels, PALETTE).save(path)
    img = Image.open(path)
    assert img.mode == "P"
    assert np.array_equal(np.array(img), labels)
    flat = img.getpalette()
    assert [tuple(flat[3 * k : 3 * k + 3]) for k in range(3)] == PALETTE
    assert np.array_equal(np.array(img.convert("RGB")), colorize(labels, PALETTE))


def test_palettes_of_known_datasets_and_fallback():
    from raycontrast.data import SYNTHETIC_CLASSES
    from raycontrast.data._labels import bit_palette
    from raycontrast.data.synthetic import SYNTHETIC_PALETTE

    assert palette_for_classes(SYNTHETIC_CLASSES) == list(SYNTHETIC_PALETTE)
    assert palette_for_classes(["a", "b", "c"]) == bit_palette(3)
    extended = class_palette(4, PALETTE)
    assert extended[:3] == PALETTE and extended[3] == bit_palette(4)[3]


def test_denormalize_inverts_the_dataset_normalisation():
    image = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    assert np.array_equal(denormalize(_normalise(image), MEAN, STD), image)


def test_sample_grid_layout_and_cells():
    rng = np.random.default_rng(2)
    h, w, gap, header = 16, 20, 2, 18
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(3)]
    targets = [rng.integers(0, 3, (h, w)) for _ in range(3)]
    preds = [rng.integers(0, 3, (h, w)) for _ in range(3)]
    grid = sample_grid(images, targets, preds, PALETTE, height=h, gap=gap)
    assert grid.dtype == np.uint8
    assert grid.shape == (header + 3 * (h + gap) + gap, 4 * w + 5 * gap, 3)
    for r in range(3):
        y = header + gap + r * (h + gap)
        cells = [grid[y : y + h, gap + c * (w + gap) : gap + c * (w + gap) + w] for c in range(4)]
        assert np.array_equal(cells[0], images[r])
        assert np.array_equal(cells[1], colorize(targets[r], PALETTE))
        assert np.array_equal(cells[2], colorize(preds[r], PALETTE))
        assert np.array_equal(cells[3], error_map(images[r], preds[r], targets[r]))
    with_legend = sample_grid(
        images, targets, preds, PALETTE, class_names=["a", "b", "c"], height=h
    )
    assert with_legend.shape[0] > grid.shape[0] and with_legend.shape[1] == grid.shape[1]
    # rows of other sizes are scaled to the row height
    tall = [rng.integers(0, 256, (2 * h, w, 3), dtype=np.uint8)]
    big = sample_grid(tall, [np.zeros((2 * h, w), int)], [np.zeros((2 * h, w), int)], PALETTE,
                      height=h)  # fmt: skip
    assert big.shape[0] == header + h + 2 * gap
    with pytest.raises(ValueError, match="as many"):
        sample_grid(images, targets[:2], preds, PALETTE)


class _Threshold(nn.Module):
    """Class 1 where the red channel is above the mean colour, else 0 (logits, 2 classes)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        red = (x[:, :1] > 0).float()
        return torch.cat([1 - red, red], dim=1)


def test_write_val_samples_predicts_saves_and_returns_the_grid(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(2)]
    labels = [torch.from_numpy(rng.integers(0, 2, (12, 10))) for _ in range(2)]
    samples = ValSamples([_normalise(i) for i in images], labels, ["a", "b"])
    model = _Threshold().train()
    grid = write_val_samples(
        model, samples, tmp_path, 150, palette=PALETTE[:2], mean=MEAN, std=STD,
        class_names=["off", "on"], eval_cfg=EvalConfig(),
    )  # fmt: skip
    assert model.training  # restored after the eval-mode prediction
    path = tmp_path / "plots" / "val_samples_000150.png"
    assert np.array_equal(np.array(Image.open(path).convert("RGB")), grid)
    expected = sample_grid(
        images,
        [t.numpy() for t in labels],
        [(i[..., 0].astype(float) / 255 > MEAN[0]).astype(int) for i in images],
        PALETTE[:2],
        class_names=["off", "on"],
    )
    assert np.array_equal(grid, expected)


def test_pick_val_samples_is_evenly_spaced_and_fixed():
    items = [
        {"image": torch.full((3, 2, 2), float(i)), "label": torch.zeros(2, 2), "id": f"s{i}"}
        for i in range(10)
    ]
    picked = pick_val_samples(items, 4)
    assert picked.ids == ["s0", "s3", "s6", "s9"]
    assert picked.labels[0].dtype == torch.int64
    assert pick_val_samples(items[:2], 4).ids == ["s0", "s1"]
    assert len(pick_val_samples([], 4)) == 0


def test_normalized_confusion_rows():
    conf = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    norm = normalize_confusion(torch.from_numpy(conf))
    assert np.allclose(norm[0], [0.75, 0.25, 0.0]) and np.allclose(norm[2], [0.25, 0.25, 0.5])
    assert np.isnan(norm[1]).all()  # no ground-truth pixels of class 1
    with pytest.raises(ValueError, match="square"):
        normalize_confusion(np.zeros((2, 3)))


def test_write_confusion_saves_counts_and_heatmap(tmp_path):
    from raycontrast.eval._plots import write_plots

    conf = torch.tensor([[5, 1], [2, 7]])
    png = write_confusion(conf, ["road", "car"], tmp_path)
    assert png == tmp_path / "plots" / "confusion.png" and Image.open(png).size[0] > 100
    counts, names = read_confusion(tmp_path / "confusion.csv")
    assert names == ["road", "car"] and np.array_equal(counts, conf.numpy())
    png.unlink()
    written = write_plots(tmp_path, ["road", "car"], [0.5, 0.6])  # redrawn from confusion.csv
    assert png in written and png.is_file()


def test_grid_reaches_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from raycontrast.train._logger import RunLogger

    grid = sample_grid([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8), int)],
                       [np.ones((8, 8), int)], PALETTE, height=8)  # fmt: skip
    logger = RunLogger(str(tmp_path), "t", 0, 10, ["a", "b", "c"])
    logger.val_samples(5, grid)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    (image,) = events.Images("val/samples")
    assert image.step == 5 and (image.width, image.height) == (grid.shape[1], grid.shape[0])
