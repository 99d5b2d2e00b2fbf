import torch
from timm.layers.norm_act import BatchNormAct2d

from raycontrast.models import build_segmentor
from raycontrast.models._sync_bn import convert_sync_batchnorm
from tests.models.conftest import tiny_model


def test_single_process_is_unchanged():
    seg = build_segmentor(tiny_model(), 3)
    assert not torch.distributed.is_initialized()
    assert convert_sync_batchnorm(seg) is seg
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in seg.modules())
    seg(torch.randn(2, 3, 32, 32))["logits"].sum().backward()


def test_forced_conversion_keeps_fused_activations():
    seg = build_segmentor(tiny_model("mobilenetv3_small_100"), 3)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in seg.modules())
    assert any(isinstance(m, BatchNormAct2d) for m in seg.modules())
    seg.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = seg.predict(x)
    converted = convert_sync_batchnorm(seg, force=True).eval()
    syncs = [m for m in converted.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(syncs) == n_bn
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    with torch.no_grad():
        torch.testing.assert_close(converted.predict(x), before)
