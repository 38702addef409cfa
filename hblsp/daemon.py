"""`hblsp daemon start|stop|status`: a warm engine for command-line runs.

`hb_compile` forwards its arguments to a running daemon (engine/daemon_client.py has the
protocol and the socket path) and prints what comes back, so repeated compiles skip Python
start-up, imports (onnx, onnxruntime, numpy), model loading and every unchanged stage (the
engine's in-memory hash memo and stage cache stay warm). Runs are served one at a time: a run
changes the process's working directory and stdout, which are process-wide.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine import daemon_client as dc


class _SocketOut(io.TextIOBase):
    """stdout (or stderr) for one run: every write goes to the client as {"out": text} ({"err": text})."""

    def __init__(self, conn: socket.socket, tty: bool, kind: str = "out") -> None:
        self.conn, self.tty, self.kind = conn, tty, kind

    def write(self, text: str) -> int:
        if text:
            self.conn.sendall((json.dumps({self.kind: text}) + "\n").encode())
        return len(text)

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        pass


def _prepare_socket(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.exists():
        probe = dc.connect()
        if probe is not None:
            probe.close()
            raise SystemExit(f"hblsp daemon: already running on {path}")
        path.unlink()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(str(path))
    finally:
        os.umask(old)
    srv.listen(8)
    return srv


def serve(path: Path | None = None) -> int:
    """Run the daemon in this process until `stop`."""
    path = path or dc.socket_path()
    srv = _prepare_socket(path)
    (path.parent / "daemon.pid").write_text(str(os.getpid()))
    from engine import cli  # the warm part: imported once for every run
    from engine.pipeline import preload

    preload()

    started, runs = time.time(), 0
    signal.signal(signal.SIGTERM, lambda *_: (_cleanup(path), os._exit(0)))
    try:
        while True:
            conn, _ = srv.accept()
            with conn:
                try:
                    msg = json.loads(conn.makefile("r", encoding="utf-8").readline() or "{}")
                except ValueError:
                    continue
                if msg.get("cmd") == "stop":
                    conn.sendall(b'{"stopped": true}\n')
                    return 0
                if msg.get("cmd") == "status":
                    conn.sendall((json.dumps({"pid": os.getpid(), "runs": runs, "uptime": time.time() - started,
                                              "socket": str(path)}) + "\n").encode())
                    continue
                runs += 1
                code = _run(conn, msg, cli)
                try:
                    conn.sendall((json.dumps({"exit": code}) + "\n").encode())
                except OSError:
                    pass
    finally:
        _cleanup(path)
        srv.close()


def _run(conn: socket.socket, msg: dict, cli) -> int:
    """One forwarded run. A SystemExit inside it (argparse's usage error when a client newer than
    this daemon sends a flag the daemon's code does not know) ends the run, not the daemon: the
    message goes back to the client's stderr with its exit code."""
    out, err = _SocketOut(conn, bool(msg.get("tty"))), _SocketOut(conn, False, "err")
    saved_out, saved_err, saved_cwd = sys.stdout, sys.stderr, os.getcwd()
    if msg.get("columns"):
        os.environ["COLUMNS"] = str(msg["columns"])
    hung_up = _watch_hang_up(conn)
    try:
        os.chdir(msg.get("cwd") or saved_cwd)
        sys.stdout, sys.stderr = out, err
        return cli.cold_main(list(msg.get("argv") or []), cancel=hung_up)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except OSError:
        return 2
    finally:
        try:
            conn.shutdown(socket.SHUT_RD)  # wakes the hang-up watcher; replies can still be sent
        except OSError:
            pass
        sys.stdout, sys.stderr = saved_out, saved_err
        os.chdir(saved_cwd)
        os.environ.pop("COLUMNS", None)


def _watch_hang_up(conn: socket.socket) -> threading.Event:
    """An event set when the client closes its end (Ctrl-C): the run is then cancelled instead of
    finished for nobody. The client sends one line and then only reads, so the next thing the
    socket yields is end-of-file."""
    hung_up = threading.Event()

    def watch() -> None:
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        hung_up.set()

    threading.Thread(target=watch, name="hblsp-daemon-hangup", daemon=True).start()
    return hung_up


def _cleanup(path: Path) -> None:
    for p in (path, path.parent / "daemon.pid"):
        try:
            p.unlink()
        except OSError:
            pass


def _ask(message: dict) -> dict | None:
    sock = dc.connect(timeout=2.0)
    if sock is None:
        return None
    with sock:
        dc.request(sock, message)
        return next(dc.replies(sock), None)


def start(wait: float = 20.0) -> int:
    if _ask({"cmd": "status"}):
        print(f"hblsp daemon: already running ({dc.socket_path()})")
        return 0
    log = dc.runtime_dir() / "daemon.log"
    dc.runtime_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        subprocess.Popen([sys.executable, "-m", "hblsp.daemon", "serve"], stdin=subprocess.DEVNULL, stdout=fh,
                         stderr=fh, start_new_session=True, close_fds=True)
    deadline = time.time() + wait
    while time.time() < deadline:
        status = _ask({"cmd": "status"})
        if status:
            print(f"hblsp daemon: started (pid {status['pid']}, {dc.socket_path()})")
            return 0
        time.sleep(0.05)
    print(f"hblsp daemon: did not start within {wait:.0f}s; see {log}")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hblsp daemon", description="A warm hbcompile engine for hb_compile runs.")
    p.add_argument("action", choices=["start", "stop", "status", "serve"])
    args = p.parse_args(argv)
    if args.action == "serve":
        return serve()
    if args.action == "start":
        return start()
    reply = _ask({"cmd": args.action})
    if reply is None:
        print("hblsp daemon: not running")
        return 1 if args.action == "status" else 0
    if args.action == "status":
        print(f"hblsp daemon: running (pid {reply['pid']}, {reply['runs']} runs, up {reply['uptime']:.0f}s, "
              f"{reply['socket']})")
    else:
        print("hblsp daemon: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
