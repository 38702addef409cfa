"""fuse_matmul_add: MatMul + constant Add → Gemm on 2-D inputs only."""

from __future__ import annotations

import pytest

from engine.passes import fuse_matmul_add
from tests.support.models import assert_same_outputs, onnx_text, op_types, run_pass

MATMUL_ADD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[{ashape}] x, float[{bshape}] {b}, float[{cshape}] C) => (float[{yshape}] y) {{
    m = MatMul (x, {b})
    y = Add ({args})
}}"""


def _model(cshape="6", args="m, C", ashape="3,5", b="W", yshape="3,6", bshape="5,6"):
    return onnx_text(MATMUL_ADD, ashape=ashape, bshape=bshape, b=b, cshape=cshape, yshape=yshape, args=args)


@pytest.mark.parametrize("cshape", ["6", "1,6", "3,6", "3,1", "1"])
@pytest.mark.parametrize("args", ["m, C", "C, m"])
def test_matmul_add_becomes_gemm(cshape, args):
    model = _model(cshape, args)
    out, result = run_pass(fuse_matmul_add, model)
    assert result.changed == 1 and op_types(out) == ["Gemm"]
    gemm = out.graph.node[0]
    assert gemm.name == "MatMul_0" and list(gemm.input) == ["x", "W", "C"] and list(gemm.output) == ["y"]
    assert_same_outputs(model, out)


def test_skips_3d_activation():
    _, result = run_pass(fuse_matmul_add, _model(ashape="2,3,5", yshape="2,3,6"))
    assert result.changed == 0 and "3-D" in result.skipped[0].reason


def test_skips_non_constant_weight():
    _, result = run_pass(fuse_matmul_add, _model(b="w"))
    assert result.changed == 0 and "not a 2-D constant" in result.skipped[0].reason


def test_skips_bias_that_does_not_broadcast_unidirectionally():
    _, result = run_pass(fuse_matmul_add, _model(cshape="2,3,6", yshape="2,3,6"))
    assert result.changed == 0 and "does not broadcast" in result.skipped[0].reason


def test_skips_matmul_output_read_twice():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3,5] x, float[5,6] W, float[6] C) => (float[3,6] y, float[3,6] r) {
        m = MatMul (x, W)
        y = Add (m, C)
        r = Relu (m)
    }""")
    _, result = run_pass(fuse_matmul_add, model)
    assert result.changed == 0 and "also feeds Relu_2" in result.skipped[0].reason
