"""While the daemon serves one client's long run, `status` and `stop` answer at once and another
client runs cold, saying why (the reviewer's r1/repro_5: all of them waited for the whole run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.support.daemon import daemon_command, private_daemon

# The daemon's runs wait while their folder holds a file `hold` (until it goes or the run is
# cancelled): a run that lasts as long as the test needs, on any machine.
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


def copy_digits(dest):
    shutil.copytree(REPO / "examples" / "digits", dest, ignore=shutil.ignore_patterns("model_output", ".hb_cache"))
    return dest


def hb_compile(cwd, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "-c", "digits.hb.yaml"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_status_stop_and_other_clients_do_not_wait_for_a_run(tmp_path):
    long_run, other = copy_digits(tmp_path / "a"), copy_digits(tmp_path / "b")
    (long_run / "hold").write_text("")
    with private_daemon(tmp_path / "run", serve_prelude=HOLD) as env:
        held = hb_compile(long_run, env)
        deadline = time.time() + 60
        while "running `hb_compile -c digits.hb.yaml`" not in (status := daemon_command(env, "status", timeout=20)).stdout:
            assert time.time() < deadline and held.poll() is None, status.stdout + status.stderr
            time.sleep(0.1)
        assert f"running `hb_compile -c digits.hb.yaml` in {long_run} for " in status.stdout and "1 runs" in status.stdout

        second = hb_compile(other, env)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, out + err
        assert re.fullmatch(f"hblsp daemon is busy with `hb_compile -c digits.hb.yaml` in {re.escape(str(long_run))} "
                            r"for \d+ s; running without it\n", err), err
        assert out.startswith("Start hb_compile...") and "The hb_compile completes running" in out
        assert (other / "model_output" / "digits.hbm").is_file()
        assert held.poll() is None  # the long run still waits
        assert "1 runs" in daemon_command(env, "status", timeout=20).stdout  # the other client was not served

        stop = daemon_command(env, "stop", timeout=20)
        assert stop.stdout.strip() == ("hblsp daemon: stopped (cancelled `hb_compile -c digits.hb.yaml` "
                                     f"in {long_run})")
        out, err = held.communicate(timeout=60)
        assert held.returncode == 130, out + err
        assert out.splitlines()[-1] == "ERROR interrupted" and "Traceback" not in out + err
        assert not (long_run / "model_output" / "digits.hbm").exists()
        assert daemon_command(env, "status", timeout=20).stdout.strip() == "hblsp daemon: not running"
