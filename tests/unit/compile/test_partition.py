"""Partition: BPU subgraphs split by CPU nodes, the reasons, advice.json and the node table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.compile.partition import (
    NODE_TABLE_HEADER,
    advice_json,
    display_backend,
    format_table,
    node_table,
    partition,
)
from engine.problems import ModelError
from engine.quantize.planner import QuantOptions, make_plan, plan_tensors
from tests.support.models import Builder, residual_block
from tests.unit.compile.compile_support import conv_net, integer_program


@pytest.fixture(scope="module")
def float_model():
    return conv_net(cpu_op="Abs")  # Conv Relu Conv Relu | Abs | Conv Relu Sigmoid GAP


def test_cpu_node_in_the_middle_splits_two_subgraphs(float_model):
    part = partition(float_model)
    rows = {p.node: p for p in part.nodes}
    assert part.source == "check"
    assert part.subgraph_count == 2
    assert rows["Abs_4"].on == "CPU" and rows["Abs_4"].subgraph is None
    assert "Abs" in rows["Abs_4"].reason and "integer form" in rows["Abs_4"].reason
    assert {rows[n].subgraph for n in ("Conv_0", "Relu_1", "Conv_2", "Relu_3")} == {0}
    assert {rows[n].subgraph for n in ("Conv_5", "Relu_6", "Sigmoid_7", "GlobalAveragePool_8")} == {1}
    assert rows["Conv_0"].type == "HzSQuantizedConv" and rows["Sigmoid_7"].type == "HzLut"
    assert rows["Abs_4"].type == "Abs"  # a CPU node keeps its ONNX op name


def test_reasons_come_from_the_plan(float_model):
    thresholds = {t: 2.0 for t in plan_tensors(float_model)}
    options = QuantOptions.build(run_on_cpu=["Conv_5"])
    plan = make_plan(float_model, {**thresholds, **{t: 2.0 for t in plan_tensors(float_model, options)}}, options)
    part = partition(float_model, plan)
    rows = part.by_name()
    assert part.source == "plan"
    assert rows["Conv_5"].on == "CPU" and rows["Conv_5"].reason == plan.nodes["Conv_5"].reason
    assert "run_on_cpu" in rows["Conv_5"].reason
    # Abs and Conv_5 are adjacent CPU nodes; Relu_6 Sigmoid_7 GAP form the second BPU subgraph
    assert part.subgraph_count == 2 and rows["Relu_6"].subgraph == 1


def test_run_on_cpu_in_check_mode_makes_a_third_subgraph(float_model):
    part = partition(float_model, options=QuantOptions.build(run_on_cpu=["Sigmoid_7"]))
    rows = part.by_name()
    assert part.subgraph_count == 3
    assert rows["Sigmoid_7"].on == "CPU" and "run_on_cpu" in rows["Sigmoid_7"].reason
    assert rows["GlobalAveragePool_8"].subgraph == 2


def test_parallel_branches_joined_by_a_bpu_node_are_one_subgraph():
    b = Builder("residual")
    x = b.input("x", [1, 8, 6, 6])
    y = b.conv(b.op("Relu", [b.conv(x, 8, 8)]), 8, 8)
    b.output(b.op("Relu", [b.op("Add", [y, x])], out="y"))
    part = partition(b.build())
    assert part.subgraph_count == 1 and not part.cpu_nodes


def test_plan_of_another_model_is_refused(float_model):
    other = residual_block()
    plan = make_plan(other, {t: 1.0 for t in plan_tensors(other)})
    with pytest.raises(ModelError, match="not in the quantization plan"):
        partition(float_model, plan)


def test_integer_program_partition_splits_at_the_float_island(float_model):
    program = integer_program(float_model)
    part = partition(program)
    rows = part.by_name()
    assert part.source == "program"
    assert part.subgraph_count == 2
    assert rows["Abs_4"].on == "CPU" and rows["Abs_4"].subgraph is None
    assert rows["Conv_0_quant"].subgraph == 0 and rows["Conv_5_quant"].subgraph == 1
    assert rows["Conv_0_quant"].type == "HzSQuantizedConv"
    assert rows["Conv_0_quant"].owner == "Conv_0"  # hbcompile.node_map
    assert rows["y_DequantizeLinear"].on == "CPU" and rows["y_DequantizeLinear"].type == "Dequantize"
    assert rows["Conv_0_quant"].output_dtypes == ("uint8",)


def test_shape_arithmetic_stays_on_cpu_in_the_program():
    b = Builder("shape_math")
    x = b.op("Relu", [b.conv(b.input("x", [1, 3, 6, 6]), 3, 4)])
    batch = b.op("Gather", [b.op("Shape", [x]), b.const([0], "idx0", np.int64)], axis=0)
    shape = b.op("Concat", [batch, b.const([-1], "minus_one", np.int64)], axis=0)
    b.output(b.op("Reshape", [x, shape], out="y"))
    part = partition(integer_program(b.build()))
    shape_nodes = [p for p in part.nodes if p.op_type in ("Shape", "Gather", "Concat")]
    assert shape_nodes and all(p.on == "CPU" and "shape" in p.reason for p in shape_nodes)


def test_advice_json_layout(float_model):
    advice = advice_json(partition(float_model))
    assert json.loads(json.dumps(advice)) == advice  # plain JSON
    assert len(advice) == len(float_model.graph.node)
    for entry in advice:
        assert set(entry) >= {"node", "tensor_names", "backend"}
        assert entry["tensor_names"] and all(set(t) == {"tensor_name", "data_type"} for t in entry["tensor_names"])
        assert entry["backend"] in ("bpu", "external_cpu")
        assert ("reason" in entry) == (entry["backend"] == "external_cpu")
    abs_entry = next(e for e in advice if e["node"] == "Abs_4")
    assert display_backend(abs_entry["backend"]) == "CPU" and abs_entry["reason"]
    assert abs_entry["tensor_names"] == [{"tensor_name": "Abs_4_y", "data_type": "float32"}]
    conv = next(e for e in advice if e["node"] == "Conv_0")
    assert display_backend(conv["backend"]) == "BPU" and conv["tensor_names"][0]["data_type"] == "int8"


@pytest.mark.parametrize("raw,shown", [("Vpu", "BPU"), ("spu", "BPU"), ("external_cpu", "CPU"),
                                       ("external_jit", "JIT"), ("bpu", "BPU"), ("dsp", "DSP")])
def test_display_backend_follows_the_reference(raw, shown):
    assert display_backend(raw) == shown


def test_node_table_rows_and_layout(float_model):
    rows = node_table(partition(float_model))
    assert rows[0] == ("Conv_0", "BPU", "id(0)", "HzSQuantizedConv")
    assert ("Abs_4", "CPU", "--", "Abs") in rows
    text = format_table(NODE_TABLE_HEADER, rows).splitlines()
    assert set(text[0]) == {"="} and set(text[2]) == {"-"}
    assert text[1].split() == list(NODE_TABLE_HEADER)
    assert text[3].split() == ["Conv_0", "BPU", "id(0)", "HzSQuantizedConv"]
    assert len(text) == 3 + len(rows)


def test_nodes_onnxruntime_made_at_o2_belong_to_the_float_node_they_came_from(tmp_path):
    """Review (session 5 §9): at O2 the digits `.hbm` holds HardSwish inlined by onnxruntime as unnamed
    HardSigmoid + Mul; the perf report listed them as 2 CPU nodes without names and 2 BPU subgraphs
    while the node table and advice.json said one subgraph, all BPU."""
    import shutil

    import onnx

    from engine.compile.hbm import read_hbm
    from engine.pipeline import Engine
    from tests.conftest import REPO

    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py", "*.npz"))
    config = work / "digits.hb.yaml"  # an int16 HardSwish output keeps the float chain onnxruntime inlines
    config.write_text(config.read_text().replace(
        "  output_model_file_prefix: digits\n",
        "  output_model_file_prefix: digits\n  node_info: '/features/features.5/HardSwish:int16'\n"))
    assert Engine().run(config).ok
    out = work / "model_output"
    program = onnx.load_from_string(read_hbm(out / "digits.hbm").program)
    unnamed = [n for n in program.graph.node if not n.name]
    assert unnamed, "the O2 program no longer has unnamed nodes: this test proves nothing"
    rows = partition(program).nodes
    assert all(r.on == "BPU" and r.owner for r in rows if not r.node), [(r.op_type, r.on, r.owner) for r in rows]
    perf = json.loads((out / "digits.json").read_text())
    assert perf["summary"]["BPU subgraphs"] == 1 and not [c for c in perf["cpu nodes"] if not c["name"]]
