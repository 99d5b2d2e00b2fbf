import dataclasses
import json
import types

import pytest
import torch

from raycontrast.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    SyntheticConfig,
    config_to_dict,
)
from raycontrast.eval import run_eval
from raycontrast.models import CheckpointError, build_segmentor, save_checkpoint

MODEL = ModelConfig(
    backbone="resnet18",
    pretrained=False,
    output_stride=8,
    out_indices=[1, 2, 3, 4],
    head="fcn",
    head_channels=8,
    proj_dim=8,
)


def _experiment(**eval_kw):
    return ExperimentConfig(
        model=MODEL,
        data=DataConfig(
            dataset="synthetic",
            crop_size=[16, 16],
            loader_workers=0,
            synthetic=SyntheticConfig(num_val=3, image_size=[24, 32]),
        ),
        eval=EvalConfig(**eval_kw),
    )


def _checkpoint(tmp_path, cfg, num_classes):
    torch.manual_seed(0)
    seg = build_segmentor(cfg.model, num_classes)
    state = {
        "config": config_to_dict(cfg),
        "num_classes": num_classes,
        "class_names": [f"c{i}" for i in range(num_classes)],
        "model": seg.state_dict(),
    }
    return save_checkpoint(tmp_path / "checkpoint_000001", state).parent


def test_run_eval_on_synthetic_data(tmp_path, capsys):
    pytest.importorskip("raycontrast.data")
    cfg = _experiment(mode="slide")
    ckpt = _checkpoint(tmp_path, cfg, 7)
    result = run_eval(cfg, str(ckpt))
    out = capsys.readouterr().out
    assert "background" in out and "mIoU" in out
    path = ckpt / "eval_val.json"
    assert result["output"] == str(path)
    saved = json.loads(path.read_text())
    assert saved["num_images"] == 3 and len(saved["metrics"]["IoU"]) == 7
    assert saved["eval"]["crop_size"] == [16, 16]  # slide defaults to data.crop_size
    assert 0.0 <= saved["metrics"]["aAcc"] <= 1.0


def _fake_data(monkeypatch, items, names):
    info = types.SimpleNamespace(num_classes=len(names), class_names=names, ignore_index=255)
    fake = types.SimpleNamespace(
        dataset_info=lambda cfg: info,
        build_dataset=lambda cfg, split, train: items,
    )
    import raycontrast

    monkeypatch.setitem(__import__("sys").modules, "raycontrast.data", fake)
    monkeypatch.setattr(raycontrast, "data", fake, raising=False)


def test_run_eval_with_a_monkeypatched_dataset(tmp_path, monkeypatch, capsys):
    names = ["a", "b", "c"]
    items = [
        {"image": torch.randn(3, 16, 24), "label": torch.randint(0, 3, (16, 24)), "id": str(i)}
        for i in range(4)
    ]
    _fake_data(monkeypatch, items, names)
    cfg = _experiment(flip=True, max_images=2)
    ckpt = _checkpoint(tmp_path, cfg, 3)
    out_file = tmp_path / "res" / "m.json"
    result = run_eval(cfg, str(ckpt / "state.pt"), out=str(out_file))
    assert json.loads(out_file.read_text())["num_images"] == 2
    assert result["class_names"] == names
    assert capsys.readouterr().out.count("\n") > 5


def test_run_eval_refuses_another_architecture(tmp_path, monkeypatch):
    _fake_data(monkeypatch, [], ["a", "b", "c"])
    cfg = _experiment()
    ckpt = _checkpoint(tmp_path, cfg, 3)
    other = dataclasses.replace(cfg, model=dataclasses.replace(MODEL, head="deeplabv3"))
    with pytest.raises(CheckpointError, match=r"head 'fcn'.*head 'deeplabv3'"):
        run_eval(other, str(ckpt))
    _fake_data(monkeypatch, [], ["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match=r"3 classes; this config asks for .*4 classes"):
        run_eval(cfg, str(ckpt))


def test_cli_eval_and_its_one_line_errors(tmp_path, capsys):
    pytest.importorskip("raycontrast.data")
    from raycontrast.cli import main
    from raycontrast.config import save_config

    cfg = _experiment()
    ckpt = _checkpoint(tmp_path, cfg, 7)
    save_config(cfg, tmp_path / "exp.yaml")
    out = tmp_path / "cli.json"
    assert (
        main(["eval", str(tmp_path / "exp.yaml"), str(ckpt), "eval.flip=true", "--out", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["eval"]["flip"] is True
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "exp.yaml"), str(ckpt), "model.head=fpn"]) == 2
    assert "trained with backbone 'resnet18', head 'fcn'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "exp.yaml"), str(tmp_path / "nothing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
