"""Run deployed artefacts and prepare their inputs (re-exports only)."""

from engine.runtime.color import (
    ColorAffine,
    bgr_to_nv12,
    bgr_to_yuv444,
    chw_to_hwc,
    hwc_to_chw,
    is_full_range,
    nv12_to_bgr,
    nv12_to_rgb,
    nv12_to_yuv444,
    rgb_to_nv12,
    rgb_to_yuv444,
    yuv444_to_bgr,
    yuv444_to_nv12,
    yuv444_to_rgb,
)

__all__ = [
    "ColorAffine", "bgr_to_nv12", "bgr_to_yuv444", "chw_to_hwc", "hwc_to_chw", "is_full_range", "nv12_to_bgr",
    "nv12_to_rgb", "nv12_to_yuv444", "rgb_to_nv12", "rgb_to_yuv444", "yuv444_to_bgr", "yuv444_to_nv12",
    "yuv444_to_rgb",
]
