"""The compile side on a `.bc` from our own quantize stage (lowering + integer NV12 conversion)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from engine.compile import build_hbm, partition, remove_nodes, resolve
from engine.compile.perf import estimate
from engine.compile.program import set_metadata
from engine.config.model import CompilerParameters
from engine.passes import optimize
from engine.preprocess import Normalization, insert_normalization
from engine.quantize.integer import lower_to_integer
from engine.quantize.planner import make_plan, plan_tensors
from engine.runtime import rgb_to_nv12
from engine.runtime.model import load
from engine.similarity import cosine, run_model
from engine.stages.quantize import attach_runtime_inputs
from engine.tools import verifier
from tests.unit.compile.compile_support import conv_net

SPEC = {"name": "x", "shape": [1, 3, 16, 16], "input_type_train": "rgb", "input_layout_train": "NCHW",
        "input_type_rt": "nv12", "input_layout_rt": None, "input_space_and_range": "regular",
        "norm_type": "data_mean_and_scale", "mean_value": [128.0], "scale_value": [1 / 64], "std_value": None}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(original float model, optimized model, plan, .bc path): conv_net with an Abs CPU island."""
    original = conv_net(cpu_op="Abs")
    insert_normalization(original, "x", Normalization.from_values((128.0,), (1 / 64,), None, 3), "NCHW")
    opt = optimize(original).model
    tensors = plan_tensors(opt)
    rng = np.random.default_rng(0)
    thresholds: dict[str, float] = {}
    for _ in range(4):  # max calibration on random images
        values = run_model(opt, {"x": rng.integers(0, 256, (1, 3, 16, 16)).astype(np.float32)}, tensors)
        for t in tensors:
            thresholds[t] = max(thresholds.get(t, 0.0), float(np.max(np.abs(values[t]))))
    plan = make_plan(opt, thresholds)
    bc = lower_to_integer(opt, plan)
    assert attach_runtime_inputs(bc, [SPEC], opt) == {"x": "integer"}
    for key, value in (("hbcompile.inputs", json.dumps([SPEC])), ("hbcompile.march", "nash-e"),
                       ("hbcompile.stage", "quantized")):
        set_metadata(bc, key, value)  # as the quantize stage stamps them
    d = tmp_path_factory.mktemp("real_bc")
    onnx.save(original, str(d / "original.onnx"))
    onnx.save(bc, str(d / "m.bc"))
    return original, opt, plan, d


def test_plan_and_program_partitions_agree(quantized):
    _, opt, plan, d = quantized
    bc = onnx.load(str(d / "m.bc"))
    by_plan, by_program = partition(opt, plan), partition(bc, plan)
    assert by_plan.subgraph_count == by_program.subgraph_count == 2
    prog = by_program.by_name()
    assert prog["Abs_4"].on == "CPU" and prog["Abs_4"].reason == plan.nodes["Abs_4"].reason
    assert prog["Conv_0"].type == prog["Relu_1"].type == "HzSQuantizedConv"  # one Conv+Relu unit
    assert prog["Conv_0"].unit == "Conv_0+Relu_1"
    assert prog["HZ_PREPROCESS_FOR_x"].type == "HzSQuantizedPreprocess"


@pytest.mark.parametrize("level", ["O0", "O1", "O2"])
def test_hbm_is_bit_exact_and_keeps_the_plan_placement(quantized, level):
    _, _, plan, d = quantized
    opts, _ = resolve(CompilerParameters(optimize_level=level), "nash-e", [SPEC])
    path = build_hbm(onnx.load(str(d / "m.bc")), opts, plan=plan).write(d / f"m_{level}.hbm")
    bc, hbm = load(d / "m.bc"), load(path)
    for seed in range(3):
        frames = rgb_to_nv12(np.random.default_rng(seed).integers(0, 256, (1, 16, 16, 3)).astype(np.uint8))
        assert bc.run({"x": frames})["y"].tobytes() == hbm.run({"x": frames})["y"].tobytes()
    part = partition(hbm.program)  # no plan at hand: the stamped placement
    assert part.subgraph_count == 2 and part.by_name()["Sigmoid_7"].on == "BPU"
    est = estimate(hbm.program, opts)
    assert {"Conv_0+Relu_1", "Conv_5+Relu_6", "Sigmoid_7"} <= {lay.name for lay in est.layers}
    assert "Abs_4" in {c["name"] for c in est.cpu_nodes}


def test_verifier_on_the_real_bc(quantized, capsys):
    original, _, plan, d = quantized
    opts, _ = resolve(CompilerParameters(), "nash-e", [SPEC])
    build_hbm(onnx.load(str(d / "m.bc")), opts, plan=plan).write(d / "v.hbm")
    assert verifier.main(["-m", f"{d / 'm.bc'},{d / 'v.hbm'}"]) == 0
    sample = np.random.default_rng(7).integers(0, 256, (1, 3, 16, 16)).astype(np.float32)
    np.save(d / "sample.npy", sample)
    assert verifier.main(["-m", f"{d / 'original.onnx'},{d / 'v.hbm'}", "-i", str(d / "sample.npy")]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    float_out = run_model(original, {"x": sample}, ["y"])["y"]
    bc_out = load(d / "m.bc").run({"x": rgb_to_nv12(sample.transpose(0, 2, 3, 1).astype(np.uint8))})["y"]
    assert float(row[1]) == pytest.approx(cosine(float_out, bc_out), abs=1e-6) and float(row[1]) > 0.99


def test_remove_the_output_dequantize_by_its_producer_name(quantized):
    _, _, _, d = quantized
    removed_model, removed = remove_nodes(onnx.load(str(d / "m.bc")), [], ["GlobalAveragePool_8"])
    assert [r.name for r in removed] == ["y_dequantize"] and removed[0].tensor == "y"
    out = removed_model.graph.output[0]
    assert out.name == "y" and out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    frames = load(d / "m.bc").random_inputs(1)
    path = d / "removed.bc"
    onnx.save(removed_model, str(path))
    codes = load(path).run(frames)["y"]
    q = removed[0].params
    values = (codes.astype(np.float32) - np.float32(q["zero_point"])) * np.float32(q["scale"])
    np.testing.assert_array_equal(values, load(d / "m.bc").run(frames)["y"])
