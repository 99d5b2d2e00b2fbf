import json

import pytest
import torch

from raycontrast.config import config_to_dict
from raycontrast.models import build_segmentor, export_checkpoint, save_checkpoint
from raycontrast.models.export import METADATA_FILE, export_model
from tests.models.conftest import tiny_experiment

K = 3
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_experiment(head="deeplabv3", aux_head=True)
    seg = build_segmentor(cfg.model, K)
    seg(torch.randn(2, 3, 32, 32))
    directory = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(
        directory,
        {
            "config": config_to_dict(cfg),
            "num_classes": K,
            "class_names": ["a", "b", "c"],
            "model": seg.state_dict(),
        },
    )
    return directory, seg.eval()


def test_torchscript(trained, tmp_path, capsys):
    directory, seg = trained
    path = export_checkpoint(str(directory), "torchscript", str(tmp_path / "out" / "seg.pt"))
    assert path.is_file() and "wrote torchscript" in capsys.readouterr().out
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert meta["class_names"] == ["a", "b", "c"] and meta["export"]["method"] == "script"
    assert not any("proj" in n or "aux" in n for n, _ in module.named_parameters())
    for shape in [(2, 3, 32, 32), (1, 3, 40, 56)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(module(x), seg.predict(x), rtol=1e-5, atol=1e-5)


def test_exported_program(trained, tmp_path, capsys):
    directory, seg = trained
    path = export_checkpoint(str(directory), "exported-program", str(tmp_path / "seg.ep"))
    assert path.suffix == ".pt2"  # torch.export.load needs it
    assert "multiples of 8" in capsys.readouterr().out  # dilated resnet18: stride 8
    extra = {METADATA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    assert json.loads(extra[METADATA_FILE])["num_classes"] == K
    module = program.module()
    assert not any("proj" in n or "aux" in n for n in program.state_dict)
    for shape in [(2, 3, 32, 32), (3, 3, 48, 64)]:  # dynamic batch, height and width
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(module(x), seg.predict(x), rtol=1e-5, atol=1e-5)


def test_trace_fallback_for_hrnet(tmp_path):
    # HRNet's timm feature wrapper is not scriptable: it is traced and checked at a second size.
    torch.manual_seed(0)
    cfg = tiny_experiment(backbone="hrnet_w18_small", head="fcn")
    seg = build_segmentor(cfg.model, K).eval()
    path, how = export_model(
        seg.deploy(), "torchscript", tmp_path / "h.pt", torch.randn(1, 3, 32, 32)
    )
    assert how == "trace"
    module = torch.jit.load(str(path))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(module(x), seg.predict(x), rtol=1e-5, atol=1e-5)


def test_unknown_format(trained, tmp_path):
    from raycontrast.models import ModelError

    with pytest.raises(ModelError, match="onnx"):
        export_checkpoint(str(trained[0]), "onnx", str(tmp_path / "x"))


def test_cli_export(trained, tmp_path, capsys):
    from raycontrast.cli import main

    out = tmp_path / "cli.pt"
    assert main(["export", str(trained[0] / "state.pt"), "--out", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
