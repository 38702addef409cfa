"""`hblsp daemon start|stop|status`: a warm engine for command-line runs.

`hb_compile` forwards its arguments to a running daemon (engine/daemon_client.py has the
protocol and the socket path) and prints what comes back, so repeated compiles skip Python
start-up, imports (onnx, onnxruntime, numpy), model loading and every unchanged stage (the
engine's in-memory hash memo and stage cache stay warm).

Every connection is served on its own thread, so `status` and `stop` answer at once even while
a run goes on. Runs are served one at a time (a run changes the process's working directory and
stdout, which are process-wide): a run request that finds another one going is answered `busy`
and its client runs cold. A request for another hbcompile (a daemon started before an upgrade or
an edit of the sources) is refused the same way, and a malformed one gets an error reply; none of
them ends the daemon.
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
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from engine import daemon_client as dc

MAX_REQUEST = 1 << 20  # characters of one request line; an argv is a few hundred
STOP_GRACE_S = 5.0  # how long `stop` lets a cancelled run reach its next stage boundary before exiting


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


class BadRequest(ValueError):
    """A request line that is not one of the protocol's messages (engine/daemon_client.py)."""


@dataclass(frozen=True)
class RunRequest:
    argv: list[str]
    cwd: str
    tty: bool = False
    columns: int = 0
    hbcompile: dict | None = None  # the client's code_identity(); None from clients older than the check


def parse_request(line: str) -> dict | RunRequest:
    """One request line → {"cmd": "status" | "stop"} or a RunRequest; BadRequest says what is wrong."""
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise BadRequest(f"expected a JSON object, found {type(msg).__name__}")
    if "cmd" in msg:
        if msg["cmd"] not in ("status", "stop"):
            raise BadRequest(f"unknown cmd {msg['cmd']!r} (expected 'status' or 'stop')")
        return {"cmd": msg["cmd"]}
    argv, cwd = msg.get("argv"), msg.get("cwd")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise BadRequest(f"'argv' must be a list of strings, found {argv!r:.80}")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise BadRequest(f"'cwd' must be an absolute path, found {cwd!r:.80}")
    columns = msg.get("columns") or 0
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 0:
        raise BadRequest(f"'columns' must be a non-negative integer, found {columns!r:.80}")
    identity = msg.get("hbcompile")
    return RunRequest(argv, cwd, bool(msg.get("tty")), columns, identity if isinstance(identity, dict) else None)


@dataclass
class _CurrentRun:
    request: RunRequest
    cancel: threading.Event
    started: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {"argv": self.request.argv, "cwd": self.request.cwd, "seconds": round(time.time() - self.started, 1)}


class Daemon:
    """The daemon's state: who it is, what it runs now; one thread per connection."""

    def __init__(self, path: Path, srv: socket.socket, identity: dict[str, str]) -> None:
        self.path, self.srv, self.identity = path, srv, identity
        self.started, self.runs = time.time(), 0
        self.run_lock = threading.Lock()  # one run at a time: cwd, stdout and COLUMNS are process-wide
        self.current: _CurrentRun | None = None
        self.stopping = threading.Event()
        self._close_lock, self._closed = threading.Lock(), False
        self.ready = threading.Event()  # set once warm: status and stop are answered before that
        self.cli = None

    def warm_up(self) -> None:
        """The warm part, imported once for every run (runs that arrive meanwhile wait for it)."""
        from engine import cli
        from engine.pipeline import preload

        self.cli = cli
        preload()
        self.ready.set()

    def accept_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.srv.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self.handle, args=(conn,), name="hblsp-daemon-conn", daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        """One connection: whatever it sends, it gets a reply and the daemon keeps serving."""
        with conn:
            try:
                self._dispatch(conn)
            except OSError:  # the client went away: nothing to tell it
                pass
            except Exception as exc:  # a bug in the daemon: the client hears of it, the daemon lives on
                traceback.print_exc(file=sys.__stderr__)  # the daemon's log, not a running client's stderr
                _send(conn, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _dispatch(self, conn: socket.socket) -> None:
        conn.settimeout(30.0)  # a client that connects and never sends its line does not hold a thread forever
        reader = conn.makefile("r", encoding="utf-8", errors="replace")
        line = reader.readline(MAX_REQUEST)
        too_long = len(line) >= MAX_REQUEST and not line.endswith("\n")
        if too_long:  # read the rest first: closing on unread bytes resets the connection before the reply is read
            _discard_line(reader)
        conn.settimeout(None)
        try:
            if too_long:
                raise BadRequest(f"longer than {MAX_REQUEST} characters")
            req = parse_request(line or "{}")
        except BadRequest as exc:
            _send(conn, {"error": f"bad request: {exc}"})
            return
        if isinstance(req, dict) and req["cmd"] == "status":
            _send(conn, self.status())
            return
        if isinstance(req, dict):  # stop: the socket is gone before the reply, so a `start` right after can bind it
            reply = self.stop()
            _send(conn, reply)
            self.stopping.set()
            return
        if req.hbcompile is not None and req.hbcompile != self.identity:  # no identity: a client from before the check
            _send(conn, {"refused": "another hbcompile", "daemon": self.identity})
            return
        self.ready.wait()
        if not self.run_lock.acquire(blocking=False):
            current = self.current
            _send(conn, {"busy": current.describe() if current else {}})
            return
        try:
            if self.stopping.is_set():
                _send(conn, {"error": "the daemon is stopping"})
                return
            self.runs += 1
            self.current = _CurrentRun(req, _watch_hang_up(conn))
            _send(conn, {"accepted": True})
            code = _run(conn, req, self.cli, self.current.cancel)
            _send(conn, {"exit": code})
        finally:
            self.current = None
            self.run_lock.release()

    def status(self) -> dict:
        current = self.current
        return {"pid": os.getpid(), "runs": self.runs, "warm": self.ready.is_set(), "uptime": time.time() - self.started, "socket": str(self.path),
                "hbcompile": self.identity, "busy": current.describe() if current else None}

    def stop(self) -> dict:
        """Stop taking connections now and cancel the run in progress; the main thread exits (once
        `stopping` is set) when that run has ended or STOP_GRACE_S has passed."""
        current = self.current
        if current is not None:
            current.cancel.set()
        self.close()
        return {"stopped": True, "cancelled": current.describe() if current else None}

    def close(self) -> None:
        """Once only: a second unlink could remove the socket of a daemon started since."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the accepting thread
        except OSError:
            pass
        self.srv.close()
        _cleanup(self.path)


def _send(conn: socket.socket, message: dict) -> None:
    try:
        dc.request(conn, message)  # one JSON line, as the client sends its request
    except OSError:
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
    srv.listen(16)
    return srv


def serve(path: Path | None = None) -> int:
    """Run the daemon in this process until `stop` (or SIGTERM)."""
    path = path or dc.socket_path()
    identity = dc.code_identity()  # before the imports: the code on disk when it was loaded
    srv = _prepare_socket(path)
    (path.parent / "daemon.pid").write_text(str(os.getpid()))
    daemon = Daemon(path, srv, identity)
    signal.signal(signal.SIGTERM, lambda *_: (daemon.stop(), daemon.stopping.set()))
    threading.Thread(target=daemon.accept_forever, name="hblsp-daemon-accept", daemon=True).start()
    try:
        daemon.warm_up()
        while not daemon.stopping.wait(1.0):
            pass
    finally:
        daemon.close()
    if daemon.run_lock.acquire(timeout=STOP_GRACE_S):  # the cancelled run ended: exit normally
        daemon.run_lock.release()
        return 0
    sys.stdout.flush()
    os._exit(0)  # a run still inside a long stage: do not wait for it (its client says the daemon stopped)


def _run(conn: socket.socket, req: RunRequest, cli, cancel: threading.Event) -> int:
    """One forwarded run. A SystemExit inside it (argparse's usage error when a client newer than
    this daemon sends a flag the daemon's code does not know) ends the run, not the daemon: the
    message goes back to the client's stderr with its exit code."""
    out, err = _SocketOut(conn, req.tty), _SocketOut(conn, False, "err")
    saved_out, saved_err, saved_cwd = sys.stdout, sys.stderr, os.getcwd()
    if req.columns:
        os.environ["COLUMNS"] = str(req.columns)
    else:  # as the client's cold run would: no width of the daemon's own (one it was started with)
        os.environ.pop("COLUMNS", None)
    try:
        os.chdir(req.cwd)
        sys.stdout, sys.stderr = out, err
        return cli.cold_main(list(req.argv), cancel=cancel)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except OSError as exc:  # the client's folder is gone, or the client itself
        try:
            err.write(f"ERROR hblsp daemon: {exc}\n")
        except OSError:
            pass
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
        sock.settimeout(10.0)  # status and stop answer at once; a daemon that does not is treated as gone
        try:
            dc.request(sock, message)
            reply = next(dc.replies(sock), None)
        except (OSError, ValueError):
            return None
        return reply if isinstance(reply, dict) else None


def _discard_line(reader, limit: int = 64 * MAX_REQUEST) -> None:
    """Read and drop the rest of an over-long request line (up to `limit` characters, or the client's
    end of input, or the socket's timeout)."""
    read = 0
    try:
        while read < limit:
            chunk = reader.readline(MAX_REQUEST)
            read += len(chunk)
            if not chunk or chunk.endswith("\n"):
                return
    except OSError:
        return


def start(wait: float = 60.0) -> int:
    """Start a daemon and return once it is warm (its first run does not pay for the imports)."""
    status = _ask({"cmd": "status"})
    if status:
        print(f"hblsp daemon: already running ({_describe(status)})")
        return 0
    home = dc.socket_path().parent
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = home / "daemon.log"
    with open(log, "ab") as fh:  # cwd: the daemon's own private folder, never the caller's project
        child = subprocess.Popen(dc.python_module_command("hblsp.daemon", "serve"), cwd=home, stdin=subprocess.DEVNULL,
                                 stdout=fh, stderr=fh, start_new_session=True, close_fds=True)
    deadline = time.time() + wait
    while time.time() < deadline and child.poll() is None:
        status = _ask({"cmd": "status"})
        if status and status.get("warm", True):
            print(f"hblsp daemon: started (pid {status['pid']}, {dc.socket_path()})")
            return 0
        time.sleep(0.05)
    status = _ask({"cmd": "status"})
    if status:  # another `start` won the race (ours exited: already running)
        print(f"hblsp daemon: already running ({_describe(status)})")
        return 0
    if child.poll() is None:
        print(f"hblsp daemon: did not start within {wait:.0f}s; see {log}")
    else:
        print(f"hblsp daemon: did not start (exit code {child.returncode}); see {log}")
    return 1


def _describe(status: dict) -> str:
    """The status line's body: which hbcompile, whether it is this one, what it is doing."""
    ident, ours = status.get("hbcompile"), dc.code_identity()
    if isinstance(ident, dict) and ident.get("version"):
        words = f"hbcompile {ident['version']} from {ident.get('location')}"
    else:
        words = "hbcompile of an unknown version"
    parts = [words, f"pid {status.get('pid')}", f"{status.get('runs')} runs", f"up {status.get('uptime', 0):.0f}s"]
    if status.get("warm") is False:
        parts.append("still loading the engine")
    busy = status.get("busy")
    if isinstance(busy, dict):
        parts.append(f"running `{dc.command_words(busy.get('argv'))}` in {busy.get('cwd')} for {busy.get('seconds', 0):.0f}s")
    parts.append(str(status.get("socket")))
    text = ", ".join(parts)
    if ident != ours:
        text += (f"; it is {dc.describe_difference(ident, ours)}: hb_compile runs without it — restart it with "
                 f"`{dc.RESTART}`")
    return text


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
        print(f"hblsp daemon: running ({_describe(reply)})")
    else:
        cancelled = reply.get("cancelled")
        print("hblsp daemon: stopped" + (f" (cancelled `{dc.command_words(cancelled.get('argv'))}` in {cancelled.get('cwd')})"
                                         if isinstance(cancelled, dict) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
