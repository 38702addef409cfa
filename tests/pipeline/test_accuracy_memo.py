"""The accuracy steps' memo through the pipeline (issue #8, engine.accuracy.memo): when calibrate
re-runs on inputs that give the same thresholds, the steps' result is read back, and what the run
writes and prints is what a cold run writes and prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import engine.accuracy as accuracy
from engine.pipeline import Engine
from engine.pipeline.cache import TIMING_KEYS
from tests.conftest import hb_records
from tests.pipeline.test_accuracy import CONFIG, chain  # noqa: F401 - the fixture

MEMO_CONFIG = CONFIG.format(node_info="", target=0.999) + "  optimization: bias_correction\n"
CALIBRATE_FILES = ("model.onnx", "thresholds.json", "accuracy.json", "sensitivity.json", "first_sample.npz",
                   "inputs.json")


@pytest.fixture
def improve_calls(monkeypatch) -> list[int]:
    """One entry per call of engine.accuracy.improve (calibrate imports it at each run)."""
    calls: list[int] = []
    real = accuracy.improve

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(accuracy, "improve", counting)
    return calls


@pytest.fixture
def calibrate_log():
    """Messages logged by the calibrate stage (engine/stages/calibrate.py), cleared by the test."""
    def calibrate_line(record):
        return f"{record.levelname}: {record.getMessage()}" if record.pathname.endswith("stages/calibrate.py") else None

    with hb_records(calibrate_line) as records:
        yield records


def run(engine: Engine, cfg: Path, until: str = "calibrate"):
    report = engine.run(cfg, until=until)
    assert report.ok, [p.render() for p in report.problems]
    return report


def entry_files(project, report) -> dict[str, bytes]:
    entry = project.root / "model_output" / ".hb_cache" / "calibrate" / report.stage("calibrate").key
    return {name: (entry / name).read_bytes() for name in CALIBRATE_FILES}


def published(project) -> dict[str, bytes]:
    out = project.root / "model_output"
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name.startswith("chain_")}


def without_timings(data: bytes) -> object:
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in TIMING_KEYS}
        return [strip(x) for x in v] if isinstance(v, list) else v

    return strip(json.loads(data))


def resave(path: Path) -> None:
    """The same values in other bytes (Fortran order): the file's content hash changes, nothing else."""
    np.save(path, np.asfortranarray(np.load(path)))


def memo_files(project) -> list[Path]:
    folder = project.root / "model_output" / ".hb_cache" / "memo" / "accuracy"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def test_a_hit_writes_and_prints_what_the_cold_run_did(chain, improve_calls, calibrate_log):  # noqa: F811
    cfg = chain.config(MEMO_CONFIG)
    engine = Engine()
    cold = run(engine, cfg, until="report")
    assert cold.results["calibrate"]["accuracy_steps"] == "computed" and len(improve_calls) == 1
    cold_files, cold_published, cold_log = entry_files(chain, cold), published(chain), list(calibrate_log)
    assert json.loads(cold_files["accuracy.json"])["bias_corrections"]  # every step took part
    assert json.loads(cold_files["accuracy.json"])["node_info"]
    assert any("conv_b+relu_b -> int16" in m for m in cold_log) and any("Sensitivity" in m for m in cold_log)
    assert len(memo_files(chain)) == 1

    calibrate_log.clear()
    resave(chain.root / "cal" / "s1.npy")  # an accuracy sample: same values, new bytes
    warm = run(engine, cfg, until="report")
    assert warm.stage("calibrate").status == "ran" and warm.stage("calibrate").key != cold.stage("calibrate").key
    assert warm.results["calibrate"]["accuracy_steps"] == "reused" and len(improve_calls) == 1
    assert entry_files(chain, warm) == cold_files  # byte for byte, timings included
    assert warm.ran == ["config", "calibrate"]  # the same outputs: nothing after calibrate runs again
    assert published(chain) == cold_published
    assert calibrate_log == cold_log

    for memo in memo_files(chain):  # computed again from scratch: the same but for how long it took
        memo.unlink()
    calibrate_log.clear()
    resave(chain.root / "cal" / "s2.npy")
    again = run(engine, cfg)
    assert again.results["calibrate"]["accuracy_steps"] == "computed" and len(improve_calls) == 2
    files = entry_files(chain, again)
    for name, data in files.items():
        if name.endswith(".json"):
            assert without_timings(data) == without_timings(cold_files[name]), name
        else:
            assert data == cold_files[name], name
    assert calibrate_log == cold_log


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"memo_version": 1, "result": {"$ref": 3}}'],
                         ids=["empty", "not json", "wrong content"])
def test_a_corrupt_memo_file_is_a_miss(chain, improve_calls, damage):  # noqa: F811
    cfg = chain.config(MEMO_CONFIG)
    engine = Engine()
    cold = run(engine, cfg)
    cold_files = entry_files(chain, cold)
    [memo] = memo_files(chain)
    memo.write_bytes(damage)
    resave(chain.root / "cal" / "s0.npy")
    again = run(engine, cfg)
    assert again.results["calibrate"]["accuracy_steps"] == "computed" and len(improve_calls) == 2
    assert {n: without_timings(d) if n.endswith(".json") else d for n, d in entry_files(chain, again).items()} == \
        {n: without_timings(d) if n.endswith(".json") else d for n, d in cold_files.items()}
    assert memo_files(chain) == [memo] and json.loads(memo.read_text())["memo_version"] == 1  # rewritten whole
    resave(chain.root / "cal" / "s3.npy")
    assert run(engine, cfg).results["calibrate"]["accuracy_steps"] == "reused" and len(improve_calls) == 2


def _swap_samples(project) -> None:
    """An accuracy sample (s1) swapped with one past accuracy_samples (s6): the merged statistics, so the
    thresholds, stay the same (they do not depend on the samples' order); the samples compared on change."""
    a, b = project.root / "cal" / "s1.npy", project.root / "cal" / "s6.npy"
    x, y = np.load(a), np.load(b)
    np.save(a, y)
    np.save(b, x)


def _flip_later_sample(project) -> None:
    """A sample past accuracy_samples (4) whose values raise every threshold (the statistics move)."""
    path = project.root / "cal" / "s6.npy"
    np.save(path, np.load(path) * 3.0)


def _edit(old: str, new: str):
    def change(project) -> None:
        cfg = project.root / "config.yaml"
        assert old in cfg.read_text()
        cfg.write_text(cfg.read_text().replace(old, new))
    return change


MISSES = {
    "only the accuracy samples": _swap_samples,
    "the statistics and thresholds": _flip_later_sample,
    "accuracy settings (sensitivity)": _edit("  sensitivity: 3\n", "  sensitivity: 2\n"),
    "accuracy settings (target)": _edit("target_output_cosine: 0.999", "target_output_cosine: 0.9995"),
    "quantization options (run_on_cpu)": _edit("  sensitivity: 3\n", "  sensitivity: 3\n  run_on_cpu: conv_d\n"),
    "the model": lambda project: project.model(__import__("tests.unit.accuracy.acc_models", fromlist=["x"])
                                               .outlier_chain(seed=1)),
}


@pytest.mark.parametrize("change", list(MISSES), ids=list(MISSES))
def test_a_change_to_what_the_steps_read_is_a_miss(chain, improve_calls, change):  # noqa: F811
    cfg = chain.config(MEMO_CONFIG)
    engine = Engine()
    first = run(engine, cfg)
    MISSES[change](chain)
    again = run(engine, cfg)
    assert again.results["calibrate"]["accuracy_steps"] == "computed" and len(improve_calls) == 2
    if change == "only the accuracy samples":  # nothing else moved: the samples alone made the miss
        entry = chain.root / "model_output" / ".hb_cache" / "calibrate"
        before = json.loads((entry / first.stage("calibrate").key / "thresholds.json").read_text())
        after = json.loads((entry / again.stage("calibrate").key / "thresholds.json").read_text())
        assert {t: v["threshold"] for t, v in before.items()} == {t: v["threshold"] for t, v in after.items()}
    assert len(memo_files(chain)) == 2  # both results kept (the optimized model is the owner)


def test_inputs_the_key_cannot_hold_are_computed_not_memoised(chain, improve_calls, monkeypatch):  # noqa: F811
    import engine.accuracy.memo as memo_mod

    def refuse(*args, **kwargs):
        raise TypeError("cannot memoise a function")

    monkeypatch.setattr(memo_mod, "memo_key", refuse)
    cfg = chain.config(MEMO_CONFIG)
    engine = Engine()
    first = run(engine, cfg)
    resave(chain.root / "cal" / "s2.npy")
    again = run(engine, cfg)
    assert [r.results["calibrate"]["accuracy_steps"] for r in (first, again)] == ["computed", "computed"]
    assert len(improve_calls) == 2 and memo_files(chain) == []
