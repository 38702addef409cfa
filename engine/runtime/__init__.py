"""Run deployed artefacts and prepare their inputs (re-exports only).

`load`, `LoadedModel`, `TensorSpec`, `InputDataError` (engine.runtime.model), `to_runtime`
(engine.runtime.feeds) and `ThreadPlan` (engine.runtime.threads) are imported on first use, so
code that needs only the colour helpers does not pay for onnxruntime.
"""

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

_LAZY = {"load": "engine.runtime.model", "LoadedModel": "engine.runtime.model", "TensorSpec": "engine.runtime.model",
         "InputDataError": "engine.runtime.model", "to_runtime": "engine.runtime.feeds",
         "random_feeds": "engine.runtime.feeds", "session_options": "engine.runtime.session",
         "ThreadPlan": "engine.runtime.threads"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine.runtime' has no attribute {name!r}")


__all__ = [
    "InputDataError", "LoadedModel", "TensorSpec", "ThreadPlan", "load", "random_feeds", "session_options", "to_runtime",
    "ColorAffine", "bgr_to_nv12", "bgr_to_yuv444", "chw_to_hwc", "hwc_to_chw", "is_full_range", "nv12_to_bgr",
    "nv12_to_rgb", "nv12_to_yuv444", "rgb_to_nv12", "rgb_to_yuv444", "yuv444_to_bgr", "yuv444_to_nv12",
    "yuv444_to_rgb",
]
