"""`hblsp daemon`: hb_compile runs warm through a user-only socket and prints what a cold run prints."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.support.daemon import private_daemon


@pytest.fixture
def daemon(tmp_path):
    sock_dir = tmp_path / "run"
    with private_daemon(sock_dir) as env:
        yield env, sock_dir


@pytest.fixture
def example(tmp_path):
    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output"))
    return work


def hb_compile(args, cwd, env):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout


def stable(text: str) -> list[str]:
    """Output lines that do not depend on timing or memory."""
    return [line for line in text.splitlines() if "peak RSS" not in line and not line.startswith("Successfully")
            and "samples/s" not in line]


def test_daemon_output_equals_cold_output(daemon, example):
    env, _ = daemon
    cold_env = {**env, "HBCOMPILE_NO_DAEMON": "1"}
    assert hb_compile(["-c", "digits.hb.yaml"], example, cold_env)[0] == 0  # fill the cache
    code_cold, cold = hb_compile(["-c", "digits.hb.yaml"], example, cold_env)
    code_warm, warm = hb_compile(["-c", "digits.hb.yaml"], example, env)
    assert code_cold == code_warm == 0
    assert stable(warm) == stable(cold)
    status = subprocess.run([sys.executable, "-m", "hblsp.daemon", "status"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert "1 runs" in status.stdout


def test_daemon_reports_errors_like_a_cold_run(daemon, example):
    env, _ = daemon
    (example / "digits.hb.yaml").write_text((example / "digits.hb.yaml").read_text().replace("march: nash-e",
                                                                                             "march: nash-x"))
    code, out = hb_compile(["-c", "digits.hb.yaml"], example, env)
    assert code != 0 and "The specified march 'nash-x' is invalid" in out and "Traceback" not in out
    status = subprocess.run([sys.executable, "-m", "hblsp.daemon", "status"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert "1 runs" in status.stdout  # the daemon served it (a client falling back to a cold run prints the same)


def test_socket_is_user_only(daemon):
    _, sock_dir = daemon
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((sock_dir / "daemon.sock").stat().st_mode) == 0o600


def test_no_daemon_flag_and_stopped_daemon_run_cold(tmp_path, example):
    env = {**os.environ, "HBCOMPILE_DAEMON_SOCKET": str(tmp_path / "none" / "daemon.sock")}
    env.pop("HBCOMPILE_NO_DAEMON", None)
    code, out = hb_compile(["-c", "digits.hb.yaml", "--no-daemon"], example, env)
    assert code == 0 and out.startswith("Start hb_compile...")
    code, out = hb_compile(["-c", "digits.hb.yaml"], example, env)  # no daemon running: cold
    assert code == 0
