"""calibration_parameters.quant_config becomes the engine's own options where the config is read
(engine.config.quant_config), and each field with nothing to act on gets a warning naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.config.loader import load_config_text
from engine.quantize.planner import QuantOptions
from tests.support.models import onnx_text

TEXT = """model_parameters:
  onnx_model: m.onnx
  march: nash-e
  working_dir: out
  output_model_file_prefix: m
{mp}input_parameters:
  input_name: x
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: 1x3x6x6
calibration_parameters:
  cal_data_dir: cal
  calibration_type: max
{cp}"""


def load(cp: str, mp: str = "", base: Path = Path("/tmp"), check_files: bool = False):
    r = load_config_text(TEXT.format(cp=cp, mp=mp), base, "c.yaml", check_files=check_files)
    assert r.ok, [p.message for p in r.problems]
    return r.config, [(p.code, p.message, p.path) for p in r.problems]


def test_all_node_type_int16_is_set_all_nodes_int16():
    config, problems = load("  quant_config: {model_config: {all_node_type: int16}}\n")
    assert problems == []
    assert config.calibration.optimization == ("set_all_nodes_int16",)
    assert QuantOptions.from_config(config).all_nodes_int16 is True
    config8, _ = load("  quant_config: {model_config: {all_node_type: int8}}\n")
    assert config8.calibration.optimization == () and not QuantOptions.from_config(config8).all_nodes_int16


def test_node_config_qtype_becomes_node_info_and_the_users_node_info_wins():
    cp = ("  quant_config:\n    node_config:\n      Sigmoid_1: {qtype: int16}\n      conv: {qtype: float32}\n"
          "      other: {qtype: int16}\n")
    config, problems = load(cp, mp="  node_info: {other: {OutputType: int8}}\n")
    assert problems == []
    assert config.model.node_info == {"Sigmoid_1": {"InputType": "int16", "OutputType": "int16"},
                                      "conv": {"ON": "CPU"},
                                      "other": {"InputType": "int16", "OutputType": "int8"}}
    info = QuantOptions.from_config(config).node_info
    assert (info["Sigmoid_1"].input_bits, info["Sigmoid_1"].output_bits) == (16, 16)
    assert info["conv"].on == "CPU" and info["other"].output_bits == 8


def test_op_config_model_output_activation_and_weight():
    cp = ("  optimization: set_model_output_int8\n"
          "  quant_config:\n"
          "    model_config:\n"
          "      model_output_type: int16\n"
          "      activation: {calibration_type: kl, max_percentile: 0.9999, per_channel: true, asymmetric: true}\n"
          "      weight: {bias_correction: {metric: mae}}\n"
          "    op_config: {Conv: {qtype: int16}}\n")
    config, problems = load(cp)
    cal = config.calibration
    assert cal.optimization == ("set_model_output_int8", "set_model_output_int16", "asymmetric", "bias_correction",
                                "set_Conv_input_int16", "set_Conv_output_int16")
    assert (cal.calibration_type, cal.max_percentile, cal.per_channel) == ("kl", 0.9999, True)
    assert problems == [("quant-config-overrides", "quant_config sets calibration_type 'kl', which overrides "
                         "calibration_parameters.calibration_type 'max'",
                         ("calibration_parameters", "quant_config", "model_config", "activation", "calibration_type"))]
    opts = QuantOptions.from_config(config)
    assert opts.op_output_bits == {"Conv": 16} and opts.op_input_bits == {"Conv": 16} and opts.per_channel


def test_several_calibration_types_are_the_search():
    config, _ = load("  quant_config: {model_config: {activation: {calibration_type: [max, kl]}}}\n")
    assert config.calibration.calibration_type == "default"


def test_fields_without_effect_are_named():
    cp = ("  quant_config:\n"
          "    model_config: {all_node_type: float16, activation: {num_bin: 1024}, weight: {granularity: x}}\n"
          "    subgraph_config: {head: {inputs: [a], outputs: [b], qtype: int16}}\n"
          "    node_config: {n1: {qtype: float16}, n2: {input0: int16}}\n"
          "    op_config: {Softmax: {qtype: float32}}\n")
    config, problems = load(cp)
    assert [(c, p[2:]) for c, _, p in problems] == [
        ("quant-config-no-effect", ("model_config", "all_node_type")),
        ("quant-config-no-effect", ("model_config", "activation", "num_bin")),
        ("quant-config-no-effect", ("model_config", "weight", "granularity")),
        ("quant-config-no-effect", ("subgraph_config",)),
        ("quant-config-float16", ("node_config", "n1", "qtype")),
        ("quant-config-no-effect", ("node_config", "n2", "input0")),
        ("quant-config-no-effect", ("op_config", "Softmax", "qtype")),
    ]
    assert problems[3][1] == ("Please note that the parameter 'quant_config.subgraph_config' is recorded but has no "
                              "effect here: subgraphs are not configured separately; use node_config per node, or "
                              "model_parameters.node_info")
    assert config.model.node_info == {"n1": {"ON": "CPU"}}
    assert config.calibration.optimization == ()


def test_json_file_form(tmp_path: Path):
    (tmp_path / "cal").mkdir()
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "qc.json").write_text(json.dumps({"model_config": {"all_node_type": "int16"}}))
    config, problems = load("  quant_config: qc.json\n", base=tmp_path, check_files=True)
    assert problems == [] and config.calibration.optimization == ("set_all_nodes_int16",)
    _, missing = load("  quant_config: nope.json\n", base=tmp_path, check_files=True)
    assert [(c, m) for c, m, _ in missing] == [
        ("file-missing", "Can not find file specified: nope.json,please check the configuration")]


def test_a_string_is_the_thresholds_source_for_load_else_a_json_file(tmp_path: Path):
    (tmp_path / "cal").mkdir()
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "qdq.onnx").write_bytes(b"")
    text = TEXT.format(cp="  quant_config: qdq.onnx\n", mp="")
    loaded = load_config_text(text.replace("calibration_type: max", "calibration_type: load"), tmp_path,
                              check_files=True)
    assert loaded.problems == [] and loaded.config.calibration.quant_config == "qdq.onnx"
    _, problems = load("  quant_config: qdq.onnx\n", base=tmp_path, check_files=True)
    assert problems == [("quant-config-no-effect", "Please note that the parameter 'quant_config' is recorded but "
                         "has no effect here: 'qdq.onnx' is not a .json file; quant_config names a JSON file of "
                         "model_config / op_config / subgraph_config / node_config (or, with calibration_type: load, "
                         "the thresholds source)", ("calibration_parameters", "quant_config"))]


MODEL = ('<ir_version: 8, opset_import: ["" : 17]>\n'
         'g (float[1,3,6,6] x, float[4,3,3,3] W, float[4] B) => (float[1,4,6,6] y) '
         '{ a = Conv<pads=[1,1,1,1]>(x, W, B) y = Sigmoid(a) }')


@pytest.mark.parametrize("quant_config,int16", [
    ("{model_config: {all_node_type: int16}}", {"x", "a", "y"}),
    ("{node_config: {Sigmoid_1: {qtype: int16}}}", {"a", "y"}),
])
def test_the_calibrated_model_has_the_int16_tensors_asked_for(tmp_path: Path, quant_config, int16):
    from engine.pipeline import Engine

    model = onnx_text(MODEL)
    assert [n.name for n in model.graph.node] == ["Conv_0", "Sigmoid_1"]
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "cal").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(tmp_path / "cal" / f"{i}.npy", rng.standard_normal((1, 3, 6, 6)).astype(np.float32))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TEXT.format(cp=f"  quant_config: {quant_config}\n", mp=""))
    result = Engine().run(cfg)
    assert result.ok, [p.message for p in result.problems]
    cal = onnx.load(str(tmp_path / "out" / "m_calibrated_model.onnx"))
    inits = {t.name: t for t in cal.graph.initializer}
    zero_point_types = {n.input[0].removesuffix("_HzCalibration_input"): inits[n.input[2]].data_type
                        for n in cal.graph.node if n.op_type == "QuantizeLinear" and n.input[0] != "W"}
    assert {t for t, dt in zero_point_types.items() if dt == onnx.TensorProto.INT16} == int16


def test_node_config_names_are_checked_against_the_model():
    from engine.config.inputs import check_with_model
    from engine.frontend.model_info import model_info

    config, _ = load("  quant_config: {node_config: {Sigmoid_1: {qtype: int16}, Sigmoid_9: {qtype: int16}}}\n")
    found = [(p.code, p.message) for p in check_with_model(config.data, model_info(onnx_text(MODEL)))]
    assert found == [("node-unknown", "The node 'Sigmoid_9' given in quant_config.node_config is not a node of the "
                                      "model")]


def test_editing_the_json_file_changes_what_the_stage_keys_hash(tmp_path: Path):
    """The calibrate stage key hashes calibration_parameters: with a file, its content must be in there."""
    (tmp_path / "cal").mkdir()
    (tmp_path / "m.onnx").write_bytes(b"")
    qc = tmp_path / "qc.json"
    slices = []
    for all_node_type in ("int8", "int16", "int8"):
        qc.write_text(json.dumps({"model_config": {"all_node_type": all_node_type}}))
        config, _ = load("  quant_config: qc.json\n", base=tmp_path, check_files=True)
        slices.append(json.dumps(config.slice("calibration_parameters"), sort_keys=True))
    assert slices[0] != slices[1] and slices[0] == slices[2]
    assert config.calibration.quant_config == "qc.json"  # the typed value keeps the user's path
