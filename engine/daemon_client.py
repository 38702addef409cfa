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

import io
import json
import os
import socket
import sys
import zlib

import engine

TYPE_CHECKING = False  # no `typing` at start-up
if TYPE_CHECKING:
    from pathlib import Path

# hb_compile imports this module before anything else (engine.cli's main asks the daemon first), so a
# warm run's client is Python's start-up, json, socket and this file. Left out on purpose, CPU of a fresh
# interpreter: hashlib +3.5 ms (OpenSSL; zlib's checksums are enough to see that files changed), pathlib
# +3 ms (urllib.parse, ipaddress; os.path here, a Path only for the daemon's side), importlib.util +1.4 ms,
# typing +3 ms, tempfile +2 ms (only without XDG_RUNTIME_DIR).

PROTOCOL = 2
RESTART = "hblsp daemon stop && hblsp daemon start"


def _runtime_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base:
        import tempfile

        base = tempfile.gettempdir()
    return os.path.join(base, f"hbcompile-{os.getuid()}")


def socket_path() -> Path:
    from pathlib import Path

    return Path(_socket_file())


def _socket_file() -> str:
    return os.environ.get("HBCOMPILE_DAEMON_SOCKET") or os.path.join(_runtime_dir(), "daemon.sock")


def _package_dirs() -> list[str]:
    """The installed `engine` and `hblsp` folders (found as `import hblsp` would find it, without importing it)."""
    dirs = [os.path.dirname(os.path.realpath(engine.__file__))]
    spec = sys.modules["hblsp"].__spec__ if "hblsp" in sys.modules else _find_spec("hblsp")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(os.path.realpath(next(iter(spec.submodule_search_locations))))
    return dirs


def _find_spec(name: str):
    """importlib.util.find_spec for a top-level name: ask each meta path finder in turn."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        spec = find(name, None) if find is not None else None
        if spec is not None:
            return spec
    return None


def code_identity() -> dict[str, str]:
    """Which hbcompile this process runs: its version, where it is installed and a digest of every
    file of the installed engine and hblsp (path, size, modification time: an upgrade or an edit
    changes it), so a daemon started before either is found out. Every warm client run takes it:
    ~160 files, 0.7 ms (a directory scan, one stat per file). The digest is CRC-32 and Adler-32 of
    those stamps side by side (64 bits, zlib: no OpenSSL to load in the client)."""
    dirs = _package_dirs()
    stamps = "".join(f"{root}\0" + "".join(_stamps(root, "")) for root in dirs).encode()
    code = f"{zlib.crc32(stamps):08x}{zlib.adler32(stamps):08x}"
    return {"version": engine.__version__, "location": os.path.dirname(dirs[0]), "code": code}


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
            if entry.is_dir(follow_symlinks=False):  # as os.walk: a linked folder (a cycle, even) is not entered
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


def _safe(path: str) -> bool:
    """Only talk to a socket in a folder that is ours and private (no one else can plant it)."""
    try:
        st = os.stat(os.path.dirname(path) or ".")
        return st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0
    except OSError:
        return False


def connect(timeout: float = 0.5) -> socket.socket | None:
    path = _socket_file()
    if not os.path.exists(path) or not _safe(path):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
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


def say(text: str) -> None:
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


DECLINES = ("refused", "busy", "error")  # how a daemon of this protocol declines a run


def _from_old_daemon(first: dict) -> bool:
    """A first reply that neither takes the run nor declines it as this protocol does: an older daemon."""
    return not first.get("accepted") and not any(key in first for key in DECLINES)


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


def forward(argv: list[str]) -> tuple[int | None, str | None]:
    """Forward an hb_compile run to a running daemon: (its exit code, None) when the daemon ran it;
    (None, why) when a daemon declined it, the line to print on stderr before running it here; (None, None)
    when no daemon answered. The caller prints `why` only once it knows the run goes ahead here (a usage
    error ends a cold run before any word about the daemon)."""
    sock = connect()
    if sock is None:
        return None, None
    tty = sys.stdout.isatty()
    ours = code_identity()
    out, err = _Console(sys.stdout), _Console(sys.stderr)
    printed = False
    with sock:
        try:
            request(sock, {"protocol": PROTOCOL, "hbcompile": ours, "argv": argv, "cwd": os.getcwd(),
                           "tty": tty, "columns": _columns(tty)})
            messages = replies(sock)
            first = next(messages, None)
            if not isinstance(first, dict):
                return None, None  # the daemon went away before answering: run cold
            declined = _decline(first, ours)
            if declined is not None:
                if _from_old_daemon(first):
                    _let_old_daemon_go(sock, messages)
                return None, declined
            for msg in messages:
                if "out" in msg:
                    out.write(msg["out"])
                    printed = True
                elif "err" in msg:
                    err.write(msg["err"])
                    printed = True
                elif "exit" in msg:
                    return int(msg["exit"]), None
        except (OSError, ValueError, TypeError):
            pass
        except KeyboardInterrupt:  # closing the socket tells the daemon to cancel the run
            out.write("ERROR interrupted\n")
            return 130, None
    if not printed:
        return None, None  # the daemon went away before saying anything: run cold instead
    out.write("ERROR the hbcompile daemon stopped during the run\n")
    return 2, None


def _columns(tty: bool) -> int:
    """The width a cold run here would format for (argparse's usage, rich's tables): $COLUMNS when set, as
    both read it first, else the terminal's on a terminal; 0: the daemon uses no width of its own either."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size().columns if tty else 0
    except OSError:
        return 0


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
