"""Keys deprecated in one generation only: the warning is true to the march and to what hbcompile does.

Reference §5/§6/§14/§15: input_layout_rt, preprocess_on and norm_type are hb_mapper keys (bernoulli2, bayes,
bayes-e) that hb_compile (nash-*) deprecates; deprecated keys warn, never fail. hbcompile still honours
input_layout_rt (the .bc/.hbm input layout) and preprocess_on (image files are read), so the nash warning
says so instead of "will have no effect" where that would be false.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.loader import load_config_text
from engine.problems import Severity

BASE = """model_parameters:
  onnx_model: m.onnx
  march: {march}
input_parameters:
  input_name: data
  input_type_train: rgb
  input_layout_train: NCHW
  input_type_rt: {rt}
  input_shape: 1x3x8x8
{extra_ip}calibration_parameters:
  cal_data_dir: cal
  calibration_type: max
{extra_cp}"""

NO_EFFECT = "Specifying this parameter will have no effect"


def problems(march: str = "nash-e", rt: str = "rgb", extra_ip: str = "", extra_cp: str = ""):
    r = load_config_text(BASE.format(march=march, rt=rt, extra_ip=extra_ip, extra_cp=extra_cp), Path("/tmp"),
                         "c.yaml", check_files=False)
    return r, [(p.severity, p.code, p.message) for p in r.problems]


# ------------------------------------------------------------------ input_layout_rt

def test_input_layout_rt_on_nash_says_it_still_sets_the_runtime_layout():
    r, ps = problems("nash-e", "rgb", "  input_layout_rt: NCHW\n")
    assert r.ok
    assert ps == [(Severity.WARNING, "deprecated-key",
                   "Please note that the parameter 'input_layout_rt' has been deprecated: hb_compile lays the runtime "
                   "input out as input_type_rt implies (rgb: NHWC). hbcompile still applies it: the .bc/.hbm input "
                   "data takes layout NCHW")]
    assert r.config.inputs.input_layout_rt == ("NCHW",)  # honoured, as the warning says
    assert r.problems[0].span is not None and r.problems[0].span.line == 9


@pytest.mark.parametrize("rt,layout", [("rgb", "NHWC"), ("nv12", "NCHW"), ("gray", "NCHW")])
def test_input_layout_rt_on_nash_without_effect_keeps_hb_compile_wording(rt, layout):
    text = BASE.format(march="nash-e", rt=rt, extra_ip=f"  input_layout_rt: {layout}\n", extra_cp="")
    if rt == "gray":
        text = text.replace("input_type_train: rgb", "input_type_train: gray").replace("1x3x8x8", "1x1x8x8")
    ps = [(p.severity, p.code, p.message) for p in load_config_text(text, Path("/tmp"), check_files=False).problems]
    assert ps == [(Severity.WARNING, "deprecated-key", "Please note that the parameter 'input_layout_rt' has been "
                   f"deprecated. {NO_EFFECT}")]


@pytest.mark.parametrize("march", ["bernoulli2", "bayes", "bayes-e"])
def test_input_layout_rt_is_not_deprecated_on_hb_mapper_marches(march):
    r, ps = problems(march, "rgb", "  input_layout_rt: NCHW\n")
    assert r.ok and ps == []
    _, nv12 = problems(march, "nv12", "  input_layout_rt: NCHW\n")
    assert nv12 == [(Severity.WARNING, "layout-rt-unused",
                     "input_layout_rt NCHW of input data has no effect: input_type_rt nv12 has no layout")]


# ------------------------------------------------------------------ preprocess_on

def test_preprocess_on_true_on_nash_says_images_are_read():
    r, ps = problems("nash-e", extra_cp="  preprocess_on: true\n")
    assert r.ok and r.config.calibration.preprocess_on is True
    assert ps == [(Severity.WARNING, "deprecated-key",
                   "Please note that the parameter 'preprocess_on' has been deprecated: hb_compile reads prepared "
                   ".npy calibration samples only (or use calibration_type: skip). hbcompile still applies it: "
                   "jpg/jpeg/png/bmp files in cal_data_dir are decoded and resized to the input size")]


@pytest.mark.parametrize("flag,ctype", [("false", "max"), ("true", "skip")])
def test_preprocess_on_without_effect_on_nash(flag, ctype):
    """False is the default; with calibration_type skip no file is read: 'no effect' is then true."""
    text = BASE.format(march="nash-e", rt="rgb", extra_ip="", extra_cp=f"  preprocess_on: {flag}\n").replace(
        "calibration_type: max", f"calibration_type: {ctype}")
    ps = [(p.code, p.message) for p in load_config_text(text, Path("/tmp"), check_files=False).problems]
    assert ps == [("deprecated-key", f"Please note that the parameter 'preprocess_on' has been deprecated. {NO_EFFECT}")]


@pytest.mark.parametrize("march", ["bernoulli2", "bayes-e"])
def test_preprocess_on_is_supported_on_hb_mapper_marches(march):
    r, ps = problems(march, extra_cp="  preprocess_on: true\n")
    assert r.ok and ps == [] and r.config.calibration.preprocess_on is True


# ------------------------------------------------------------------ norm_type (finding 9)

NORM_DEPRECATED = ("Please note that the parameter norm_type has been deprecated and will be determined by the "
                   "specification of the mean/scale/std parameters")


@pytest.mark.parametrize("extra,why,derived", [
    ("  norm_type: data_mean\n", "asks for mean_value but none is given", "no_preprocess"),
    ("  norm_type: data_mean_and_scale\n  mean_value: 128\n", "asks for scale_value but none is given", "data_mean"),
    ("  norm_type: data_mean_and_scale\n", "asks for mean_value and scale_value but none is given", "no_preprocess"),
    ("  norm_type: data_scale\n  mean_value: 128\n  scale_value: 0.5\n",
     "does not match the given mean/scale/std values", "data_mean_and_scale"),
])
def test_norm_type_on_nash_warns_and_derives_never_fails(extra, why, derived):
    r, ps = problems("nash-e", "nv12", extra)
    assert r.ok
    assert ps == [(Severity.WARNING, "deprecated-key", NORM_DEPRECATED),
                  (Severity.WARNING, "norm-type-mismatch", f"norm_type '{extra.split()[1]}' of input 0 {why}; "
                   f"using '{derived}'")]


def test_norm_type_consistent_on_nash_only_gets_the_deprecation():
    r, ps = problems("nash-e", "nv12", "  norm_type: data_scale\n  scale_value: 0.5\n")
    assert r.ok and ps == [(Severity.WARNING, "deprecated-key", NORM_DEPRECATED)]


def test_norm_type_on_hb_mapper_is_a_real_key():
    """hb_mapper takes norm_type as given: no deprecation, and a missing mean is its own error."""
    r, ps = problems("bayes-e", "nv12", "  norm_type: data_mean\n")
    assert not r.ok
    assert ps == [(Severity.ERROR, "mean-missing", "Mean value not given: input 0 norm type data_mean require mean "
                   "value input but not given")]
    r, ps = problems("bernoulli2", "nv12", "  norm_type: data_scale\n  scale_value: 0.5\n")
    assert r.ok and ps == []
