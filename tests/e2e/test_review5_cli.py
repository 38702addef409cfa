"""Reviewer-found CLI bugs (session 5 review §3): a model with non-finite weights compiled with exit 0,
NaN cosines and a `.hbm` written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.cli import main
from engine.stages.parse import load_float_model
from tests.conftest import GOOD_CONFIG, conv_relu_model, hb_records


@pytest.mark.parametrize(("initializer", "value", "counts"), [("w", np.nan, "1 NaN and 0 Inf"),
                                                               ("var", np.inf, "0 NaN and 1 Inf")])
def test_a_non_finite_weight_is_refused_naming_it_and_nothing_is_written(tmp_path, capsys, initializer, value,
                                                                          counts):
    model = conv_relu_model()
    for t in model.graph.initializer:
        if t.name == initializer:
            a = numpy_helper.to_array(t).copy()
            a.flat[0] = value
            t.CopyFrom(numpy_helper.from_array(a, initializer))
    onnx.save(model, str(tmp_path / "model.onnx"))
    (tmp_path / "config.yaml").write_text(GOOD_CONFIG)
    code = main(["--no-daemon", "-c", str(tmp_path / "config.yaml")])
    out = capsys.readouterr()
    assert code != 0
    errors = [line for line in (out.out + out.err).splitlines() if "error:" in line]
    assert len(errors) == 1 and f"'{initializer}'" in errors[0] and counts in errors[0], errors
    assert "Traceback" not in out.out + out.err
    wd = tmp_path / "model_output"
    assert not wd.exists() or not [p for p in wd.iterdir() if not p.name.startswith(".")]


def test_minus_infinity_outside_the_weights_is_a_model_not_an_error(tmp_path):
    """Attention masks are -inf on purpose: a constant added to activations is not a weight."""
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])
    mask = np.zeros((1, 3, 8, 8), np.float32)
    mask[..., 0] = -np.inf
    g = helper.make_graph([helper.make_node("Add", ["data", "mask"], ["masked"]),
                           helper.make_node("Softmax", ["masked"], ["output"], axis=3)],
                          "masked", [x], [y], [numpy_helper.from_array(mask, "mask")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    loaded, _, _ = load_float_model(tmp_path / "model.onnx")  # no error
    assert np.isneginf(numpy_helper.to_array(loaded.graph.initializer[0]) if loaded.graph.initializer else
                       numpy_helper.to_array(loaded.graph.node[0].attribute[0].t)).any()


def test_a_reused_run_prints_what_a_cold_run_prints(tmp_path, capsys):
    """Review §10: the second, fully reused run dropped `Select … method.`, `FPS=…`, `Successfully compile the
    hbm model` and the memory info block from the console and hb_compile.log (scripts grep them)."""
    import shutil

    from tests.conftest import REPO

    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py", "*.npz"))
    said = ["Select ", "FPS=", "Successfully compile the hbm model", "HBDK hbm perf SUCCESS", "memory info"]
    outputs = []
    for _ in range(2):
        assert main(["--no-daemon", "-c", str(work / "digits.hb.yaml")]) == 0
        outputs.append(capsys.readouterr().out)
    assert "Reuse compile result" in outputs[1]  # the second run did reuse everything
    log = (work / "model_output" / "hb_compile.log").read_text()
    for text in said:
        assert text in outputs[0] and text in outputs[1] and text in log, text
    fps = [next(line for line in out.splitlines() if "FPS=" in line) for out in outputs]
    assert fps[0] == fps[1]


def test_a_model_that_computes_nan_on_the_data_is_told_where_without_numpy_noise(tmp_path, capsys):
    """Review §3 (second half): Log of negative calibration values gave NaN cosines with no word on why, and
    numpy's 'One of rtol or atol is not valid' RuntimeWarning on the console."""
    import warnings

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    g = helper.make_graph([helper.make_node("Log", ["data"], ["lg"], name="log"),
                           helper.make_node("Conv", ["lg", "w", "b"], ["y"], pads=[1] * 4, name="conv")],
                          "log_conv", [x], [y],
                          [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
                           numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    (tmp_path / "cal").mkdir()
    for i in range(4):
        np.save(tmp_path / "cal" / f"{i}.npy", rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    (tmp_path / "config.yaml").write_text(
        GOOD_CONFIG.replace("input_type_train: rgb", "input_type_train: featuremap")
        .replace("input_type_rt: nv12", "input_type_rt: featuremap").replace("  mean_value: 128 128 128\n", "")
        .replace("  scale_value: 0.0078125\n", "").replace("  calibration_type: max\n",
                                                           "  calibration_type: max\n  cal_data_dir: cal\n"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["--no-daemon", "-c", str(tmp_path / "config.yaml")])
    out = capsys.readouterr()
    assert code == 0, out.out
    told = [line for line in out.out.splitlines() if "NaN / Inf values" in line]
    assert len(told) == 1 and "'lg'" in told[0] and "node 'log', Log" in told[0], told
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


def test_entries_made_by_an_engine_logging_at_warning_still_tell_their_lines(tmp_path, capsys):
    """R2 §3: the language server logs at WARNING; entries it wrote kept no INFO lines, so a later CLI run
    reusing them printed no `Select … method.` / `FPS=…`. Its own output must not grow either."""
    import logging
    import shutil

    from engine.pipeline import Engine
    from tests.conftest import REPO

    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py", "*.npz"))
    with hb_records(level=logging.WARNING) as seen:
        assert Engine().run(work / "digits.hb.yaml").ok
    assert not [r for r in seen if r.levelno < logging.WARNING]  # nothing below the caller's level reached it
    assert main(["--no-daemon", "-c", str(work / "digits.hb.yaml")]) == 0
    out = capsys.readouterr().out
    assert "Reuse compile result" in out and "Select " in out and "FPS=" in out


def test_a_broken_link_in_the_calibration_folder_is_named_not_skipped(tmp_path, capsys):
    """R1 (suspicion, confirmed): a dangling symlink among the samples was skipped without a word, so the
    thresholds came from one sample fewer than the folder shows."""
    import shutil

    from tests.conftest import REPO

    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py", "*.npz"))
    (work / "calibration_data" / "digit_999.gray").symlink_to(tmp_path / "gone.gray")
    assert main(["--no-daemon", "-c", str(work / "digits.hb.yaml")]) != 0
    out = capsys.readouterr()
    errors = [line for line in (out.out + out.err).splitlines() if "error:" in line]
    assert len(errors) == 1 and "digit_999.gray" in errors[0], errors
    assert not (work / "model_output" / "digits.hbm").exists()


def test_each_stage_says_it_is_done_as_it_ends(tmp_path, capsys):
    """R-M review s7: every `Successfully <stage> model` line was printed after the compile stage's output (a
    summary at the end); hb_compile says it as the stage ends, before the next one starts."""
    import shutil

    from tests.conftest import REPO

    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py", "*.npz"))
    for run, done in enumerate(("Successfully", "Reuse")):
        assert main(["--no-daemon", "-c", str(work / "digits.hb.yaml")]) == 0
        lines = capsys.readouterr().out.splitlines()
        ends = [i for i, line in enumerate(lines) if line.startswith(done) and "result" in line or
                line.startswith(done) and line.endswith("s).")]
        assert len(ends) == 7, (run, ends)
        if run == 0:
            starts = [i for i, line in enumerate(lines) if line.startswith("Start to ")]
            assert all(s < e < n for s, e, n in zip(starts, ends, starts[1:] + [len(lines)])), (starts, ends)
            fps = next(i for i, line in enumerate(lines) if "FPS=" in line)
            assert ends[-2] < fps < ends[-1]  # report done before compile's lines, compile done after them
