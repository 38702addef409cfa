"""remove_identity: the three cases of the module docstring."""

from __future__ import annotations

from engine.passes import remove_identity
from tests.support.models import assert_same_outputs, onnx_text, op_types, run_pass


def test_inner_identities_are_bypassed():  # case 1, twice in a row
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x) => (float[1,4] y) {
        a = Identity (x)
        b = Identity (a)
        y = Relu (b)
    }""")
    out, result = run_pass(remove_identity, model)
    assert result.changed == 2 and op_types(out) == ["Relu"] and list(out.graph.node[0].input) == ["x"]
    assert_same_outputs(model, out)


def test_identity_before_a_graph_output_hands_the_name_to_its_producer():  # case 2
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x) => (float[1,4] y, float[1,4] z) {
        r = Relu (x)
        y = Identity (r)
        z = Neg (r)
    }""")
    out, result = run_pass(remove_identity, model)
    assert result.changed == 1 and op_types(out) == ["Relu", "Neg"]
    assert list(out.graph.node[0].output) == ["y"] and list(out.graph.node[1].input) == ["y"]
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert "r" not in {v.name for v in out.graph.value_info}
    assert_same_outputs(model, out)


def test_identity_from_graph_input_to_graph_output_stays():  # case 3
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x) => (float[1,4] y, float[1,4] r) {
        y = Identity (x)
        r = Relu (x)
    }""")
    out, result = run_pass(remove_identity, model)
    assert result.changed == 0 and op_types(out) == ["Identity", "Relu"]
    assert "graph output" in result.skipped[0].reason


def test_identity_between_two_graph_outputs_stays():  # case 3: both names must exist
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x) => (float[1,4] r, float[1,4] y) {
        r = Relu (x)
        y = Identity (r)
    }""")
    out, result = run_pass(remove_identity, model)
    assert result.changed == 0 and op_types(out) == ["Relu", "Identity"]
