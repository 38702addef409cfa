"""Real-photo calibration and held-out samples for the quantization benchmark.

PP-OCR det looks for text, so a sample is one of scikit-image's bundled photos (a random crop,
maybe mirrored, resized to the model's H×W) with a few lines of words rendered on it by Pillow's
default (FreeType) font — dark on light, light on dark, some on a plain "sign" box — plus
scikit-image's own scanned `page` / `text` images. On uniform noise or a photo without text the
det probability map is ~0 everywhere and every cosine is measuring rounding of nothing.

Samples are RGB, NCHW, uint8 0–255: the train view hb_compile's calibration files hold (mean and
scale come from the config). Everything is a pure function of (index, seed, size).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel")
GRAY = ("camera", "brick", "grass", "gravel", "moon", "coins", "clock", "cell")
SCANS = ("page", "text")  # real printed text
WORDS = ("total", "price", "open", "exit", "station", "coffee", "rocket", "horizon", "quantize", "north",
         "street", "hotel", "bank", "welcome", "parking", "menu", "2024", "12:45", "No. 7", "OCR",
         "express", "market", "library", "gate B", "sale -30%", "tea", "bus", "museum", "hello", "world")


@cache
def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _base(rng: np.random.Generator, index: int, h: int, w: int):
    from PIL import Image

    names = COLOUR + GRAY + SCANS
    img = _photo(names[index % len(names)])
    ih, iw = img.shape[:2]
    fh, fw = rng.uniform(0.55, 1.0, 2)
    ch, cw = max(int(ih * fh), 16), max(int(iw * fw), 16)
    y, x = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
    crop = img[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(crop)).resize((w, h), Image.BILINEAR)


def text_photo(index: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """One sample: HxWx3 uint8 RGB, a photo with rendered words on it."""
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng([seed, index])
    img = _base(rng, index, h, w)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        size = int(rng.integers(max(h // 40, 10), max(h // 10, 12)))
        font = ImageFont.load_default(size=size)
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        x0, y0 = int(rng.integers(0, max(w - size * 4, 1))), int(rng.integers(0, max(h - size, 1)))
        dark = rng.random() < 0.5
        ink = tuple(int(v) for v in (rng.integers(0, 60, 3) if dark else rng.integers(200, 256, 3)))
        if rng.random() < 0.4:  # a sign: plain box behind the words
            box = draw.textbbox((x0, y0), text, font=font)
            paper = tuple(int(v) for v in (rng.integers(200, 256, 3) if dark else rng.integers(0, 60, 3)))
            draw.rectangle((box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4), fill=paper)
        draw.text((x0, y0), text, fill=ink, font=font)
    return np.asarray(img, np.uint8)


def det_samples(count: int, h: int, w: int, seed: int = 0, start: int = 0) -> list[np.ndarray]:
    """`count` samples as 1x3xHxW uint8 (RGB, NCHW); `seed` 0 for calibration, 1 for held-out."""
    return [text_photo(i, h, w, seed).transpose(2, 0, 1)[None].copy() for i in range(start, start + count)]


def write_npy(samples: list[np.ndarray], folder: Path) -> Path:
    """One `.npy` per sample (the calibration folder the config points at)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        np.save(folder / f"sample_{i:04d}.npy", s, allow_pickle=False)
    return folder
