import pytest
import torch

from raycontrast.models import ModelError, Segmentor, build_segmentor
from raycontrast.models.segmentor import deploy_model
from tests.models.conftest import BACKBONES, tiny_model

K = 5


def _expected_size(seg: Segmentor, level: int, size: int = 64) -> int:
    return -(-size // seg.reductions[level])  # ceil: timm convs pad "same"


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "fpn"])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_forward_backward_shapes(backbone, head):
    torch.manual_seed(0)
    proj_input = "concat" if head == "fpn" else "last"
    seg = build_segmentor(tiny_model(backbone, head=head, proj_input=proj_input), K)
    x = torch.randn(2, 3, 64, 64)
    out = seg(x)
    assert set(out) == {"logits", "embed"}
    level = 0 if head == "fpn" else -1
    s = _expected_size(seg, level)
    assert out["logits"].shape == (2, K, s, s)
    e = _expected_size(seg, 0 if proj_input == "concat" else -1)
    assert out["embed"].shape == (2, 8, e, e)
    norms = out["embed"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    (out["logits"].mean() + out["embed"].mean()).backward()
    heads = [*seg.decode_head.parameters(), *seg.proj_head.parameters()]
    assert all(p.grad is not None for p in heads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seg.backbone.parameters())
    assert seg.predict(x).shape == (2, K, 64, 64)


def test_aux_head_on_second_to_last_level():
    seg = build_segmentor(tiny_model(aux_head=True, output_stride=None), K)
    out = seg(torch.randn(2, 3, 64, 64))
    assert out["aux"].shape == (2, K, 4, 4)  # stride 16 level
    assert out["logits"].shape == (2, K, 2, 2)
    out["aux"].sum().backward()


def test_projection_concat_reads_every_level():
    seg = build_segmentor(tiny_model(proj_input="concat"), K)
    conv = seg.proj_head.proj[0]
    assert conv.in_channels == sum(seg.channels)
    assert seg(torch.randn(2, 3, 64, 64))["embed"].shape[-1] == 16  # the stride-4 level


def test_output_stride_dilates_resnet():
    assert build_segmentor(tiny_model(output_stride=16), K).reductions == [4, 8, 16, 16]
    assert build_segmentor(tiny_model(output_stride=None), K).reductions == [4, 8, 16, 32]


def test_no_projection_option():
    seg = build_segmentor(tiny_model(), K, projection=False)
    assert not seg.has_projection
    assert set(seg(torch.randn(2, 3, 32, 32))) == {"logits"}


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "fpn"])
def test_deploy_equals_predict_and_drops_training_heads(head):
    torch.manual_seed(0)
    seg = build_segmentor(tiny_model(head=head, aux_head=True), K)
    seg.train()
    seg(torch.randn(2, 3, 64, 64))  # move the BN running stats away from their init
    seg.eval()
    deployed = seg.deploy()
    names = [n for n, _ in deployed.named_parameters()] + [n for n, _ in deployed.named_buffers()]
    assert names and not any(n.startswith(("proj", "aux")) or ".proj" in n for n in names)
    n_deployed = sum(p.numel() for p in deployed.parameters())
    n_expected = sum(
        p.numel() for n, p in seg.named_parameters() if not n.startswith(("proj_head", "aux_head"))
    )
    assert n_deployed == n_expected
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        assert torch.equal(deployed(x), seg.predict(x))
    assert seg.has_projection  # the original keeps its heads
    assert deployed(x).shape == (2, K, 48, 80)


def test_deploy_model_unwraps_wrappers():
    seg = build_segmentor(tiny_model(), K).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    deployed = deploy_model(Wrapper(seg))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(deployed(x), seg.predict(x))
    with pytest.raises(TypeError):
        deploy_model(torch.nn.Linear(2, 2))


def test_deployed_model_scripts():
    import warnings

    seg = build_segmentor(tiny_model(head="fpn"), K).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(seg.deploy())
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), seg.predict(x))


def test_unknown_backbone_suggests_names():
    with pytest.raises(ModelError, match=r"resnet181.*did you mean 'resnet18"):
        build_segmentor(tiny_model("resnet181"), K)


def test_hrnet_output_stride_is_a_clear_error():
    with pytest.raises(
        ModelError, match=r"'hrnet_w18_small' does not support model.output_stride=8.*null"
    ):
        build_segmentor(tiny_model("hrnet_w18_small", output_stride=8), K)


def test_output_stride_32_is_native_for_hrnet():
    seg = build_segmentor(tiny_model("hrnet_w18_small", output_stride=32), K)
    assert max(seg.reductions) == 32


def test_aux_head_needs_two_levels():
    with pytest.raises(ModelError, match="at least two feature levels"):
        build_segmentor(tiny_model(aux_head=True, out_indices=[4]), K)


def test_bad_num_classes():
    with pytest.raises(ModelError, match="num_classes"):
        build_segmentor(tiny_model(), 0)


@pytest.mark.parametrize("head", ["fcn", "deeplabv3"])
def test_hrnetv2_concat_head(head):
    # out_indices null on an HRNet: its four branches (the stride-2 stem is left out)
    cfg = tiny_model("hrnet_w18_small", head=head, head_input="concat", out_indices=None)
    seg = build_segmentor(cfg, K)
    assert seg.reductions == [4, 8, 16, 32]
    first = seg.decode_head.convs[0][0] if head == "fcn" else seg.decode_head.aspp.branches[0][0]
    assert first.in_channels == sum(seg.channels)
    out = seg(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, K, 16, 16)
    out["logits"].sum().backward()
    seg.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(seg.deploy()(x), seg.predict(x))


def test_hrnet_takes_sizes_that_are_not_multiples_of_32():
    """timm's HRNet fuses branches with fixed-factor upsampling, so 520x520 (the ADE20K crop) or
    a 512x683 image failed; the input is now padded and the features cropped back."""
    torch.manual_seed(0)
    seg = build_segmentor(tiny_model("hrnet_w18_small"), 3).eval()
    assert seg.multiple == 32
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        out = seg(x)
        last = (-(-72 // seg.reductions[-1]), -(-100 // seg.reductions[-1]))
        assert out["logits"].shape[-2:] == last and out["embed"].shape[-2:] == last
        assert seg.predict(x).shape == (1, 3, 72, 100)
        torch.testing.assert_close(seg.deploy()(x), seg.predict(x))
        # reference: the backbone on the zero-padded image, each level cropped to ceil(size / r)
        padded = seg.backbone(torch.nn.functional.pad(x, [0, 28, 0, 24]))
        feats = [f[..., : -(-72 // r), : -(-100 // r)] for f, r in zip(padded, seg.reductions)]
        torch.testing.assert_close(out["logits"], seg.decode_head(feats))
        # multiples of 32 are untouched
        y = torch.randn(1, 3, 64, 96)
        torch.testing.assert_close(seg(y)["logits"], seg.decode_head(seg.backbone(y)))


def test_other_backbones_are_not_padded():
    seg = build_segmentor(tiny_model("resnet18"), 3).eval()
    assert seg.multiple == 1
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(seg(x)["logits"], seg.decode_head(seg.backbone(x)))
