"""Per-output-channel arithmetic on Conv / ConvTranspose / Gemm weights (shared by the folds).

Scaling output channel o by f[o] means multiplying every weight that produces channel o:

    Conv           W: [M, C/g, k...]    channel o = W[o]                          → W * f[:, None, ...]
    ConvTranspose  W: [C, M/g, k...]    channel o = g_i·(M/g) + j for W[g_i·C/g + c, j]
                   → view W as [g, C/g, M/g, k...] and multiply by f viewed as [g, 1, M/g, 1...]
    Gemm           B: [K, M] (transB=0) → B * f[None, :];  B: [M, K] (transB=1) → B * f[:, None]

Maths is done in float64 and cast back to the weight's dtype, so folding adds no rounding of its own.
"""

from __future__ import annotations

import numpy as np
import onnx

from engine.passes.graph import attr

WEIGHTED = ("Conv", "ConvTranspose", "Gemm")


def output_channels(node: onnx.NodeProto, weight: np.ndarray) -> int:
    """M, the number of output channels the weight of `node` produces."""
    if node.op_type == "Conv":
        return weight.shape[0]
    if node.op_type == "ConvTranspose":
        return weight.shape[1] * int(attr(node, "group", 1))
    return weight.shape[0] if attr(node, "transB", 0) else weight.shape[1]


def scale_output_channels(node: onnx.NodeProto, weight: np.ndarray, f: np.ndarray) -> np.ndarray:
    """The weight of `node` with output channel o multiplied by f[o] (see the module docstring)."""
    w = weight.astype(np.float64)
    f = np.asarray(f, dtype=np.float64)
    if node.op_type == "Conv":
        out = w * f.reshape((-1,) + (1,) * (w.ndim - 1))
    elif node.op_type == "ConvTranspose":
        group = int(attr(node, "group", 1))
        c_in, m_per_group, kernel = w.shape[0], w.shape[1], w.shape[2:]
        view = w.reshape((group, c_in // group, m_per_group) + kernel)
        out = (view * f.reshape((group, 1, m_per_group) + (1,) * len(kernel))).reshape(w.shape)
    elif attr(node, "transB", 0):
        out = w * f[:, None]
    else:
        out = w * f[None, :]
    return out.astype(weight.dtype)


def per_channel(value: np.ndarray, rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """`value` as a length-`channels` vector if, broadcast against a rank-`rank` tensor whose
    dim `axis` has `channels` entries, it only varies along that axis (or not at all); else None.

    A constant of higher rank, or one that would broadcast the batch or a spatial dim, is refused.
    """
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)) if value.size == 1 else value.reshape(channels)
