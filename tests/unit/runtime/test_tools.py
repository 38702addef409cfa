"""hb_model_info and hb_verifier: what they print and their exit codes, on real artefacts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine.compile.package import build_hbm
from engine.compile.params import resolve
from engine.compile.remove_nodes import remove_nodes
from engine.config.model import CompilerParameters
from engine.preprocess import Normalization, insert_normalization
from engine.tools import model_info, verifier
from tests.unit.compile.compile_support import conv_net, integer_program, nv12_program

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    float_model = conv_net(cpu_op=None)
    program, spec = nv12_program(float_model)
    onnx.save(program, str(d / "m.bc"))
    opts, _ = resolve(CompilerParameters(optimize_level="O2"), "nash-e", [spec])
    build_hbm(program, opts, config_sha256="feedbeef").write(d / "m.hbm")
    # an .hbm of another program (one weight changed): consistency must fail
    other = onnx.ModelProto()
    other.CopyFrom(program)
    w = next(t for t in other.graph.initializer if numpy_helper.to_array(t).dtype == np.int8 and t.dims)
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] = np.int8(-arr.flat[0] if arr.flat[0] not in (0, -128) else 77)
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    build_hbm(other, opts).write(d / "other.hbm")
    original = onnx.ModelProto()
    original.CopyFrom(float_model)
    insert_normalization(original, "x", Normalization.from_values((128.0,), (1 / 64,), None, 3), "NCHW")
    onnx.save(original, str(d / "original.onnx"))
    removed, _ = remove_nodes(integer_program(conv_net(cpu_op="Abs")), ["Dequantize"], [])
    onnx.save(removed, str(d / "removed.bc"))
    return d


def _info(capsys, *args):
    code = model_info.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_model_info_hbm(files, capsys):
    code, out, _ = _info(capsys, files / "m.hbm")
    assert code == 0
    for line in ("############# model deps info #############", "model format: hbm (.hbm format 1.1)",
                 "BPU march: nash-e", "config sha256: feedbeef", "---------input info : x ---------",
                 "input_type_rt: nv12", "input_type_train: rgb", "input_layout_train: NCHW",
                 "input_shape: 1x3x16x16", "mean_value: 128.0,", "scale_value: 0.015625,", "input_source: pyramid",
                 "---------output info : y ---------", "optimize_level: O2"):
        assert line in out.splitlines(), line
    assert "Node" not in out  # the node table only with -v


def test_model_info_verbose_has_the_node_table(files, capsys):
    code, out, _ = _info(capsys, files / "m.bc", "-v")
    lines = out.splitlines()
    assert code == 0 and "model format: bc" in lines
    header = lines.index("The model node information:") + 2
    assert lines[header].split() == ["Node", "ON", "Subgraph", "Type"]
    assert any(line.split()[:4] == ["Conv_0_quant", "BPU", "id(1)", "HzSQuantizedConv"] for line in lines)


def test_model_info_onnx_and_deleted_nodes(files, capsys):
    code, out, _ = _info(capsys, files / "original.onnx")
    assert code == 0 and "model format: onnx" in out
    code, out, _ = _info(capsys, files / "removed.bc")
    assert code == 0 and "deleted nodes: y_DequantizeLinear" in out.splitlines()
    assert '"zero_point"' in out  # the output now holds codes: its quantization is shown


def test_model_info_bad_file_is_one_line(files, capsys, tmp_path):
    bad = tmp_path / "bad.hbm"
    data = bytearray((files / "m.hbm").read_bytes())
    data[-3] ^= 0xFF
    bad.write_bytes(bytes(data))
    code, out, err = _info(capsys, bad)
    assert code == 1 and out == ""
    assert err.startswith("ERROR ") and "checksum mismatch in section" in err and len(err.splitlines()) == 1


def _verify(capsys, *args):
    code = verifier.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_consistency_bc_vs_hbm_passes(files, capsys):
    code, out, _ = _verify(capsys, "-m", f"{files / 'm.bc'},{files / 'm.hbm'}")
    assert code == 0
    assert out.splitlines()[0].startswith("mode: consistency") and "bit-identical" in out


def test_consistency_fails_for_another_program(files, capsys):
    code, out, _ = _verify(capsys, "-m", f"{files / 'm.bc'},{files / 'other.hbm'}", "--seed", "3")
    assert code == 1
    assert "MISMATCH" in out and "FAILED" in out


def test_cosine_mode_float_vs_bc_on_a_train_view_sample(files, capsys, tmp_path):
    sample = np.random.default_rng(0).integers(0, 256, (1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "in.npy", sample)
    code, out, _ = _verify(capsys, "-m", f"{files / 'original.onnx'},{files / 'm.bc'}", "-i", tmp_path / "in.npy")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("mode: cosine") and "given input" in lines[0]
    assert lines[1].split()[:3] == ["Output", "Cosine", "Similarity"]
    cosine = float(lines[2].split()[1])
    assert 0.99 < cosine <= 1.0


def test_cosine_mode_dequantizes_removed_outputs(files, capsys):
    onnx.save(conv_net(cpu_op="Abs"), str(files / "island.onnx"))  # the float model removed.bc comes from
    code, out, _ = _verify(capsys, "-m", f"{files / 'island.onnx'},{files / 'removed.bc'}")
    assert code == 0 and out.splitlines()[0].startswith("mode: cosine")
    _, cos, l1, _, cheb = out.splitlines()[2].split()
    assert float(cos) > 0.99 and float(l1) < 0.05 and float(cheb) < 0.1  # codes read back as values
    plain = files / "plain.bc"
    onnx.save(integer_program(conv_net(cpu_op="Abs")), str(plain))
    code, out, err = _verify(capsys, "-m", f"{plain},{files / 'removed.bc'}")  # float32 vs uint8 codes
    assert code == 2 and out == "" and "removed.bc has nodes removed that plain.bc has not (DequantizeLinear " in err


@pytest.mark.parametrize("args,words", [
    (["-m", "only_one.bc"], ["two models"]),
    (["-m", "{d}/m.bc,{d}/m.hbm", "-i", "{d}/nope.npy"], ["Can not find input file"]),
    (["-m", "{d}/m.bc,{d}/m.hbm", "-i", "{d}/pickled.npy"], ["not a readable .npy"]),
    (["-m", "{d}/m.bc,{d}/m.hbm", "-i", "{d}/a.npy,{d}/a.npy"], ["2 input file(s) given", "1 input(s): x"]),
    (["-m", "{d}/m.bc,{d}/m.hbm", "-i", "{d}/a.npy"], ["Input 'x' of m.bc expects NV12 frames", "train-view rgb sample of shape (1, 3, 16, 16)"]),
])
def test_bad_verifier_input_is_one_error_line(files, capsys, args, words):
    np.save(files / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(files / "a.npy", np.zeros((1, 5), np.uint8))
    code, out, err = _verify(capsys, *[a.format(d=files) for a in args])
    assert code == 2 and "Traceback" not in err
    for w in words:
        assert w in err


def test_verifier_runs_as_a_command(files):
    proc = subprocess.run([sys.executable, "-m", "engine.tools.verifier", "-m", f"{files / 'm.bc'},{files / 'other.hbm'}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1 and "consistency check FAILED" in proc.stdout and proc.stderr == ""


def test_model_info_shortens_long_per_channel_lists_unless_verbose():
    """R-M review s7: an output whose per-channel Dequantize was removed printed its 1000 scales and 1000 zero
    points on one ~30 kB line; without -v the first few, the count and the range are shown."""
    from engine.tools.model_info import BRIEF_ITEMS, _brief

    q = {"axis": 1, "scale": [0.5 + i / 1000 for i in range(1000)], "zero_point": [0] * 1000, "dtype": "int8"}
    short = _brief(q, verbose=False)
    assert short["axis"] == 1 and short["dtype"] == "int8"
    assert short["scale"][:BRIEF_ITEMS] == q["scale"][:BRIEF_ITEMS] and len(short["scale"]) == BRIEF_ITEMS + 1
    assert short["scale"][-1] == "… 1000 values in [0.5, 1.499] (-v: all)"
    assert _brief(q, verbose=True) == q and _brief({"scale": [1.0, 2.0]}, False) == {"scale": [1.0, 2.0]}


def test_onnx_artefacts_run_as_written_integer_programs_with_every_optimization(files, tmp_path):
    """R-M review s7: `load` (so hb_verifier) opened the calibrated / ptq `.onnx` with the integer programs'
    options, whose extended level fuses Q/DQ pairs into integer kernels: PP-OCRv4 rec's calibrated model gave
    0.994058 there where the table (computed as written, `qdq_session`) said 0.999506."""
    import onnxruntime as ort

    from engine.runtime import load

    onnx.save(conv_net(cpu_op=None), str(tmp_path / "float.onnx"))
    as_written = load(tmp_path / "float.onnx").session.get_session_options()
    assert as_written.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    for name in ("m.bc", "m.hbm"):
        options = load(files / name).session.get_session_options()
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL, name
