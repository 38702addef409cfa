"""hb_compile asks a running daemon before it parses or imports anything (issue #8: the warm run's
client was most of its cost). What it still answers itself (help, version, --no-daemon) and what the
daemon now answers for it (usage errors) read exactly as a cold run's, and a warm client stays light."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time

import pytest

from engine.cli import answered_here, build_parser
from tests.support.daemon import daemon_command, private_daemon

# A run held in the daemon while its folder holds `hold` (as in test_daemon_busy), to keep it busy.
HOLD = """
import pathlib, time
import engine.cli as cli
real = cli.cold_main
def held(argv, cancel=None):
    while pathlib.Path("hold").exists() and not (cancel is not None and cancel.is_set()):
        time.sleep(0.05)
    return real(argv, cancel=cancel)
cli.cold_main = held
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with private_daemon(tmp_path_factory.mktemp("front") / "run") as env:
        yield env


def hb_compile(args: list[str], cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def runs(env) -> int:
    status = daemon_command(env, "status").stdout
    found = re.search(r", (\d+) runs,", status)
    assert found, status
    return int(found.group(1))


def outcome(proc: subprocess.CompletedProcess, folder) -> tuple:
    return proc.returncode, proc.stdout, proc.stderr, sorted(p.name for p in folder.iterdir())


def clear(folder) -> None:
    for p in folder.iterdir():
        p.unlink()


# (argv, whether the daemon serves it): help, version and no-daemon in every spelling stay here; a usage
# error goes to the daemon, whose argparse says what this process's would
CASES = [
    (["-h"], False),
    (["--he"], False),
    (["-c", "x.yaml", "-hc", "y.yaml"], False),
    (["--version"], False),
    (["--vers"], False),
    (["-c", "missing.yaml", "--no-d"], False),
    (["--help=x"], False),
    (["--bogus"], True),
    (["-c"], True),
    (["-c", "x.yaml", "--"], True),  # with --no-daemon appended, the daemon would name it among the unrecognized
    (["-c", "x.yaml", "--sensitivity", "0"], True),
    (["--skip", "nope", "-c", "x.yaml"], True),
    (["--s", "x"], True),  # ambiguous: --skip or --sensitivity
    (["--config=-h", "--bogus"], True),  # a value, not the help flag
    (["-c", "missing.yaml"], True),  # a run: the daemon's error, the daemon's (no) files
]


@pytest.mark.parametrize(("args", "served"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_output_exit_code_and_files_equal_a_cold_run(daemon, tmp_path, args, served):
    cold = outcome(hb_compile(args, tmp_path, {**daemon, "HBCOMPILE_NO_DAEMON": "1"}), tmp_path)
    clear(tmp_path)
    before = runs(daemon)
    warm = outcome(hb_compile(args, tmp_path, daemon), tmp_path)
    assert warm == cold
    assert runs(daemon) == before + served
    assert "hblsp daemon" not in warm[2] and "Traceback" not in warm[1] + warm[2]


def test_the_width_of_the_usage_is_the_clients(daemon, tmp_path):
    """COLUMNS (read first by argparse and rich) goes to the daemon even when stdout is no terminal."""
    wide = {**daemon, "COLUMNS": "200"}
    cold = hb_compile(["--bogus"], tmp_path, {**wide, "HBCOMPILE_NO_DAEMON": "1"})
    warm = hb_compile(["--bogus"], tmp_path, wide)
    assert cold.stderr.startswith("usage: hb_compile [-h] [-c CONFIG]") and len(cold.stderr.splitlines()) == 2
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)


def test_a_warm_client_imports_neither_the_parser_nor_logging_nor_the_engine(daemon, tmp_path):
    heavy = ["argparse", "logging", "engine.problems", "engine.logsetup", "engine.config", "pathlib", "hashlib",
             "typing", "dataclasses", "numpy"]
    probe = ("import sys; from engine.cli import main; code = main(['-c', 'missing.yaml']); "
             f"print('LOADED', *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr); sys.exit(code)")
    bare = subprocess.run([sys.executable, "-c", f"import sys; print(*[m for m in {heavy!r} if m in sys.modules])"],
                          capture_output=True, text=True, check=True).stdout.split()
    before = runs(daemon)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=daemon, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and runs(daemon) == before + 1, proc.stdout + proc.stderr
    loaded = proc.stderr.splitlines()[-1].split()[1:]
    assert sorted(set(loaded) - set(bare)) == []


def test_a_usage_error_while_the_daemon_is_busy_says_nothing_about_it(tmp_path):
    """The daemon declines; this process then parses first, as a cold run: the busy note comes only
    before a run that goes ahead here."""
    held_dir, other = tmp_path / "held", tmp_path / "other"
    held_dir.mkdir()
    other.mkdir()
    (held_dir / "hold").write_text("")
    with private_daemon(tmp_path / "run", serve_prelude=HOLD) as env:
        held = subprocess.Popen([sys.executable, "-m", "engine.cli", "-c", "missing.yaml"], cwd=held_dir, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 60
            while "running `hb_compile -c missing.yaml`" not in daemon_command(env, "status").stdout:
                assert time.time() < deadline and held.poll() is None
                time.sleep(0.1)
            cold = hb_compile(["--bogus"], other, {**env, "HBCOMPILE_NO_DAEMON": "1"})
            busy = hb_compile(["--bogus"], other, env)
            assert (busy.returncode, busy.stdout, busy.stderr) == (cold.returncode, cold.stdout, cold.stderr) != (0, "", "")
            run = hb_compile(["-c", "missing.yaml"], other, env)  # a run that goes ahead here: the note first
            assert run.stderr.startswith("hblsp daemon is busy with `hb_compile -c missing.yaml`"), run.stderr
        finally:
            (held_dir / "hold").unlink()
            held.communicate(timeout=60)


WORDS = ["-h", "--help", "--he", "--h", "--version", "--v", "--no-daemon", "--n", "--no", "-c", "x.yaml", "-m",
         "m.onnx", "--march", "nash-e", "--fast-perf", "--f", "--sensitivity", "3", "--skip", "export", "-i", "a",
         "1x3", "--", "-hc", "--help=1", "--no-daemon=1", "--config=-h", "--march=--no-daemon", "-c-h", "--bogus",
         "--m", "--s", "-x"]
TRICKY = ["-h", "-hc", "--n", "--v", "--", "-c", "-i", "a", "--sensitivity", "--config=-h"]  # in threes too


def parsed(parser, argv: list[str]) -> str:
    """What hb_compile's argparse parser makes of argv: help, version, no-daemon, error or run."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code:
                return "error"
            return "help" if out.getvalue().startswith("usage:") else "version"
    return "no-daemon" if args.no_daemon else "run"


def test_answered_here_never_keeps_a_run_from_the_daemon_nor_sends_it_help_version_or_no_daemon():
    """Every argv of one or two of WORDS and of three of TRICKY (2,260): a yes is help, the version,
    --no-daemon or a usage error in argparse's own reading; a no is never help, the version or --no-daemon."""
    import itertools

    seen, parser = set(), build_parser()
    every = [*itertools.product(WORDS, repeat=1), *itertools.product(WORDS, repeat=2),
             *itertools.product(TRICKY, repeat=3)]
    for argv in map(list, every):
        got, here = parsed(parser, argv), answered_here(argv)
        assert got in (("help", "version", "no-daemon", "error") if here else ("error", "run")), (argv, got)
        seen.add((here, got))
    assert seen == {(True, "help"), (True, "version"), (True, "no-daemon"), (True, "error"), (False, "error"),
                    (False, "run")}


def test_the_console_script_entry_is_the_light_one():
    """pyproject's hb_compile = engine.cli:main, and engine.cli imports only os, sys and engine."""
    probe = "import sys; before = set(sys.modules); import engine.cli; print(*sorted(set(sys.modules) - before))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}).stdout.split()
    assert set(loaded) <= {"engine", "engine.cli", "__future__"}, loaded
