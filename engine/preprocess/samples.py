"""A train-view sample (what calibration files hold) in the runtime view a deployed model takes.

The Quantized Cosine of a converted input compares the float model on the train-view sample
with the `.bc` on this conversion of it (lossy for nv12, as hb_compile says).
"""

from __future__ import annotations

import numpy as np

from engine.preprocess.conversion import runtime_input
from engine.runtime import color


def to_runtime(x: np.ndarray, rt_type: str, train_type: str, train_layout: str | None,
               space_and_range: str = "regular", rt_layout: str | None = None) -> np.ndarray:
    """`x`: one sample in the train view (N,C,H,W or N,H,W,C float, 0–255, train colour order)."""
    spec = runtime_input(rt_type, tuple(x.shape), train_layout, rt_layout)
    if rt_type == "featuremap" or train_type == "featuremap":
        return np.ascontiguousarray(x, dtype=spec.dtype)
    nhwc = x if train_layout == "NHWC" else np.transpose(x, (0, 2, 3, 1))
    offset = 128 if train_type == "yuv444_128" else 0  # `_128` types hold the value − 128 as int8
    img = np.clip(np.rint(np.asarray(nhwc, np.float64) + offset), 0, 255).astype(np.uint8)
    full = color.is_full_range(space_and_range)
    stored = "yuv444" if train_type == "yuv444_128" else train_type
    if rt_type in (train_type, stored) or (rt_type == "yuv444_128" and stored == "yuv444"):
        out = img
    elif {rt_type, stored} == {"rgb", "bgr"}:
        out = img[..., ::-1]
    elif rt_type == "nv12":
        out = {"rgb": lambda: color.rgb_to_nv12(img, full), "bgr": lambda: color.bgr_to_nv12(img, full),
               "yuv444": lambda: color.yuv444_to_nv12(img)}[stored]()
    elif rt_type.startswith("yuv444"):
        out = {"rgb": lambda: color.rgb_to_yuv444(img, full), "bgr": lambda: color.bgr_to_yuv444(img, full)}[
            stored]()
    else:
        raise ValueError(f"no sample conversion from {train_type} to {rt_type}")
    if spec.layout == "NCHW" and out.ndim == 4:
        out = np.transpose(out, (0, 3, 1, 2))
    out = out.reshape(spec.shape)
    if spec.dtype == np.int8:  # yuv444_128
        return np.ascontiguousarray((out.astype(np.int16) - 128).astype(np.int8))
    return np.ascontiguousarray(out, dtype=spec.dtype)
