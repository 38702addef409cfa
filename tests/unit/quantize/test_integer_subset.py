"""`integer_values(..., tensors=...)`: the report asks the `.bc` run only for the rows its memo does not know
(issue #8). The values it gets must be the bits a run that reads every mapped tensor gives."""

from __future__ import annotations

import onnx
import pytest

import engine.quantize.lower.encoding as encoding
from engine.quantize.integer import integer_values, lower_to_integer, read_tensor_map
from engine.quantize.planner import QuantOptions
from tests.support.models import random_inputs, residual_block, silu_block
from tests.unit.quantize.quant_support import optimized, plan_for


def lowered(model: onnx.ModelProto):
    opt = optimized(model)
    return opt, lower_to_integer(opt, plan_for(opt, options=QuantOptions()))


@pytest.mark.parametrize("block", [residual_block, silu_block])
def test_a_subset_gives_the_same_bits_as_the_whole_run(block):
    opt, bc = lowered(block())
    feeds = random_inputs(opt, 4)
    every, outs = integer_values(bc, feeds)
    names = sorted(every)
    assert len(names) >= 3
    subset = names[::2] + ["not_a_tensor"]  # a name the program does not map is ignored
    some, some_outs = integer_values(bc, feeds, tensors=subset)
    assert sorted(some) == names[::2]
    for name in some:
        assert some[name].dtype == every[name].dtype and some[name].tobytes() == every[name].tobytes()
    assert sorted(some_outs) == sorted(outs)  # the program's outputs always come back
    for name in outs:
        assert some_outs[name].tobytes() == outs[name].tobytes()
    none, none_outs = integer_values(bc, feeds, tensors=[])
    assert none == {} and sorted(none_outs) == sorted(outs)


def test_only_the_asked_tensors_are_dequantized(monkeypatch):
    """The saving is the dequantization (and fetching) of the rows the memo knows: count the calls."""
    opt, bc = lowered(residual_block())
    feeds = random_inputs(opt, 5)
    tmap = read_tensor_map(bc)
    quantized = sorted(t for t, e in tmap.items() if e["dtype"] != "float32")
    assert len(quantized) >= 2
    calls: list[int] = []
    real = encoding.Encoding.dequantize

    def counted(self, values):
        calls.append(1)
        return real(self, values)

    monkeypatch.setattr(encoding.Encoding, "dequantize", counted)
    integer_values(bc, feeds, tensors=quantized[:1])
    assert len(calls) == 1
    calls.clear()
    integer_values(bc, feeds)
    assert len(calls) == len(quantized)
