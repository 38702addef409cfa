"""An emulated conv's (int16 operand) bias in the `.bc` is float(code) · s_x·s_w with s_x·s_w exactly
the float32 the planner documents (`bias_scale`): s_x = threshold / 32767 from the calibrated
threshold, s_w = max|W_c| / 127 per output channel (review 2, mutant L2). Every expected value here
is computed from the thresholds and the float weights, none read back from the `.bc`: a bias constant
stored at a lower precision (float16: ~3 significant digits) shifts every output channel."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from engine.quantize.integer import EMULATED_KEY, lower_to_integer
from engine.quantize.planner import make_plan
from tests.unit.quantize.quant_support import initializer, max_thresholds, node, optimized
from tests.unit.test_lower_float_bias import INT16_MIDDLE, basic_level, int16_chain, ort_optimized


def expected_bias(opt: onnx.ModelProto, thresholds: dict[str, float], conv: str) -> tuple[np.ndarray, np.ndarray,
                                                                                            np.ndarray]:
    """(scale, codes, float bias) of `conv`'s bias from its int16 input's threshold and its weights."""
    n = node(opt, conv)
    s_x = np.float64(thresholds[n.input[0]]) / 32767.0
    w = initializer(opt, n.input[1]).astype(np.float64)
    s_w = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0).astype(np.float32)
    scale = (s_x * s_w.astype(np.float64)).astype(np.float32)
    codes = np.rint(initializer(opt, n.input[2]).astype(np.float64) / scale.astype(np.float64)).astype(np.int32)
    return scale, codes, codes.astype(np.float32) * scale


def lowered():
    opt = optimized(int16_chain())
    thresholds = max_thresholds(opt, INT16_MIDDLE)
    plan = make_plan(opt, thresholds, INT16_MIDDLE)
    return opt, thresholds, plan, lower_to_integer(opt, plan)


def test_the_emulated_convs_bias_is_the_codes_times_s_x_s_w_in_float32():
    opt, thresholds, plan, bc = lowered()
    conv = node(opt, "Conv_1")
    assert plan.acts[conv.input[0]].bits == 16  # an int16 input: the conv is emulated in float
    assert "Conv_1" in next(p.value for p in bc.metadata_props if p.key == EMULATED_KEY)
    assert getattr(plan.biases[conv.input[2]], "correction", None) is None  # the bias is the model's own
    scale, codes, values = expected_bias(opt, thresholds, "Conv_1")
    stored = {t.name: numpy_helper.to_array(t) for t in bc.graph.initializer}
    assert stored[f"{conv.input[2]}_scale"].tobytes() == scale.tobytes()
    assert stored[f"{conv.input[2]}_quantized"].tobytes() == codes.tobytes()
    folded = ort_optimized(bc, basic_level())  # what the float Conv reads when the session runs
    float_conv = next(n for n in folded.graph.node if n.op_type == "Conv" and n.name.startswith("Conv_1"))
    got = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == float_conv.input[2]))
    assert got.dtype == np.float32 and got.tobytes() == values.tobytes()
    # the check can fail: float16 keeps ~11 bits, so the float16-rounded scale moves the bias
    coarse = codes.astype(np.float32) * scale.astype(np.float16).astype(np.float32)
    assert coarse.tobytes() != values.tobytes()
