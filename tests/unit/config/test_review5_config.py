"""Reviewer-found config bugs (session 5 review: 7, 8, 12, 14): each test is the repro, on the loader the
CLI and the language server share (or the CLI itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.loader import load_config_text
from engine.config.rules import MAX_PREFIX_BYTES
from engine.pipeline import Engine
from engine.problems import Problem
from tests.conftest import GOOD_CONFIG, REPO
from tests.pipeline.test_stage_cache import PLAIN


def problems(tmp_path: Path, text: str, check_files: bool = False) -> list[Problem]:
    return load_config_text(text, tmp_path, "config.yaml", check_files=check_files).problems


def codes(found: list[Problem]) -> list[str]:
    return [p.code for p in found]


@pytest.mark.parametrize("working_dir", ["calib", "./calib/", "calib/../calib"])
def test_working_dir_that_is_the_calibration_folder_is_an_error(tmp_path, working_dir):
    """Run 1 wrote its artefacts into the calibration folder; run 2 read the `.hbm` as a sample."""
    (tmp_path / "calib").mkdir()
    text = GOOD_CONFIG.replace("working_dir: model_output", f"working_dir: {working_dir}").replace(
        "  calibration_type: max\n", "  calibration_type: max\n  cal_data_dir: calib\n")
    [p] = [p for p in problems(tmp_path, text, check_files=True) if p.code == "working-dir-is-calibration"]
    assert p.path == ("model_parameters", "working_dir") and p.is_error and "cal_data_dir calib" in p.message
    sub = GOOD_CONFIG.replace("working_dir: model_output", "working_dir: calib/out").replace(
        "  calibration_type: max\n", "  calibration_type: max\n  cal_data_dir: calib\n")
    assert "working-dir-is-calibration" not in codes(problems(tmp_path, sub, check_files=True))  # not read: fine


@pytest.mark.parametrize("line", ["  core_n:", "  core_n: ''", "  core_n: ~"])
def test_a_misspelt_key_is_wrong_with_or_without_a_value(tmp_path, line):
    text = GOOD_CONFIG.replace("compiler_parameters:\n", f"compiler_parameters:\n{line}\n")
    [p] = [p for p in problems(tmp_path, text) if p.code == "unknown-key"]
    assert "Wrong key 'core_n'" in p.message and "core_num" in p.message and p.span is not None
    assert p.span.line == text.splitlines().index(line)


def test_scale_value_zero_is_an_error_like_std_value_zero(tmp_path):
    found = problems(tmp_path, GOOD_CONFIG.replace("scale_value: 0.0078125", "scale_value: 0.0078125 0 0.0078125"))
    [p] = [p for p in found if p.code == "scale-zero"]
    assert p.path == ("input_parameters", "scale_value") and p.is_error


def test_a_prefix_too_long_for_a_file_name_is_told_on_the_prefix(tmp_path):
    long = "p" * (MAX_PREFIX_BYTES + 1)
    [p] = [p for p in problems(tmp_path, GOOD_CONFIG.replace("prefix: tiny", f"prefix: {long}"))
           if p.code == "bad-prefix"]
    assert p.path == ("model_parameters", "output_model_file_prefix") and str(MAX_PREFIX_BYTES) in p.message
    assert "bad-prefix" not in codes(problems(tmp_path, GOOD_CONFIG.replace("prefix: tiny",
                                                                            f"prefix: {'p' * MAX_PREFIX_BYTES}")))


def test_the_longest_prefix_allowed_compiles(project):
    """The limit is real: every artefact and its temporary file fit with a prefix of MAX_PREFIX_BYTES."""
    cfg = project.config(PLAIN.replace("prefix: tiny", f"prefix: {'p' * MAX_PREFIX_BYTES}"))
    report = Engine().run(cfg)
    assert report.ok, [p.render() for p in report.problems]


def test_march_with_a_config_is_refused_not_ignored(tmp_path):
    """`-c cfg --march nash-m` built for the config's march without a word."""
    (tmp_path / "config.yaml").write_text(GOOD_CONFIG)
    run = subprocess.run([sys.executable, "-m", "engine.cli", "--no-daemon", "-c", "config.yaml", "--march", "nash-m"],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, timeout=120)
    assert run.returncode != 0 and "--march" in run.stdout + run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "model_output").exists()
