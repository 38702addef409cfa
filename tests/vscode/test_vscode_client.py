"""The VS Code extension (editors/vscode): its Node tests, its manifest against hblsp, its .vsix.

`npm test` unit-tests the table page and the server lookup and drives the real `python -m hblsp`
over stdio with vscode-languageserver-protocol (VS Code's own protocol library). `make test`
builds the .vsix and installs node_modules (`npm ci`) before pytest runs; without them these
tests skip and say which make target to run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import fields

import pytest

from hblsp.settings import _BOUNDS, Settings, json_name
from tests.conftest import REPO

EXTENSION = REPO / "editors" / "vscode"
MANIFEST = json.loads((EXTENSION / "package.json").read_text(encoding="utf-8"))
SCHEMA = REPO / "schemas" / "hb_compile.schema.json"


def _need_node_modules() -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the VS Code extension's Node tests cannot run")
    if not (EXTENSION / "node_modules" / ".package-lock.json").exists():
        pytest.skip("editors/vscode/node_modules is missing: run `make vsix` (npm ci) first")


def test_npm_test_drives_hblsp_over_stdio():
    """`npm test` passes every case: none skipped (its compile cases skip against a server that does
    not advertise hblsp.compile — this one does, so a skip means the client lost the command)."""
    _need_node_modules()
    env = {**os.environ, "HBLSP_PYTHON": sys.executable, "NO_COLOR": "1"}
    run = subprocess.run(["npm", "test"], cwd=EXTENSION, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    counts = {k: int(v) for k, v in re.findall(r"^ℹ (tests|pass|skipped) (\d+)$", output, re.MULTILINE)}
    assert counts.get("tests", 0) >= 30 and counts.get("pass") == counts["tests"], (counts, output[-4000:])
    assert counts.get("skipped") == 0, re.findall(r"# (this hblsp does not advertise \S+)", output)


# Server settings VS Code does not offer: the client only sends documents its selector (built from
# filePatterns) matches, so first-line modelines and language ids never reach the server from VS Code.
NOT_IN_VSCODE = {"modeline", "language_ids"}


def test_setting_defaults_are_hblsp_defaults():
    """The extension offers every hblsp setting (but NOT_IN_VSCODE), with hblsp's default and bounds."""
    properties = MANIFEST["contributes"]["configuration"]["properties"]
    defaults = Settings()
    contributed = 0
    for f in fields(Settings):
        key = f"hblsp.{json_name(f.name)}"
        if f.name in NOT_IN_VSCODE:
            assert key not in properties, key
            continue
        assert key in properties, f"package.json does not offer hblsp's setting {key}"
        contributed += 1
        want = getattr(defaults, f.name)
        assert properties[key]["default"] == (list(want) if isinstance(want, tuple) else want), key
        if f.name in _BOUNDS:
            assert (properties[key]["minimum"], properties[key]["maximum"]) == _BOUNDS[f.name], key
    assert contributed == len(fields(Settings)) - len(NOT_IN_VSCODE)
    extension_own = {k for k in properties if k.startswith(("hblsp.server.", "hblsp.trace."))}
    unknown = set(properties) - extension_own - {f"hblsp.{json_name(f.name)}" for f in fields(Settings)}
    assert unknown == set(), f"settings hblsp does not read: {sorted(unknown)}"


def test_vsix_holds_the_compiled_client_and_its_dependencies_but_no_schema():
    vsix = EXTENSION / "hblsp.vsix"
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not vsix.exists():
        pytest.skip("editors/vscode/hblsp.vsix is not built: run `make vsix`")
    with zipfile.ZipFile(vsix) as z:
        names = set(z.namelist())
        packaged = json.loads(z.read("extension/package.json"))
    assert packaged["name"] == MANIFEST["name"] and packaged["version"] == MANIFEST["version"]
    assert not any(n.startswith("extension/schemas/") for n in names)  # hblsp validates: no yamlValidation copy
    for needed in ("extension/out/extension.js", "extension/out/table.js",
                   "extension/node_modules/vscode-languageclient/package.json",
                   "extension/node_modules/vscode-languageserver-protocol/package.json"):
        assert needed in names, needed
    # Every module the client requires at run time is VS Code's, Node's, or packaged beside it.
    builtins = set(json.loads(subprocess.run(["node", "-p", "JSON.stringify(require('module').builtinModules)"],
                                             capture_output=True, text=True, check=True).stdout))
    with zipfile.ZipFile(vsix) as z:
        required = {m for n in names if re.fullmatch(r"extension/out/[^/]+\.js", n)
                    for m in re.findall(r"require\(\"([^\".][^\"]*)\"\)", z.read(n).decode())}
    assert "vscode-languageclient/node" in required
    missing = sorted(m for m in required if m != "vscode" and m.removeprefix("node:") not in builtins
                     and f"extension/node_modules/{m.split('/')[0]}/package.json" not in names)
    assert missing == [], f"required at run time but not in the .vsix: {missing}"
    leaked = sorted(n for n in names if n.startswith(("extension/src/", "extension/out/test/", "extension/node_modules/typescript/",
                                                       "extension/node_modules/@vscode/vsce/")))
    assert leaked == [], leaked[:10]
