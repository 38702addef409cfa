"""Bias correction (`optimization: bias_correction`): undo the mean shift int8 weights add.

Rounding a weight per output channel leaves an error ΔW = q(W) − W whose effect on the output
is not zero-mean when the input is not: E[q(W)·x] − E[W·x] = ΔW · E[x]. Activations after
ReLU / HardSwish and a learnable affine have per-channel means far from zero, so every output
channel of the next layer moves by a constant — which later layers, thresholds and a sigmoid
head turn into real error. The correction (Nagel et al., "Data-Free Quantization", §4.2, with
the mean measured on calibration data instead of derived from BatchNorm):

    b'_c = b_c − Σ_k ΔW[c, k, …] · E[x_k]        (k over the input channels the output c reads)

E[x_k] is the per-channel mean of the layer's float input over every position and calibration
sample. It is kept per sample (sums and counts, like the statistics memo) and merged exactly, so a
changed calibration file re-runs one forward pass. Covered: Conv (any group) and Gemm with a
per-channel bias; a layer without a bias input has nothing to correct (noted).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.quantize.planner import quantize_weight, weight_scale_array
from engine.quantize.types import QuantPlan


@dataclass(frozen=True)
class ChannelMean:
    """Per-channel sums of a tensor over one or more samples (mergeable: add sums and counts)."""

    sums: np.ndarray  # float64, one per channel
    count: int  # values per channel

    @property
    def mean(self) -> np.ndarray:
        return self.sums / max(self.count, 1)

    def __add__(self, other: ChannelMean) -> ChannelMean:
        return ChannelMean(self.sums + other.sums, self.count + other.count)


@dataclass(frozen=True)
class Layer:
    """A layer whose bias can absorb its weight error."""

    node: str
    op_type: str
    input: str  # activation input
    weight: str
    bias: str
    channel_axis: int  # of the input: 1 for Conv (NCHW), -1 for Gemm


def layers(model: onnx.ModelProto, plan: QuantPlan) -> tuple[list[Layer], list[str]]:
    """The correctable layers of the plan, and notes on integer layers that have no bias."""
    out, notes = [], []
    for n in model.graph.node:
        p = plan.nodes.get(n.name)
        if p is None or p.on != "BPU" or p.weight is None or n.op_type not in ("Conv", "Gemm"):
            continue
        if n.op_type == "Gemm" and any(a.name == "transA" and a.i for a in n.attribute):
            continue
        if p.bias is None:
            notes.append(f"bias_correction: {n.name} has no (per-channel) bias to correct")
            continue
        out.append(Layer(n.name, n.op_type, n.input[0], p.weight, p.bias, 1 if n.op_type == "Conv" else -1))
    return out, notes


def channel_means(values: Mapping[str, np.ndarray], wanted: Mapping[str, int]) -> dict[str, ChannelMean]:
    """Per-channel sums of each wanted tensor (tensor → channel axis) from one sample's values."""
    out = {}
    for t, axis in wanted.items():
        x = np.asarray(values[t], np.float64)
        axis = axis % x.ndim
        others = tuple(d for d in range(x.ndim) if d != axis)
        out[t] = ChannelMean(x.sum(axis=others), int(x.size // x.shape[axis]))
    return out


def merge_means(per_sample: Sequence[Mapping[str, ChannelMean]]) -> dict[str, ChannelMean]:
    merged: dict[str, ChannelMean] = {}
    for sample in per_sample:
        for t, m in sample.items():
            merged[t] = merged[t] + m if t in merged else m
    return merged


def to_bytes(means: Mapping[str, ChannelMean]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{f"s/{t}": m.sums for t, m in means.items()}, **{f"n/{t}": np.array(m.count) for t, m in means.items()})
    return buf.getvalue()


def from_bytes(data: bytes) -> dict[str, ChannelMean]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        names = [k[2:] for k in z.files if k.startswith("s/")]
        return {t: ChannelMean(z[f"s/{t}"], int(z[f"n/{t}"])) for t in names}


def corrections(model: onnx.ModelProto, plan: QuantPlan, means: Mapping[str, ChannelMean]
                ) -> dict[str, np.ndarray]:
    """bias initializer → the per-channel value to add (−ΔW · E[x])."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    found, _ = layers(model, plan)
    out: dict[str, np.ndarray] = {}
    for layer in found:
        w, mean = consts.get(layer.weight), means.get(layer.input)
        if w is None or mean is None or layer.weight not in plan.weights:
            continue
        wq = plan.weights[layer.weight]
        dw = quantize_weight(w, wq) * weight_scale_array(wq, w.shape) - np.asarray(w, np.float64)
        mu = mean.mean
        node = nodes[layer.node]
        if layer.op_type == "Conv":
            group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            cout, cin_g = dw.shape[0], dw.shape[1]
            if mu.size != group * cin_g:
                continue
            per = dw.reshape(cout, cin_g, -1).sum(axis=2).reshape(group, cout // group, cin_g)
            shift = np.einsum("goc,gc->go", per, mu.reshape(group, cin_g)).reshape(-1)
        else:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            b_kn = dw.T if trans_b else dw  # K × N
            if mu.size != b_kn.shape[0]:
                continue
            alpha = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "alpha"), 1.0)
            shift = alpha * (mu @ b_kn)
        out[layer.bias] = (-shift).astype(np.float32)
    return out


def error_removed(model: onnx.ModelProto, plan: QuantPlan, shifts: Mapping[str, np.ndarray]) -> float:
    """The largest |correction| relative to its bias's scale s_in·s_w (how many int32 steps moved)."""
    steps = [float(np.max(np.abs(v) / np.asarray(plan.biases[b].scale, np.float64)))
             for b, v in shifts.items() if b in plan.biases and np.size(v)]
    return max(steps, default=0.0)


__all__ = ["ChannelMean", "Layer", "channel_means", "corrections", "error_removed", "from_bytes", "layers",
           "merge_means", "to_bytes"]
