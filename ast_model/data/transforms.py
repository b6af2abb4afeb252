"""Paired augmentation in numpy (no torchvision): random crop, the 8 dihedral transforms, batching.

Input and target always get the same crop window and the same transform, otherwise the pair no longer
lines up pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def paired_random_crop(
    inp: np.ndarray, target: np.ndarray, patch: int, rng: np.random.Generator, *, key: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the same random ``patch x patch`` window from both images.

    Args:
        inp: (H, W, C).
        target: (H, W, C), same H and W.
        patch: window side; equal to H or W is fine (the window then spans that dimension).
        rng: the generator.
        key: sample name for errors.

    Returns:
        Two (patch, patch, C) views.

    Raises:
        ValueError: sizes differ, or the image is smaller than the patch.
    """
    h, w = inp.shape[:2]
    if target.shape[:2] != (h, w):
        raise ValueError(f"sample {key}: input {inp.shape[:2]} and target {target.shape[:2]} differ in size")
    if h < patch or w < patch:
        raise ValueError(f"sample {key}: image {h}x{w} is smaller than the {patch}x{patch} patch")
    y = int(rng.integers(0, h - patch + 1))
    x = int(rng.integers(0, w - patch + 1))
    return inp[y : y + patch, x : x + patch], target[y : y + patch, x : x + patch]


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square: ``k % 4`` quarter turns, then a left-right flip if ``k >= 4``.

    Args:
        image: (H, W, C).
        k: 0..7.

    Returns:
        The transformed view (not copied).
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    out = np.rot90(image, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def paired_dihedral(
    inp: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Apply the same random dihedral transform to both images.

    Args:
        inp: (H, W, C).
        target: (H, W, C).
        rng: the generator.

    Returns:
        ``(inp', target', k)``.
    """
    k = int(rng.integers(0, 8))
    return dihedral(inp, k), dihedral(target, k), k


def to_tensor_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack uint8 HWC images into a float batch in [0, 1].

    Args:
        images: B arrays (H, W, 3) uint8, same size.

    Returns:
        float32 tensor (B, 3, H, W).
    """
    stacked = torch.from_numpy(np.stack([np.ascontiguousarray(a) for a in images]))  # (B, H, W, 3) uint8
    return stacked.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """One uint8 HWC image as a float batch of one.

    Args:
        image: (H, W, 3) uint8.

    Returns:
        float32 tensor (1, 3, H, W) in [0, 1].
    """
    return to_tensor_batch([image])
