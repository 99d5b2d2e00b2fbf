import pytest
import torch
import torch.nn.functional as F

from raycontrast.config import ContrastConfig
from raycontrast.contrast import MemoryBank, PixelContrastLoss, select_records


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    embed = F.normalize(torch.randn(2, 8, 8, 8, generator=g), dim=1).requires_grad_()
    labels = torch.randint(0, 3, (2, 32, 32), generator=g)  # input resolution: resized inside
    labels[:, :4] = 255
    logits = torch.randn(2, 3, 8, 8, generator=g)
    return embed, labels, logits


def test_warmup_gives_zero_with_a_graph():
    crit = PixelContrastLoss(ContrastConfig(warmup_iters=10, max_views=4, max_samples=64))
    embed, labels, logits = _batch()
    out = crit(embed, labels, logits, iteration=9)
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert torch.equal(embed.grad, torch.zeros_like(embed))
    assert out.labels_small.shape == (2, 8, 8)


def test_after_warmup_the_inbatch_term_is_positive():
    crit = PixelContrastLoss(ContrastConfig(warmup_iters=10, max_views=4, max_samples=64))
    embed, labels, logits = _batch()
    out = crit(embed, labels, logits, iteration=10, generator=torch.Generator().manual_seed(0))
    assert out.loss.item() > 0 and out.num_anchors > 0
    assert set(out.terms) == {"inbatch"}
    out.loss.backward()
    assert embed.grad.abs().sum() > 0


@pytest.mark.parametrize("memory", ["pixel", "region", "both"])
@pytest.mark.parametrize("sampling", ["all", "hardest", "semi_hard", "mixed"])
def test_memory_terms_read_the_bank(memory, sampling):
    cfg = ContrastConfig(
        warmup_iters=0,
        max_views=4,
        max_samples=64,
        memory=memory,
        memory_size=16,
        memory_sampling=sampling,
        k=8,
        inbatch=False,
    )
    crit = PixelContrastLoss(cfg)
    embed, labels, logits = _batch()
    bank = MemoryBank(3, 8, 16, kinds=crit.kinds)
    empty = crit(embed, labels, logits, iteration=0, bank=bank)
    assert empty.terms["memory"].item() == 0.0  # empty bank: exactly zero
    bank.write(select_records(embed.detach(), empty.labels_small, 3, kinds=crit.kinds))
    out = crit(
        embed, labels, logits, iteration=0, bank=bank, generator=torch.Generator().manual_seed(1)
    )
    assert out.terms["memory"].item() > 0
    out.loss.backward()
    assert torch.isfinite(embed.grad).all()


def test_memory_without_a_bank_is_a_clear_error():
    crit = PixelContrastLoss(ContrastConfig(warmup_iters=0, memory="both", max_views=4))
    embed, labels, logits = _batch()
    with pytest.raises(ValueError, match="needs a memory bank"):
        crit(embed, labels, logits, iteration=0)


def test_only_ignore_pixels_give_zero_with_a_graph():
    crit = PixelContrastLoss(ContrastConfig(warmup_iters=0, max_views=4))
    embed, labels, logits = _batch()
    out = crit(embed, torch.full_like(labels, 255), logits, iteration=5)
    assert out.loss.item() == 0.0 and out.loss.requires_grad and out.num_anchors == 0
