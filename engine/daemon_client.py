"""The `hb_compile` side of the warm daemon (`hblsp daemon`): find its socket, forward one run.

The daemon itself lives in `hblsp.daemon` (engine never imports hblsp); both sides agree on the
socket path and the line protocol defined here. One request per connection:

    client → {"argv": [...], "cwd": "...", "tty": false, "columns": 120}\\n
    daemon → {"out": "text"}\\n ... {"exit": 0}\\n

A client that goes away (Ctrl-C) closes the connection; the daemon sees the hang-up and cancels
the run at the next stage or sample boundary instead of finishing it for nobody.
A reader that leaves early (`| head`) is not a hang-up: the client stops printing, keeps
reading until the exit code and exits with it, as a cold run does.

The socket lives in a folder only the user can enter (0700) and is itself 0600.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import TextIO

PROTOCOL = 1


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"hbcompile-{os.getuid()}"


def socket_path() -> Path:
    return Path(os.environ.get("HBCOMPILE_DAEMON_SOCKET") or runtime_dir() / "daemon.sock")


def _safe(path: Path) -> bool:
    """Only talk to a socket in a folder that is ours and private (no one else can plant it)."""
    try:
        st = path.parent.stat()
        return st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0
    except OSError:
        return False


def connect(timeout: float = 0.5) -> socket.socket | None:
    path = socket_path()
    if not path.exists() or not _safe(path):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    s.settimeout(None)
    return s


def request(sock: socket.socket, message: dict) -> None:
    sock.sendall((json.dumps(message) + "\n").encode())


def replies(sock: socket.socket):
    """Yield each JSON message the daemon sends until it closes the connection."""
    with sock.makefile("r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


class _Console:
    """One of the client's outputs (stdout or stderr). A reader that goes away (`| head`, `grep -m1`,
    quitting `less`) silences it for the rest of the run instead of ending the client: a cold run
    carries on the same way (its logging drops the writes), and a client that hung up would make
    the daemon cancel the run."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.gone = stream, False

    def write(self, text: str) -> None:
        if self.gone:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            self.gone = True
            _point_at_devnull(self.stream)


def _point_at_devnull(stream: TextIO) -> None:
    """Send the rest of `stream` (and what its buffer still holds, flushed at exit) to /dev/null,
    so the interpreter's last flush cannot fail on the closed pipe either."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a real file (tests capturing output): nothing is flushed at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def run_via_daemon(argv: list[str]) -> int | None:
    """Forward an hb_compile run to a running daemon; None when there is none (run cold)."""
    sock = connect()
    if sock is None:
        return None
    try:
        columns = os.get_terminal_size().columns if sys.stdout.isatty() else 0
    except OSError:
        columns = 0
    out, err = _Console(sys.stdout), _Console(sys.stderr)
    printed = False
    with sock:
        try:
            request(sock, {"protocol": PROTOCOL, "argv": argv, "cwd": os.getcwd(), "tty": sys.stdout.isatty(),
                           "columns": columns})
            for msg in replies(sock):
                if "out" in msg:
                    out.write(msg["out"])
                    printed = True
                elif "err" in msg:
                    err.write(msg["err"])
                    printed = True
                elif "exit" in msg:
                    return int(msg["exit"])
        except (OSError, ValueError):
            pass
        except KeyboardInterrupt:  # closing the socket tells the daemon to cancel the run
            out.write("ERROR interrupted\n")
            return 130
    if not printed:
        return None  # the daemon went away before saying anything: run cold instead
    out.write("ERROR the hbcompile daemon stopped during the run\n")
    return 2
