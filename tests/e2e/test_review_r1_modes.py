"""Review R1 (session 6), hb_compile's modes: check mode refuses `--sensitivity` before doing anything;
`--fast-perf` never overwrites another run's deliverables in `model_output/` (reference §2.1)."""

from __future__ import annotations

import os

import pytest

from engine.cli import main
from tests.conftest import conv_relu_model


@pytest.fixture
def model_dir(tmp_path):
    import onnx

    onnx.save(conv_relu_model(shape=(1, 3, 16, 16)), str(tmp_path / "net.onnx"))
    os.chdir(tmp_path)
    return tmp_path


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("ERROR")]


def test_check_mode_refuses_sensitivity_before_running(model_dir, capsys):
    """Was: the whole check ran (parse, optimize, the node table), then the run failed with rc 1."""
    assert main(["-m", "net.onnx", "--march", "nash-e", "--sensitivity", "3"]) == 1
    out = capsys.readouterr().out
    [line] = error_lines(out)
    assert "--sensitivity needs the calibrate stage, which check mode (-m/--model without -c) does not reach" in line
    assert not (model_dir / ".hb_compile").exists() and "The converted model node information" not in out


CONFIG_RUN = """\
model_parameters:
  onnx_model: net.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: net
input_parameters:
  input_type_train: rgb
  input_layout_train: NCHW
  input_type_rt: nv12
  input_shape: 1x3x16x16
  mean_value: 128
  scale_value: 0.0078125
calibration_parameters:
  calibration_type: skip
"""


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "hb_compile.log"}


def test_fast_perf_leaves_a_config_runs_deliverables_alone(model_dir, capsys):
    """Was: `--fast-perf -m` in a config run's folder replaced its `.hbm` (rt nv12 → featuremap float32), its
    node_info and html, and left `fast_perf_config.yaml` among them."""
    (model_dir / "net.hb.yaml").write_text(CONFIG_RUN)
    assert main(["-c", "net.hb.yaml"]) == 0
    out = model_dir / "model_output"
    before = snapshot(out)
    assert "net.hbm" in before and "fast_perf_config.yaml" not in before
    capsys.readouterr()
    assert main(["--fast-perf", "-m", "net.onnx", "--march", "nash-e"]) == 0
    console = capsys.readouterr().out
    assert snapshot(out) == before
    [fast] = [p for p in model_dir.iterdir() if p.name.startswith("model_output_")]
    assert fast.name[len("model_output_"):].isdigit() and len(fast.name) == len("model_output_") + 14
    assert f"model_output/ holds the artefacts of another run; fast-perf writes to {fast.name}/" in console
    assert (fast / "net.hbm").is_file() and "run_fast" in (fast / "fast_perf_config.yaml").read_text()


def test_fast_perf_again_on_the_same_model_reuses_model_output(model_dir, capsys):
    assert main(["--fast-perf", "-m", "net.onnx", "--march", "nash-e"]) == 0
    assert main(["--fast-perf", "-m", "net.onnx", "--march", "nash-e"]) == 0
    assert [p.name for p in model_dir.iterdir() if p.name.startswith("model_output")] == ["model_output"]
    assert "fast-perf writes to" not in capsys.readouterr().out


def test_fast_perf_of_another_model_does_not_replace_the_first(model_dir, capsys):
    import onnx

    onnx.save(conv_relu_model(shape=(1, 3, 16, 16), seed=1), str(model_dir / "other.onnx"))
    assert main(["--fast-perf", "-m", "net.onnx", "--march", "nash-e"]) == 0
    assert main(["--fast-perf", "-m", "other.onnx", "--march", "nash-e"]) == 0
    assert "net.onnx" in (model_dir / "model_output" / "fast_perf_config.yaml").read_text()
    [fast] = [p for p in model_dir.iterdir() if p.name.startswith("model_output_")]
    assert (fast / "other.hbm").is_file()
