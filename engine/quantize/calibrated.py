"""`*_calibrated_model.onnx`: the optimized float model plus fake-quant pairs from the plan.

Every quantized activation T gets a QuantizeLinear named ``<T>_HzCalibration`` and a
DequantizeLinear after it, holding T's calibrated threshold (scale = threshold / 127, or / 32767
for int16; zero point 0). Who reads the fake-quantized value:
- T made by an integer (BPU) op: every reader, and the model output. A model output keeps its
  name: the producer's output is renamed ``<T>_HzCalibration_input`` and the DequantizeLinear
  writes T;
- T made by a CPU node or a model input: only the integer ops that read it quantized (a CPU
  node next to them still reads the float value, as it would in the deployed model).
Weights are fake-quantized per output channel (QuantizeLinear / DequantizeLinear with `axis`);
a grouped ConvTranspose's weight is regrouped so one axis holds its output channels, then
reshaped back. Biases stay float here (bias-corrected where the plan says); the ptq model holds
them as int32.

Domains: int8 uses the default-domain QuantizeLinear (per-axis since opset 13), int16 the
default domain from opset 21 (onnxruntime 1.32 runs both), else the ``com.microsoft``
QuantizeLinear / DequantizeLinear, which take int16 and `axis` at any opset. Quantization is
onnxruntime's: round half to even, saturate to the integer type's full range.

The model's ``metadata_props["hb_calibration_tensors"]`` maps each fake-quantized tensor to the
tensor that holds its fake-quantized value, so reports can find it without guessing names.
The calibrated model uses `QuantPlan.calibrated_acts` (thresholds before shared scales);
`ptq.py` writes the same structure from `QuantPlan.acts` with integer weights and biases.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.passes.graph import constant_node_value, used_names
from engine.quantize.planner import bias_value, quantize_weight, zero_point_of
from engine.quantize.types import ActQuant, QuantPlan, WeightQuant

SUFFIX = "_HzCalibration"
MAP_KEY = "hb_calibration_tensors"
MS_DOMAIN = "com.microsoft"
_QTYPE = {8: TensorProto.INT8, 16: TensorProto.INT16, 32: TensorProto.INT32}
_NPTYPE = {8: np.int8, 16: np.int16, 32: np.int32}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


_TENSOR_TYPES = {np.dtype(t): helper.np_dtype_to_tensor_dtype(np.dtype(t))
                 for t in (np.float32, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64)}


def initializer(value: np.ndarray, name: str) -> onnx.TensorProto:
    """`numpy_helper.from_array(value, name)` for the plain numeric arrays the writers store: the same
    message (dims, name, data_type, raw_data), without its per-call dtype checks and byte-order copy
    (PP-OCRv4 det's ptq model: ~640 initializers, ~40 % of its build time)."""
    dtype = _TENSOR_TYPES.get(value.dtype)
    if dtype is None or not name or sys.byteorder != "little" or not value.flags.c_contiguous:
        return numpy_helper.from_array(value, name)
    return onnx.TensorProto(dims=value.shape, name=name, data_type=dtype, raw_data=value.tobytes())


def scale_zero_point(scale: float | np.ndarray, bits: int, zero_point: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The values of a Q/DQ pair's scale (float32) and zero point (int`bits`) initializers."""
    s = np.asarray(scale, np.float32)
    return s, np.full(s.shape, zero_point, _NPTYPE[bits])


def _subgraph_rename(node: onnx.NodeProto, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                _subgraph_rename(n, old, new)


class QdqWriter:
    """Adds Q/DQ pairs and dequantized constants to a copy of a model, each placed right after
    the node that makes its input (so the graph stays topologically sorted)."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.plan = plan
        self.g = self.model.graph
        self.opset = _opset(self.model)
        self.index = {o: i for i, n in enumerate(self.g.node) for o in n.output if o}
        self.after: dict[int, list[onnx.NodeProto]] = {}  # node index (-1: the start) → nodes to add after it
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}
        self.taken = ({n.name for n in self.g.node} | set(self.index) | set(self.inits)
                      | {i.name for i in self.g.input})
        self.mapping: dict[str, str] = {}
        # activation / weight → the names of its scale and zero-point initializers
        self.act_params: dict[str, tuple[str, str]] = {}
        self.weight_params: dict[str, tuple[str, str]] = {}
        self.uses_ms = False
        self.replaced: set[str] = set()  # float constants now read through a DequantizeLinear
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.g.node:
            for t in dict.fromkeys(used_names(n)):
                self.readers.setdefault(t, []).append(n)

    # --- names and constants -------------------------------------------------------------------
    def name(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.g.initializer.append(initializer(np.asarray(value, order="C"), name))
        return name

    def domain(self, bits: int) -> str:
        if bits in (8, 32) and self.opset >= 13 or bits == 16 and self.opset >= 21:
            return ""
        self.uses_ms = True
        return MS_DOMAIN

    def _anchor(self, tensor: str) -> int:
        return self.index.get(tensor, -1)

    def _add(self, anchor: int, *nodes: onnx.NodeProto) -> None:
        self.after.setdefault(anchor, []).extend(nodes)

    def _scale_zp(self, base: str, scale: float | np.ndarray, bits: int, zero_point: int = 0) -> tuple[str, str]:
        s, zp = scale_zero_point(scale, bits, zero_point)
        return self.const(f"{base}_scale", s), self.const(f"{base}_zero_point", zp)

    def _axis(self, axis: int | None, scale: float | np.ndarray) -> dict:
        return {"axis": axis} if axis is not None and np.ndim(scale) else {}

    # --- activations -----------------------------------------------------------------------------
    def fake_quant(self, act: ActQuant, readers: Iterable[onnx.NodeProto], whole: bool) -> str:
        """Q/DQ on `act.tensor`; `readers` switch to the fake-quantized value. `whole`: every
        reader and the model output see it (T made by an integer op). Returns the DQ output."""
        t = act.tensor
        base = f"{t}{SUFFIX}"
        scale = act.scale
        s, zp = self._scale_zp(base, scale, act.bits, zero_point_of(act))
        self.act_params[t] = (s, zp)
        source, out = t, None
        if whole and t in self.outputs and t in self.index:
            source = self.name(f"{base}_input")
            producer = self.g.node[self.index[t]]
            for i, o in enumerate(producer.output):
                if o == t:
                    producer.output[i] = source
            out = t
        q_out = self.name(f"{base}_quantized")
        out = out or self.name(f"{base}_output")
        domain = self.domain(act.bits)
        threshold = np.asarray(act.threshold, np.float64)
        doc = (f"threshold={float(threshold) if threshold.ndim == 0 else threshold.round(6).tolist()} "
               f"bits={act.bits} method={act.method or '-'}")
        q = helper.make_node("QuantizeLinear", [source, s, zp], [q_out], name=self.name(base), domain=domain,
                             doc_string=doc, **self._axis(act.axis, scale))
        dq = helper.make_node("DequantizeLinear", [q_out, s, zp], [out], name=self.name(f"{base}_dequantize"),
                              domain=domain, **self._axis(act.axis, scale))
        if out != t:
            for n in readers:
                _subgraph_rename(n, t, out)
        self._add(self._anchor(t), q, dq)
        self.mapping[t] = out
        return out

    # --- weights and biases ----------------------------------------------------------------------
    @staticmethod
    def _regrouped(value: np.ndarray, wq: WeightQuant) -> tuple[np.ndarray, list]:
        """W [C_in, C_out/G, k…] as [C_in/G, C_out, k…] (axis 1 = output channel), and the two
        shapes `_ungroup` reshapes it through to get W's layout back."""
        g, cin, cog, k = wq.groups, value.shape[0], value.shape[1], value.shape[2:]
        grouped = value.reshape(g, cin // g, cog, *k).swapaxes(0, 1).reshape(cin // g, g * cog, *k)
        return grouped, [(cin // g, g, cog, *k), (cin, cog, *k)]

    def _ungroup(self, base: str, source: str, shapes: list, out: str) -> list[onnx.NodeProto]:
        mid, final = shapes
        perm = [1, 0, *range(2, len(mid))]
        r1 = self.name(f"{base}_regroup_reshaped")
        tr = self.name(f"{base}_regroup_transposed")
        return [
            helper.make_node("Reshape", [source, self.const(f"{base}_regroup_shape", np.array(mid, np.int64))], [r1],
                             name=self.name(f"{base}_regroup_reshape")),
            helper.make_node("Transpose", [r1], [tr], name=self.name(f"{base}_regroup_transpose"), perm=perm),
            helper.make_node("Reshape", [tr, self.const(f"{base}_ungroup_shape", np.array(final, np.int64))], [out],
                             name=self.name(f"{base}_ungroup_reshape")),
        ]

    def weight(self, wq: WeightQuant, integer: bool) -> str | None:
        """Per-channel weight: fake-quant of the float weight (calibrated) or DequantizeLinear of its
        int8 values (ptq, `integer`). Rewires the integer ops that use it; returns the new tensor."""
        value = self.constant(wq.tensor)
        if value is None:
            return None
        base = f"{wq.tensor}{SUFFIX}"
        domain = self.domain(8)
        scale = np.asarray(wq.scale, np.float32)
        shapes = None
        stored = quantize_weight(value, wq) if integer else value.astype(np.float32)
        if wq.groups > 1:
            stored, shapes = self._regrouped(stored, wq)
        axis = 1 if wq.groups > 1 else wq.axis
        s, zp = self._scale_zp(base, scale, 8)
        self.weight_params[wq.tensor] = (s, zp)
        nodes: list[onnx.NodeProto] = []
        if integer:
            source = self.const(f"{wq.tensor}_quantized", stored)
        else:
            source = self.const(f"{base}_grouped", stored) if shapes else wq.tensor
            q_out = self.name(f"{base}_quantized")
            nodes.append(helper.make_node("QuantizeLinear", [source, s, zp], [q_out], name=self.name(base),
                                          domain=domain, axis=axis))
            source = q_out
        deq = self.name(f"{base}_dequantized" if shapes else f"{base}_output")
        nodes.append(helper.make_node("DequantizeLinear", [source, s, zp], [deq], name=self.name(f"{base}_dequantize"),
                                      domain=domain, axis=axis))
        out = deq
        if shapes:
            out = self.name(f"{base}_output")
            nodes += self._ungroup(base, deq, shapes, out)
        for n in self.readers.get(wq.tensor, []):
            if (p := self.plan.nodes.get(n.name)) is None or p.weight != wq.tensor:
                continue
            _subgraph_rename(n, wq.tensor, out)
        self.replaced.add(wq.tensor)
        self._add(-1, *nodes)
        return out

    def bias(self, tensor: str, scale: np.ndarray, values: np.ndarray) -> str:
        """int32 bias: DequantizeLinear of round(b / scale) at `scale` per output channel."""
        base = f"{tensor}{SUFFIX}"
        s32 = np.asarray(scale, np.float32)
        q = self.const(f"{tensor}_quantized", values)
        s = self.const(f"{base}_scale", s32)
        zp = self.const(f"{base}_zero_point", np.zeros(s32.shape, np.int32))
        out = self.name(f"{base}_output")
        axis = max(values.ndim - 1, 0)
        self._add(-1, helper.make_node("DequantizeLinear", [q, s, zp], [out], name=self.name(f"{base}_dequantize"),
                                       domain=self.domain(32), axis=axis))
        for n in self.readers.get(tensor, []):
            if (p := self.plan.nodes.get(n.name)) is not None and p.bias == tensor:
                _subgraph_rename(n, tensor, out)
        self.replaced.add(tensor)
        return out

    def corrected_bias(self, tensor: str, values: np.ndarray) -> str:
        """A float bias replaced by its bias-corrected values (for the integer ops that use it)."""
        out = self.const(f"{tensor}_corrected", np.asarray(values, np.float32))
        for n in self.readers.get(tensor, []):
            if (p := self.plan.nodes.get(n.name)) is not None and p.bias == tensor:
                _subgraph_rename(n, tensor, out)
        self.replaced.add(tensor)
        return out

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self.index:
            node = self.g.node[self.index[name]]
            if node.op_type == "Constant":
                return constant_node_value(node)
        return None

    # --- activations from the plan -----------------------------------------------------------------
    def activations(self, acts: Mapping[str, ActQuant]) -> None:
        producers = {o: self.g.node[i] for o, i in self.index.items()}
        for t, act in acts.items():
            made = producers.get(t)
            made_on_bpu = made is not None and self.plan.nodes.get(made.name) is not None and \
                self.plan.nodes[made.name].on == "BPU"
            readers = [n for n in self.readers.get(t, []) if made_on_bpu or (
                (p := self.plan.nodes.get(n.name)) is not None and p.on == "BPU" and t in p.act_inputs)]
            self.fake_quant(act, readers, made_on_bpu)

    # --- the result ----------------------------------------------------------------------------------
    def finish(self, stage: str) -> onnx.ModelProto:
        nodes = list(self.after.get(-1, []))
        for i, node in enumerate(self.g.node):
            nodes.append(node)
            nodes.extend(self.after.get(i, []))
        del self.g.node[:]
        self.g.node.extend(nodes)
        self.after = {}
        self.index = {o: i for i, n in enumerate(self.g.node) for o in n.output if o}
        used = {t for n in self.g.node for t in used_names(n)} | self.outputs
        for i in reversed(range(len(self.g.initializer))):  # float weights the int8 ones replaced
            if self.g.initializer[i].name in self.replaced - used:
                del self.g.initializer[i]
        renamed = {v for v in self.mapping if self.mapping[v] == v}
        for i in reversed(range(len(self.g.value_info))):  # a renamed producer output keeps no stale type
            if self.g.value_info[i].name in renamed:
                del self.g.value_info[i]
        if self.uses_ms and not any(o.domain == MS_DOMAIN for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        for i in reversed(range(len(self.model.metadata_props))):
            if self.model.metadata_props[i].key == MAP_KEY:
                del self.model.metadata_props[i]
        self.model.metadata_props.add(key=MAP_KEY, value=json.dumps(self.mapping))
        self.model.metadata_props.add(key="hbcompile.quantize", value=stage)
        return self.model


@dataclass
class CalibratedModel:
    """A calibrated model and, per fake-quantized activation and weight, the names of its scale and
    zero-point initializers: what another plan with the same layout changes (other thresholds; a
    weight's scale too where its int32 bias needs a coarser step). `engine.quantize.search` feeds them
    to one session instead of building a model per candidate."""

    model: onnx.ModelProto
    act_params: dict[str, tuple[str, str]]
    weight_params: dict[str, tuple[str, str]]


def calibrated_model(model: onnx.ModelProto, plan: QuantPlan) -> CalibratedModel:
    """`build_calibrated_model` with the names of its activation and weight scale / zero-point initializers."""
    writer = QdqWriter(model, plan)
    writer.activations(plan.calibrated_acts or plan.acts)
    for wq in plan.weights.values():
        writer.weight(wq, integer=False)
    for bq in plan.biases.values():
        value = writer.constant(bq.tensor)
        if value is not None and getattr(bq, "correction", None) is not None:
            writer.corrected_bias(bq.tensor, bias_value(value, bq))
    return CalibratedModel(writer.finish("calibrated"), writer.act_params, writer.weight_params)


def build_calibrated_model(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """The calibrated model: fake-quant activations (calibrated thresholds) and weights."""
    return calibrated_model(model, plan).model


def calibration_map(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor → the tensor holding its fake-quantized value, from a calibrated / ptq model."""
    raw = next((p.value for p in model.metadata_props if p.key == MAP_KEY), "{}")
    return dict(json.loads(raw))


__all__ = ["MAP_KEY", "SUFFIX", "CalibratedModel", "QdqWriter", "build_calibrated_model", "calibrated_model",
           "calibration_map", "initializer", "scale_zero_point"]
