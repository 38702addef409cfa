"""The live recompile's pure parts: node names found in a config, hints, messages, the payload,
the inputs fingerprint and the watcher's coalescing (real files, real watchdog)."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import numpy as np
import pytest
from lsprotocol import types

from engine.config.yamltree import parse_yaml
from engine.pipeline import RunReport, StageRun
from engine.pipeline.hashing import HashMemo
from hblsp.positions import Positions
from hblsp.results import (
    Thresholds,
    compile_result,
    inlay_hints,
    node_mentions,
    similarity_messages,
)
from hblsp.run_inputs import read_inputs
from hblsp.watcher import Watcher
from tests.conftest import REPO

CONFIG = """\
model_parameters:
  onnx_model: m.onnx
  output_nodes: 'Relu_1; Gemm_9'
  node_info:
    Conv_0:
      ON: CPU
    "Add_4": {OutputType: int16}
calibration_parameters:
  run_on_cpu: Conv_0;Pool_7
  quant_config:
    node_config:
      Sigmoid_5: {qtype: int16}
compiler_parameters:
  march_hint: Conv_0
"""

TABLE = {"calibrated": True, "outputs": [{"tensor": "out", "cosine": 0.95, "quantized_cosine": 0.7,
                                          "l1": 0.1, "l2": 0.1, "chebyshev": 0.2}],
         "nodes": [{"node": "Conv_0+Relu_1", "node_type": "Conv+Relu", "on": "BPU", "tensor": "r",
                    "threshold": 5.0, "calibrated_cosine": 0.999, "quantized_cosine": 0.998, "output_dtype": "si8",
                    "nodes": ["Conv_0", "Relu_1"]},
                   {"node": "Add_4", "node_type": "Add", "on": "BPU", "tensor": "a", "threshold": 2.0,
                    "calibrated_cosine": 0.985, "quantized_cosine": None, "output_dtype": "si16", "nodes": ["Add_4"]},
                   {"node": "Pool_7", "node_type": "GlobalAveragePool", "on": "CPU", "tensor": "p",
                    "threshold": None, "calibrated_cosine": 0.97, "quantized_cosine": 0.96, "output_dtype": "f32",
                    "nodes": ["Pool_7"]}]}


def test_node_names_are_found_where_the_schema_says_keys_hold_them():
    doc = parse_yaml(CONFIG)
    found = [(m.name, m.span.line, m.span.col, m.span.end_col) for m in node_mentions(doc)]
    assert found == [
        ("Relu_1", 2, 17, 23), ("Gemm_9", 2, 25, 31),  # quoted ;-list
        ("Conv_0", 4, 4, 10), ("Add_4", 6, 4, 11),  # node_info keys (quoted key keeps its quotes' span)
        ("Conv_0", 8, 14, 20), ("Pool_7", 8, 21, 27),  # unquoted, no spaces
        ("Sigmoid_5", 11, 6, 15),  # quant_config.node_config keys
    ]  # compiler_parameters.march_hint is not a node-name key: nothing there


def test_inlay_hints_carry_the_row_of_the_node_or_its_group():
    doc = parse_yaml(CONFIG)
    hints = inlay_hints(node_mentions(doc), TABLE, Positions(CONFIG), Thresholds())
    got = [(h.position.line, h.position.character, h.label) for h in hints]
    assert got == [(2, 23, "cos 0.998000"),  # Relu_1 is in the Conv_0+Relu_1 group
                   (4, 10, "cos 0.998000"),
                   (6, 11, "cos 0.985000 < 0.99"),  # no quantized cosine: the calibrated one
                   (8, 20, "cos 0.998000"),
                   (8, 27, "cos 0.960000 < 0.99")]
    assert "in `Conv_0+Relu_1`" in hints[0].tooltip.value and "| 5.000000 | 0.999000 | 0.998000 |" in hints[0].tooltip.value
    within = types.Range(start=types.Position(8, 0), end=types.Position(9, 0))
    assert [h.position.line for h in inlay_hints(node_mentions(doc), TABLE, Positions(CONFIG), Thresholds(),
                                                 within)] == [8, 8]


def test_messages_name_what_is_under_the_thresholds():
    info, warning = similarity_messages(TABLE, Thresholds(0.99, 0.8))
    assert info == "Output Quantized Cosine: out 0.700000 (calibrated 0.950000)"
    assert warning == ("2 nodes under Quantized Cosine 0.99: Add_4 0.985000, Pool_7 0.960000; "
                       "1 output under 0.8: out 0.700000")
    assert similarity_messages(TABLE, Thresholds(0.9, 0.5))[1] is None
    many = {"outputs": [], "nodes": [dict(TABLE["nodes"][2], node=f"N{i}") for i in range(11)]}
    assert similarity_messages(many, Thresholds())[1].endswith("N7 0.960000 … and 3 more")


def test_the_payload_is_json_safe_and_has_no_table_before_the_report_stage():
    report = RunReport(Path("/w/c.hb.yaml"))
    report.stages = [StageRun("config", "ran"), StageRun("parse", "reused", "unchanged", 0.0, "k1"),
                     StageRun("calibrate", "cancelled", "cancelled", 0.5)]
    report.results = {"calibrate": {"samples": 4, "computed": 1, "reused": 3, "method": "max", "cosines": {}},
                      "report": {"nodes": [{"calibrated_cosine": math.nan}]}}
    payload = compile_result("file:///w/c.hb.yaml", 3, report, Thresholds())
    assert payload["cancelled"] and not payload["ok"] and payload["table"] is None
    assert payload["calibration"] == {"samples": 4, "computed": 1, "reused": 3, "method": "max"}
    report.stages.append(StageRun("report", "ran"))
    report.stages[2].status = "ran"
    payload = compile_result("file:///w/c.hb.yaml", 3, report, Thresholds())
    assert payload["table"] == {"nodes": [{"calibrated_cosine": None}]}  # NaN is not JSON


@pytest.fixture
def example(tmp_path) -> Path:
    import shutil

    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py",
                                                                                       "heldout.npz"))
    return work / "digits.hb.yaml"


def test_inputs_change_by_content_only(example: Path):
    hashes = HashMemo()
    cal = example.parent / "calibration_data"
    before = read_inputs(hashes, example)
    assert before.ok and len(before.files) == 1 + 1 + 32  # config text, model, samples
    assert before.dirs() == {example.parent, cal}
    os.utime(cal / "digit_001.gray", ns=(1, 1))  # a touch
    assert read_inputs(hashes, example).changed(before) == []
    (cal / "digit_001.gray").write_bytes(bytes(1024))
    np.zeros((1, 1, 32, 32), np.uint8).tofile(cal / "digit_100.gray")  # a new sample
    after = read_inputs(hashes, example)
    assert after.changed(before) == [str(cal / "digit_001.gray"), str(cal / "digit_100.gray")]
    assert after.concerns(cal / "anything.gray") and not after.concerns(cal / ".digit_100.gray.tmp")
    assert not after.concerns(example.parent / "notes.txt") and after.concerns(example)
    broken = read_inputs(hashes, example, "model_parameters: [")
    assert not broken.ok and broken.changed(after)  # a config that does not load reads nothing else


@pytest.mark.asyncio
async def test_the_watcher_coalesces_a_burst_and_counts_renames(tmp_path: Path):
    folder = tmp_path / "cal"
    folder.mkdir()
    calls: list[str] = []
    fired = asyncio.Event()

    def changed(key: str) -> None:
        calls.append(key)
        fired.set()

    watcher = Watcher(asyncio.get_running_loop(), changed, delay_s=0.5)
    try:
        watcher.watch("cfg", {folder}, lambda p: not p.name.startswith("."))
        for i in range(20):  # a copy of 20 images: one change
            (folder / f"s{i}.bin").write_bytes(bytes([i]) * 64)
        await asyncio.wait_for(fired.wait(), 30)
        assert calls == ["cfg"] and not watcher._timers
        fired.clear()
        (folder / ".s3.bin.tmp").write_bytes(b"new")  # a safe save: only the rename concerns us
        os.replace(folder / ".s3.bin.tmp", folder / "s3.bin")
        await asyncio.wait_for(fired.wait(), 30)
        assert calls == ["cfg", "cfg"]
        watcher.unwatch("cfg")
        assert watcher.watched("cfg") == frozenset() and not watcher._watches
    finally:
        watcher.close()


@pytest.mark.asyncio
async def test_the_watcher_follows_a_folder_replaced_as_a_whole(tmp_path: Path):
    folder = tmp_path / "cal"
    folder.mkdir()
    (folder / "s0.bin").write_bytes(b"old")
    calls: list[str] = []
    fired = asyncio.Event()

    def changed(key: str) -> None:
        calls.append(key)
        fired.set()

    watcher = Watcher(asyncio.get_running_loop(), changed, delay_s=0.3)
    try:
        watcher.watch("cfg", {folder}, lambda p: not p.name.startswith("."))
        new = tmp_path / "cal_new"
        new.mkdir()
        (new / "s0.bin").write_bytes(b"new")
        folder.rename(tmp_path / "cal_old")  # how sync tools refresh a data set
        new.rename(folder)
        await asyncio.wait_for(fired.wait(), 30)
        assert calls == ["cfg"]
        fired.clear()
        (folder / "s1.bin").write_bytes(b"more")  # the watch follows the name, not the old folder
        await asyncio.wait_for(fired.wait(), 30)
        assert calls == ["cfg", "cfg"]
        (tmp_path / "cal_old" / "s2.bin").write_bytes(b"ignored")
        await asyncio.sleep(1.0)
        assert calls == ["cfg", "cfg"]
    finally:
        watcher.close()


class FakeEngine:
    """Stands in for the engine: reports progress, then waits for `cancel` or `release`."""

    def __init__(self) -> None:
        import threading

        self.hashes = HashMemo()
        self.release = threading.Event()
        self.started: list[str] = []
        self.fail = False

    def run(self, path, progress=None, cancel=None, loaded=None):
        self.started.append(path.name)
        if self.fail:
            raise RuntimeError("engine bug")
        progress("calibrate", "Start to calibrate model (no earlier run).", 0.0)
        while not (cancel.is_set() or self.release.is_set()):
            cancel.wait(0.01)
        report = RunReport(path)
        report.stages = [StageRun("config", "ran"),
                         StageRun("calibrate", "cancelled" if cancel.is_set() else "ran", "")]
        return report


@pytest.mark.asyncio
async def test_the_runner_supersedes_a_run_with_one_waiting_run_and_survives_a_bug(tmp_path: Path):
    from hblsp.runner import CompileRunner, RunHooks, RunRequest

    finished, progress = [], []
    done = asyncio.Event()

    async def before(job):
        job.data["began"] = True

    def on_finished(fin):
        finished.append(fin)
        done.set()

    runner = CompileRunner(RunHooks(before, lambda job, stage, message, fraction: progress.append((job.number, stage)),
                                    on_finished))
    engine = runner.engine = FakeEngine()
    text = "model_parameters: {}\n"  # the fake engine never reads it; the inputs fingerprint does

    def request(name: str) -> RunRequest:
        return RunRequest("file:///w/a.hb.yaml", tmp_path / name, text, 1, "save")

    try:
        first = runner.submit(request("first.hb.yaml"))
        assert first is not None and runner.busy(first.uri)
        while not progress:  # the run is going
            await asyncio.sleep(0.01)
        assert progress == [(1, "calibrate")]
        assert runner.submit(request("second.hb.yaml")) is None
        assert runner.submit(request("third.hb.yaml")) is None  # replaces the waiting one: no pile-up
        assert first.cancel.is_set() and first.superseded
        await asyncio.wait_for(done.wait(), 30)
        done.clear()
        assert finished[0].job is first and finished[0].payload["cancelled"]
        while len(engine.started) < 2:
            await asyncio.sleep(0.01)
        engine.release.set()
        await asyncio.wait_for(done.wait(), 30)
        done.clear()
        assert engine.started == ["first.hb.yaml", "third.hb.yaml"]
        assert finished[1].payload["ok"] and not finished[1].job.superseded and not runner.busy(first.uri)

        engine.release.clear()
        job = runner.submit(request("fourth.hb.yaml"))
        while len(engine.started) < 3:
            await asyncio.sleep(0.01)
        runner.submit(request("fifth.hb.yaml"))
        assert runner.cancel(job.uri)  # the user's cancel: the waiting run goes too
        await asyncio.wait_for(done.wait(), 30)
        done.clear()
        assert finished[2].job is job and not job.superseded and finished[2].payload["cancelled"]
        assert not runner.busy(job.uri) and not runner.cancel(job.uri)

        engine.fail = True
        runner.submit(request("sixth.hb.yaml"))
        await asyncio.wait_for(done.wait(), 30)
        assert isinstance(finished[3].error, RuntimeError) and finished[3].payload is None
        assert not runner.busy(job.uri)
    finally:
        runner.close()


def test_live_settings_are_typed_and_bounded():
    from hblsp.settings import Settings, parse_settings

    parsed = parse_settings({"nodeCosineThreshold": 1, "outputCosineThreshold": "high", "watchFiles": False,
                             "watchDelayMs": -1, "compileOnSave": 0})
    assert parsed.settings == Settings(node_cosine_threshold=1.0, watch_files=False)
    assert isinstance(parsed.settings.node_cosine_threshold, float)
    assert parsed.problems == ["hblsp.compileOnSave: 0 is not valid, using True",
                               "hblsp.watchDelayMs: -1 is not valid, using 300",
                               "hblsp.outputCosineThreshold: 'high' is not valid, using 0.8"]
    assert parse_settings({"nodeCosineThreshold": True, "outputCosineThreshold": 1.5}).problems == [
        "hblsp.nodeCosineThreshold: True is not valid, using 0.99",
        "hblsp.outputCosineThreshold: 1.5 is not valid, using 0.8"]
