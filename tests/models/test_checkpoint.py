import dataclasses

import pytest
import torch

from raycontrast.config import config_to_dict
from raycontrast.models import (
    CheckpointError,
    build_segmentor,
    load_checkpoint,
    load_segmentor,
    save_checkpoint,
)
from tests.models.conftest import tiny_experiment

K = 4


def _save(tmp_path, cfg=None, num_classes=K, **extra):
    cfg = cfg or tiny_experiment(aux_head=True)
    torch.manual_seed(0)
    seg = build_segmentor(cfg.model, num_classes)
    seg(torch.randn(2, 3, 32, 32))  # non-trivial BN statistics
    state = {
        "config": config_to_dict(cfg),
        "num_classes": num_classes,
        "class_names": [f"c{i}" for i in range(num_classes)],
        "model": seg.state_dict(),
        "iteration": 7,
        **extra,
    }
    return save_checkpoint(tmp_path / "checkpoint_000007", state), seg, cfg


def test_round_trip(tmp_path):
    path, seg, cfg = _save(tmp_path)
    assert path.name == "state.pt" and path.parent.name == "checkpoint_000007"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]  # no temp file left
    state = load_checkpoint(path.parent)
    assert state["format"] == "raycontrast" and state["version"] == 1
    assert state["iteration"] == 7
    for where in (path.parent, path):
        loaded, loaded_cfg = load_segmentor(where, expect=cfg, num_classes=K)
        assert loaded_cfg == cfg
        assert not loaded.training and loaded.has_projection and loaded.aux_head is not None
        for key, value in seg.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key
        seg.eval()
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(loaded.predict(x), seg.predict(x))


def test_module_and_ddp_prefix_are_accepted(tmp_path):
    cfg = tiny_experiment()
    seg = build_segmentor(cfg.model, K)
    state = {f"module.{k}": v for k, v in seg.state_dict().items()}
    save_checkpoint(tmp_path, {"config": cfg, "num_classes": K, "model": state})
    loaded, _ = load_segmentor(tmp_path)
    assert set(loaded.state_dict()) == set(seg.state_dict())
    save_checkpoint(tmp_path / "b", {"config": cfg, "num_classes": K, "model": seg})
    load_segmentor(tmp_path / "b")


def test_pretrained_is_not_reloaded(tmp_path):
    cfg = tiny_experiment(pretrained=str(tmp_path / "gone.pth"))  # file no longer exists
    seg = build_segmentor(dataclasses.replace(cfg.model, pretrained=False), K)
    save_checkpoint(tmp_path, {"config": cfg, "num_classes": K, "model": seg.state_dict()})
    load_segmentor(tmp_path)


def test_other_architecture_or_class_count_is_an_error(tmp_path):
    path, _, _ = _save(tmp_path)
    other = tiny_experiment(backbone="resnet50", aux_head=True, out_indices=[1, 2, 3, 4])
    with pytest.raises(
        CheckpointError,
        match=r"trained with backbone 'resnet18', 4 classes; this config asks for backbone "
        r"'resnet50', 150 classes",
    ):
        load_segmentor(path, expect=other, num_classes=150)
    with pytest.raises(CheckpointError, match=r"head 'fcn'.*asks for .*head 'fpn'"):
        load_segmentor(path, expect=tiny_experiment(head="fpn", aux_head=True))
    with pytest.raises(CheckpointError, match=r"head_input 'last'.*asks for .*head_input 'concat'"):
        load_segmentor(path, expect=tiny_experiment(head_input="concat", aux_head=True))
    with pytest.raises(CheckpointError, match=r"4 classes; this config asks for .*19 classes"):
        load_segmentor(path, num_classes=19)
    ok = tiny_experiment(aux_head=True, dropout=0.5)  # dropout does not change the weights
    load_segmentor(path, expect=ok, num_classes=K)


def test_state_dict_mismatch_lists_keys(tmp_path):
    cfg = tiny_experiment()
    seg = build_segmentor(cfg.model, K)
    sd = seg.state_dict()
    sd.pop("decode_head.classifier.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["proj_head.proj.3.weight"] = torch.zeros(3, 3, 1, 1)
    save_checkpoint(tmp_path, {"config": cfg, "num_classes": K, "model": sd})
    with pytest.raises(CheckpointError) as info:
        load_segmentor(tmp_path)
    text = str(info.value)
    assert "missing keys: decode_head.classifier.bias" in text
    assert "unexpected keys: extra.weight" in text
    assert "proj_head.proj.3.weight (checkpoint (3, 3, 1, 1)" in text


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no state\.pt"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing" / "state.pt")
    torch.save({"state_dict": {}}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="not a raycontrast checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"format": "raycontrast", "version": 99}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path)
    (tmp_path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)


def test_checkpoint_error_is_a_config_error_for_the_cli():
    from raycontrast.config import ConfigError

    assert issubclass(CheckpointError, ConfigError)


def test_checkpoint_without_projection_head(tmp_path):
    cfg = tiny_experiment()
    seg = build_segmentor(cfg.model, K, projection=False)
    save_checkpoint(tmp_path, {"config": cfg, "num_classes": K, "model": seg.state_dict()})
    loaded, _ = load_segmentor(tmp_path, expect=cfg, num_classes=K)
    assert not loaded.has_projection
    load_segmentor(tmp_path, expect=tiny_experiment(proj_dim=99))  # no head: proj_* irrelevant
