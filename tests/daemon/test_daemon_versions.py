"""A daemon running another hbcompile than the client's (started before an upgrade, or before the
sources were edited) does not serve it: the client runs cold and says once on stderr why, and
`hblsp daemon status` shows the daemon's version (the reviewer's r1/repro_4: the upgraded client
printed the old daemon's `hb_compile version: 0.1.0` without a word)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import engine
from engine import daemon_client as dc
from tests.conftest import REPO
from tests.support.daemon import daemon_command, daemon_env, private_daemon

RESTART = "restart it with `hblsp daemon stop && hblsp daemon start`"


@pytest.fixture
def example(tmp_path):
    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", ".hb_cache"))
    return work


@pytest.fixture
def old_install(tmp_path) -> Path:
    """A copy of this hbcompile that says it is 0.0.9: what was installed when the daemon started."""
    root = tmp_path / "old"
    for package in ("engine", "hblsp"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    init = root / "engine" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{engine.__version__}"', '__version__ = "0.0.9"'))
    return root


def hb_compile(args, cwd, env):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def stable(text: str) -> list[str]:
    return [line for line in text.splitlines() if "peak RSS" not in line and not line.startswith("Successfully")
            and "samples/s" not in line]


def test_daemon_of_an_older_version_is_not_used(tmp_path, example, old_install):
    sock_dir = tmp_path / "run"
    cold_env = {**daemon_env(sock_dir), "HBCOMPILE_NO_DAEMON": "1"}
    assert hb_compile(["-c", "digits.hb.yaml"], example, cold_env)[0] == 0  # fill the cache
    code, cold, _ = hb_compile(["-c", "digits.hb.yaml"], example, cold_env)
    assert code == 0
    with private_daemon(sock_dir, PYTHONPATH=str(old_install)) as env:
        status = daemon_command(env, "status")
        assert "hbcompile 0.0.9 from " + str(old_install) in status.stdout, status.stdout
        assert f"it is an older hbcompile (0.0.9; this one is {engine.__version__})" in status.stdout
        code, warm, err = hb_compile(["-c", "digits.hb.yaml"], example, env)
        assert code == 0, warm + err
        assert f"hb_compile version: {engine.__version__}" in warm  # this hbcompile ran, not the daemon's
        assert err.splitlines() == [
            f"hblsp daemon is running an older hbcompile (0.0.9; this one is {engine.__version__}); "
            f"running without it — {RESTART}"]
        assert "0 runs" in daemon_command(env, "status").stdout
    assert stable(warm) == stable(cold)


def test_daemon_started_before_its_sources_changed_is_not_used(tmp_path, example, old_install):
    """Same version, same place: an edit after the daemon started (or a reinstall) is seen too."""
    sock_dir = tmp_path / "run"
    with private_daemon(sock_dir, PYTHONPATH=str(old_install)) as env:
        client = {**env, "PYTHONPATH": str(old_install)}
        code, out, err = hb_compile(["-c", "digits.hb.yaml", "--until", "parse"], example, client)
        assert code == 0 and err == "", err  # the same hbcompile: served, nothing said
        assert "1 runs" in daemon_command(env, "status").stdout
        edited = old_install / "engine" / "report" / "console.py"
        edited.write_text(edited.read_text() + "\n# an edit\n")
        code, out, err = hb_compile(["-c", "digits.hb.yaml", "--until", "parse"], example, client)
        assert code == 0, out + err
        assert err.splitlines() == ["hblsp daemon is running an older hbcompile (0.0.9, whose sources changed after "
                                    f"the daemon started); running without it — {RESTART}"]
        assert "1 runs" in daemon_command(env, "status").stdout


def test_daemon_from_before_the_version_check_is_let_go(tmp_path):
    """A daemon that starts the run without saying it accepted it (one from before the check):
    the client says so, closes its half so that daemon cancels the run, waits for it to finish,
    and runs cold."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(run / "daemon.sock"))
    srv.listen(1)
    seen: dict = {}

    def old_daemon() -> None:
        conn, _ = srv.accept()
        with conn:
            seen["request"] = json.loads(conn.makefile("r").readline())
            conn.sendall(b'{"out": "Start hb_compile...\\n"}\n{"out": "hb_compile version: 0.0.1\\n"}\n')
            conn.settimeout(30)
            seen["hung_up"] = conn.recv(1) == b""  # the old daemon's hang-up watcher: cancel the run
            conn.sendall(b'{"out": "ERROR interrupted\\n"}\n{"exit": 130}\n')
        srv.close()

    thread = threading.Thread(target=old_daemon, daemon=True)
    thread.start()
    (tmp_path / "x.yaml").write_text("model_parameters: {}\n")
    code, out, err = hb_compile(["-c", "x.yaml"], tmp_path, daemon_env(run))
    thread.join(30)
    assert seen.get("hung_up") is True
    assert seen["request"]["hbcompile"] == dc.code_identity()
    assert err.splitlines() == ["hblsp daemon is running an older hbcompile (from before the daemon checked "
                                f"versions); running without it — {RESTART}"]
    assert "0.0.1" not in out and "interrupted" not in out  # nothing of the old daemon's run is shown
    assert out.startswith("Start hb_compile...") and f"hb_compile version: {engine.__version__}" in out
    assert code == 1  # the cold run's verdict on x.yaml


def test_code_identity_follows_the_installed_sources(old_install):  # -P: not the repo in the cwd
    probe = ("import json; from engine.daemon_client import code_identity; print(json.dumps(code_identity()))")

    def identity() -> dict:
        out = subprocess.run([sys.executable, "-P", "-c", probe], env={**os.environ, "PYTHONPATH": str(old_install)},
                             capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)

    first = identity()
    assert first["version"] == "0.0.9" and first["location"] == str(old_install)
    assert identity() == first
    server = old_install / "hblsp" / "server.py"  # hblsp counts too: the daemon is part of it
    os.utime(server, ns=(server.stat().st_atime_ns, server.stat().st_mtime_ns + 1_000_000_000))
    assert identity()["code"] != first["code"]
