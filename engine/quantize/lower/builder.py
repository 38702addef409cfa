"""The integer program under construction: its nodes and constants, and the two forms of a tensor.

Every float tensor `t` of the optimized model can exist in the `.bc` in two forms:

- its **integer form** `<t>_quantized` (an `Encoding`: uint8/128, int16 or int32, with its scale
  and zero point as initializers `<t>_quantized_scale` / `_zero_point`), made by the lowering of
  the BPU op that produces it, or by a QuantizeLinear where a float value enters the integer part
  (`HZ_PREPROCESS_FOR_<input>` at a model input, `<t>_quantize` after a CPU node);
- its **float form**, named `t` itself (`<t>_dequantized` for a model input), read by CPU nodes
  and by model outputs; for a quantized tensor it is `DequantizeLinear(<t>_quantized)`, created
  only when something reads it.

A tensor the plan quantizes has one value for every reader — the quantized one — exactly as in the
calibrated model, where every consumer reads the `<t>_HzCalibration` pair's output. A CPU node's
raw float output is therefore named `<t>_float` when the plan quantizes `t`.

Lowerings (engine.quantize.lower.*) only call the methods here; they never edit lists directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.problems import StageError, error
from engine.quantize import luts
from engine.quantize.lower.encoding import Encoding
from engine.quantize.planner import bias_value, quantize_bias, quantize_weight, weight_scale_array
from engine.quantize.types import QuantPlan

ONNX_DTYPE = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "int16": TensorProto.INT16,
              "int32": TensorProto.INT32, "float32": TensorProto.FLOAT}
MS = "com.microsoft"


def planner_bug(message: str) -> StageError:
    """The plan lacks something the integer program needs: a planner bug, reported in words."""
    return StageError(error("integer-lowering", f"Cannot lower the model to integer: {message}"))


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class QTensor:
    """A tensor in integer form: its name in the `.bc`, its encoding and its parameter initializers."""

    name: str
    enc: Encoding
    scale: str
    zero_point: str


@dataclass(frozen=True)
class QWeight:
    """A constant weight as int8 codes with per-output-channel scales (symmetric, zero point 0)."""

    name: str  # int8 initializer (uint8 codes + 128 when stored unsigned)
    scale: str  # float32 initializer, one per output channel
    zero_point: str  # zeros (int8, per channel) or 128 (uint8, per tensor)
    scales: np.ndarray  # float32, per output channel


class Builder:
    def __init__(self, model: onnx.ModelProto, plan: QuantPlan):
        self.model, self.plan = model, plan
        g = model.graph
        self.opsets = [o for o in model.opset_import]
        self.opset = next((o.version for o in self.opsets if o.domain in ("", "ai.onnx")), 13)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.source_init = {t.name: t for t in g.initializer}
        self.constant_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.graph_inputs = [i.name for i in g.input if i.name not in self.source_init]
        self.graph_outputs = [o.name for o in g.output]
        self.shapes = {v.name: _dims(v) for v in [*g.input, *g.value_info, *g.output]}
        self.elem_types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
        self.taken = set(self.source_init) | set(self.producer) | set(self.graph_inputs) | \
            {n.name for n in g.node}
        self.int_forms: dict[str, QTensor] = {}
        self.float_forms: dict[str, str] = {}
        self.node_map: dict[str, list[str]] = {}
        self.from_float: set[str] = set()  # integer forms quantized from a float value (not BPU-made)
        self.dequantized_forms: dict[str, str] = {}  # such tensors as an integer reader sees them
        self.emulated: dict[str, str] = {}  # BPU node → why it runs as float kernels
        self.emitted: set[str] = set()  # node names already used in the `.bc`
        self._copied: set[str] = set()
        self._owners: tuple[str, ...] = ()

    # ---- names, nodes, constants -------------------------------------------------------------

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    @contextmanager
    def lowering(self, *float_nodes: str) -> Iterator[None]:
        """Attribute the nodes emitted inside to these float nodes (`hbcompile.node_map`)."""
        previous, self._owners = self._owners, tuple(float_nodes)
        try:
            yield
        finally:
            self._owners = previous

    def emit(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None,
             domain: str = "", **attrs) -> onnx.NodeProto:
        """Add a node; `name` is the float node's own name for the node that replaces it."""
        if name is None:
            name = self.fresh(f"{self._owners[0] if self._owners else op}_{op}")
        elif name in self.emitted:
            name = self.fresh(name)
        self.taken.add(name)
        self.emitted.add(name)
        node = helper.make_node(op, list(inputs), list(outputs), name=name,
                                domain=domain or None, **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        for owner in self._owners:
            self.node_map.setdefault(owner, []).append(name)
        return node

    def copy_node(self, node: onnx.NodeProto, inputs: Sequence[str], outputs: Sequence[str],
                  name: str | None = None) -> None:
        """A float node as it is (CPU island, emulated op), with its inputs/outputs renamed."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        del new.output[:]
        new.input.extend(inputs)
        new.output.extend(outputs)
        if name:
            new.name = name
        if not new.name or new.name in self.emitted:
            new.name = self.fresh(f"{node.name or node.op_type}_float")
        self.emitted.add(new.name)
        self.nodes.append(new)
        for owner in self._owners:
            self.node_map.setdefault(owner, []).append(new.name)

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def is_constant(self, t: str) -> bool:
        return t in self.source_init or t in self.constant_nodes

    def constant_value(self, t: str) -> np.ndarray | None:
        if t in self.source_init:
            return numpy_helper.to_array(self.source_init[t])
        node = self.constant_nodes.get(t)
        if node is not None:
            from onnx.reference import ReferenceEvaluator

            return ReferenceEvaluator(helper.make_graph([node], "c", [], [
                helper.make_tensor_value_info(t, TensorProto.UNDEFINED, None)])).run(None, {})[0]
        return None

    def source_constant(self, t: str) -> str:
        """A constant of the float model, copied once into the `.bc` under its own name."""
        if t in self.source_init and t not in self._copied:
            self._copied.add(t)
            self.initializers.append(self.source_init[t])
        elif t in self.constant_nodes and t not in self._copied:
            self._copied.add(t)
            with self.lowering(self.constant_nodes[t].name):
                self.copy_node(self.constant_nodes[t], [], [t])
        return t

    def rank(self, t: str) -> int | None:
        dims = self.shapes.get(t)
        return None if dims is None else len(dims)

    # ---- plan -------------------------------------------------------------------------------

    def planned(self, t: str) -> Encoding | None:
        act = self.plan.acts.get(t)
        return None if act is None else Encoding.of(act)

    def required(self, t: str, why: str) -> Encoding:
        enc = self.planned(t)
        if enc is None:
            raise planner_bug(f"tensor '{t}' ({why}) has no quantization in the plan")
        return enc

    # ---- the two forms ------------------------------------------------------------------------

    def define_int(self, t: str, enc: Encoding, suffix: str = "_quantized",
                   initializer: np.ndarray | None = None) -> QTensor:
        """Name an integer tensor for `t` (its producer is emitted by the caller, or it is the
        constant `initializer`); with the default suffix it becomes `t`'s integer form."""
        name = self.fresh(f"{t}{suffix}")
        if initializer is not None:
            self.initializers.append(numpy_helper.from_array(initializer.astype(enc.np_dtype), name))
        q = self.params(name, enc)
        if suffix == "_quantized":
            self.int_forms[t] = q
        return q

    def params(self, name: str, enc: Encoding) -> QTensor:
        scale = self.const(f"{name}_scale", enc.scale_array())
        zp = self.const(f"{name}_zero_point", enc.zero_point_array())
        return QTensor(name, enc, scale, zp)

    def encoding_of(self, t: str) -> Encoding | None:
        """The encoding `t` has (or will have once `int_of` quantizes it)."""
        return self.int_forms[t].enc if t in self.int_forms else self.planned(t)

    def int_of(self, t: str) -> QTensor:
        """The integer form of `t`: made by its BPU producer, or quantized from its float form
        (a model input: `HZ_PREPROCESS_FOR_<input>`; a CPU output; a planned constant: its codes)."""
        if t in self.int_forms:
            return self.int_forms[t]
        enc = self.required(t, "read by an integer op")
        value = self.constant_value(t)
        if value is not None:
            q = self.define_int(t, enc, initializer=enc.quantize(value.astype(np.float32)))
            self.from_float.add(t)
            return q
        if t not in self.float_forms:
            raise planner_bug(f"tensor '{t}' is read before it is computed")
        q = self.define_int(t, enc)
        self.from_float.add(t)
        name = f"HZ_PREPROCESS_FOR_{t}" if t in self.graph_inputs else f"{t}_quantize"
        self.quantize(self.float_forms[t], q, name=self.fresh(name))
        return q

    def dequantized(self, t: str) -> str:
        """What an *integer* reader of `t` sees, as float (for emulated BPU ops): the dequantized
        integer form when the plan quantizes `t`, else its float form."""
        if t not in self.int_forms and self.planned(t) is None:
            return self.float_of(t)
        q = self.int_of(t)
        if t not in self.from_float:
            return self.float_of(t)
        if t not in self.dequantized_forms:
            name = self.fresh(f"{t}_dequantized")
            self.dequantize(q, name, name=self.fresh(f"{t}_dequantize"))
            self.dequantized_forms[t] = name
        return self.dequantized_forms[t]

    def float_of(self, t: str) -> str:
        """What a *float* reader of `t` (CPU node, model output) sees: a BPU-made tensor
        dequantized (every reader sees the quantized value), else the float value itself."""
        if t in self.float_forms:
            return self.float_forms[t]
        if self.is_constant(t):
            self.float_forms[t] = self.source_constant(t)
            return t
        if t not in self.int_forms:
            raise planner_bug(f"tensor '{t}' is read before it is computed")
        self.dequantize(self.int_forms[t], t, name=self.fresh(f"{t}_dequantize"))
        self.float_forms[t] = t
        return t

    def float_output(self, t: str) -> str:
        """A float node writes `t` under its own name: the float form (quantized only when an
        integer op reads it, `int_of`)."""
        self.float_forms[t] = t
        return t

    # ---- conversions ----------------------------------------------------------------------------

    def quantize(self, x: str, q: QTensor, name: str | None = None) -> None:
        """float → integer form, QuantizeLinear semantics (half to even, saturate) for every dtype."""
        enc = q.enc
        axis = enc.axis if enc.per_channel else None
        if enc.dtype in ("uint8", "int8") or (enc.dtype == "int16" and self.opset >= 21):
            self.emit("QuantizeLinear", [x, q.scale, q.zero_point], [q.name], name, axis=axis)
        elif enc.dtype == "int16":
            self.emit("QuantizeLinear", [x, q.scale, q.zero_point], [q.name], name, domain=MS, axis=axis)
        else:  # int32 (si32): no QuantizeLinear before opset 21 — the same arithmetic, spelled out
            scale = self.const(f"{q.name}_scale_b", self.broadcast_scale(enc, self.rank_of_int(q)))
            d, r, c = (self.fresh(f"{q.name}_{s}") for s in ("div", "round", "clip"))
            self.emit("Div", [x, scale], [d])
            self.emit("Round", [d], [r])
            lo = self.const(f"{q.name}_min", np.array(enc.qmin, np.float32))
            hi = self.const(f"{q.name}_max", np.array(2147483520.0, np.float32))  # largest float32 < 2^31
            self.emit("Clip", [r, lo, hi], [c])
            self.emit("Cast", [c], [q.name], name, to=TensorProto.INT32)

    def dequantize(self, q: QTensor, out: str, name: str | None = None) -> None:
        axis = q.enc.axis if q.enc.per_channel else None
        domain = MS if q.enc.dtype == "int16" and self.opset < 21 else ""
        self.emit("DequantizeLinear", [q.name, q.scale, q.zero_point], [out], name, domain=domain, axis=axis)

    def rank_of_int(self, q: QTensor) -> int:
        t = next((k for k, v in self.int_forms.items() if v.name == q.name), None)
        return (self.rank(t) if t else None) or 4

    @staticmethod
    def broadcast_scale(enc: Encoding, rank: int) -> np.ndarray:
        s = enc.scale_array()
        if not enc.per_channel:
            return s
        shape = [1] * rank
        shape[enc.axis % rank] = -1
        return s.reshape(shape)

    def lookup(self, x: QTensor, table: np.ndarray, out: QTensor, name: str | None = None) -> None:
        """out = table[x − code_min], as GatherElements over the flattened codes.

        onnxruntime's Gather took 1.5 ms for a 1×64×56×56 uint8 tensor (a generic per-element
        path), GatherElements on the flattened int32 codes 0.15 ms — the same table, 10× faster.
        A 4-D tensor is flattened in NHWC order (Transpose in, Transpose back): onnxruntime runs
        the integer convolutions around it in NHWC and cancels those Transposes against its own,
        where a Reshape of the NCHW tensor made it convert the layout twice per table (PP-OCRv4
        det: 48 such Transposes, ~4 ms of 45 at 1 thread).
        """
        from engine.quantize.luts import index_offset

        base = out.name
        idx, flat, picked, shape = (self.fresh(f"{base}_{s}") for s in ("index", "index_flat", "flat", "shape"))
        nhwc = self.rank_of_int(x) == 4
        source, target = x.name, out.name
        if nhwc:
            source, target = self.fresh(f"{base}_nhwc_in"), self.fresh(f"{base}_nhwc_out")
            self.emit("Transpose", [x.name], [source], perm=[0, 2, 3, 1])
        self.emit("Cast", [source], [idx], to=TensorProto.INT32)
        offset = index_offset(x.enc)
        if offset:
            shifted = self.fresh(f"{base}_index_shifted")
            self.emit("Add", [idx, self.const(f"{base}_offset", np.array(offset, np.int32))], [shifted])
            idx = shifted
        self.emit("Reshape", [idx, self.const(f"{base}_flat_shape", np.array([-1], np.int64))], [flat])
        table_name = self.const(f"{base}_table", table.astype(out.enc.np_dtype))
        self.emit("GatherElements", [table_name, flat], [picked], name, axis=0)
        self.emit("Shape", [source], [shape])
        self.emit("Reshape", [picked, shape], [target])
        if nhwc:
            self.emit("Transpose", [target], [out.name], perm=[0, 3, 1, 2])

    def requantize(self, x: QTensor, t: str, enc: Encoding, name: str | None = None) -> QTensor:
        """`x` re-encoded as `enc` (half to even, saturating) and registered as `t`'s integer form.

        The values of a requantization table (`luts.requantize_table`): as onnxruntime's
        QLinearLeakyRelu with alpha 1 (one pass through its own 256-entry table) when that op's
        table is this one at every code, else DequantizeLinear → QuantizeLinear (a third of a
        GatherElements table's cost).
        """
        out = self.define_int(t, enc)
        kernel = self.lookup_kernel(x.enc, enc, luts.requantize_table(x.enc, enc) if _per_tensor_uint8(x.enc, enc)
                                    else None, ("QLinearLeakyRelu", {"alpha": 1.0}))
        if kernel is not None:
            self.emit_lookup_kernel(kernel, x, out, name)
            return out
        f = self.fresh(f"{t}_requant_float")
        self.dequantize(x, f)
        self.quantize(f, out, name)
        return out

    @staticmethod
    def lookup_kernel(enc_in: Encoding, enc_out: Encoding, table: np.ndarray | None,
                      *candidates: tuple[str, dict]) -> tuple[str, dict] | None:
        """The first of onnxruntime's lookup kernels (`candidates`: op, attributes) whose own table
        for these encodings is `table` at every code (`luts.onnxruntime_table`), else None."""
        if table is None:
            return None
        for op, attrs in candidates:
            theirs = luts.onnxruntime_table(op, enc_in, enc_out, **attrs)
            if theirs is not None and np.array_equal(theirs, table):
                return op, attrs
        return None

    def emit_lookup_kernel(self, kernel: tuple[str, dict], x: QTensor, out: QTensor, name: str | None) -> None:
        op, attrs = kernel
        self.emit(op, [x.name, x.scale, x.zero_point, out.scale, out.zero_point], [out.name], name, domain=MS, **attrs)

    # ---- constants of integer ops -------------------------------------------------------------

    def weight(self, w: str, transpose: bool = False, unsigned: bool = False) -> QWeight:
        """A planned weight as int8 codes with its per-output-channel scales.

        Codes are the planner's (`planner.quantize_weight`: half to even, ±127), so the `.bc`, the
        ptq model and the plan agree; `transpose` stores a 2-D weight transposed (K×N for
        MatMulInteger from a transB Gemm); `unsigned` stores codes + 128 as uint8 with zero point
        128 — the same integers, in the form onnxruntime's ConvInteger runs fast (u8·u8 measured
        1.6 ms where u8·s8 took 8.2 ms on a 64-channel 56×56 3×3 conv).
        """
        wq = self.plan.weights.get(w)
        value = self.constant_value(w)
        if wq is None or value is None:
            raise planner_bug(f"weight '{w}' has no per-channel quantization in the plan")
        codes = quantize_weight(value, wq)
        if transpose:
            codes = codes.T.copy()
        scales = np.asarray(wq.scale, dtype=np.float32).reshape(-1)
        stored = (codes.astype(np.int16) + 128).astype(np.uint8) if unsigned else codes
        name = self.const(f"{w}_quantized", stored)
        scale = self.const(f"{w}_quantized_scale", scales)
        zp = self.const(f"{w}_quantized_zero_point",
                        np.array(128, np.uint8) if unsigned else np.zeros(scales.shape, np.int8))
        return QWeight(name, scale, zp, scales)

    def float_weight(self, w: str) -> str:
        """A planned weight as the float values of its int8 codes (what an emulated op reads):
        Cast(codes) · scale, folded to a constant by onnxruntime when the session starts."""
        wq = self.plan.weights.get(w)
        if wq is None:
            return self.dequantized(w)
        value = self.constant_value(w)
        return self._codes_times_scale(w, self.const(f"{w}_quantized", quantize_weight(value, wq)),
                                       self.const(f"{w}_quantized_scale",
                                                  weight_scale_array(wq, value.shape).astype(np.float32)))

    def _codes_times_scale(self, base: str, codes: str, scale: str) -> str:
        """Cast(codes) · scale: the float values of constant integer codes, in a form onnxruntime folds
        to a constant when the session starts (it never folds a DequantizeLinear)."""
        as_float, out = self.fresh(f"{base}_codes_float"), self.fresh(f"{base}_dequantized")
        self.emit("Cast", [codes], [as_float], to=TensorProto.FLOAT)
        self.emit("Mul", [as_float, scale], [out])
        return out

    def bias_codes(self, b: str, scale: np.ndarray) -> np.ndarray:
        """int32 bias at the plan's s_in · s_w (else `scale`), half to even, saturated.

        The value quantized is the plan's (`bias_value`: the model's bias plus its bias
        correction), the same one the ptq model holds, so the `.bc` computes the ptq model."""
        value = self.constant_value(b)
        if value is None:
            raise planner_bug(f"bias '{b}' is not a constant")
        planned = self.plan.biases.get(b)
        return quantize_bias(bias_value(value, planned), planned.scale if planned is not None else scale)

    def float_bias(self, b: str) -> str:
        """A planned bias as the float values of its int32 codes (for emulated ops): Cast(codes) · scale
        per output channel — DequantizeLinear's float(code) · scale, as `float_weight` writes it.

        Not a DequantizeLinear: onnxruntime never constant-folds one, and a float Conv whose bias is
        not a constant stays out of its NCHWc kernels (the plain NCHW Conv: im2col and a GEMM even
        for a depthwise conv). PP-OCRv4 det's 13 emulated convs (int16 operands), whole program,
        1 thread: 63.3 → 55.0 ms CPU."""
        planned = self.plan.biases.get(b)
        if planned is None:
            return self.dequantized(b)
        scale = np.asarray(planned.scale, dtype=np.float32).reshape(-1)
        return self._codes_times_scale(b, self.const(f"{b}_quantized", self.bias_codes(b, scale)),
                                       self.const(f"{b}_scale", scale))

    # ---- result --------------------------------------------------------------------------------

    def tensor_map(self) -> dict[str, dict]:
        """{float tensor: {tensor, scale, zero_point, dtype[, axis]}} for every tensor the `.bc` holds."""
        out: dict[str, dict] = {}
        for t, q in self.int_forms.items():
            out[t] = {"tensor": q.name, **q.enc.to_json()}
        for t, name in self.float_forms.items():
            if t not in out and not self.is_constant(t) and self._is_float(t):
                out[t] = {"tensor": name, "scale": 1.0, "zero_point": 0, "dtype": "float32"}
        return out

    def _is_float(self, t: str) -> bool:
        return self.elem_types.get(t, TensorProto.FLOAT) == TensorProto.FLOAT


def _per_tensor_uint8(*encs: Encoding) -> bool:
    return all(e.dtype == "uint8" and not e.per_channel for e in encs)


def _dims(v: onnx.ValueInfoProto) -> list | None:
    t = v.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]

