import pytest
import torch

from raycontrast.eval import infer
from raycontrast.eval.inference import slide_windows

K = 3


def position_model(x):
    """Deterministic, position-dependent: logits depend on absolute coords within the crop."""
    b, _, h, w = x.shape
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(b, 1, h, w)
    mean = x.mean(1, keepdim=True)
    return torch.cat([ys + mean, xs * 2 - mean, ys * xs + x[:, :1]], dim=1)


def conv_model():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, K, 3, padding=1)
    return lambda x: net(x)


def reference_slide(model_fn, img, crop, stride):
    """Brute force: per pixel, the mean over windows covering it (image >= crop)."""
    _, _, h, w = img.shape
    windows = slide_windows(h, w, crop, stride)
    out = torch.zeros(img.shape[0], K, h, w)
    for yy in range(h):
        for xx in range(w):
            vals = [
                model_fn(img[:, :, y0:y1, x0:x1])[:, :, yy - y0, xx - x0]
                for y0, y1, x0, x1 in windows
                if y0 <= yy < y1 and x0 <= xx < x1
            ]
            out[:, :, yy, xx] = torch.stack(vals).mean(0)
    return out


def test_slide_with_whole_crop_equals_whole():
    img = torch.randn(2, 3, 12, 16)
    model = conv_model()
    whole = infer(model, img, K, mode="whole")
    slide = infer(model, img, K, mode="slide", crop_size=(12, 16), stride=(4, 4))
    torch.testing.assert_close(slide, whole)
    assert whole.shape == (2, K, 12, 16)


def test_slide_windows_cover_the_image():
    wins = slide_windows(10, 7, (4, 4), (3, 3))
    assert {w[0] for w in wins} == {0, 3, 6} and {w[2] for w in wins} == {0, 3}
    assert all(y1 - y0 == 4 and x1 - x0 == 4 for y0, y1, x0, x1 in wins)
    assert slide_windows(4, 4, (4, 4), (2, 2)) == [(0, 4, 0, 4)]


def test_slide_overlap_averaging_matches_brute_force():
    img = torch.randn(1, 3, 9, 11)
    got = infer(position_model, img, K, mode="slide", crop_size=(5, 6), stride=(3, 4))
    ref = reference_slide(position_model, img, (5, 6), (3, 4))
    torch.testing.assert_close(got, ref)


def test_slide_pads_small_images():
    img = torch.randn(1, 3, 5, 6)
    got = infer(position_model, img, K, mode="slide", crop_size=(8, 8))
    padded = torch.nn.functional.pad(img, (0, 2, 0, 3))
    torch.testing.assert_close(got, position_model(padded)[:, :, :5, :6])


def test_default_stride_is_two_thirds_of_the_crop():
    img = torch.randn(1, 3, 10, 10)
    got = infer(position_model, img, K, mode="slide", crop_size=6)
    torch.testing.assert_close(got, reference_slide(position_model, img, (6, 6), (4, 4)))


def test_flip_averages_with_the_mirrored_prediction():
    img = torch.randn(2, 3, 6, 7)
    got = infer(position_model, img, K, flip=True)
    mirrored = position_model(img.flip(-1)).flip(-1)
    torch.testing.assert_close(got, (position_model(img) + mirrored) / 2)


def test_flip_of_a_symmetric_model_is_identity():
    model = conv_model()
    img = torch.randn(1, 3, 8, 8)
    img = torch.cat([img, img.flip(-1)], 0)
    got = infer(model, img, K, flip=True)
    torch.testing.assert_close(got[0], got[1].flip(-1), rtol=1e-5, atol=1e-5)


def test_multiscale_resizes_and_averages():
    img = torch.randn(1, 3, 8, 12)
    model = conv_model()
    got = infer(model, img, K, mode="multiscale", scales=(0.5, 1.0, 1.5))
    rs = torch.nn.functional.interpolate
    parts = []
    for s in (0.5, 1.0, 1.5):
        x = img if s == 1.0 else rs(img, size=(round(8 * s), round(12 * s)), mode="bilinear")
        parts.append(rs(model(x), size=(8, 12), mode="bilinear"))
    torch.testing.assert_close(got, torch.stack(parts).mean(0))


def test_multiscale_with_crop_slides_per_scale():
    img = torch.randn(1, 3, 8, 8)
    got = infer(position_model, img, K, mode="multiscale", crop_size=(4, 4), scales=(1.0,))
    torch.testing.assert_close(got, reference_slide(position_model, img, (4, 4), (2, 2)))


def test_model_output_is_resized_and_checked():
    img = torch.randn(1, 3, 8, 8)

    def low_res(x):
        return torch.ones(x.shape[0], K, x.shape[-2] // 4, x.shape[-1] // 4)

    assert infer(low_res, img, K).shape == (1, K, 8, 8)
    with pytest.raises(ValueError, match="expected logits"):
        infer(low_res, img, K + 1)
    with pytest.raises(ValueError, match="needs crop_size"):
        infer(low_res, img, K, mode="slide")
    with pytest.raises(ValueError, match="not one of"):
        infer(low_res, img, K, mode="tiles")
    assert infer(lambda x: {"logits": low_res(x)}, img, K).shape == (1, K, 8, 8)
