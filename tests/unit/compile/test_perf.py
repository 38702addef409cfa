"""Static performance: work and bytes per layer, compile_mode plans, the JSON keys, the HTML in Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from engine.compile.march import PROFILES, profile
from engine.compile.params import resolve
from engine.compile.perf import (
    LatencyMemo,
    estimate,
    measure_latency,
    perf_json,
    perf_log_lines,
    perf_report,
    write_perf_reports,
)
from engine.compile.perf_html import render
from engine.config.model import CompilerParameters
from engine.similarity import NodeRow, OutputRow
from tests.support.models import Builder
from tests.unit.compile.compile_support import conv_net, integer_program

DDR_KEYS = {"input memory", "output memory", "static memory", "dynamic memory", "intermediate memory",
            "temporary memory", "min memory requirement"}


def opts(march="bernoulli2", **kw):
    options, problems = resolve(CompilerParameters(**kw), march)
    assert not [p for p in problems if p.is_error], problems
    return options


@pytest.fixture(scope="module")
def small():
    return integer_program(conv_net(hw=16, channels=(8, 8, 16), cpu_op="Abs"))


@pytest.fixture(scope="module")
def wide():
    """A high-resolution stage (64×96×96 uint8 = 590 kB activation) then three weight-heavy 256-channel
    convs at 24×24: on X3, hiding the weight loads under compute (small activation budget) pays for
    spilling the big activation — latency and bandwidth modes choose different plans."""
    b = Builder("two_stage")
    x = b.op("Relu", [b.conv(b.input("x", [1, 16, 96, 96]), 16, 64)])
    x = b.op("Relu", [b.conv(x, 64, 256, stride=4)])
    for _ in range(3):
        x = b.op("Relu", [b.conv(x, 256, 256)])
    b.output(b.op("GlobalAveragePool", [x], out="y"))
    return integer_program(b.build(), samples=2)


def test_macs_are_the_analytic_count(small):
    est = estimate(small, opts())
    # 3→8 3x3 at 16x16, 8→8 3x3 stride 2 to 8x8, 8→16 3x3 at 8x8
    assert est.macs == 8 * 16 * 16 * 27 + 8 * 8 * 8 * 72 + 16 * 8 * 8 * 72
    conv0 = next(lay for lay in est.layers if lay.name == "Conv_0")
    assert conv0.macs == 8 * 16 * 16 * 27 and conv0.ideal_ops == 2 * conv0.macs
    assert conv0.ops == pytest.approx(conv0.ideal_ops * 8 / 3)  # 3 input channels padded to 8
    assert conv0.weight_bytes >= 8 * 27  # int8 weights (+ scales, zero points, int32 bias)


def test_json_keys_and_debug_layers(small):
    full = perf_json(estimate(small, opts(debug=True)), {"latency (ms)": 1.0})
    assert json.loads(json.dumps(full)) == full
    s = full["summary"]
    assert set(s["DDR access data"]) == DDR_KEYS
    for key in ("latency (ms)", "FPS", "DDR loaded bytes per frame", "DDR stored bytes per frame",
                "DDR bytes per frame", "computation (GOPs per frame)", "BPU subgraphs", "function calls",
                "measured on this machine"):
        assert key in s, key
    assert s["FPS"] == pytest.approx(1000 / s["latency (ms)"])
    assert s["DDR bytes per frame"] == s["DDR loaded bytes per frame"] + s["DDR stored bytes per frame"]
    ddr = s["DDR access data"]
    assert ddr["dynamic memory"] == ddr["input memory"] + ddr["output memory"] + ddr["intermediate memory"] + \
        ddr["temporary memory"]
    assert ddr["min memory requirement"] == ddr["static memory"] + ddr["dynamic memory"]
    assert ddr["input memory"] == 3 * 16 * 16 * 4 and ddr["output memory"] == 16 * 4
    assert {lay["name"] for lay in full["layers"]} >= {"Conv_0", "Conv_2", "Conv_5"}
    assert "layers" not in perf_json(estimate(small, opts(debug=False)))
    for key in ("peak_int8_ops", "ddr_bandwidth", "onchip_memory", "cores"):
        assert full["march profile"][key]["source"].split(":")[0] in ("public", "vendor", "assumption",
                                                                      "public (secondary)")


def test_cpu_nodes_are_listed_apart_not_estimated(small):
    est = estimate(small, opts())
    cpu = {c["name"]: c for c in est.cpu_nodes}
    assert "Abs_4" in cpu and cpu["Abs_4"]["reason"]
    assert all("Abs_4" not in lay.nodes for lay in est.layers)
    assert len(est.subgraphs) == 2


def test_bandwidth_mode_moves_fewer_ddr_bytes_than_latency_mode(wide):
    latency = estimate(wide, opts(compile_mode="latency"))
    balance = estimate(wide, opts(compile_mode="balance", balance_factor=50))
    bandwidth = estimate(wide, opts(compile_mode="bandwidth"))
    assert bandwidth.ddr_bytes < latency.ddr_bytes
    assert bandwidth.ddr_bytes <= balance.ddr_bytes <= latency.ddr_bytes
    assert latency.latency_s <= balance.latency_s <= bandwidth.latency_s  # each mode wins its own objective
    # latency mode spills the big activation through DDR; bandwidth mode tiles it and recomputes the halo
    first = next(lay for lay in latency.layers if lay.name == "Conv_0")
    assert first.stored == 64 * 96 * 96 and not first.tiled_outputs
    tiled = next(lay for lay in bandwidth.layers if lay.name == "Conv_0")
    assert tiled.stored == 0 and tiled.tiled_outputs and tiled.recompute > 1.0
    assert bandwidth.memory["intermediate memory"] < latency.memory["intermediate memory"]
    # the chosen plans are the best candidates for each objective
    assert latency.latency_s * 1e3 == pytest.approx(min(c["latency (ms)"] for c in latency.candidates)
                                                   + latency.function_calls * 5e-3)
    assert bandwidth.ddr_bytes == min(c["DDR bytes"] for c in bandwidth.candidates)


def test_estimate_types_the_program_once(wide, monkeypatch):
    """The tensor types cost an onnxruntime session (40 ms on PP-OCRv4 det's program): the estimate
    takes them once and hands them to the partition, whose own result is the same either way."""
    import sys

    from engine.compile.partition import partition
    from engine.compile.program import tensor_types

    calls = []

    def counted(model, digest=None):
        calls.append(model.graph.name)
        return tensor_types(model, digest)

    monkeypatch.setattr(sys.modules["engine.compile.perf"], "tensor_types", counted)
    monkeypatch.setattr(sys.modules["engine.compile.partition"], "tensor_types", counted)
    est = estimate(wide, opts(compile_mode="bandwidth"))
    assert len(calls) == 1 and est.layers
    assert partition(wide, types=tensor_types(wide)) == partition(wide)


def test_more_cores_less_compute_time(wide):
    one, four = estimate(wide, opts("nash-p", core_num=1)), estimate(wide, opts("nash-p", core_num=4))
    assert sum(lay.compute_s for lay in four.layers) == pytest.approx(sum(lay.compute_s for lay in one.layers) / 4)
    assert four.latency_s <= one.latency_s


def test_max_time_per_fc_cuts_function_calls(wide):
    est = estimate(wide, opts("bernoulli2", max_time_per_fc=1000))  # ~1 ms of BPU time
    assert est.function_calls == sum(max(1, math.ceil(g["latency (ms)"] / 1.0)) for g in est.subgraphs)
    assert est.function_calls > len(est.subgraphs)
    assert estimate(wide, opts("bernoulli2")).function_calls == len(est.subgraphs)


def test_advice_names_padded_depthwise_convs():
    b = Builder("dw")
    x = b.op("Relu", [b.conv(b.input("x", [1, 32, 32, 32]), 32, 32, group=32)])
    b.output(b.conv(x, 32, 32, k=1, out="y"))
    program = integer_program(b.build())
    lines = estimate(program, opts(advice=0.001)).advice
    assert any(re.match(r'advice: Layer "Conv_0" becomes slow \(\d+\.\d+ms -> \d+\.\d+ms\)\. channels are padded',
                        line) for line in lines), lines
    assert estimate(program, opts(advice=0)).advice == []


def test_profiles_state_their_sources():
    assert profile("bernoulli2").peak_int8_ops.value == 5e12 and "rdk_x3_doc" in profile("bernoulli2").peak_int8_ops.source
    assert profile("nash-p").cores.value == 4
    assert all(p.ddr_bandwidth.source.startswith("assumption") for p in PROFILES.values())
    assert profile("no-such-march").peak_int8_ops.source.startswith("assumption")


def test_measured_latency(small):
    m = measure_latency(small, threads=16, runs=5)
    assert m["runs"] >= 3 and m["latency (ms)"] > 0 and m["threads"] == min(16, os.cpu_count() or 1)
    assert m["FPS"] == pytest.approx(1000 / m["latency (ms)"])


def test_measurement_stops_after_min_runs_once_the_budget_is_spent(small):
    assert measure_latency(small, runs=20, budget_s=0.0, min_runs=2)["runs"] == 2
    assert measure_latency(small, runs=4, budget_s=60.0, min_runs=2)["runs"] == 4  # a fast program: all runs


def test_latency_memo_measures_a_program_once(small, tmp_path):
    memo = LatencyMemo(tmp_path)
    first = memo.measure(small, threads=1, runs=3)
    again = memo.measure(small.SerializeToString(), threads=1, runs=3)  # the same program as bytes
    assert again == first  # a second measurement would differ in its last digits
    assert len(list(tmp_path.glob("*.json"))) == 1
    memo.measure(small, threads=1, runs=4)  # other conditions: measured
    assert len(list(tmp_path.glob("*.json"))) == 2
    for p in tmp_path.glob("*.json"):
        p.write_text("{not json")  # an unreadable entry is measured again and rewritten
    assert memo.measure(small, threads=1, runs=3)["runs"] == 3
    path = tmp_path / f"{memo.key(small.SerializeToString(), 1, 3)}.json"
    assert json.loads(path.read_text())["runs"] == 3


def test_latency_memo_is_keyed_by_the_programs_structure(small, tmp_path):
    """New thresholds change a program's scales, biases and tables, not its work: measured once. Other
    work (a node more) or a zero point that turns non-zero (another kernel) is measured again."""
    from onnx import numpy_helper

    from engine.compile.perf import program_structure

    def with_values(program, pick, change):
        other = onnx.ModelProto()
        other.CopyFrom(program)
        t = next(t for t in other.graph.initializer if pick(t))
        t.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(t)), t.name))
        return other

    is_float = lambda t: t.data_type == onnx.TensorProto.FLOAT and t.dims  # noqa: E731
    zero_point = lambda t: t.data_type == onnx.TensorProto.UINT8 and not numpy_helper.to_array(t).any()  # noqa: E731
    rescaled = with_values(small, is_float, lambda a: a * 1.5)
    assert rescaled.SerializeToString() != small.SerializeToString()
    assert program_structure(rescaled) == program_structure(small)
    memo = LatencyMemo(tmp_path)
    assert memo.measure(rescaled, threads=1, runs=3) == memo.measure(small, threads=1, runs=3)
    assert program_structure(with_values(small, zero_point, lambda a: a + 1)) != program_structure(small)
    more = onnx.ModelProto()
    more.CopyFrom(small)
    more.graph.node.append(onnx.helper.make_node("Identity", [more.graph.output[0].name], ["spare"], name="spare"))
    assert program_structure(more) != program_structure(small)


def test_latency_memo_keeps_the_newest_measurements(small, tmp_path, monkeypatch):
    import engine.compile.perf as perf_mod

    monkeypatch.setattr(perf_mod, "LATENCY_MEMO_KEEP", 2)
    memo = LatencyMemo(tmp_path)
    for runs in (3, 4, 5):  # three conditions: three keys
        memo.measure(small, threads=1, runs=runs)
        os.utime(next(iter(sorted(tmp_path.glob("*.json"), key=lambda p: p.stat().st_mtime_ns))), (1, 1))
    kept = {p.name for p in tmp_path.glob("*.json")}
    assert len(kept) == 2 and f"{memo.key(small.SerializeToString(), 1, 5)}.json" in kept


# ------------------------------------------------------------------------------------------- html

ROWS = [NodeRow("Conv_0", "Conv", "BPU", "Conv_0_y", 3.2, 0.9995, "si8", 0.999),
        NodeRow("Abs_4", "Abs", "CPU", "Abs_4_y", None, None, "f32", None),
        NodeRow("Conv_5<b>", "Conv", "BPU", "Conv_5_y", 1.5, 0.97, "si8", 0.75)]
OUTPUTS = [OutputRow("y", 0.998, 0.01, 0.02, 0.05, 0.995)]


def test_html_is_self_contained_and_shows_the_tables(small):
    page = render(perf_json(estimate(small, opts(debug=True))), ROWS, OUTPUTS)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3  # time, bytes, cosine
    assert not re.search(r"\b(src|href)\s*=|@import|url\(|<script", page)
    assert "Conv_5&lt;b&gt;" in page and "<b>Conv" not in page  # names are escaped
    assert page.count('class="bad"') == 1  # Conv_5<b>: quantized cosine 0.75 < 0.8
    for title in ("Model Performance Summary", "DDR access data", "Layer Details", "Details per BPU subgraph",
                  "CPU nodes", "Similarity", "March profile"):
        assert title in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _screenshot(html_path, png_path) -> list[str]:
    """Render in headless Chromium; returns the console messages it logged."""
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--screenshot={png_path}", "--window-size=1200,1400",
                           f"file://{html_path}"], capture_output=True, text=True, timeout=120)
    assert png_path.exists(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(_chromium() is None, reason="chromium is not on PATH (Debian: apt-get install -y chromium)")
def test_html_renders_in_chromium(small, tmp_path):
    from PIL import Image

    perf = perf_json(estimate(small, opts(debug=True)), measure_latency(small, runs=3))
    _, html_path = write_perf_reports(tmp_path, "tiny", perf, ROWS, OUTPUTS)
    assert json.loads((tmp_path / "tiny.json").read_text())["summary"]["model"] == "model"
    console = _screenshot(html_path, tmp_path / "page.png")
    assert console == []
    pixels = np.asarray(Image.open(tmp_path / "page.png").convert("RGB")).astype(int)
    not_white = np.any(pixels < 240, axis=2).mean()
    assert not_white > 0.03  # text, tables and bars, not a blank page
    teal = np.all(np.abs(pixels - [0x0F, 0x8B, 0x8D]) < 12, axis=2).sum()
    assert teal > 500  # the charts' bars are drawn

    # the console check can fail: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><p>x</p><script>undefined_function()</script></body></html>")
    assert any("undefined_function" in line for line in _screenshot(broken, tmp_path / "broken.png"))


def test_perf_report_measures_with_jobs_threads_and_logs_hb_lines(small):
    perf = perf_report(small, opts(jobs=2, advice=0.0001), "tiny", runs=3)
    assert perf["summary"]["measured on this machine"]["threads"] == min(2, os.cpu_count() or 1)
    lines = perf_log_lines(perf, "tiny.html")
    assert re.fullmatch(r"FPS=[\d.]+, latency = [\d.]+ us, DDR = \d+ bytes   \(see tiny\.html\)", lines[-2])
    assert lines[-1].startswith("measured on this machine") and lines[0].startswith("advice: Layer")
