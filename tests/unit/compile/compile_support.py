"""Integer programs for the compile / runtime tests, made independently of our own lowering.

`integer_program(float_model)` quantizes a float model with onnxruntime's own static quantizer in
QOperator form (QLinearConv / QLinearAdd / QLinearSigmoid … on uint8 activations (asymmetric, so Relu folds
into the range), int8 per-channel weights, float islands between DequantizeLinear / QuantizeLinear for ops it
cannot quantize) and stamps the `.bc` metadata (`hbcompile.tensor_map`, `hbcompile.inputs`,
`hbcompile.march`, `hbcompile.node_map`) — the same shape of program the quantize stage writes,
from a peer implementation, so these tests do not depend on ours being finished.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from engine.preprocess import Normalization, attach_input_conversion, build_input_conversion
from tests.support.models import Builder

MARCH = "nash-e"


def conv_net(hw: int = 16, channels: tuple[int, ...] = (8, 8, 16), cpu_op: str | None = "Abs",
             lut: bool = True, input_name: str = "x", in_channels: int = 3, seed: int = 0,
             stride2: int | None = 1) -> onnx.ModelProto:
    """Conv+Relu stack (conv number `stride2` has stride 2), an optional float-only op after the
    second conv (a CPU island), a Sigmoid (a lookup table), GlobalAveragePool → "y" (1, C, 1, 1)."""
    b = Builder("conv_net", seed)
    x, c = b.input(input_name, [1, in_channels, hw, hw]), in_channels
    for i, cout in enumerate(channels):
        x = b.op("Relu", [b.conv(x, c, cout, stride=2 if i == stride2 else 1)])
        c = cout
        if i == 1 and cpu_op:
            x = b.op(cpu_op, [x])
    if lut:
        x = b.op("Sigmoid", [x])
    b.output(b.op("GlobalAveragePool", [x], out="y"))
    return b.build()


def mid_conv_net(hw: int = 112, seed: int = 0) -> onnx.ModelProto:
    """A mid-size CNN (~0.3 GMAC at 112x112): 3→32 stem, four stages up to 128 channels, residual adds."""
    b = Builder("mid_conv_net", seed)
    x = b.op("Relu", [b.conv(b.input("x", [1, 3, hw, hw]), 3, 32, stride=2)])
    c = 32
    for cout in (32, 64, 96, 128):
        y = b.op("Relu", [b.conv(x, c, cout, stride=2 if cout != 32 else 1)])
        z = b.conv(y, cout, cout)
        x = b.op("Relu", [b.op("Add", [z, y])])
        c = cout
    b.output(b.op("GlobalAveragePool", [x], out="y"))
    return b.build()


def calibration_samples(model: onnx.ModelProto, count: int = 4, seed: int = 0,
                        uint8: bool = False) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = []
    for _ in range(count):
        feed = {}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            if uint8 or vi.type.tensor_type.elem_type == onnx.TensorProto.UINT8:
                feed[vi.name] = rng.integers(0, 256, shape).astype(np.uint8)
            else:
                feed[vi.name] = rng.standard_normal(shape).astype(np.float32)
        out.append(feed)
    return out


def _quantize(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns about pre-processing on every call
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "float.onnx", Path(d) / "int.onnx"
        onnx.save(model, str(src))
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        return onnx.load(str(dst))


def _stamp(program: onnx.ModelProto, specs: list[dict], march: str) -> onnx.ModelProto:
    inits = {t.name: t for t in program.graph.initializer}
    tensor_map: dict[str, dict] = {}
    for node in program.graph.node:
        for out in node.output:
            if out.endswith("_quantized"):
                base = out[: -len("_quantized")]
                scale, zp = inits.get(f"{base}_scale"), inits.get(f"{base}_zero_point")
                if scale is not None and zp is not None:
                    z = numpy_helper.to_array(zp)
                    tensor_map[base] = {"tensor": out, "scale": float(numpy_helper.to_array(scale)),
                                        "zero_point": int(z), "dtype": z.dtype.name}
    node_map = {n.name[: -len("_quant")]: [n.name] for n in program.graph.node if n.name.endswith("_quant")}
    for key, value in (("hbcompile.tensor_map", tensor_map), ("hbcompile.inputs", specs),
                       ("hbcompile.march", march), ("hbcompile.node_map", node_map),
                       ("hbcompile.stage", "quantized"), ("hbcompile.version", "0.1.0")):
        program.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    return program


def featuremap_spec(model: onnx.ModelProto) -> list[dict]:
    inits = {t.name for t in model.graph.initializer}
    return [{"name": vi.name, "shape": [d.dim_value for d in vi.type.tensor_type.shape.dim],
             "input_type_train": "featuremap", "input_layout_train": "NCHW", "input_type_rt": "featuremap",
             "input_layout_rt": None, "input_space_and_range": "regular", "norm_type": "no_preprocess",
             "mean_value": None, "scale_value": None, "std_value": None}
            for vi in model.graph.input if vi.name not in inits]


def integer_program(model: onnx.ModelProto, march: str = MARCH, samples: int = 4) -> onnx.ModelProto:
    """A `.bc`-like integer program for a float model with featuremap inputs."""
    return _stamp(_quantize(model, calibration_samples(model, samples)), featuremap_spec(model), march)


def nv12_program(model: onnx.ModelProto, input_name: str = "x", march: str = MARCH) -> tuple[onnx.ModelProto, dict]:
    """The program of a float model whose input is an RGB NCHW image fed as NV12 at run time
    (mean 128, scale 1/64); returns (program, the input spec)."""
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    norm = Normalization.from_values((128.0,), (1 / 64,), None, shape[1])
    conversion = build_input_conversion("nv12", "rgb", "NCHW", shape, "regular", norm, input_name=input_name)
    runtime = onnx.ModelProto()
    runtime.CopyFrom(model)
    attach_input_conversion(runtime, input_name, conversion)
    spec = {"name": input_name, "shape": list(shape), "input_type_train": "rgb", "input_layout_train": "NCHW",
            "input_type_rt": "nv12", "input_layout_rt": None, "input_space_and_range": "regular",
            "norm_type": "data_mean_and_scale", "mean_value": [128.0], "scale_value": [1 / 64], "std_value": None}
    program = _quantize(runtime, calibration_samples(runtime, 4, uint8=True))
    return _stamp(program, [spec], march), spec


def tail_program(tail: str, seed: int = 0) -> onnx.ModelProto:
    """Conv → Relu → (tail) in float, quantized: `tail` is one of Reshape / Transpose / Softmax /
    None; head ops are the QuantizeLinear the quantizer puts on the input."""
    b = Builder("tail", seed)
    x = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 4)])
    if tail == "Reshape":
        x = b.op("Reshape", [x, b.const([1, 4, 64], "shape", np.int64)], out="y")
    elif tail == "Transpose":
        x = b.op("Transpose", [x], out="y", perm=[0, 2, 3, 1])
    elif tail == "Softmax":
        x = b.op("Softmax", [b.op("Flatten", [x], axis=1)], out="y", axis=-1)
    else:
        x = b.op("Identity", [x], out="y")
    b.output(x)
    return integer_program(b.build())
