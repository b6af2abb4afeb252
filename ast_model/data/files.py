"""Image bytes, hashes and atomic writes: the small file utilities every data module shares.

Atomic here means: a reader sees either the previous complete file/folder or the new complete one,
never a half-written one. Files are written to a temporary name beside the target and renamed;
folders are built under a hidden temporary name and renamed into place as a whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

# PNG compression is a size/speed trade: 6 is PIL's default and keeps the embedded data small.
PNG_COMPRESS_LEVEL = 6
_HASH_CHUNK = 1 << 20


class ImageFileError(ValueError):
    """An image that cannot be decoded or is not 8-bit RGB."""


# Image files the readers accept (dataset folders, ``ast-restore`` inputs), compared lower-case.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise an image to 8 bits as every saved PNG is (round half to even, clipped to [0, 255]).

    Args:
        image: ``(H, W, 3)`` (or ``(H, W)``) float, nominally in [0, 1]; a uint8 array is returned as is.

    Returns:
        uint8 array of the same shape.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def safe_name(key: str) -> str:
    """``key`` as a file name or tracker key: letters, digits, ``-``, ``_`` and ``.`` kept, the rest ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def encode_png(image: np.ndarray, *, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Encode an 8-bit RGB image as PNG bytes.

    Args:
        image: uint8 array (H, W, 3).
        compress_level: zlib level 0..9.

    Returns:
        The PNG file content.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_png expects uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode PNG/JPEG bytes into an 8-bit RGB array.

    Args:
        data: the encoded file.
        name: what to call the image in errors (file name or sample key).

    Returns:
        uint8 array (H, W, 3).

    Raises:
        ImageFileError: the bytes do not decode, or the image is not 3-channel RGB.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            check_mode(img, name)
            return np.asarray(img)
    except ImageFileError:
        raise
    except Exception as exc:  # PIL raises a zoo of types (OSError, SyntaxError, ValueError...)
        raise ImageFileError(f"{name}: cannot decode image ({exc})") from exc


def check_mode(img: Image.Image, name: str) -> None:
    """Raise unless ``img`` is 8-bit RGB (the only layout the model and metrics accept).

    Args:
        img: an opened PIL image.
        name: the file name for the error.

    Raises:
        ImageFileError: naming the mode and its channel count.
    """
    if img.mode != "RGB":
        bands = len(img.getbands())
        raise ImageFileError(f"{name}: odd channels: mode {img.mode} ({bands} channel(s)), expected 8-bit RGB")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in chunks.

    Args:
        path: the file.

    Returns:
        ``(hexdigest, size_in_bytes)``.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@contextmanager
def atomic_writer(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A file to write ``path``'s new content into; renamed over ``path`` only when the block succeeds.

    The temporary file sits in the same folder (so the rename is atomic) and is removed on any error: the
    path holds the complete old or the complete new content, never a half-written file.

    Args:
        path: the final file (missing parent folders are created).
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp creates 0600; outputs are ordinary shareable files
    try:
        with os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_writer`).

    Args:
        path: the final file.
        data: its content.
    """
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable bytes for DVC) atomically.

    Args:
        path: the final file.
        obj: a JSON-serialisable object.
    """
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def new_staging_dir(final: str | Path) -> Path:
    """Create an empty hidden folder beside ``final`` to build its content in.

    Args:
        final: the folder that will be published with :func:`publish_dir`.

    Returns:
        The staging folder (``.<name>.tmp-XXXX`` in the same parent, so the rename stays on one
        file system).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def publish_dir(staging: str | Path, final: str | Path) -> None:
    """Move a fully built staging folder to ``final``, replacing any previous version.

    A folder rename cannot replace a non-empty folder, so the old one is first renamed aside and
    deleted after the new one is in place; at no moment does ``final`` hold a mix of both.

    Args:
        staging: the folder from :func:`new_staging_dir`, complete.
        final: where it should live.
    """
    staging, final = Path(staging), Path(final)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Build a folder under a staging name; publish it as ``final`` only if the block completes.

    Args:
        final: the folder to (re)create.

    Yields:
        The empty staging folder to fill. On an exception it is deleted and ``final`` is left untouched.
    """
    staging = new_staging_dir(final)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_dir(staging, final)


def remove_stale_staging(parent: str | Path) -> None:
    """Delete staging/old folders an interrupted run left in ``parent`` (they are hidden and never read).

    Args:
        parent: the folder holding published outputs.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return
    for child in parent.iterdir():
        if child.name.startswith(".") and (".tmp-" in child.name or ".old-" in child.name) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
