"""strip_qdq: a QDQ model (onnxruntime's `quantize_static`, QDQ format) becomes the float model it
simulates int8 on — activation Q→DQ pairs plain tensors, DequantizeLinear weights float initializers —
and every refusal says why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType

from engine.passes import optimize, strip_qdq
from tests.support.models import (
    Builder,
    assert_same_outputs,
    count_ops,
    name_nodes,
    random_inputs,
    run,
    run_pass,
    similarity,
)
from tests.support.qdq import ort_qdq


def float_model(seed: int = 0) -> onnx.ModelProto:
    """x → Conv → Sigmoid → Conv (+ bias) → Relu = y: weights, a bias, activations inside and at the output."""
    b = Builder("float", seed)
    x = b.input("x", [1, 3, 12, 12])
    y = b.op("Sigmoid", [b.conv(x, 3, 8, bias=False)])
    b.output(b.op("Relu", [b.conv(y, 8, 4)], out="y"))
    return b.build(opset=17)


def samples(n: int = 4) -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(i).standard_normal((1, 3, 12, 12)).astype(np.float32)} for i in range(n)]


def qdq_model(tmp_path, per_channel: bool = False, seed: int = 0, **extra) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(float model, its QDQ model from onnxruntime's quantize_static)."""
    fp = float_model(seed)
    onnx.save(fp, str(tmp_path / "f.onnx"))
    ort_qdq(tmp_path / "f.onnx", tmp_path / "q.onnx", samples(), per_channel, extra_options=extra)
    return fp, onnx.load(str(tmp_path / "q.onnx"))


def dequantized_weights(qdq: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each weight DequantizeLinear's output as onnxruntime computes it (made graph outputs and run)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(qdq)
    inits = {t.name for t in probe.graph.initializer}
    names = [n.output[0] for n in probe.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    got = run(probe, {"x": np.zeros((1, 3, 12, 12), np.float32)})
    return {n: got[n] for n in names}


def on_grid(fp: onnx.ModelProto, qdq: onnx.ModelProto) -> onnx.ModelProto:
    """The float model with each weight replaced by its dequantized value: what the QDQ model's weights are."""
    grid = onnx.ModelProto()
    grid.CopyFrom(fp)
    readers = {n.output[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    by_consumer = {(n.name, k): readers[i] for n in qdq.graph.node for k, i in enumerate(n.input) if i in readers}
    values = dequantized_weights(qdq)
    for node in grid.graph.node:
        for k, name in enumerate(node.input):
            dq = by_consumer.get((node.name, k))
            if dq is not None and dq.output[0] in values:
                t = next(t for t in grid.graph.initializer if t.name == name)
                t.CopyFrom(numpy_helper.from_array(values[dq.output[0]].astype(np.float32), name))
    return grid


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_static_model_becomes_the_float_model_on_its_weight_grid(tmp_path, per_channel):
    fp, qdq = qdq_model(tmp_path, per_channel)
    assert count_ops(qdq)["QuantizeLinear"] >= 4 and count_ops(qdq)["DequantizeLinear"] >= 6
    out, result = run_pass(strip_qdq, qdq)
    assert [n.op_type for n in out.graph.node if n.op_type != "QuantizeLinear"] == ["Conv", "Sigmoid", "Conv", "Relu"]
    assert not result.skipped and result.changed == count_ops(qdq)["DequantizeLinear"]
    assert [o.name for o in out.graph.output] == ["y"]
    out = optimize(out).model  # what the optimize stage hands calibrate: no Q/DQ left at all
    assert count_ops(out) == {"Conv": 2, "Sigmoid": 1, "Relu": 1}
    assert all(numpy_helper.to_array(t).dtype == np.float32 for t in out.graph.initializer)
    assert_same_outputs(on_grid(fp, qdq), out)  # exactly the weights onnxruntime dequantizes
    feeds = random_inputs(fp)
    assert similarity(run(qdq, feeds)["y"], run(out, feeds)["y"]).cosine > 0.999  # the QDQ model, without the noise


def test_activation_tensors_keep_the_names_load_reads_thresholds_by(tmp_path):
    """calibration_type load keys a QDQ model's thresholds by each QuantizeLinear's input: those tensors stay."""
    _, qdq = qdq_model(tmp_path)
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    out, _ = run_pass(strip_qdq, qdq)
    tensors = {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    inner = quantized - {"y_QuantizeLinear_Input"}  # the graph output's pair: its tensor is renamed 'y'
    assert inner and inner <= tensors
    assert "y_QuantizeLinear_Input" in quantized and "y_QuantizeLinear_Input" not in tensors


def test_dedicated_pairs_one_per_reader(tmp_path):
    """DedicatedQDQPair: one Q→DQ pair per reader of a tensor; all of them go."""
    b = Builder("two_readers")
    x = b.input("x", [1, 3, 12, 12])
    c = b.conv(x, 3, 8)
    b.output(b.op("Add", [b.conv(c, 8, 8), b.conv(c, 8, 8)], out="y"))
    onnx.save(b.build(), str(tmp_path / "f.onnx"))
    ort_qdq(tmp_path / "f.onnx", tmp_path / "q.onnx", samples(), activation_type=QuantType.QInt8,
            extra_options={"DedicatedQDQPair": True})
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    out = optimize(qdq).model
    assert count_ops(out) == {"Conv": 3, "Add": 1}
    feeds = random_inputs(qdq)
    assert similarity(run(qdq, feeds)["y"], run(out, feeds)["y"]).cosine > 0.999


PAIR = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4] x) => (float[1, 4] y) <float s = {0.05}, uint8 z = {128}, float s2 = {0.1}> {
  q = QuantizeLinear(x, s, z)
  {body}
}
"""


@pytest.mark.parametrize("body,reason", [
    ("y = DequantizeLinear(q, s2, z)", "differs from QuantizeLinear"),
    ("d = DequantizeLinear(q, s, z)\n  c = Cast<to = 1>(q)\n  y = Add(d, c)", "not only by DequantizeLinear"),
    ("y = DequantizeLinear(q, s, z)", "is a graph output and 'x' is a graph input"),
])
def test_refusals_say_why_and_change_nothing(body, reason):
    model = name_nodes(onnx.parser.parse_model(PAIR.replace("{body}", body)))
    before = model.SerializeToString()
    out, result = run_pass(strip_qdq, model)
    assert result.changed == 0 and reason in result.skipped[0].reason, result.skipped
    assert out.SerializeToString() == before


def test_requantization_between_two_scales_is_kept_numerically():
    """A refused pair stays a pair: the optimized model still computes what the QDQ model did."""
    model = name_nodes(onnx.parser.parse_model(PAIR.replace("{body}", "d = DequantizeLinear(q, s2, z)\n  y = Relu(d)")))
    out = optimize(model).model
    assert count_ops(out)["DequantizeLinear"] == 1
    assert_same_outputs(model, out)


def test_a_hardswish_whose_clip_onnxruntime_removed_is_a_hardswish_again(tmp_path):
    """x·Clip(x + 3, 0, 6)/6: onnxruntime drops the Clip (its pair's range [0, 6] clamps); the pair becomes
    Clip(0, 6) with the exact 6, so the activation passes fuse the HardSwish as in the float model."""
    b = Builder("hardswish")
    x = b.input("x", [1, 3, 12, 12])
    c = b.conv(x, 3, 8)
    clipped = b.op("Clip", [b.op("Add", [c, b.const(3.0)]), b.const(0.0), b.const(6.0)])
    hs = b.op("Div", [b.op("Mul", [c, clipped]), b.const(6.0)])
    b.output(b.conv(hs, 8, 4, out="y"))
    fp = b.build()
    onnx.save(fp, str(tmp_path / "f.onnx"))
    wide = [{"x": 3 * s["x"]} for s in samples(8)]  # x + 3 reaches 6: the pair's range is [0, 6]
    ort_qdq(tmp_path / "f.onnx", tmp_path / "q.onnx", wide, activation_type=QuantType.QInt8)
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    assert "Clip" not in count_ops(qdq)
    out = optimize(qdq).model
    assert count_ops(out) == {"Conv": 2, "HardSwish": 1}
    assert_same_outputs(on_grid(fp, qdq), out, cosine=0.9999, rel=1e-3)  # the 3 and 6 are on their grids too


def test_a_pair_after_x_plus_three_is_relu6_whatever_range_calibration_saw():
    """A pair after x + 3 whose range stopped at 3.07 (calibration never saw x + 3 reach 6): still Clip(0, 6)."""
    model = name_nodes(onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4] x) => (float[1, 4] y) <float three = {3.0}, float s = {0.012047}, uint8 z = {0}, float six = {6.0}> {
      c = Relu(x)
      n = Neg(c)
      a = Add(n, three)
      q = QuantizeLinear(a, s, z)
      d = DequantizeLinear(q, s, z)
      m = Mul(n, d)
      y = Div(m, six)
    }
    """))
    out, result = run_pass(strip_qdq, model)
    assert result.changed == 1
    clip = next(n for n in out.graph.node if n.op_type == "Clip")
    inits = {t.name: float(numpy_helper.to_array(t)) for t in out.graph.initializer}
    assert [inits[i] for i in clip.input[1:]] == [0.0, 6.0] and clip.output[0] == "a"
    x = {"x": np.array([[-5.0, -1.0, 0.5, 2.0]], np.float32)}  # x + 3 above 6 and below 0
    np.testing.assert_allclose(run(out, x)["y"], (-x["x"].clip(0) * np.clip(3 - x["x"].clip(0), 0, 6) / 6))
