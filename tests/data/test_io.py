import numpy as np
import pytest

from raycontrast.data import DatasetError
from raycontrast.data._io import decode_mask, encode_png, read_image, read_mask
from raycontrast.data._labels import apply_lut, bit_palette, identity_lut, make_lut
from tests.data.trees import rng_image, write_palette_png, write_png


def test_read_image_and_corrupt_file(tmp_path):
    image = rng_image(0)
    path = write_png(tmp_path / "ok.png", image)
    np.testing.assert_array_equal(read_image(path), image)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DatasetError, match=r"broken\.jpg.*corrupt"):
        read_image(bad)
    with pytest.raises(DatasetError, match=r"missing\.png.*not found"):
        read_image(tmp_path / "missing.png")


def test_truncated_image_is_corrupt(tmp_path):
    data = (write_png(tmp_path / "full.png", rng_image(1))).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")


def test_grey_and_rgba_images_become_rgb(tmp_path):
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    out = read_image(write_png(tmp_path / "g.png", grey))
    assert out.shape == (12, 16, 3) and (out[..., 0] == grey).all()


def test_mask_modes(tmp_path):
    label = np.random.default_rng(0).integers(0, 21, (12, 16), dtype=np.uint8)
    label[0] = 255
    np.testing.assert_array_equal(read_mask(write_palette_png(tmp_path / "p.png", label)), label)
    np.testing.assert_array_equal(read_mask(write_png(tmp_path / "l.png", label)), label)
    as_rgb = np.repeat(label[..., None], 3, axis=2)
    np.testing.assert_array_equal(read_mask(write_png(tmp_path / "rgb.png", as_rgb)), label)
    wide = label.astype(np.uint16) * 300
    np.testing.assert_array_equal(read_mask(write_png(tmp_path / "i16.png", wide)), wide)
    colour = rng_image(3)
    with pytest.raises(DatasetError, match=r"colour\.png.*mode RGB"):
        read_mask(write_png(tmp_path / "colour.png", colour))


def test_apply_lut_names_file_and_bad_values():
    lut = make_lut({0: 0, 1: 1, 255: 255})
    raw = np.array([[0, 1, 7], [9, 255, 7]], dtype=np.uint8)
    with pytest.raises(
        DatasetError, match=r"m\.png: label values 7, 9 .*expected one of 0\.\.1, 255"
    ):
        apply_lut(raw, lut, "m.png")
    wide = np.array([[0, 4000]], dtype=np.uint16)
    with pytest.raises(DatasetError, match="4000"):
        apply_lut(wide, lut, "wide.png")
    ok = apply_lut(np.array([[1, 255]], dtype=np.int32), lut, "x")
    assert ok.dtype == np.uint8 and ok.tolist() == [[1, 255]]


def test_identity_lut_maps_extra_ignore_value():
    lut = identity_lut(3, (255, 200))
    assert apply_lut(np.array([[2, 200, 255]], np.uint8), lut, "x").tolist() == [[2, 255, 255]]


def test_encode_png_is_lossless():
    from raycontrast.data._io import decode_image

    image = rng_image(4)
    np.testing.assert_array_equal(decode_image(encode_png(image), "x"), image)
    label = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(decode_mask(encode_png(label), "x"), label)


def test_bit_palette_is_the_voc_colour_map():
    assert bit_palette(4) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert len(set(bit_palette(256))) == 256
