"""A private `hblsp daemon` for tests: its own socket under the test's tmp folder, never the user's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMON = [sys.executable, "-m", "hblsp.daemon"]


def daemon_env(sock_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a client (or daemon) using the socket in `sock_dir`, daemon not opted out."""
    env = {**os.environ, "HBCOMPILE_DAEMON_SOCKET": str(sock_dir / "daemon.sock"), **extra}
    env.pop("HBCOMPILE_NO_DAEMON", None)
    return env


def daemon_command(env: dict[str, str], verb: str, timeout: float = 30,
                   cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(DAEMON + [verb], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def ask(sock_dir: Path, payload: bytes, timeout: float = 30) -> list[dict]:
    """Send raw bytes on the daemon's socket; every JSON line it answers, until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_dir / "daemon.sock"))
        s.sendall(payload)
        with s.makefile("r", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


@contextmanager
def private_daemon(sock_dir: Path, serve_prelude: str | None = None,
                   **extra_env: str) -> Iterator[dict[str, str]]:
    """A daemon started on `sock_dir`'s socket for the block, stopped after it; yields the client env.

    `extra_env` goes to the daemon only (e.g. PYTHONPATH of another hbcompile). `serve_prelude` is
    Python run in the daemon process before it serves (e.g. a run that waits for the test): the
    daemon is then started as `serve` directly rather than through `start`."""
    env = daemon_env(sock_dir)
    own = daemon_env(sock_dir, **extra_env)
    proc = None
    if serve_prelude is None:
        started = daemon_command(own, "start", timeout=60)
        assert started.returncode == 0, started.stdout + started.stderr
    else:
        sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        code = f"{serve_prelude}\nimport sys\nfrom hblsp.daemon import main\nsys.exit(main(['serve']))\n"
        with open(sock_dir / "daemon.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-P", "-c", code], env=own, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 60
        while daemon_command(env, "status").returncode != 0:
            assert proc.poll() is None and time.time() < deadline, (sock_dir / "daemon.log").read_text()
            time.sleep(0.1)
    try:
        yield env
    finally:
        daemon_command(env, "stop")
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
