"""A private `hblsp daemon` for tests: its own socket under the test's tmp folder, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMON = [sys.executable, "-m", "hblsp.daemon"]


def daemon_env(sock_dir: Path) -> dict[str, str]:
    """The environment of a client (or daemon) using the socket in `sock_dir`, daemon not opted out."""
    env = {**os.environ, "HBCOMPILE_DAEMON_SOCKET": str(sock_dir / "daemon.sock")}
    env.pop("HBCOMPILE_NO_DAEMON", None)
    return env


def daemon_command(env: dict[str, str], verb: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(DAEMON + [verb], env=env, capture_output=True, text=True, timeout=timeout)


@contextmanager
def private_daemon(sock_dir: Path) -> Iterator[dict[str, str]]:
    """A daemon started on `sock_dir`'s socket for the block, stopped after it; yields the client env."""
    env = daemon_env(sock_dir)
    started = daemon_command(env, "start", timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield env
    finally:
        daemon_command(env, "stop")
