import pytest
import torch

from raycontrast.models import ModelError, build_head
from raycontrast.models.heads import DeepLabV3Head, FCNHead, FPNHead
from raycontrast.models.heads.aspp import aspp_rates


@pytest.mark.parametrize(
    ("stride", "rates"), [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))]
)
def test_aspp_rates_follow_the_stride(stride, rates):
    assert aspp_rates(stride) == rates
    head = build_head("deeplabv3", [8, 16], [8, stride], 8, 3)
    assert isinstance(head, DeepLabV3Head) and head.rates == rates
    dilations = [b[0].dilation[0] for b in list(head.aspp.branches)[1:4]]
    assert tuple(dilations) == rates


def test_aspp_has_image_pooling():
    head = DeepLabV3Head(8, 8, 3, stride=16, dropout=0.0).eval()
    x = torch.randn(2, 8, 6, 6)
    out = head([x])
    assert out.shape == (2, 3, 6, 6)
    assert len(head.aspp.branches) == 5


def test_fcn_reads_the_selected_level():
    head = FCNHead(4, 8, 3, num_convs=1, in_index=-2)
    feats = [torch.randn(1, 2, 8, 8), torch.randn(1, 4, 4, 4), torch.randn(1, 6, 2, 2)]
    assert head(feats).shape == (1, 3, 4, 4)
    assert len(head.convs) == 1


def test_fpn_outputs_at_the_finest_level():
    head = FPNHead([4, 8, 16], 8, 3)
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    out = head(feats)
    assert out.shape == (2, 3, 16, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_concat_input_reads_every_level():
    head = build_head("fcn", [4, 8], [4, 8], 8, 3, head_input="concat")
    assert head.convs[0][0].in_channels == 12
    assert head([torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)]).shape == (1, 3, 8, 8)
    aspp = build_head("deeplabv3", [4, 8], [8, 16], 8, 3, head_input="concat")
    assert aspp.rates == aspp_rates(8)  # the finest level's stride
    with pytest.raises(ModelError, match="head_input"):
        build_head("fcn", [4], [8], 8, 3, head_input="all")


def test_unknown_head():
    with pytest.raises(ModelError, match="upernet"):
        build_head("upernet", [4], [32], 8, 3)
    assert isinstance(build_head("fpn", [4, 8], [4, 8], 8, 3), FPNHead)
