"""The `hb_compile` side of the warm daemon (`hblsp daemon`): find its socket, forward one run.

The daemon itself lives in `hblsp.daemon` (engine never imports hblsp); both sides agree on the
socket path and the line protocol defined here. One request per connection:

    client → {"protocol": 2, "hbcompile": {...}, "argv": [...], "cwd": "...", "tty": false, "columns": 120}\\n
    daemon → {"accepted": true}\\n {"out": "text"}\\n ... {"exit": 0}\\n
          or {"refused": "why", "daemon": {...}}\\n       (runs another hbcompile: run cold)
          or {"busy": {"argv": [...], "cwd": "...", "seconds": 12.5}}\\n   (serving another run: run cold)
          or {"error": "why"}\\n                      (a malformed request)
    client → {"cmd": "status"}\\n or {"cmd": "stop"}\\n  (answered at once, even during a run)

`hbcompile` is `code_identity()`: the version and a digest of the installed sources. A daemon
started before an upgrade or an edit of the sources refuses the run, and the client runs it cold,
saying once on stderr why. A daemon serves one run at a time (a run changes the process's
working directory and stdout); a client that finds it busy runs cold at once rather than
waiting silently for another run's minutes.

A client that goes away (Ctrl-C) closes the connection; the daemon sees the hang-up and cancels
the run at the next stage or sample boundary instead of finishing it for nobody.
A reader that leaves early (`| head`) is not a hang-up: the client stops printing, keeps
reading until the exit code and exits with it, as a cold run does.

The socket lives in a folder only the user can enter (0700) and is itself 0600.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import socket
import sys
from pathlib import Path

import engine

# no `typing` (3 ms) nor `tempfile` (2 ms) at import: a warm client's whole run is ~70 ms of start-up,
# imports and this module

PROTOCOL = 2
RESTART = "hblsp daemon stop && hblsp daemon start"


def runtime_dir() -> Path:
    import tempfile

    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"hbcompile-{os.getuid()}"


def socket_path() -> Path:
    return Path(os.environ.get("HBCOMPILE_DAEMON_SOCKET") or runtime_dir() / "daemon.sock")


def _package_dirs() -> list[Path]:
    """The installed `engine` and `hblsp` folders (found without importing hblsp)."""
    dirs = [Path(engine.__file__).resolve().parent]
    spec = importlib.util.find_spec("hblsp")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))).resolve())
    return dirs


def code_identity() -> dict[str, str]:
    """Which hbcompile this process runs: its version, where it is installed and a digest of every
    file of the installed engine and hblsp (path, size, modification time: an upgrade or an edit
    changes it), so a daemon started before either is found out. Every warm client run takes it:
    ~160 files, 0.7 ms (a directory scan, one stat per file)."""
    digest = hashlib.sha256()
    dirs = _package_dirs()
    for root in dirs:
        digest.update(f"{root}\0".encode())
        digest.update("".join(_stamps(str(root), "")).encode())
    return {"version": engine.__version__, "location": str(dirs[0].parent), "code": digest.hexdigest()[:16]}


def _stamps(folder: str, relative: str) -> list[str]:
    """`path\0size\0mtime_ns\0` of every file under `folder` but compiled ones, by name, depth first."""
    try:
        with os.scandir(folder) as found:
            entries = sorted(found, key=lambda e: e.name)
    except OSError:
        return []
    out: list[str] = []
    for entry in entries:
        try:
            if entry.is_dir():
                if entry.name != "__pycache__":
                    out += _stamps(entry.path, f"{relative}{entry.name}/")
                continue
            if entry.name.endswith((".pyc", ".pyo")):
                continue
            st = entry.stat()
        except OSError:  # gone meanwhile
            continue
        out.append(f"{relative}{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\0")
    return out


def _version_key(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def describe_difference(daemon: dict | None, ours: dict[str, str]) -> str:
    """Which hbcompile a daemon runs, next to this one, in words (`daemon` is its `code_identity()`):
    "an older hbcompile (0.1.0; this one is 0.2.0)"."""
    if not isinstance(daemon, dict) or not daemon.get("version"):
        return "an older hbcompile (from before the daemon checked versions)"
    theirs = str(daemon["version"])
    if theirs != ours["version"]:
        a, b = _version_key(theirs), _version_key(ours["version"])
        age = "an older" if a and b and a < b else "a newer" if a and b and a > b else "another"
        return f"{age} hbcompile ({theirs}; this one is {ours['version']})"
    if daemon.get("location") != ours["location"]:
        return f"another hbcompile ({theirs} from {daemon.get('location')}; this one is from {ours['location']})"
    return f"an older hbcompile ({theirs}, whose sources changed after the daemon started)"


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


def python_module_command(module: str, *args: str) -> list[str]:
    """`python -m module args` that does not put the working directory on sys.path (`-P`, Python
    3.11+): a project's own engine.py, engine/ or hblsp/ must not replace ours (the daemon, the
    language server's model reader)."""
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe, "-m", module, *args]


def command_words(argv: object) -> str:
    """A forwarded run as the user typed it (the client adds --no-daemon for the daemon's own parse)."""
    words = argv if isinstance(argv, list) else []
    return " ".join(["hb_compile", *(str(a) for a in words if a != "--no-daemon")])


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

    def __init__(self, stream: io.TextIOBase) -> None:
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


def _point_at_devnull(stream: io.TextIOBase) -> None:
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


def _say(text: str) -> None:
    """One line on the client's stderr about the daemon (never on stdout: the run's output stays as a cold run's)."""
    try:
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _busy_words(busy: object) -> str:
    if not isinstance(busy, dict):
        return "another run"
    argv = busy.get("argv")
    command = command_words(argv) if isinstance(argv, list) else "a run"
    seconds = busy.get("seconds")
    since = f" for {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
    return f"`{command}` in {busy.get('cwd', '?')}{since}"


def _decline(first: dict, ours: dict[str, str]) -> str | None:
    """The daemon's first reply as the reason to run cold, or None when it took the run."""
    if first.get("accepted"):
        return None
    if "refused" in first:
        return (f"hblsp daemon is running {describe_difference(first.get('daemon'), ours)}; "
                f"running without it — restart it with `{RESTART}`")
    if "busy" in first:
        return f"hblsp daemon is busy with {_busy_words(first['busy'])}; running without it"
    if "error" in first:
        return f"hblsp daemon refused the run ({first['error']}); running without it"
    return (f"hblsp daemon is running {describe_difference(None, ours)}; "
            f"running without it — restart it with `{RESTART}`")


def run_via_daemon(argv: list[str]) -> int | None:
    """Forward an hb_compile run to a running daemon; None when the run is to be done here (cold):
    no daemon, one running another hbcompile, one busy with another run, one that went away."""
    sock = connect()
    if sock is None:
        return None
    try:
        columns = os.get_terminal_size().columns if sys.stdout.isatty() else 0
    except OSError:
        columns = 0
    ours = code_identity()
    out, err = _Console(sys.stdout), _Console(sys.stderr)
    printed = False
    with sock:
        try:
            request(sock, {"protocol": PROTOCOL, "hbcompile": ours, "argv": argv, "cwd": os.getcwd(),
                           "tty": sys.stdout.isatty(), "columns": columns})
            messages = replies(sock)
            first = next(messages, None)
            if not isinstance(first, dict):
                return None  # the daemon went away before answering: run cold
            declined = _decline(first, ours)
            if declined is not None:
                _say(declined)
                if not any(key in first for key in ("refused", "busy", "error")):
                    _let_old_daemon_go(sock, messages)
                return None
            for msg in messages:
                if "out" in msg:
                    out.write(msg["out"])
                    printed = True
                elif "err" in msg:
                    err.write(msg["err"])
                    printed = True
                elif "exit" in msg:
                    return int(msg["exit"])
        except (OSError, ValueError, TypeError):
            pass
        except KeyboardInterrupt:  # closing the socket tells the daemon to cancel the run
            out.write("ERROR interrupted\n")
            return 130
    if not printed:
        return None  # the daemon went away before saying anything: run cold instead
    out.write("ERROR the hbcompile daemon stopped during the run\n")
    return 2


def _let_old_daemon_go(sock: socket.socket, messages) -> None:
    """A daemon from before the version check started the run at once: end our half (its hang-up
    watcher cancels the run at the next stage boundary), drop what it still sends and wait until it
    has finished, so the cold run that follows does not race it in the same working_dir."""
    try:
        sock.shutdown(socket.SHUT_WR)
        for _ in messages:
            pass
    except (OSError, ValueError):
        pass
