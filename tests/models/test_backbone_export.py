"""``raycontrast export --backbone``: a run's backbone as a timm state dict, loadable by timm and by
``model.pretrained=FILE``."""

import dataclasses

import pytest
import timm
import torch

from raycontrast.cli import main
from raycontrast.config import config_to_dict
from raycontrast.models import build_segmentor, save_checkpoint
from raycontrast.models.backbone_export import backbone_state_dict, find_checkpoint
from raycontrast.models.errors import ModelError
from tests.models.conftest import tiny_experiment

K = 3


def _checkpoint(tmp_path, backbone):
    torch.manual_seed(0)
    cfg = tiny_experiment(backbone=backbone)
    seg = build_segmentor(cfg.model, K)
    with torch.no_grad():  # weights unlike a fresh init, so a load that did nothing shows
        for p in seg.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    directory = tmp_path / "run" / "checkpoint_000010"
    save_checkpoint(
        directory,
        {"config": config_to_dict(cfg), "num_classes": K, "class_names": list("abc"),
         "model": seg.state_dict()},
    )  # fmt: skip
    return cfg, seg, directory


@pytest.mark.parametrize("backbone", ["resnet18", "convnext_atto"])  # convnext: stages.0 renamed
def test_exported_backbone_loads_into_timm_and_into_a_new_run(tmp_path, backbone):
    cfg, seg, directory = _checkpoint(tmp_path, backbone)
    out = tmp_path / "backbone.pth"
    # a run directory is accepted: its newest checkpoint_* is used
    assert main(["export", str(directory.parent), "--backbone", "--out", str(out)]) == 0
    sd = torch.load(out, weights_only=True)

    plain = timm.create_model(backbone, pretrained=False)
    result = plain.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys
    # only the classifier (resnet's fc, convnext's head incl. its norm) is not in a features backbone
    assert all(k.startswith(("fc.", "head.")) for k in result.missing_keys), result.missing_keys
    mine = seg.backbone.state_dict()
    assert len(sd) == len(mine)
    for key, value in mine.items():
        norm = key.replace(".", "_")
        target = key if key in sd else next(k for k in sd if k.replace(".", "_") == norm)
        torch.testing.assert_close(sd[target], value)

    # model.pretrained=FILE puts the same weights into a new segmentor's backbone
    fresh = build_segmentor(dataclasses.replace(cfg.model, pretrained=str(out)), K)
    for key, value in fresh.backbone.state_dict().items():
        torch.testing.assert_close(value, mine[key])


def test_fine_tuning_from_the_exported_backbone_trains_a_step(tmp_path):
    cfg, _, directory = _checkpoint(tmp_path, "resnet18")
    out = tmp_path / "backbone.pth"
    main(["export", str(directory), "--backbone", "--out", str(out)])
    seg = build_segmentor(dataclasses.replace(cfg.model, pretrained=str(out)), K).train()
    before = [p.detach().clone() for p in seg.backbone.parameters()]
    opt = torch.optim.SGD(seg.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, K, (2, 32, 32))
    loss = torch.nn.functional.cross_entropy(seg.predict(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, seg.backbone.parameters()))


def test_backbone_export_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelError, match="neither a checkpoint"):
        find_checkpoint(tmp_path)
    with pytest.raises(ModelError, match="no counterpart"):
        backbone_state_dict(torch.nn.Linear(2, 2), "resnet18")
