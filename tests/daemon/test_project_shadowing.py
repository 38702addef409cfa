"""A project with its own top-level `engine.py` (torchvision's detection references ship one),
`engine/` or `hblsp/` must not replace hbcompile's packages in any Python process we start with
the project as its working directory: the daemon, the language server as VS Code starts it, and
the server's model-reader child (the reviewer's r1/repro_2: `'engine' is not a package`, the
server died at import and the daemon never started)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.daemon import daemon_env

BIN = Path(sys.executable).parent
EXTENSION = REPO / "editors" / "vscode"
SHADOW = 'raise SystemExit("the project\'s own {} was imported instead of hbcompile\'s")\n'


@pytest.fixture
def project(tmp_path) -> Path:
    """The user's project: the digits example beside its own engine.py and hblsp/ package."""
    work = tmp_path / "project"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", ".hb_cache"))
    (work / "engine.py").write_text(SHADOW.format("engine.py"))
    (work / "hblsp").mkdir()
    (work / "hblsp" / "__init__.py").write_text(SHADOW.format("hblsp/"))
    return work


def script(name: str) -> Path:
    path = BIN / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed in {BIN} (pip install -e .)")
    return path


def test_daemon_starts_and_serves_from_the_project_folder(tmp_path, project):
    env = daemon_env(tmp_path / "run")
    hblsp, hb_compile = script("hblsp"), script("hb_compile")
    try:
        started = subprocess.run([hblsp, "daemon", "start"], cwd=project, env=env, capture_output=True, text=True,
                                 timeout=60)
        assert started.returncode == 0, started.stdout + started.stderr + (tmp_path / "run" / "daemon.log").read_text()
        run = subprocess.run([hb_compile, "-c", "digits.hb.yaml"], cwd=project, env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0 and run.stderr == "", run.stdout + run.stderr
        assert (project / "model_output" / "digits.hbm").is_file()
        status = subprocess.run([hblsp, "daemon", "status"], cwd=project, env=env, capture_output=True, text=True,
                                timeout=30)
        assert "1 runs" in status.stdout, status.stdout + status.stderr  # the daemon served it
    finally:
        subprocess.run([hblsp, "daemon", "stop"], cwd=project, env=env, capture_output=True, timeout=30)


def test_model_reader_child_ignores_the_project_folder(project):
    """The language server reads models in a `python -m hblsp.models` child that inherits its cwd."""
    probe = ("from pathlib import Path; from hblsp.models import ProcessReader, ModelSource; "
             "print(ProcessReader()(ModelSource('onnx_model', (Path('digits.onnx').resolve(),))).status)")
    read = subprocess.run([sys.executable, "-P", "-c", probe], cwd=project, capture_output=True, text=True,
                          timeout=120)
    assert read.stdout.strip() == "ready", read.stdout + read.stderr


def _lsp_message(stdout, deadline: float) -> dict | None:
    """One LSP message from the server's unbuffered stdout (select sees what a buffer would hide),
    or None when it closes or the deadline passes."""
    def ready() -> bool:
        return bool(select.select([stdout], [], [], max(0.0, deadline - time.time()))[0])

    headers = b""
    while not headers.endswith(b"\r\n\r\n"):
        if not ready():
            return None
        byte = stdout.read(1)
        if not byte:
            return None
        headers += byte
    length = int(next(line.split(b":")[1] for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length")))
    body = b""
    while len(body) < length:
        if not ready():
            return None
        chunk = stdout.read(length - len(body))
        if not chunk:
            return None
        body += chunk
    return json.loads(body)


def test_vscode_starts_the_server_in_a_project_with_its_own_engine(tmp_path, project):
    """The extension's lookup (serverCommand.ts, compiled here) on a workspace whose .venv is this
    one: the command it picks, started with the workspace as cwd as VS Code does, answers initialize."""
    tsc = EXTENSION / "node_modules" / ".bin" / "tsc"
    if shutil.which("node") is None or not tsc.is_file():
        pytest.skip("node or editors/vscode/node_modules is missing: run `make vsix` (npm ci) first")
    out = tmp_path / "js"
    subprocess.run([tsc, "--outDir", out, "--module", "commonjs", "--target", "es2020", "--strict", "--types", "node",
                    "--skipLibCheck", "src/serverCommand.ts"], cwd=EXTENSION, check=True, capture_output=True,
                   timeout=120)
    (project / ".venv").symlink_to(sys.prefix)
    resolve = (f"const {{ resolveServerCommand }} = require({json.dumps(str(out / 'serverCommand.js'))});"
               "const fs = require('fs');"
               "const isFile = (f) => { try { return fs.statSync(f).isFile(); } catch { return false; } };"
               f"console.log(JSON.stringify(resolveServerCommand({{ configured: [], workspaceFolders: "
               f"[{json.dumps(str(project))}], module: 'hblsp', platform: process.platform, pathEnv: '', isFile }})));")
    command = json.loads(subprocess.run(["node", "-e", resolve], check=True, capture_output=True, text=True,
                                        timeout=60).stdout)
    assert command["cwd"] == str(project)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen([command["command"], *command["args"]], cwd=command["cwd"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                           "params": {"processId": None, "rootUri": None, "capabilities": {}}}).encode()
        server.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        server.stdin.flush()
        reply = _lsp_message(server.stdout, time.time() + 60)
    finally:
        server.kill()
        _, err = server.communicate(timeout=30)
    assert reply is not None and "capabilities" in reply.get("result", {}), err.decode(errors="replace")[-2000:]
