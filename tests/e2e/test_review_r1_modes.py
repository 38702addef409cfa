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
    assert "--sensitivity needs a calibrated run: check mode" in line
    assert not (model_dir / ".hb_compile").exists() and "The converted model node information" not in out
