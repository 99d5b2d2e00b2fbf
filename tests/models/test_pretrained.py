import pytest
import timm
import torch

from raycontrast.models import ModelError, build_segmentor
from raycontrast.models._pretrained import load_pretrained_backbone
from raycontrast.models.backbone import create_backbone
from tests.models.conftest import tiny_model


def _full_state(name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A classification model's state dict (with its classifier), as a user would download it."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10).state_dict()


def _assert_backbone_equals(seg, state, rename=lambda k: k):
    for key, value in seg.backbone.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, state[rename(key)]), key


def test_local_file_loads_into_the_backbone(tmp_path):
    state = _full_state("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    seg = build_segmentor(tiny_model(pretrained=str(path)), 3)
    _assert_backbone_equals(seg, state)


def test_nested_prefixed_and_flattened_names(tmp_path):
    # convnext's features_only model renames stages.0 -> stages_0; keys under "model" with "module."
    state = _full_state("convnext_atto")
    path = tmp_path / "convnext.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    backbone = create_backbone(tiny_model("convnext_atto", output_stride=None))
    report = load_pretrained_backbone(backbone, path, "convnext_atto")
    assert report.prefix == "module."
    assert "module.head.fc.weight" in report.ignored
    for key, value in backbone.state_dict().items():
        original = key.replace("stem_", "stem.").replace("stages_", "stages.")
        assert torch.equal(value, state[original]), key


def test_safetensors_file(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    state = _full_state("resnet18", seed=2)
    path = tmp_path / "model.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    seg = build_segmentor(tiny_model(pretrained=str(path)), 3)
    _assert_backbone_equals(seg, state)


def test_shape_mismatch_names_the_key(tmp_path):
    state = _full_state("resnet18")
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"shape mismatch.*layer1\.0\.conv1\.weight"):
        build_segmentor(tiny_model(pretrained=str(path)), 3)


def test_other_architecture_is_an_error(tmp_path):
    path = tmp_path / "convnext.pth"
    torch.save(_full_state("convnext_atto"), path)
    with pytest.raises(
        ModelError, match=r"no key of .* matches backbone 'resnet18'.*conv1\.weight"
    ):
        build_segmentor(tiny_model(pretrained=str(path)), 3)


def test_missing_keys_are_listed(tmp_path):
    state = _full_state("resnet18")
    del state["layer4.1.bn2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"lacks 1 parameter.*layer4\.1\.bn2\.weight"):
        build_segmentor(tiny_model(pretrained=str(path)), 3)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        build_segmentor(tiny_model(pretrained=str(tmp_path / "nope.pth")), 3)
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        build_segmentor(tiny_model(pretrained=str(bad)), 3)
    path = tmp_path / "list.pth"
    torch.save([1, 2], path)
    with pytest.raises(ModelError, match="holds no state dict"):
        build_segmentor(tiny_model(pretrained=str(path)), 3)


def test_pretrained_true_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise AssertionError("must not try to download while offline")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(ModelError, match=r"model\.pretrained=/path/to/file"):
        build_segmentor(tiny_model(pretrained=True), 3)


def test_pretrained_true_network_failure_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    real = timm.create_model

    def unreachable(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("[Errno -2] Name or service not known")
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", unreachable)
    with pytest.raises(
        ModelError, match=r"not reachable.*Name or service.*model\.pretrained=/path"
    ):
        build_segmentor(tiny_model(pretrained=True), 3)
