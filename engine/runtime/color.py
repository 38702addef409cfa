"""Colour conversion helpers for feeding a deployed model from an image (numpy only).

A deployed model takes its runtime view (`input_type_rt`): NV12 camera frames, YUV444, RGB/BGR,
gray. These helpers turn an RGB/BGR image into that view and back, with ITU-R BT.601 in both
ranges (reference §11): ``full_range=True`` is ``input_space_and_range: regular`` (Y, U, V all
0–255, JPEG style, = OpenCV's ``COLOR_RGB2YCrCb`` with channels reordered), ``full_range=False``
is ``bt601_video`` (Y 16–235, U/V 16–240, = OpenCV's ``COLOR_RGB2YUV_I420`` / ``COLOR_YUV2RGB_NV12``).
Results are rounded to the nearest integer and clamped to 0–255.

NV12 (semi-planar 4:2:0) is stored the OpenCV way, ``(H*3//2, W)`` uint8: H rows of Y, then H/2
rows of interleaved U V. Chroma of a 2×2 pixel block is the average of its four pixels; going
back, each chroma sample is replicated to its block (nearest neighbour). Every function takes a
single image or a batch (leading N axis).

The affine forms (`yuv_to_rgb_affine`, `rgb_to_yuv_affine`) are the same coefficients written as
``out = matrix @ in + offset``; the input conversion built into a model uses them, so the
deployed model and these helpers agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.problems import HbError, error

# Reference §11, full range (JFIF): Y, U (Cb), V (Cr) from R, G, B.
_RGB_TO_YUV_FULL = np.array([[0.299, 0.587, 0.114],
                             [-0.168736, -0.331264, 0.5],
                             [0.5, -0.418688, -0.081312]])
_YUV_TO_RGB_FULL = np.array([[1.0, 0.0, 1.402],
                             [1.0, -0.344136, -0.714136],
                             [1.0, 1.772, 0.0]])
# Reference §11, video range: the full-range coefficients scaled by 219/255 (luma), 224/255 (chroma).
_RGB_TO_YUV_VIDEO = np.array([[0.256788, 0.504129, 0.097906],
                              [-0.148223, -0.290993, 0.439216],
                              [0.439216, -0.367788, -0.071427]])
_YUV_TO_RGB_VIDEO = np.array([[1.164384, 0.0, 1.596027],
                              [1.164384, -0.391762, -0.812968],
                              [1.164384, 2.017232, 0.0]])
_YUV_ZERO_FULL = np.array([0.0, 128.0, 128.0])  # the YUV value of black / no chroma
_YUV_ZERO_VIDEO = np.array([16.0, 128.0, 128.0])

NV12_ODD_SIZE = "input-nv12-odd-size"


@dataclass(frozen=True)
class ColorAffine:
    """A per-pixel colour conversion ``out = matrix @ in + offset`` on 3-channel values."""

    matrix: np.ndarray  # (3, 3) float64
    offset: np.ndarray  # (3,) float64

    def then(self, other: ColorAffine) -> ColorAffine:
        """This conversion followed by `other`."""
        return ColorAffine(other.matrix @ self.matrix, other.matrix @ self.offset + other.offset)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Float result on (..., 3) values, without rounding."""
        return np.asarray(pixels, dtype=np.float64) @ self.matrix.T + self.offset


def rgb_to_yuv_affine(full_range: bool = True) -> ColorAffine:
    if full_range:
        return ColorAffine(_RGB_TO_YUV_FULL, _YUV_ZERO_FULL)
    return ColorAffine(_RGB_TO_YUV_VIDEO, _YUV_ZERO_VIDEO)


def yuv_to_rgb_affine(full_range: bool = True) -> ColorAffine:
    m = _YUV_TO_RGB_FULL if full_range else _YUV_TO_RGB_VIDEO
    zero = _YUV_ZERO_FULL if full_range else _YUV_ZERO_VIDEO
    return ColorAffine(m, -m @ zero)


def video_to_full_range_affine() -> ColorAffine:
    """YUV video range → YUV full range directly (no trip through RGB, so no coefficient error)."""
    gain = np.diag([255.0 / 219.0, 255.0 / 224.0, 255.0 / 224.0])
    return ColorAffine(gain, _YUV_ZERO_FULL - gain @ _YUV_ZERO_VIDEO)


def is_full_range(space_and_range: str) -> bool:
    """`input_space_and_range` value → the `full_range` flag of these helpers."""
    return space_and_range != "bt601_video"


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_pixels(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(f"{what} expects an (H, W, 3) image or an (N, H, W, 3) batch, got shape {img.shape}")
    return img


# ------------------------------------------------------------------ RGB / BGR <-> YUV444

def rgb_to_yuv444(img: np.ndarray, full_range: bool = True) -> np.ndarray:
    """(…, H, W, 3) RGB → (…, H, W, 3) uint8 YUV (U = Cb, V = Cr)."""
    img = _check_pixels(img, "rgb_to_yuv444")
    return _to_uint8(rgb_to_yuv_affine(full_range).apply(img))


def bgr_to_yuv444(img: np.ndarray, full_range: bool = True) -> np.ndarray:
    return rgb_to_yuv444(_check_pixels(img, "bgr_to_yuv444")[..., ::-1], full_range)


def yuv444_to_rgb(yuv: np.ndarray, full_range: bool = True) -> np.ndarray:
    """(…, H, W, 3) YUV → (…, H, W, 3) uint8 RGB."""
    yuv = _check_pixels(yuv, "yuv444_to_rgb")
    return _to_uint8(yuv_to_rgb_affine(full_range).apply(yuv))


def yuv444_to_bgr(yuv: np.ndarray, full_range: bool = True) -> np.ndarray:
    return np.ascontiguousarray(yuv444_to_rgb(yuv, full_range)[..., ::-1])


# ------------------------------------------------------------------ NV12

def _odd_size(shape) -> HbError:
    text = "x".join(str(int(d)) for d in shape)
    return HbError(error(NV12_ODD_SIZE, f"The input shape: {text} is invalid, nv12 type does not support odd "
                                        "number input size", data={"shape": tuple(int(d) for d in shape)}))


def _subsample_chroma(chroma: np.ndarray) -> np.ndarray:
    """(…, H, W, 2) float → (…, H/2, W/2, 2): the average of each 2×2 block."""
    *lead, h, w, c = chroma.shape
    blocks = chroma.reshape(*lead, h // 2, 2, w // 2, 2, c)
    return blocks.mean(axis=(-4, -2))


def _pack_nv12(y: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Y (…, H, W) and UV (…, H/2, W/2, 2) uint8 → (…, H*3/2, W)."""
    *lead, h, w = y.shape
    return np.concatenate([y, uv.reshape(*lead, h // 2, w)], axis=-2)


def yuv444_to_nv12(yuv: np.ndarray) -> np.ndarray:
    """(…, H, W, 3) uint8 YUV → (…, H*3/2, W) uint8 NV12, chroma averaged over 2×2 blocks."""
    yuv = _check_pixels(yuv, "yuv444_to_nv12")
    if yuv.shape[-3] % 2 or yuv.shape[-2] % 2:
        raise _odd_size(yuv.shape)
    uv = _to_uint8(_subsample_chroma(yuv[..., 1:].astype(np.float64)))
    return _pack_nv12(np.ascontiguousarray(yuv[..., 0]).astype(np.uint8), uv)


def rgb_to_nv12(img: np.ndarray, full_range: bool = True) -> np.ndarray:
    """(…, H, W, 3) RGB → (…, H*3/2, W) uint8 NV12 (H and W must be even).

    Chroma is computed per pixel in float, averaged over each 2×2 block, then rounded once.
    """
    img = _check_pixels(img, "rgb_to_nv12")
    if img.shape[-3] % 2 or img.shape[-2] % 2:
        raise _odd_size(img.shape)
    yuv = rgb_to_yuv_affine(full_range).apply(img)
    return _pack_nv12(_to_uint8(yuv[..., 0]), _to_uint8(_subsample_chroma(yuv[..., 1:])))


def bgr_to_nv12(img: np.ndarray, full_range: bool = True) -> np.ndarray:
    return rgb_to_nv12(_check_pixels(img, "bgr_to_nv12")[..., ::-1], full_range)


def _nv12_planes(nv12: np.ndarray, h: int | None, w: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Split an NV12 buffer into Y (…, H, W) and UV (…, H/2, W/2, 2).

    Accepts (H*3/2, W), (N, H*3/2, W), or flat buffers (H*W*3/2,) / (N, H*W*3/2) with h and w given.
    """
    nv12 = np.asarray(nv12)
    if nv12.dtype != np.uint8:
        raise ValueError(f"NV12 data must be uint8, got {nv12.dtype}")
    if h is not None and w is not None:
        if h % 2 or w % 2:
            raise _odd_size((h, w))
        lead = nv12.shape[:-1] if nv12.shape[-1] == h * w * 3 // 2 else nv12.shape[:-2]
        if int(np.prod(nv12.shape[len(lead):])) != h * w * 3 // 2:
            raise ValueError(f"NV12 buffer of shape {nv12.shape} does not hold a {h}x{w} image "
                             f"({h * w * 3 // 2} bytes per image)")
        nv12 = nv12.reshape(*lead, h * 3 // 2, w)
    if nv12.ndim not in (2, 3):
        raise ValueError(f"NV12 data must be (H*3/2, W) or (N, H*3/2, W), got shape {nv12.shape}")
    rows, w = nv12.shape[-2:]
    h = rows * 2 // 3
    if rows % 3 or h % 2 or w % 2:
        raise _odd_size(nv12.shape)
    y = nv12[..., :h, :]
    uv = nv12[..., h:, :].reshape(*nv12.shape[:-2], h // 2, w // 2, 2)
    return y, uv


def nv12_to_yuv444(nv12: np.ndarray, h: int | None = None, w: int | None = None) -> np.ndarray:
    """NV12 → (…, H, W, 3) uint8 YUV444, each chroma sample replicated to its 2×2 block."""
    y, uv = _nv12_planes(nv12, h, w)
    uv_full = uv.repeat(2, axis=-3).repeat(2, axis=-2)
    return np.concatenate([y[..., None], uv_full], axis=-1)


def nv12_to_rgb(nv12: np.ndarray, h: int | None = None, w: int | None = None,
                full_range: bool = True) -> np.ndarray:
    return yuv444_to_rgb(nv12_to_yuv444(nv12, h, w), full_range)


def nv12_to_bgr(nv12: np.ndarray, h: int | None = None, w: int | None = None,
                full_range: bool = True) -> np.ndarray:
    return yuv444_to_bgr(nv12_to_yuv444(nv12, h, w), full_range)


# ------------------------------------------------------------------ layout

def hwc_to_chw(x: np.ndarray) -> np.ndarray:
    """(H, W, C) → (C, H, W); (N, H, W, C) → (N, C, H, W)."""
    x = np.asarray(x)
    if x.ndim == 3:
        return np.ascontiguousarray(x.transpose(2, 0, 1))
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise ValueError(f"hwc_to_chw expects 3 or 4 dims, got shape {x.shape}")


def chw_to_hwc(x: np.ndarray) -> np.ndarray:
    """(C, H, W) → (H, W, C); (N, C, H, W) → (N, H, W, C)."""
    x = np.asarray(x)
    if x.ndim == 3:
        return np.ascontiguousarray(x.transpose(1, 2, 0))
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    raise ValueError(f"chw_to_hwc expects 3 or 4 dims, got shape {x.shape}")


__all__ = [
    "ColorAffine", "NV12_ODD_SIZE", "bgr_to_nv12", "bgr_to_yuv444", "chw_to_hwc", "hwc_to_chw",
    "is_full_range", "nv12_to_bgr", "nv12_to_rgb", "nv12_to_yuv444", "rgb_to_nv12", "rgb_to_yuv444",
    "rgb_to_yuv_affine", "video_to_full_range_affine", "yuv444_to_bgr", "yuv444_to_nv12", "yuv444_to_rgb",
    "yuv_to_rgb_affine",
]
