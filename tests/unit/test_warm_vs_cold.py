"""A warm engine's artefacts after an edit equal a cold compile's of the same files (issue #8; review 2's
surviving mutants K5, C8, C6, C1). Each kept answer is keyed by what it is made from; a key that
drops a part serves the previous project's, plan's or program's answer without any error.

"Cold" is a fresh Python process (every module-level memo empty) in a fresh folder (no cache). The
only fields left out of a comparison are the latency measured on this machine, which a memo keeps
by program structure (and which would differ run to run anyway).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest

import engine
from engine.pipeline import Engine
from tests.conftest import conv_relu_model
from tests.pipeline.test_calibrate_stage import CONFIG, write_samples

# the tree under test: the repository, or a mutated worktree on PYTHONPATH
TREE = Path(engine.__file__).resolve().parents[1]
EXAMPLE = TREE / "examples" / "digits"


def cold_run(config: Path, until: str | None = None) -> None:
    """Compile `config` in a new process: no warm engine, no module-level memo."""
    code = ("import sys; from engine.pipeline import Engine; "
            "r = Engine().run(sys.argv[1], until=sys.argv[2] or None); "
            "[print(p.render()) for p in r.problems]; sys.exit(0 if r.ok else 1)")
    env = {**os.environ, "PYTHONPATH": str(TREE), "HBCOMPILE_NO_DAEMON": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(config), until or ""], env=env, cwd=config.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def run_ok(eng: Engine, config: Path, until: str | None = None):
    report = eng.run(config, until=until)
    assert report.ok, [p.render() for p in report.problems]
    return report


# --------------------------------------------------------------------- K5: two projects, one engine

def calibrate_thresholds(root: Path, report=None) -> dict:
    """thresholds.json of the calibrate entry `report` used (else the only one)."""
    entries = root / "model_output" / ".hb_cache" / "calibrate"
    entry = entries / report.stage("calibrate").key if report is not None else next(entries.iterdir())
    return json.loads((entry / "thresholds.json").read_text())


def tiny_project(root: Path, seed: int) -> Path:
    """The calibrate-stage project with `conv_relu_model(seed)`: same graph and tensor names for every
    seed, other weights; the same calibration files."""
    root.mkdir()
    onnx.save(conv_relu_model(seed=seed), str(root / "model.onnx"))
    write_samples(root, n=4)
    (root / "config.yaml").write_text(CONFIG)
    return root / "config.yaml"


def test_two_projects_in_one_engine_each_get_a_cold_engines_thresholds(tmp_path):
    """A daemon or hblsp serving two folders: the observer kept for project A's model (its sessions)
    must not observe project B's samples — B has the same tensor names, so nothing would fail."""
    a, b = tiny_project(tmp_path / "a", seed=0), tiny_project(tmp_path / "b", seed=1)
    warm = Engine()
    got_a = calibrate_thresholds(a.parent, run_ok(warm, a, until="calibrate"))
    second = run_ok(warm, b, until="calibrate")
    assert second.results["calibrate"]["computed"] == 4  # B's own samples were observed this run
    got_b = calibrate_thresholds(b.parent, second)
    assert "calibration_observer" in warm.warm  # the observer is kept: the check below is about serving it
    for name, config, got in (("a", a, got_a), ("b", b, got_b)):
        copy = tmp_path / f"cold_{name}"
        shutil.copytree(config.parent, copy, ignore=shutil.ignore_patterns("model_output"))
        cold_run(copy / "config.yaml", until="calibrate")
        assert got == calibrate_thresholds(copy), name
    assert got_a != got_b  # other weights, other ranges: A's statistics served to B would show


# ------------------------------------------------------------- digits: plan and program edits, warm

def digits(folder: Path) -> Path:
    folder.mkdir()
    for name in ("digits.onnx", "digits.hb.yaml"):
        shutil.copy(EXAMPLE / name, folder / name)
    shutil.copytree(EXAMPLE / "calibration_data", folder / "calibration_data")
    return folder / "digits.hb.yaml"


def edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))


def cold_outputs(config: Path, tmp_path: Path) -> Path:
    """model_output of a cold compile of `config`'s folder as it is now."""
    copy = tmp_path / "cold"
    shutil.copytree(config.parent, copy, ignore=shutil.ignore_patterns("model_output"))
    cold_run(copy / config.name)
    return copy / "model_output"


def unmeasured(value: Any) -> Any:
    """`value` without the 'measured on this machine' latency blocks."""
    if isinstance(value, dict):
        return {k: unmeasured(v) for k, v in value.items() if "measured" not in k}
    if isinstance(value, list):
        return [unmeasured(v) for v in value]
    return value


def perf(folder: Path) -> dict:
    return unmeasured(json.loads((folder / "digits.json").read_text()))


def differing(a: Any, b: Any, path: str = "") -> list[str]:
    """The JSON paths where `a` and `b` differ (a readable failure instead of two 2,000-line dumps)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in differing(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for k, (x, y) in enumerate(zip(a, b)) for d in differing(x, y, f"{path}[{k}]")]
    return [] if a == b else [path]


@pytest.fixture
def warm_digits(tmp_path):
    """digits compiled once (O2) by an engine kept for the edits that follow."""
    config = digits(tmp_path / "warm")
    eng = Engine()
    run_ok(eng, config)
    return eng, config


def test_advice_after_a_run_on_cpu_edit_is_a_cold_runs(warm_digits, tmp_path):
    """advice.json says what runs where: a run_on_cpu edit changes the plan (the float model does not
    change), so the advice kept for the previous plan must not be served."""
    eng, config = warm_digits
    out = config.parent / "model_output"
    before = json.loads((out / "digits_advice.json").read_text())
    edit(config, "calibration_parameters:\n", "calibration_parameters:\n  run_on_cpu: '/features/features.7/Conv'\n")
    assert "compile" in run_ok(eng, config).ran
    warm = json.loads((out / "digits_advice.json").read_text())
    cold = json.loads((cold_outputs(config, tmp_path) / "digits_advice.json").read_text())
    assert warm == cold, differing(warm, cold)
    conv = next(n for n in cold if n["node"] == "/features/features.7/Conv")
    assert conv["backend"] != "bpu"  # external_cpu: the edit shows in the advice: the comparison can fail
    assert next(n for n in before if n["node"] == "/features/features.7/Conv")["backend"] == "bpu"


def test_perf_after_an_o2_to_o1_edit_is_a_cold_runs(warm_digits, tmp_path):
    """The estimate's static part is kept by program digest: O1's program is another program, and its
    estimate (nodes, CPU nodes, memory, time) must be O1's, not O2's."""
    eng, config = warm_digits
    out = config.parent / "model_output"
    o2 = perf(out)
    edit(config, "optimize_level: O2", "optimize_level: O1")
    assert run_ok(eng, config).ran == ["config", "compile"]
    warm, cold = perf(out), perf(cold_outputs(config, tmp_path))
    assert warm == cold, differing(warm, cold)[:20]
    assert cold["summary"]["optimize_level"] == "O1" and differing(o2, cold) != ["/summary/optimize_level"]


def test_perf_after_o1_then_input_batch_2_is_a_cold_runs(warm_digits, tmp_path):
    """The O0 / O1 programs of one `.bc` share their tensor types; input_batch 2 makes another `.bc`
    (same name), whose batch-2 types must not come from the batch-1 `.bc`'s family."""
    eng, config = warm_digits
    out = config.parent / "model_output"
    edit(config, "optimize_level: O2", "optimize_level: O1")
    run_ok(eng, config)
    batch1 = perf(out)
    edit(config, "input_parameters:\n", "input_parameters:\n  input_batch: 2\n")
    assert "compile" in run_ok(eng, config).ran
    warm, cold = perf(out), perf(cold_outputs(config, tmp_path))
    assert warm == cold, differing(warm, cold)[:20]
    assert cold["summary"]["DDR access data"]["input memory"] == 2 * batch1["summary"]["DDR access data"]["input memory"]
