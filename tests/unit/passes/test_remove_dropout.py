"""remove_dropout: inference-mode Dropout goes; training mode, unknown mode or a used mask stay."""

from __future__ import annotations

from engine.passes import remove_dropout
from tests.support.models import assert_same_outputs, dropout_identity, onnx_text, op_types, run_pass

DROPOUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4] x{extra_in}) => (float[1,4] y{extra_out}) <float ratio = {{0.5}}, bool off = {{0}}, bool on = {{1}}> {{
    {outs} = Dropout ({ins})
    y = Relu (d)
}}"""


def _model(ins="x, ratio", outs="d", extra_in="", extra_out=""):
    return onnx_text(DROPOUT, ins=ins, outs=outs, extra_in=extra_in, extra_out=extra_out)


def test_inference_dropout_is_removed():
    for ins in ("x", "x, ratio", "x, ratio, off"):
        model = _model(ins=ins)
        out, result = run_pass(remove_dropout, model)
        assert result.changed == 1 and op_types(out) == ["Relu"], ins
        assert_same_outputs(model, out)


def test_dropout_before_graph_outputs_is_removed_keeping_output_names():
    model = dropout_identity()
    out, result = run_pass(remove_dropout, model)
    assert result.changed == 2 and "Dropout" not in op_types(out)
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_outputs(model, out)


def test_training_dropout_stays():
    _, result = run_pass(remove_dropout, _model(ins="x, ratio, on"))
    assert result.changed == 0 and "training_mode is true" in result.skipped[0].reason


def test_dropout_with_unknown_mode_stays():
    _, result = run_pass(remove_dropout, _model(ins="x, ratio, mode", extra_in=", bool mode"))
    assert result.changed == 0 and "not a constant" in result.skipped[0].reason


def test_dropout_whose_mask_is_read_stays():
    _, result = run_pass(remove_dropout, _model(outs="d, mask", extra_out=", bool[1,4] mask"))
    assert result.changed == 0 and "mask" in result.skipped[0].reason
