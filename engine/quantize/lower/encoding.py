"""How one float tensor is held as integers in the `.bc`: dtype, scale(s), zero point.

The plan's scheme is symmetric int8 (zero point 0). The integer program executes int8 as
**uint8 with zero point 128** — the same values shifted by 128 — because onnxruntime's x86
integer kernels are fastest with uint8 activations and int8 weights (DESIGN §5). QuantizeLinear
with uint8/128 saturates to codes 0..255, i.e. int8 values -128..127: exactly int8's range, so the
two encodings agree value for value. int16 tensors stay int16 (zero point 0); int32 holds the
accumulators of si32 outputs (per-channel scale s_in · s_w).

`quantize` / `dequantize` reproduce onnxruntime's QuantizeLinear / DequantizeLinear bit for bit
(float32 `x / scale`, round half to even, saturate; `(q - zp) · scale`), so tables computed here
agree with what the model computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.quantize.types import ActQuant

DTYPES = {"uint8": np.uint8, "int16": np.int16, "int32": np.int32, "int8": np.int8}
UINT8_ZERO_POINT = 128


@dataclass(frozen=True)
class Encoding:
    """An integer encoding: value = (code - zero_point) · scale (per channel along `axis` if set)."""

    dtype: str  # uint8 | int16 | int32 | int8 (weights only)
    scale: float | tuple[float, ...]
    zero_point: int = 0
    axis: int | None = None

    @classmethod
    def of(cls, act: ActQuant) -> Encoding:
        """The executed encoding of a planned activation (int8 → uint8/128, or 128 + its zero point
        for an offset range (planner.OffsetAct); int16 → int16/0)."""
        if act.bits not in (8, 16):
            raise ValueError(f"activation '{act.tensor}': {act.bits}-bit activations are not supported")
        dtype, zp = ("uint8", UINT8_ZERO_POINT + int(getattr(act, "zero_point", 0))) if act.bits == 8 else ("int16", 0)
        if act.axis is None:
            return cls(dtype, _positive(float(act.scale)), zp)
        scales = np.atleast_1d(np.asarray(act.scale, dtype=np.float64))
        return cls(dtype, tuple(_positive(float(s)) for s in scales), zp, act.axis)

    @classmethod
    def accumulator(cls, scale: np.ndarray, axis: int = 1) -> Encoding:
        """int32 accumulator at s_in · s_w per output channel (an si32 output)."""
        return cls("int32", tuple(float(s) for s in np.atleast_1d(scale)), 0, axis)

    @property
    def np_dtype(self) -> type[np.integer]:
        return DTYPES[self.dtype]

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.np_dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.np_dtype).max)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def scale_array(self) -> np.ndarray:
        return np.asarray(self.scale, dtype=np.float32)

    def zero_point_array(self) -> np.ndarray:
        zp = np.asarray(self.zero_point, dtype=self.np_dtype)
        return np.full(len(self.scale), zp, dtype=self.np_dtype) if self.per_channel else zp

    def _broadcast(self, a: np.ndarray, ndim: int) -> np.ndarray:
        if not self.per_channel:
            return a
        shape = [1] * ndim
        shape[self.axis % ndim] = -1
        return a.reshape(shape)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        """Like DequantizeLinear: (q - zp) · scale in float32."""
        codes = np.asarray(codes)
        scale = self._broadcast(self.scale_array(), codes.ndim)
        return ((codes.astype(np.float32) - np.float32(self.zero_point)) * scale).astype(np.float32)

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Like QuantizeLinear: rint(x / scale) (half to even) + zp, saturated to the dtype."""
        values = np.asarray(values, dtype=np.float32)
        scale = self._broadcast(self.scale_array(), values.ndim)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = np.rint(values / scale).astype(np.float64) + self.zero_point
        q = np.nan_to_num(q, nan=float(self.zero_point))
        return np.clip(q, self.qmin, self.qmax).astype(self.np_dtype)

    def same_as(self, other: Encoding) -> bool:
        """Same codes mean the same values (so no requantization is needed between the two)."""
        return (self.dtype, self.zero_point, self.axis) == (other.dtype, other.zero_point, other.axis) and \
            np.array_equal(self.scale_array(), other.scale_array())

    def to_json(self) -> dict:
        scale = [float(s) for s in self.scale_array()] if self.per_channel else float(np.float32(self.scale))
        out = {"scale": scale, "zero_point": int(self.zero_point), "dtype": self.dtype}
        if self.per_channel:
            out["axis"] = int(self.axis)
        return out


MIN_SCALE = 1e-30


def _positive(scale: float) -> float:
    """Threshold 0 (an all-zero calibration tensor) means nothing passes: a vanishing scale keeps
    that meaning (every value saturates to ~0) without dividing by zero in any kernel."""
    return scale if np.isfinite(scale) and scale > MIN_SCALE else MIN_SCALE
