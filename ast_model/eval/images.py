"""Image files in and out: anything Pillow reads becomes float RGB; results are written as PNG atomically.

Conversions made by :func:`read_image` (all end as ``(H, W, 3)`` float32 in [0, 1]):

- 8-bit grey, palette, CMYK, YCbCr, bilevel: converted to RGB by Pillow;
- alpha (RGBA, LA, palette transparency): the alpha channel is dropped; the colour channels are restored
  as they are stored (straight alpha);
- 16-bit greyscale PNG/TIFF: full precision (divided by 65535), replicated to three channels;
- 16-bit RGB PNG: Pillow decodes it to 8 bits per channel, so it is read at 8-bit precision;
- EXIF orientation (phone JPEGs) is applied, so the output is upright as viewers show it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

# IMAGE_SUFFIXES: what the CLI picks up from folders (explicitly named files of other types are still
# tried); to_uint8: how every saved PNG is quantised. Both live with the other file helpers.
from ast_model.data.files import IMAGE_SUFFIXES, atomic_writer, to_uint8

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "read_image", "save_png", "to_uint8"]

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # "I": 16-bit PNGs in older Pillow


class ImageReadError(OSError):
    """A file that is missing, not an image, truncated or otherwise undecodable."""


def read_image(path: str | os.PathLike | BinaryIO, *, keep_uint8: bool = False) -> np.ndarray:
    """Read an image file as float RGB.

    Args:
        path: any format Pillow decodes (PNG, JPEG, BMP, TIFF, WebP, ...); a file path or an open binary
            file (e.g. ``io.BytesIO`` of an uploaded image).
        keep_uint8: return 8-bit images as uint8 ``(H, W, 3)`` (0-255) instead of float32: a quarter of
            the memory for a huge photo (16-bit and float images are still returned as float32).

    Returns:
        ``(H, W, 3)`` float32 RGB in [0, 1] (see the module docstring for the conversions), or uint8
        with ``keep_uint8`` for 8-bit files.

    Raises:
        ImageReadError: the file cannot be opened or decoded (the message names the file).
    """
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # a new, upright image when EXIF says so
            image.load()  # decode now, so truncation errors surface here
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError...
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "<image data>"  # a file object
        raise ImageReadError(f"cannot read image {name!r}: {exc}") from exc

    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float32) / 65535.0  # (H, W)
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
    if image.mode == "F":  # 32-bit float TIFF: assumed to hold [0, 1] data already
        grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # palette transparency needs RGBA first, then alpha is dropped
    if keep_uint8:
        return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return rgb


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an 8-bit PNG atomically: a temporary file in the same folder, then a rename, so the path
    holds either the complete image or nothing (never a half-written file after a crash).

    Args:
        path: destination; missing parent folders are created.
        image: ``(H, W, 3)`` float in [0, 1] or uint8.

    Returns:
        The destination path.
    """
    dest = Path(path)
    with atomic_writer(dest) as fh:
        Image.fromarray(to_uint8(image)).save(fh, format="PNG")
    return dest
