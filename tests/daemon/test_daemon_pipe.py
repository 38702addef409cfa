"""A reader that leaves early (`hb_compile -c x.yaml | head`, `grep -m1`, quitting `less`) while a
daemon serves the run: the client, like a cold run, stops printing but waits for the run's end and
exits with its code; it must not hang up (the daemon would cancel the run) nor print a traceback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.daemon import daemon_env, private_daemon

LINES = 2000  # far more than one pipe buffer: the client's writes hit EPIPE, not a full buffer


class FakeDaemon:
    """Serves one forwarded run: one line, then (once the reader is gone) many more on `stream`,
    then checks the client is still connected before sending the exit code."""

    def __init__(self, sock_path: Path, stream: str, exit_code: int) -> None:
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(sock_path))
        self.srv.listen(1)
        self.stream, self.exit_code = stream, exit_code
        self.reader_gone, self.connected_at_exit, self.done = threading.Event(), None, threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def send(self, conn: socket.socket, msg: dict) -> None:
        conn.sendall((json.dumps(msg) + "\n").encode())

    def serve(self) -> None:
        conn, _ = self.srv.accept()
        try:
            conn.makefile("r").readline()
            self.send(conn, {"accepted": True})
            self.send(conn, {self.stream: "Start hb_compile...\n"})
            self.reader_gone.wait(30)
            for i in range(LINES):
                self.send(conn, {self.stream: f"line {i} of the run's output\n"})
            conn.settimeout(1.0)  # a client that died or hung up shows as end-of-file at once
            try:
                self.connected_at_exit = conn.recv(1) != b""
            except TimeoutError:
                self.connected_at_exit = True
            self.send(conn, {"exit": self.exit_code})
        except OSError:  # the client hung up mid-run: the real daemon cancels the run here
            self.connected_at_exit = False
        finally:
            conn.close()
            self.srv.close()
            self.done.set()


def client(tmp_path: Path, **pipes) -> subprocess.Popen:
    env = daemon_env(tmp_path / "run")
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "-c", "x.yaml"], cwd=tmp_path, env=env, text=True,
                            **pipes)


@pytest.fixture
def sock_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return run


@pytest.mark.parametrize("exit_code", [0, 1])
def test_reader_leaving_stdout_keeps_the_run_and_its_exit_code(tmp_path, sock_dir, exit_code):
    daemon = FakeDaemon(sock_dir / "daemon.sock", "out", exit_code)
    proc = client(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "Start hb_compile...\n"
    proc.stdout.close()  # `| head -1` exits
    daemon.reader_gone.set()
    err = proc.stderr.read()
    assert proc.wait(60) == exit_code, err
    assert daemon.done.wait(10)
    assert daemon.connected_at_exit  # the daemon was not told to cancel the run
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_reader_leaving_stderr_keeps_the_run(tmp_path, sock_dir):
    daemon = FakeDaemon(sock_dir / "daemon.sock", "err", 0)
    out = tmp_path / "stdout.txt"
    with open(out, "w") as fh:
        proc = client(tmp_path, stdout=fh, stderr=subprocess.PIPE)
        assert proc.stderr.readline() == "Start hb_compile...\n"
        proc.stderr.close()
        daemon.reader_gone.set()
        assert proc.wait(60) == 0
    assert daemon.done.wait(10)
    assert daemon.connected_at_exit
    assert "daemon stopped" not in out.read_text()


def test_real_daemon_run_piped_to_head_writes_its_artefacts(tmp_path):
    """The reviewer's case (r11) end to end: a warm daemon, `| head -2`: exit 0 and the artefacts written."""
    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output"))
    with private_daemon(tmp_path / "run") as env:
        proc = subprocess.run(["bash", "-c", f"{sys.executable} -m engine.cli -c digits.hb.yaml | head -2 "
                               ">/dev/null; echo ${PIPESTATUS[0]}"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
    assert proc.stdout.strip() == "0", proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.suffix for p in (work / "model_output").glob("*.hbm")) == [".hbm"]
