"""Ctrl-C while a daemon serves the run: the client exits 130 with one line (no traceback), and the
daemon, seeing its client hang up, cancels the run instead of finishing it for nobody."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from hblsp.daemon import _watch_hang_up
from tests.conftest import REPO


def test_client_ctrl_c_exits_130_without_traceback(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(run / "daemon.sock"))
    srv.listen(1)
    hung_up, served = threading.Event(), threading.Event()

    def busy_daemon() -> None:  # reads the request, says one line, then works until the client leaves
        conn, _ = srv.accept()
        conn.makefile("r").readline()
        served.set()
        conn.sendall(b'{"accepted": true}\n{"out": "Start hb_compile...\\n"}\n')
        conn.settimeout(30)
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        hung_up.set()

    threading.Thread(target=busy_daemon, daemon=True).start()
    env = {**os.environ, "HBCOMPILE_DAEMON_SOCKET": str(run / "daemon.sock")}
    env.pop("HBCOMPILE_NO_DAEMON", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a hang dumps the client's stacks (SIGABRT below) into the failure
    # Ctrl-C's default disposition in the client whatever this process inherited: a shell running the suite as
    # a background job (`make test &`) ignores SIGINT, and an ignored SIGINT passes through exec to the client,
    # whose Python then installs no KeyboardInterrupt handler (the run waited out the fake daemon's 30 s)
    client = subprocess.Popen([sys.executable, "-m", "engine.cli", "-c", "x.yaml"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert client.stdout.readline().startswith("Start hb_compile")
    assert served.wait(30)  # the daemon is serving it (not a cold run after a failed connect)
    client.send_signal(signal.SIGINT)
    try:
        out, err = client.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        client.send_signal(signal.SIGABRT)
        out, err = client.communicate(timeout=30)
        raise AssertionError(f"the client did not exit after Ctrl-C:\n{out}\n{err}") from None
    assert client.returncode == 130, (out, err)
    assert out.strip().splitlines()[-1] == "ERROR interrupted"
    assert "Traceback" not in err + out
    assert hung_up.wait(10)  # the daemon side saw the hang-up
    srv.close()


def test_hang_up_is_seen_by_the_daemon():
    daemon_end, client_end = socket.socketpair()
    hung_up = _watch_hang_up(daemon_end)
    time.sleep(0.1)
    assert not hung_up.is_set()  # a client waiting for output is not a hang-up
    client_end.close()
    assert hung_up.wait(10)
    daemon_end.close()


def test_cancelled_run_exits_130_and_writes_nothing(tmp_path):
    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output"))
    proc = subprocess.run([sys.executable, "-c", (
        "import sys, threading; from engine.cli import cold_main; e = threading.Event(); e.set(); "
        "sys.exit(cold_main(['-c', 'digits.hb.yaml', '--no-daemon'], cancel=e))")],
        cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "ERROR interrupted" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert not (work / "model_output" / "digits.hbm").exists()
