"""Reading and writing image and label files, with errors that name the file.

Images decode to ``uint8`` HxWx3 RGB. Label maps decode to their stored integer values: the palette
indices of a mode "P" PNG (Pascal VOC), the grey values of a mode "L" PNG, or 16-bit values.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from raycontrast.data.base import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_same_size",
    "decode_image",
    "decode_mask",
    "encode_png",
    "read_bytes",
    "read_image",
    "read_mask",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def read_bytes(path: str | Path) -> bytes:
    """The bytes of ``path``; :class:`DatasetError` naming it when it is missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read file ({err})") from None


def _open(data: bytes, name: str, what: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except _DECODE_ERRORS as err:
        raise DatasetError(f"{name}: corrupt or unreadable {what} ({_reason(err)})") from None
    return img


def _reason(err: BaseException) -> str:
    """PIL's message without the in-memory buffer's repr (``<_io.BytesIO object at 0x...>``)."""
    if isinstance(err, Image.UnidentifiedImageError):
        return "not a recognised image format"
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(err)) or type(err).__name__


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode encoded image bytes to ``uint8`` HxWx3 RGB; ``name`` is used in errors."""
    img = _open(data, name, "image")
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except _DECODE_ERRORS as err:
            raise DatasetError(f"{name}: cannot convert {img.mode} image to RGB ({err})") from None
    return np.array(img, dtype=np.uint8)


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """Decode an encoded label map to its stored integer values (HxW).

    Palette ("P") images give their indices, greyscale ("L", "I", "I;16") their values. An RGB image
    is accepted only when its three channels are equal (a greyscale map saved as RGB); a colour
    mask is an error because its colours are not label values.
    """
    img = _open(data, name, "label map")
    if img.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
        return np.array(img)
    if img.mode == "1":
        return np.array(img, dtype=np.uint8)
    if img.mode in ("RGB", "RGBA"):
        arr = np.array(img)[..., :3]
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            return arr[..., 0].copy()
    raise DatasetError(
        f"{name}: label map has mode {img.mode}; expected a single-channel PNG whose pixel values "
        "(or palette indices) are the labels"
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8`` HxWx3 RGB (errors name ``path``)."""
    return decode_image(read_bytes(path), str(path))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label-map file as its stored integer values (errors name ``path``)."""
    return decode_mask(read_bytes(path), str(path))


def check_same_size(image: np.ndarray, label: np.ndarray, image_name: str, mask_name: str) -> None:
    """Raise :class:`DatasetError` naming both files and sizes when ``label`` and ``image`` differ."""
    if image.shape[:2] != label.shape[:2]:
        (ih, iw), (mh, mw) = image.shape[:2], label.shape[:2]
        raise DatasetError(
            f"{mask_name}: mask is {mw}x{mh} (WxH) but its image {image_name} is {iw}x{ih}; "
            "expected the same size"
        )


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of a ``uint8`` HxW (greyscale) or HxWx3 (RGB) array."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
