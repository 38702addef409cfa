"""Review R1 #8: `hb_verifier` between the user's own float model (no hbcompile input spec, trained on
normalized input) and the `.hbm`, which normalizes inside (mean_value / scale_value / std_value). Both
used to get the same raw tensor: digits.onnx vs digits.hbm printed cosine 0.367 (random input) and
−0.096 (a real sample) with no warning. Now the float model gets the sample normalized as the `.hbm`
does, and the output says so; an input it cannot normalize is an error (or a WARNING that the inputs
differ when the float model takes it as it is)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.pipeline import Engine
from engine.runtime import load
from engine.tools import verifier
from tests.pipeline.test_input_conversion import (
    SEEN,
    in_layout,
    rgb_crop,
    runtime_pixels,
    train_pixels,
    write_case,
)


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory):
    """The digits example's shape of things: a gray model fed x·scale (here (x − 128)/128), gray at runtime."""
    root = tmp_path_factory.mktemp("gray")
    report = Engine().run(write_case(root, "gray", "gray", "NCHW", "regular"))
    assert report.ok, [p.render() for p in report.problems]
    return root


@pytest.fixture(scope="module")
def nv12_run(tmp_path_factory):
    """rgb model normalized with mean_value and std_value, NV12 at runtime."""
    root = tmp_path_factory.mktemp("nv12")
    config = write_case(root, "rgb", "nv12", "NCHW", "regular")
    config.write_text(config.read_text().replace("scale_value: 0.017125 0.017507 0.017429", "std_value: 58.4 57.1 57.4"))
    report = Engine().run(config)
    assert report.ok, [p.render() for p in report.problems]
    return root


def cosine_and_notes(lines: list[str]) -> tuple[float, list[str]]:
    assert lines[0].startswith("mode: cosine") and lines[1].split()[:3] == ["Output", "Cosine", "Similarity"]
    return float(lines[2].split()[1]), lines[3:]


@pytest.mark.parametrize("order", ["float,hbm", "hbm,float"])
def test_plain_float_model_against_the_hbm_on_random_input(gray_run, order):
    pair = [str(gray_run / "model.onnx"), str(gray_run / "model_output" / "conv.hbm")]
    code, lines = verifier.verify(pair if order == "float,hbm" else pair[::-1])
    cos, notes = cosine_and_notes(lines)
    assert code == 0 and cos > 0.999, lines  # was 0.37-like: raw pixels into a model trained on (x − 128)/128
    assert notes == ["note: model.onnx has no hbcompile input spec: its input 'data' is the sample normalized as "
                     "conv.hbm does inside (mean_value 128, scale_value 0.0078125)"]


def test_plain_float_model_against_the_hbm_on_a_sample_equals_the_original_float_model(gray_run, tmp_path):
    sample = in_layout(train_pixels(rgb_crop(*SEEN), "gray"), "NCHW").astype(np.float32)
    np.save(tmp_path / "sample.npy", sample)
    hbm = str(gray_run / "model_output" / "conv.hbm")
    _, plain = verifier.verify([str(gray_run / "model.onnx"), hbm], [str(tmp_path / "sample.npy")])
    _, ours = verifier.verify([str(gray_run / "model_output" / "conv_original_float_model.onnx"), hbm],
                              [str(tmp_path / "sample.npy")])
    assert plain[2] == ours[2] and cosine_and_notes(plain)[0] > 0.999
    assert cosine_and_notes(ours)[1] == []  # hbcompile's own float model normalizes inside: nothing to say


def test_mean_and_std_are_applied_per_channel(nv12_run, tmp_path):
    """An rgb photo in the train view: the float model gets (x − mean)/std per channel, the .hbm NV12."""
    sample = in_layout(rgb_crop(*SEEN), "NCHW").astype(np.float32)
    np.save(tmp_path / "sample.npy", sample)
    code, lines = verifier.verify([str(nv12_run / "model.onnx"), str(nv12_run / "model_output" / "conv.hbm")],
                                  [str(tmp_path / "sample.npy")])
    cos, notes = cosine_and_notes(lines)
    assert code == 0 and cos > 0.995, lines  # NV12's 4:2:0 chroma costs more than int8 here
    assert notes[0].endswith("(mean_value 123.675 116.28 103.53, std_value 58.4 57.1 57.4)")


def test_a_runtime_frame_cannot_feed_the_plain_float_model(nv12_run, tmp_path, capsys):
    """An NV12 frame fits the .hbm but not the float model: one error saying what to give instead."""
    np.save(tmp_path / "frame.npy", runtime_pixels(rgb_crop(*SEEN), "nv12", "regular", None))
    code = verifier.main(["-m", f"{nv12_run / 'model.onnx'},{nv12_run / 'model_output' / 'conv.hbm'}",
                          "-i", str(tmp_path / "frame.npy")])
    out, err = capsys.readouterr()
    assert code == verifier.EXIT_BAD_INPUT and out == ""
    assert err.startswith("ERROR Input 'data' is given as uint8 (1, 48, 48), which model.onnx (a float model "
                          "without hbcompile's input spec, tensor, float32 (1, 3, 32, 48)) cannot take: give a "
                          "train-view rgb sample of shape (1, 3, 32, 48)"), err


def test_an_array_only_the_float_model_takes_is_a_warning(gray_run, tmp_path):
    """A float model with a free batch takes a batch of 2 that the .hbm's train view (batch 1) is not: fed
    as it is, with a WARNING that the inputs differ."""
    model = onnx.load(str(gray_run / "model.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(model, str(tmp_path / "free.onnx"))
    plain, hbm = load(tmp_path / "free.onnx"), load(gray_run / "model_output" / "conv.hbm")
    x = np.full((2, 1, 32, 48), 200.0, np.float32)
    fed, notes = verifier.feeds_for_plain(plain, hbm, {"data": x})
    assert fed["data"] is x
    [warning] = notes
    assert warning.startswith("WARNING free.onnx has no hbcompile input spec and its input 'data' is not given as "
                              "a train-view gray sample of shape (1, 1, 32, 48) (got float32 (2, 1, 32, 48))")
    fed, notes = verifier.feeds_for_plain(plain, hbm, {"data": x[:1]})
    np.testing.assert_allclose(fed["data"], (200.0 - 128) / 128)
    assert notes[0].startswith("note: ")


def test_a_float_model_holding_the_inserted_normalization_is_fed_as_it_is(gray_run, tmp_path):
    """hbcompile's float model without its metadata (HZ_PREPROCESS_FOR_data still inside) is not normalized twice."""
    model = onnx.load(str(gray_run / "model_output" / "conv_original_float_model.onnx"))
    kept = [p for p in model.metadata_props if p.key != "hbcompile.inputs"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "bare.onnx"))
    hbm = str(gray_run / "model_output" / "conv.hbm")
    _, bare = verifier.verify([str(tmp_path / "bare.onnx"), hbm])
    _, ours = verifier.verify([str(gray_run / "model_output" / "conv_original_float_model.onnx"), hbm])
    assert cosine_and_notes(bare) == cosine_and_notes(ours) and cosine_and_notes(bare)[1] == []
