"""Inputs for a model: seeded random data, and a train-view sample turned into the runtime view.

A calibration sample (or any float-model input) is in the **train view**: `input_type_train`
colours in `input_layout_train`, 0–255, without mean/scale. The `.bc` / `.hbm` take the **runtime
view** (`input_type_rt`, DESIGN §6). `to_runtime` converts one into the other with the helpers
of `engine.runtime.color` (BT.601, the range `input_space_and_range` names), so one sample can
be fed to the float model and to the deployed model alike (hb_verifier's cosine mode).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.problems import ConfigError, error
from engine.runtime import color

_ORT_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int16)": np.int16,
              "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
              "tensor(bool)": np.bool_}


def random_array(shape: Sequence[Any], dtype: Any, rng: np.random.Generator) -> np.ndarray:
    """Uniform 0–255 codes for 8-bit inputs (pixels, NV12 bytes), standard normal floats, small ints."""
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(dims).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, dims).astype(bool)
    info = np.iinfo(dtype)
    lo, hi = (int(info.min), int(info.max)) if dtype.itemsize == 1 else (0, 4)
    return rng.integers(lo, hi + 1, dims).astype(dtype)


def random_feeds(args: Sequence[Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for onnxruntime `NodeArg`s (or anything with `name`, `shape`, `type`/`dtype`)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for a in args:
        dtype = _ORT_NUMPY.get(getattr(a, "type", ""), None) or getattr(a, "dtype", np.float32)
        feeds[a.name] = random_array(a.shape, dtype, rng)
    return feeds


# ------------------------------------------------------------------------ train → runtime view

def _image_nhwc(sample: np.ndarray, layout: str | None) -> np.ndarray:
    """A 4-D train sample as (N, H, W, C) uint8 pixels (rounded, clipped to 0–255)."""
    x = np.asarray(sample)
    if layout != "NHWC":
        x = np.transpose(x, (0, 2, 3, 1))
    if x.dtype != np.uint8:
        x = np.clip(np.rint(x.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def to_runtime(sample: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """One input's train-view sample → the runtime tensor the deployed model takes.

    `spec` is an input spec as the models store it (``hbcompile.inputs`` / the `.hbm` manifest):
    ``input_type_train``, ``input_layout_train``, ``input_type_rt``, ``input_layout_rt``,
    ``input_space_and_range``. featuremap inputs pass through as float32.
    """
    train = spec.get("input_type_train") or "featuremap"
    rt = spec.get("input_type_rt") or train
    name = spec.get("name", "input")
    if rt == "featuremap" or train == "featuremap":
        return np.asarray(sample, dtype=np.float32)
    if np.ndim(sample) != 4:
        raise ConfigError(error("input-view", f"Input '{name}': a {train} sample must be 4-D "
                                              f"({spec.get('input_layout_train') or 'NCHW'}), got shape "
                                              f"{list(np.shape(sample))}"))
    full = color.is_full_range(spec.get("input_space_and_range") or "regular")
    img = _image_nhwc(sample, spec.get("input_layout_train"))
    if train == "yuv444":
        rgb = color.yuv444_to_rgb(img, True)
    elif train == "bgr":
        rgb = img[..., ::-1]
    elif train == "gray":
        rgb = None
    else:
        rgb = img
    if rt == "gray":
        out = img if train == "gray" else None
    elif rt == "nv12" or rt == "yuv420sp_bt601_video":
        out = color.yuv444_to_nv12(img) if train == "yuv444" else \
            color.rgb_to_nv12(rgb, full and rt == "nv12") if rgb is not None else None
    elif rt in ("yuv444", "yuv_bt601_full"):
        out = img if train == "yuv444" else color.rgb_to_yuv444(rgb, True) if rgb is not None else None
    elif rt == "rgb":
        out = rgb
    elif rt == "bgr":
        out = None if rgb is None else rgb[..., ::-1]
    else:
        out = None
    if out is None:
        raise ConfigError(error("input-view", f"Input '{name}': no conversion from input_type_train '{train}' to "
                                              f"input_type_rt '{rt}'"))
    out = np.ascontiguousarray(out, dtype=np.uint8)
    if out.ndim == 4 and _rt_layout(rt, spec) == "NCHW":
        out = np.ascontiguousarray(np.transpose(out, (0, 3, 1, 2)))
    return out


def _rt_layout(rt: str, spec: Mapping[str, Any]) -> str | None:
    """The runtime tensor's layout: input_layout_rt if given, else the one the rt type implies."""
    from engine.preprocess.conversion import INPUT_TYPES

    t = INPUT_TYPES.get(rt)
    return spec.get("input_layout_rt") or (t.implied_layout if t is not None else None)
