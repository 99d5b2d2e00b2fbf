import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from raycontrast.cli import main
from raycontrast.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    SyntheticConfig,
    config_to_dict,
)
from raycontrast.data import SYNTHETIC_CLASSES, generate_scene
from raycontrast.data.synthetic import SYNTHETIC_PALETTE
from raycontrast.eval import infer
from raycontrast.eval.predict import PredictError, find_checkpoint, list_inputs, predict
from raycontrast.models import build_segmentor, save_checkpoint

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODEL = ModelConfig(
    backbone="resnet18",
    pretrained=False,
    output_stride=None,
    out_indices=[1, 2, 3, 4],
    head="fcn",
    head_channels=8,
    proj_dim=8,
)


def _normalise(image: np.ndarray) -> torch.Tensor:
    """The dataset normalisation, written out in float64."""
    x = (image.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    return torch.from_numpy(x.transpose(2, 0, 1).copy()).float()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of an untrained segmentor whose BatchNorm statistics were set on synthetic
    scenes, so its predictions vary over the image (an uncalibrated one predicts one class)."""
    torch.manual_seed(0)
    cfg = ExperimentConfig(
        model=MODEL,
        data=DataConfig(
            dataset="synthetic",
            crop_size=[64, 64],
            synthetic=SyntheticConfig(num_val=3, image_size=[64, 64]),
        ),
        eval=EvalConfig(mode="whole"),
    )
    seg = build_segmentor(cfg.model, len(SYNTHETIC_CLASSES))
    scenes = np.stack([generate_scene(0, "train", i, (64, 64))[0] for i in range(8)])
    for m in seg.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    seg.train()
    with torch.no_grad():
        seg(torch.stack([_normalise(s) for s in scenes]))
    seg.eval()
    root = tmp_path_factory.mktemp("model")
    state = {
        "config": config_to_dict(cfg),
        "num_classes": len(SYNTHETIC_CLASSES),
        "class_names": list(SYNTHETIC_CLASSES),
        "model": seg.state_dict(),
    }
    ckpt = save_checkpoint(root / "run" / "checkpoint_000002", state).parent
    return {"ckpt": ckpt, "deployed": seg.deploy().eval(), "root": root}


@pytest.fixture(scope="module")
def exported(trained):
    """The fixture checkpoint exported in both formats."""
    from raycontrast.models import export_checkpoint

    return {
        fmt: export_checkpoint(trained["ckpt"], fmt, trained["root"] / file)
        for fmt, file in (("torchscript", "seg.pt"), ("exported-program", "seg.pt2"))
    }


def _reference(model, image: np.ndarray, **infer_kw) -> torch.Tensor:
    with torch.no_grad():
        return infer(model, _normalise(image)[None], len(SYNTHETIC_CLASSES), **infer_kw)[0]


def _check_labels(labels: np.ndarray, logits: torch.Tensor) -> None:
    """Labels equal the reference argmax wherever the top two logits are not (nearly) tied."""
    top2 = logits.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()
    ref = logits.argmax(0).numpy()
    assert clear.mean() > 0.99
    assert np.array_equal(labels[clear], ref[clear])


def _scene_folder(root, sizes):
    (root / "sub").mkdir(parents=True)
    images = {}
    for i, size in enumerate(sizes):
        image = generate_scene(0, "val", i, size)[0]
        name = f"img{i}" if i % 2 == 0 else f"sub/img{i}"
        Image.fromarray(image).save(root / f"{name}.png")
        images[name] = image
    return images


def test_predict_folder_writes_palette_labels_overlays_and_probs(trained, tmp_path):
    images = _scene_folder(tmp_path / "in", [(64, 64), (64, 64), (48, 80), (64, 64)])
    result = predict(trained["ckpt"], tmp_path / "in", tmp_path / "out", probs=True, batch_size=2)
    assert result["images"] == 4 and result["skipped"] == []
    assert result["class_names"] == SYNTHETIC_CLASSES
    seen = set()
    for name, image in images.items():
        label_img = Image.open(tmp_path / "out" / "labels" / f"{name}.png")
        assert label_img.mode == "P" and label_img.size == (image.shape[1], image.shape[0])
        flat = label_img.getpalette()
        assert [tuple(flat[3 * k : 3 * k + 3]) for k in range(7)] == list(SYNTHETIC_PALETTE)
        labels = np.array(label_img)
        ref = _reference(trained["deployed"], image)
        _check_labels(labels, ref)
        seen.update(np.unique(labels).tolist())
        probs = np.load(tmp_path / "out" / "probs" / f"{name}.npy")
        assert probs.dtype == np.float16 and probs.shape == (7, *image.shape[:2])
        assert np.allclose(probs.astype(np.float32), ref.softmax(0).numpy(), atol=2e-3)
        over = np.array(Image.open(tmp_path / "out" / "overlays" / f"{name}.png"))
        colors = np.array(SYNTHETIC_PALETTE)[labels]
        expect = 0.5 * image.astype(np.float64) + 0.5 * colors
        assert over.shape == image.shape and np.abs(over - expect).max() <= 1.0
    assert len(seen) >= 2  # the fixture's predictions are not constant


def test_exported_models_give_the_checkpoints_labels(trained, exported, tmp_path):
    images = _scene_folder(tmp_path / "in", [(64, 64), (64, 96), (96, 64)])
    predict(trained["ckpt"], tmp_path / "in", tmp_path / "ckpt")
    for fmt, model in exported.items():
        result = predict(model, tmp_path / "in", tmp_path / fmt)
        assert result["images"] == 3 and result["model"].startswith(fmt)
        assert result["class_names"] == SYNTHETIC_CLASSES
        for name in images:
            ours = np.array(Image.open(tmp_path / fmt / "labels" / f"{name}.png"))
            theirs = np.array(Image.open(tmp_path / "ckpt" / "labels" / f"{name}.png"))
            assert np.array_equal(ours, theirs), (fmt, name)
            palette = Image.open(tmp_path / fmt / "labels" / f"{name}.png").getpalette()
            assert tuple(palette[3:6]) == SYNTHETIC_PALETTE[1]  # found from the class names


def test_exported_program_pads_sizes_it_cannot_take(trained, exported, tmp_path):
    model = exported["exported-program"]
    image = generate_scene(0, "val", 0, (50, 70))[0]  # not multiples of the stride (32)
    Image.fromarray(image).save(tmp_path / "odd.png")
    predict(model, tmp_path / "odd.png", tmp_path / "out")
    labels = np.array(Image.open(tmp_path / "out" / "labels" / "odd.png"))
    assert labels.shape == (50, 70)
    x = _normalise(image)
    x = torch.nn.functional.pad(x, (0, 26, 0, 14))  # zeros after normalisation: the mean colour
    with torch.no_grad():
        ref = trained["deployed"](x[None])[0, :, :50, :70]
    _check_labels(labels, ref)


def test_eval_overrides_and_the_run_directory(trained, tmp_path):
    run = trained["ckpt"].parent
    worse = tmp_path / "copy"
    shutil.copytree(run, worse)
    (worse / "checkpoint_000001").mkdir()
    (worse / "checkpoint_000001" / "state.pt").write_bytes(b"not this one")
    (worse / "summary.json").write_text(
        json.dumps({"best_checkpoint": "/elsewhere/checkpoint_000002"})  # the run moved
    )
    assert find_checkpoint(worse) == worse / "checkpoint_000002"
    image = generate_scene(0, "val", 5, (64, 80))[0]
    Image.fromarray(image).save(tmp_path / "x.jpg", quality=95)
    decoded = np.array(Image.open(tmp_path / "x.jpg").convert("RGB"))
    result = predict(
        worse, tmp_path / "x.jpg", tmp_path / "out",
        overrides=["eval.mode=slide", "eval.crop_size=[32,32]", "eval.flip=true"],
    )  # fmt: skip
    assert result["eval"]["mode"] == "slide" and result["eval"]["flip"] is True
    ref = _reference(trained["deployed"], decoded, mode="slide", crop_size=(32, 32), flip=True)
    _check_labels(np.array(Image.open(tmp_path / "out" / "labels" / "x.png")), ref)
    with pytest.raises(Exception, match=r"eval\.\* overrides only"):
        predict(run, tmp_path / "x.jpg", tmp_path / "out", overrides=["train.iterations=3"])


def test_predict_a_real_photograph(trained, tmp_path):
    """A real photograph shipped with matplotlib (a runtime dependency): scikit-image's sample
    data would add scipy, networkx, imageio and tifffile just for tests."""
    from matplotlib import cbook

    photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    result = predict(trained["ckpt"], photo, tmp_path / "out", batch_size=1)
    assert result["images"] == 1
    image = np.array(Image.open(photo).convert("RGB"))
    labels = np.array(Image.open(tmp_path / "out" / "labels" / "grace_hopper.png"))
    assert labels.shape == image.shape[:2] == (600, 512)
    _check_labels(labels, _reference(trained["deployed"], image))
    overlay = Image.open(tmp_path / "out" / "overlays" / "grace_hopper.png")
    assert overlay.size == (512, 600) and overlay.mode == "RGB"


def test_predict_parquet_shards_names_outputs_by_id(trained, tmp_path):
    from raycontrast.data import convert_dataset

    shards = tmp_path / "shards"
    convert_dataset("synthetic", "", "val", str(shards), rows_per_shard=2,
                    overrides=["data.synthetic.num_val=3", "data.synthetic.image_size=[64,64]"])  # fmt: skip
    result = predict(trained["ckpt"], shards, tmp_path / "out")
    assert result["images"] == 3
    for i in range(3):
        image = generate_scene(0, "val", i, (64, 64))[0]
        labels = np.array(Image.open(tmp_path / "out" / "labels" / f"val_{i:06d}.png"))
        _check_labels(labels, _reference(trained["deployed"], image))
    one = sorted((shards / "val").glob("*.parquet"))[0]
    assert predict(trained["ckpt"], one, tmp_path / "one")["images"] == 2


def test_bad_inputs_are_clear_errors(trained, tmp_path):
    ckpt = trained["ckpt"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="holds no images"):
        predict(ckpt, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(PredictError, match="input not found"):
        predict(ckpt, tmp_path / "missing", tmp_path / "out")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PredictError, match="not an image"):
        predict(ckpt, tmp_path / "file.txt", tmp_path / "out")
    folder = tmp_path / "in"
    _scene_folder(folder, [(64, 64), (64, 64), (64, 64)])
    with pytest.raises(PredictError, match=r"--out .*file\.txt: is a file"):
        predict(ckpt, folder, tmp_path / "file.txt")
    with pytest.raises(PredictError, match="no checkpoint found"):
        predict(tmp_path / "empty", folder, tmp_path / "out")
    (folder / "img0.jpg").write_bytes((folder / "img0.png").read_bytes())
    with pytest.raises(PredictError, match=r"img0\.(jpg|png) and .*img0\.(jpg|png) would both"):
        list_inputs(folder)
    (folder / "img0.jpg").unlink()
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PredictError, match=r"broken\.png: corrupt or unreadable image") as err:
        predict(ckpt, folder, tmp_path / "out")
    assert "BytesIO" not in str(err.value) and "not a recognised image format" in str(err.value)
    result = predict(ckpt, folder, tmp_path / "out", skip_bad=True)
    assert result["images"] == 3 and len(result["skipped"]) == 1
    assert "broken.png" in result["skipped"][0]
    assert (tmp_path / "out" / "labels" / "sub" / "img1.png").is_file()
    (folder / "broken.png").unlink()
    with pytest.raises(PredictError, match=r"--out .*pred is inside --input"):
        predict(ckpt, folder, folder / "pred")  # outputs never go into the input folder
    assert not (folder / "pred").exists()


def test_cli_predict(trained, tmp_path, capsys):
    image = generate_scene(0, "val", 0, (64, 64))[0]
    Image.fromarray(image).save(tmp_path / "a.png")
    rc = main(["predict", str(trained["ckpt"]), "eval.flip=true", "--input",
               str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0
    assert "predicted 1 image in" in out.out and "images/s" in out.out and "flip" in out.out
    assert "\r" not in out.err  # no progress bar off a terminal
    assert (tmp_path / "out" / "overlays" / "a.png").is_file()
    rc = main(["predict", str(trained["ckpt"]), "--input", str(tmp_path / "nope"), "--out",
               str(tmp_path / "out")])  # fmt: skip
    assert rc == 2 and "input not found" in capsys.readouterr().err


def test_fixed_shape_exported_program_is_tiled(trained, tmp_path):
    """A .pt2 exported at one fixed input shape (batch 2, 64x64) predicts any image by sliding
    windows of that size, batches padded to 2."""
    from raycontrast.models.export import METADATA_FILE

    program = torch.export.export(trained["deployed"], (torch.randn(2, 3, 64, 64),))
    meta = {"num_classes": 7, "class_names": list(SYNTHETIC_CLASSES), "mean": MEAN, "std": STD}
    torch.export.save(program, tmp_path / "fixed.pt2",
                      extra_files={METADATA_FILE: json.dumps(meta)})  # fmt: skip
    image = generate_scene(0, "val", 3, (80, 100))[0]
    Image.fromarray(image).save(tmp_path / "x.png")
    result = predict(tmp_path / "fixed.pt2", tmp_path / "x.png", tmp_path / "out")
    assert result["eval"]["mode"] == "slide" and result["eval"]["crop_size"] == [64, 64]
    ref = _reference(trained["deployed"], image, mode="slide", crop_size=(64, 64))
    _check_labels(np.array(Image.open(tmp_path / "out" / "labels" / "x.png")), ref)
