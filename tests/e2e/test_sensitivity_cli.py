"""`hb_compile --sensitivity [N]` on a model with one deliberately broken node: cold, again from the
memo, from calibrate's own ranking with mixed precision's move shown, and through the warm daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.support.daemon import private_daemon
from tests.unit.report.sens_support import BROKEN, write_chain_project

HEADER = ["Rank", "Node", "NodeType", "Isolated", "Loss", "Weight-only", "Loss", "Activation-only", "Loss",
          "Accumulated", "Loss", "Mixed", "Precision"]


def hb_compile(args, cwd, env=None):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def ranking_rows(text: str) -> list[list[str]]:
    """The data rows of the sensitivity table in `text` (console or hb_compile.log)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[-len(HEADER):] == HEADER)
    rows = []
    for line in lines[start + 2:]:
        if not line.split() or not line.split()[0].isdigit():
            break
        rows.append(line.split())
    return rows


@pytest.fixture
def chain(tmp_path):
    return tmp_path, write_chain_project(tmp_path)


def test_flag_prints_the_broken_node_first_and_logs_it(chain):
    root, config = chain
    code, out, err = hb_compile(["-c", config.name, "--sensitivity", "3"], root)
    assert code == 0, out + err
    rows = ranking_rows(out)
    assert [r[0] for r in rows] == ["1", "2", "3"] and rows[0][1:3] == [BROKEN, "Conv+Relu"]
    isolated, weight, activation, accumulated = map(float, rows[0][3:7])
    assert isolated > 0.3 and activation > 0.3 and weight < 0.01 and accumulated < 0.01
    assert all(float(r[3]) < 0.01 for r in rows[1:]) and rows[0][-1] == "--"  # no mixed precision here
    assert "computed on this run's artefacts" in out and out.rstrip().endswith("The hb_compile completes running")
    log = (root / "model_output" / "hb_compile.log").read_text()
    assert ranking_rows(log)[0][1] == BROKEN
    saved = json.loads((root / "model_output" / "chain_sensitivity.json").read_text())
    assert saved["ranking"][0]["node"] == BROKEN and len(saved["ranking"]) == 5
    # asked again: nothing is recomputed, every stage and the ranking are reused
    code, again, _ = hb_compile(["-c", config.name, "--sensitivity"], root)
    assert code == 0 and "computed by an earlier --sensitivity run" in again
    assert len(ranking_rows(again)) == 5 and ranking_rows(again)[0][1] == BROKEN  # N defaults to 10: all 5


def test_calibrates_own_ranking_shows_the_mixed_precision_move(tmp_path):
    config = write_chain_project(tmp_path, target=0.999)
    code, out, err = hb_compile(["-c", config.name, "--sensitivity", "2"], tmp_path)
    assert code == 0, out + err
    rows = ranking_rows(out)
    assert len(rows) == 2 and rows[0][1] == BROKEN and rows[0][-1] == "int16" and rows[1][-1] == "--"
    assert "calibrate's own ranking" in out and re.search(r"mixed precision, on its evaluation samples: 0\.[0-6]\d+ -> 0\.999", out)


def test_check_mode_and_bad_counts_are_refused(chain):
    root, _ = chain
    code, out, _ = hb_compile(["-m", "model.onnx", "--march", "nash-e", "--sensitivity"], root)
    assert code == 1 and "--sensitivity needs the calibrate stage" in out and "Traceback" not in out
    code, _, err = hb_compile(["-c", "chain.hb.yaml", "--sensitivity", "0"], root)
    assert code == 2 and "expected a number of nodes (1 or more), got '0'" in err


@pytest.fixture
def daemon(tmp_path):
    with private_daemon(tmp_path / "run") as env:
        yield env


def test_through_the_daemon_equals_cold(chain, daemon):
    root, config = chain
    cold = {**daemon, "HBCOMPILE_NO_DAEMON": "1"}
    assert hb_compile(["-c", config.name, "--sensitivity", "4"], root, cold)[0] == 0  # computes and memoises
    code_cold, out_cold, _ = hb_compile(["-c", config.name, "--sensitivity", "4"], root, cold)
    code_warm, out_warm, _ = hb_compile(["-c", config.name, "--sensitivity", "4"], root, daemon)
    assert code_cold == code_warm == 0
    assert ranking_rows(out_warm) == ranking_rows(out_cold) and ranking_rows(out_warm)[0][1] == BROKEN
    status = subprocess.run([sys.executable, "-m", "hblsp.daemon", "status"], env=daemon, capture_output=True,
                            text=True, timeout=30)
    assert "1 runs" in status.stdout  # the warm run really went through the daemon
    # a SystemExit inside a run (argparse, as when a newer client sends a flag the daemon lacks)
    # ends that run only: the message reaches the client's stderr and the daemon keeps serving
    from engine import daemon_client as dc

    os.environ["HBCOMPILE_DAEMON_SOCKET"] = daemon["HBCOMPILE_DAEMON_SOCKET"]
    try:
        sock = dc.connect(timeout=5.0)
        with sock:
            dc.request(sock, {"protocol": dc.PROTOCOL, "argv": ["--no-such-flag"], "cwd": str(root)})
            replies = list(dc.replies(sock))
    finally:
        del os.environ["HBCOMPILE_DAEMON_SOCKET"]
    assert replies[-1] == {"exit": 2} and any("unrecognized arguments" in r.get("err", "") for r in replies)
    status = subprocess.run([sys.executable, "-m", "hblsp.daemon", "status"], env=daemon, capture_output=True,
                            text=True, timeout=30)
    assert "2 runs" in status.stdout
