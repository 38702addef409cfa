"""hb_compile's modes from the command line (reference §2.1), and their refusals."""

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


def test_check_mode_writes_generated_config_and_float_models(model_dir, capsys):
    assert main(["-m", "net.onnx", "--march", "nash-e"]) == 0
    work = model_dir / ".hb_compile"
    assert (work / "check_config.yaml").is_file()
    assert (work / "net_optimized_float_model.onnx").is_file()
    text = (work / "check_config.yaml").read_text()
    assert "input_type_rt: nv12" in text and "input_type_train: bgr" in text  # 4-D, C=3, even H/W
    out = capsys.readouterr().out
    table = out.split("The converted model node information:")[1].splitlines()
    assert ["Node", "ON", "Subgraph", "Type"] in [line.split() for line in table]
    assert any(line.split()[:3] == ["Conv_0", "BPU", "id(0)"] for line in out.splitlines() if line.strip())


@pytest.mark.parametrize("skip", ["compile", "export"])
def test_check_mode_with_skip_still_only_checks(model_dir, capsys, skip):
    """Review (session 5): `-m net.onnx --march X --skip compile` calibrated and quantized on random data."""
    assert main(["-m", "net.onnx", "--march", "nash-e", "--skip", skip]) == 0
    work = model_dir / ".hb_compile"
    assert (work / "net_optimized_float_model.onnx").is_file()
    assert not list(work.glob("*_calibrated_model.onnx")) and not list(work.glob("*.bc"))
    assert "The converted model node information:" in capsys.readouterr().out


def test_fast_perf_runs_without_calibration_data(model_dir, capsys):
    assert main(["--fast-perf", "-m", "net.onnx", "--march", "nash-e"]) == 0
    out = model_dir / "model_output"
    assert (out / "net_quantized_model.bc").is_file()
    assert "run_fast" in (out / "fast_perf_config.yaml").read_text()


def test_fast_perf_with_config_is_refused(model_dir, capsys):
    assert main(["--fast-perf", "-m", "net.onnx", "-c", "x.yaml", "--march", "nash-e"]) != 0
    assert "fast-perf mode is turned on, the incoming config file x.yaml cannot be used" in capsys.readouterr().out


def test_no_model_no_config(model_dir, capsys):
    assert main([]) != 0
    [line] = error_lines(capsys.readouterr().out)
    assert "please specify either -m/--model or -c/--config parameter" in line


def test_check_mode_needs_march(model_dir, capsys):
    assert main(["-m", "net.onnx"]) != 0
    assert "--march is required" in capsys.readouterr().out


def test_input_shape_override_names_unknown_input(model_dir, capsys):
    assert main(["-m", "net.onnx", "--march", "nash-e", "-i", "images", "1x3x16x16"]) != 0
    assert "-i/--input-shape names ['images']" in capsys.readouterr().out


def test_dynamic_model_needs_shape_in_check_mode(model_dir, capsys):
    import onnx

    onnx.save(conv_relu_model(shape=(1, 3, 16, 16), dynamic_batch=True), "dyn.onnx")
    assert main(["-m", "dyn.onnx", "--march", "nash-e"]) != 0
    assert "dynamically input model" in capsys.readouterr().out
    assert main(["-m", "dyn.onnx", "--march", "nash-e", "-i", "data", "1x3x16x16"]) == 0


def test_bad_march_in_check_mode(model_dir, capsys):
    assert main(["-m", "net.onnx", "--march", "nash-q"]) != 0
    assert "The specified march 'nash-q' is invalid" in capsys.readouterr().out


@pytest.mark.parametrize("shape", ["1x3x", "abc", "0x3x16x16"])
def test_malformed_input_shape_is_one_line_naming_the_option(model_dir, capsys, shape):
    assert main(["-m", "net.onnx", "--march", "nash-e", "-i", "data", shape]) not in (0, None)
    out = capsys.readouterr().out
    [line] = error_lines(out)
    assert f"-i/--input-shape data {shape}: expected a shape like 1x3x224x224" in line
    assert "internal error" not in out


def test_bc_recompile_is_refused_with_what_to_run_instead(model_dir, capsys):
    (model_dir / "cfg.yaml").write_text("model_parameters: {}\n")
    (model_dir / "net.bc").write_bytes(b"")
    assert main(["-c", "cfg.yaml", "-m", "net.bc"]) not in (0, None)
    [line] = error_lines(capsys.readouterr().out)
    assert "Recompiling a .bc model (net.bc) is not supported by hbcompile: run -c cfg.yaml alone" in line
    assert "does not have yet" not in line


def test_help_does_not_advertise_bc_recompile(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert ".bc to recompile" not in out and "recompiling a .bc is not supported" in out


def test_proto_with_an_onnx_model_is_refused_not_ignored(model_dir, capsys):
    assert main(["-m", "net.onnx", "--march", "nash-e", "--proto", "net.prototxt"]) not in (0, None)
    [line] = error_lines(capsys.readouterr().out)
    assert "--proto net.prototxt" in line and "ONNX" in line
    assert not (model_dir / ".hb_compile").exists()


# review R1 (session 6): check mode refuses --sensitivity before doing anything; --fast-perf never
# overwrites another run's deliverables in model_output/ (reference §2.1)
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
