"""remove_dead_nodes: nodes and initializers no output depends on go; graph inputs stay."""

from __future__ import annotations

from engine.passes import remove_dead
from tests.support.models import assert_same_outputs, onnx_text, op_types, run_pass


def test_dead_branch_and_its_initializers_are_removed():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x, float[1,4] unused, float[4,4] W, float[4,4] V, float[4] Spare) => (float[1,4] y) {
        y = MatMul (x, W)
        d = MatMul (x, V)
        e = Relu (d)
    }""")
    out, result = run_pass(remove_dead, model)
    assert op_types(out) == ["MatMul"] and result.changed == 4  # 2 nodes + V + Spare
    assert {t.name for t in out.graph.initializer} == {"W"}
    assert [i.name for i in out.graph.input] == ["x", "unused"]
    assert not {"d", "e"} & {v.name for v in out.graph.value_info}
    assert_same_outputs(model, out)


def test_live_graph_is_left_alone():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x, float[4,4] W) => (float[1,4] y, float[1,4] z) {
        y = MatMul (x, W)
        z = Relu (y)
    }""")
    out, result = run_pass(remove_dead, model)
    assert result.changed == 0 and out == model
