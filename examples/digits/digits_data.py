"""The digits example's data: scikit-learn's bundled 8x8 digits as 1x1x32x32 camera-like images.

Shared by `train_digits.py` (torch venv) and `make_calibration.py` (numpy + scikit-learn only)
so that the training split, the calibration samples and the held-out benchmark all come from
one resize and one split. Images are uint8 grayscale 0-255, as a camera would deliver them; the
float model expects them divided by 255 (the config's `scale_value` inserts that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

IMAGE_SIZE = 32
HELDOUT_COUNT = 500
SPLIT_SEED = 0
DIGITS_MAX = 16.0  # load_digits pixel values are 0..16


@dataclass(frozen=True)
class DigitsSplit:
    """uint8 N x 1 x 32 x 32 images with int64 labels, for training and for held-out accuracy."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray


def _bilinear_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for half-pixel-centre bilinear resize (align_corners=False)."""
    coord = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    coord = np.clip(coord, 0.0, src - 1)
    low = np.floor(coord).astype(np.int64)
    high = np.minimum(low + 1, src - 1)
    return low, high, coord - low


def upsample_bilinear(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize N x H x W float images to N x size x size with bilinear interpolation."""
    _, height, width = images.shape
    r0, r1, rw = _bilinear_weights(height, size)
    c0, c1, cw = _bilinear_weights(width, size)
    rows = images[:, r0, :] * (1.0 - rw)[None, :, None] + images[:, r1, :] * rw[None, :, None]
    return rows[:, :, c0] * (1.0 - cw)[None, None, :] + rows[:, :, c1] * cw[None, None, :]


def to_camera_images(digits: np.ndarray) -> np.ndarray:
    """8x8 digits valued 0..16 -> uint8 N x 1 x 32 x 32 grayscale valued 0..255."""
    scaled = digits.reshape(-1, 8, 8).astype(np.float64) * (255.0 / DIGITS_MAX)
    resized = upsample_bilinear(scaled)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)[:, None, :, :]


def load_split() -> DigitsSplit:
    """The fixed, stratified 1297 / 500 train / held-out split of all 1797 digits."""
    digits = load_digits()
    images = to_camera_images(digits.images)
    labels = digits.target.astype(np.int64)
    train_x, held_x, train_y, held_y = train_test_split(
        images, labels, test_size=HELDOUT_COUNT, random_state=SPLIT_SEED, stratify=labels
    )
    return DigitsSplit(train_x, train_y, held_x, held_y)
