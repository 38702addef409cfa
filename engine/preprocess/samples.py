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
    img = np.clip(np.rint(nhwc), 0, 255).astype(np.uint8)
    full = color.is_full_range(space_and_range)
    if rt_type == train_type:
        out = img
    elif {rt_type, train_type} == {"rgb", "bgr"}:
        out = img[..., ::-1]
    elif rt_type == "nv12":
        out = {"rgb": lambda: color.rgb_to_nv12(img, full), "bgr": lambda: color.bgr_to_nv12(img, full),
               "yuv444": lambda: color.yuv444_to_nv12(img)}[train_type]()
    elif rt_type.startswith("yuv444"):
        out = {"rgb": lambda: color.rgb_to_yuv444(img, full), "bgr": lambda: color.bgr_to_yuv444(img, full)}[
            train_type]()
    else:
        raise ValueError(f"no sample conversion from {train_type} to {rt_type}")
    if spec.layout == "NCHW" and out.ndim == 4:
        out = np.transpose(out, (0, 3, 1, 2))
    return np.ascontiguousarray(out.reshape(spec.shape), dtype=spec.dtype)
