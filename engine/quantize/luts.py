"""Lookup tables: an elementwise function of one quantized tensor, as a table indexed by its code.

    table[code − code_min] = Q_out( f( DQ_in(code) ) )      for every code of the input's dtype

An 8-bit input has 256 codes (uint8, zero point 128), an int16 input 65 536; the output takes the
table's dtype. Because Q_out is QuantizeLinear itself (float32 x / scale, round half to even,
saturate — `Encoding.quantize`), a table reproduces the fake-quant (calibrated) model's value at
every input code exactly, whatever f is: Sigmoid, Tanh, HardSigmoid, HardSwish, Exp, GELU and SiLU
/ Mish groups, a scalar Mul or Add, a clamp with a change of scale, or plain requantization
(f = identity). This is how hb_compile's `HzLut` ops work, and how the `.bc` runs every such op:
`Gather(table, Cast<int32>(code) [+ 32768 for int16])`.

f is evaluated by onnxruntime on the float model's own nodes (`elementwise_function`), so the
table holds what the float and calibrated models compute, not a re-derivation of the formula.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from engine.pipeline.recent import Recent
from engine.quantize.lower.encoding import Encoding

Function = Callable[[np.ndarray], np.ndarray]

# ops that act on each element alone (other inputs, if any, must be scalar constants for a table)
ELEMENTWISE = frozenset({
    "Abs", "Add", "Celu", "Clip", "Cos", "Div", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "HardSwish",
    "Identity", "LeakyRelu", "Log", "Mish", "Mul", "Neg", "Pow", "Reciprocal", "Relu", "Round", "Selu",
    "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Swish", "Tanh", "ThresholdedRelu",
})


def input_codes(enc: Encoding) -> np.ndarray:
    """Every code of the input's dtype, in table order (index = code − code_min)."""
    if enc.per_channel or enc.dtype not in ("uint8", "int16"):
        raise ValueError(f"a lookup table needs a per-tensor uint8 or int16 input, not {enc}")
    return np.arange(enc.qmin, enc.qmax + 1, dtype=np.int64).astype(enc.np_dtype)


def index_offset(enc: Encoding) -> int:
    """What to add to a code to get its table index (0 for uint8, 32768 for int16)."""
    return -enc.qmin


def build_table(fn: Function, enc_in: Encoding, enc_out: Encoding) -> np.ndarray:
    """table[i] = Q_out(f(DQ_in(code_i))) for every input code."""
    if enc_out.per_channel:
        raise ValueError("a lookup table needs a per-tensor output encoding")
    x = enc_in.dequantize(input_codes(enc_in))
    y = np.asarray(fn(x), dtype=np.float32).reshape(-1)
    if y.shape != x.shape:
        raise ValueError(f"the tabulated function returned {y.size} values for {x.size} codes")
    return enc_out.quantize(y)


def requantize_table(enc_in: Encoding, enc_out: Encoding) -> np.ndarray:
    """Requantization as a table: table[i] = Q_out(DQ_in(code_i)) (half to even, saturating)."""
    return build_table(lambda x: x, enc_in, enc_out)


FUNCTIONS_KEPT = 256  # float functions (a tiny session each) a process keeps: every table op of a few models
_functions: Recent[bytes, Function] = Recent(FUNCTIONS_KEPT)


def elementwise_function(nodes: Sequence[onnx.NodeProto], source: str, output: str,
                         constants: Sequence[onnx.TensorProto],
                         opsets: Sequence[onnx.OperatorSetIdProto]) -> Function:
    """The float function `source → output` computed by `nodes` (elementwise, scalar constants).

    Runs the nodes themselves in onnxruntime on a 1-D tensor, so the table sees the same float
    kernels as the float model. Kept by the nodes', constants' and opsets' bytes: the planner's offset
    ranges and the quantize stage's tables ask for the same few functions on every run, and a session
    costs ~1 ms where a run costs ~20 µs.
    """
    key = b"\0".join([n.SerializeToString() for n in nodes] + [c.SerializeToString() for c in constants]
                      + [o.SerializeToString() for o in opsets] + [source.encode(), output.encode()])
    found = _functions.get(key)
    if found is None:
        found = _functions.put(key, _function(nodes, source, output, constants, opsets))
    return found


def _function(nodes: Sequence[onnx.NodeProto], source: str, output: str, constants: Sequence[onnx.TensorProto],
              opsets: Sequence[onnx.OperatorSetIdProto]) -> Function:
    from engine.runtime.session import open_session

    graph = helper.make_graph(
        list(nodes), "lookup_table",
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["codes"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], list(constants))
    model = helper.make_model(graph, opset_imports=list(opsets))
    model.ir_version = max(7, helper.find_min_ir_version_for(list(opsets), ignore_unknown=True))
    session = open_session(model, what="a lookup table's float function")

    def fn(x: np.ndarray) -> np.ndarray:
        return session.run(None, {source: np.asarray(x, dtype=np.float32).reshape(-1)})[0]

    return fn



def onnxruntime_table(op: str, enc_in: Encoding, enc_out: Encoding, **attrs) -> np.ndarray | None:
    """The uint8 table onnxruntime's own lookup kernel `op` (com.microsoft QLinearLeakyRelu /
    QLinearSigmoid) applies with these encodings: its output for every input code, or None when
    the encodings are not per-tensor uint8.

    Those kernels build a 256-entry table once and apply it in one pass over the bytes; a table
    this returns equal to the one we need means the op computes exactly our table. The encodings
    are fed (the kernels build their table from fed scales as from constant ones, the same bytes),
    so one session per op and attributes serves every encoding (`_table_kernel`).
    """
    if any(e.per_channel or e.dtype != "uint8" for e in (enc_in, enc_out)):
        return None
    feeds = {"x": input_codes(enc_in), "x_scale": enc_in.scale_array(), "x_zero_point": enc_in.zero_point_array(),
             "y_scale": enc_out.scale_array(), "y_zero_point": enc_out.zero_point_array()}
    session = _table_kernel(op, tuple(sorted(attrs.items())))
    return session.run(None, {k: np.asarray(v).reshape(()) if k != "x" else v for k, v in feeds.items()})[0]


_kernels: Recent[tuple, object] = Recent(8)


def _table_kernel(op: str, attrs: tuple[tuple[str, object], ...]):
    """A session of onnxruntime's lookup kernel `op` with `attrs`, its encodings fed as inputs."""
    from engine.quantize.lower.builder import MS
    from engine.runtime.session import open_session

    key = (op, attrs)
    found = _kernels.get(key)
    if found is not None:
        return found
    node = helper.make_node(op, ["x", "x_scale", "x_zero_point", "y_scale", "y_zero_point"], ["y"], domain=MS,
                            **dict(attrs))
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, [256])] + [
        helper.make_tensor_value_info(name, TensorProto.FLOAT if name.endswith("scale") else TensorProto.UINT8, [])
        for name in ("x_scale", "x_zero_point", "y_scale", "y_zero_point")]
    graph = helper.make_graph([node], "lookup", inputs, [helper.make_tensor_value_info("y", TensorProto.UINT8, [256])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    return _kernels.put(key, open_session(model, what=f"onnxruntime's {op}"))
