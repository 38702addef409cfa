"""hb_verifier on a run with `remove_node_type` (review §16 d): the `.hbm` is built from
`{prefix}_quantized_removed_model.bc`, so `{prefix}_quantized_model.bc,{prefix}.hbm` is not a
consistency pair; the message says which nodes are removed and names the `.bc` to compare with,
and a featuremap input that now takes integer codes is never worded as "pixels"."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.compile.package import build_hbm
from engine.compile.params import resolve
from engine.compile.remove_nodes import remove_nodes
from engine.config.model import CompilerParameters
from engine.tools import verifier
from tests.unit.compile.compile_support import conv_net, featuremap_spec, integer_program


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """What a run with `remove_node_type: Quantize` leaves in working_dir (prefix m), plus its float model."""
    d = tmp_path_factory.mktemp("removed")
    float_model = conv_net(cpu_op=None)
    program = integer_program(float_model)
    removed, _ = remove_nodes(program, ["Quantize"], [])
    onnx.save(float_model, str(d / "m_original_float_model.onnx"))
    onnx.save(program, str(d / "m_quantized_model.bc"))
    onnx.save(removed, str(d / "m_quantized_removed_model.bc"))
    opts, _ = resolve(CompilerParameters(optimize_level="O2"), "nash-e", featuremap_spec(float_model))
    build_hbm(removed, opts).write(d / "m.hbm")
    return d


def _verify(capsys, *args):
    code = verifier.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("order", ["bc,hbm", "hbm,bc"])
def test_quantized_bc_against_an_hbm_with_nodes_removed_names_the_removed_bc(run_dir, capsys, order):
    bc, hbm = run_dir / "m_quantized_model.bc", run_dir / "m.hbm"
    pair = f"{bc},{hbm}" if order == "bc,hbm" else f"{hbm},{bc}"
    code, out, err = _verify(capsys, "-m", pair)
    assert code == verifier.EXIT_BAD_INPUT and out == ""
    assert err.startswith("ERROR m.hbm has nodes removed that m_quantized_model.bc has not (QuantizeLinear "), err
    assert "at input 'x'" in err and "remove_node_type" in err
    assert f"hb_verifier -m {run_dir / 'm_quantized_removed_model.bc'},{hbm}" in err
    assert "pixels" not in err


def test_the_removed_bc_and_the_hbm_are_a_consistency_pair(run_dir, capsys):
    code, out, _ = _verify(capsys, "-m", f"{run_dir / 'm_quantized_removed_model.bc'},{run_dir / 'm.hbm'}")
    assert code == 0 and "consistency check passed" in out


def test_float_model_against_the_hbm_quantizes_the_input_as_the_removed_node_did(run_dir, capsys, tmp_path):
    """A float featuremap sample fed to an input whose Quantize was removed becomes its codes."""
    sample = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "in.npy", sample)
    code, out, err = _verify(capsys, "-m", f"{run_dir / 'm_original_float_model.onnx'},{run_dir / 'm.hbm'}",
                             "-i", tmp_path / "in.npy")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("mode: cosine") and float(lines[2].split()[1]) > 0.99
    same = _verify(capsys, "-m", f"{run_dir / 'm_original_float_model.onnx'},{run_dir / 'm_quantized_model.bc'}",
                   "-i", tmp_path / "in.npy")
    assert same[0] == 0 and same[1].splitlines()[2] == lines[2]  # the removed Quantize, done outside: same codes


def test_codes_of_the_wrong_integer_type_are_worded_as_codes(run_dir, capsys, tmp_path):
    np.save(tmp_path / "codes.npy", np.zeros((1, 3, 16, 16), np.int64))
    code, _, err = _verify(capsys, "-m", f"{run_dir / 'm_quantized_removed_model.bc'},{run_dir / 'm.hbm'}",
                           "-i", tmp_path / "codes.npy")
    assert code == verifier.EXIT_BAD_INPUT
    assert "Input 'x' of m_quantized_removed_model.bc expects featuremap, uint8" in err
    assert "integer codes" in err and "pixels" not in err


def test_the_runtime_words_a_removed_quantize_input_as_codes(run_dir):
    """engine.runtime itself (not only hb_verifier): float values for a featuremap input that takes the
    removed Quantize's codes are refused as 'integer codes', never 'pixels'."""
    from engine.runtime import load

    model = load(run_dir / "m.hbm")
    (spec,) = model.inputs
    with pytest.raises(Exception) as info:
        model.run({spec.name: np.zeros(spec.static_shape, np.float32)})
    assert "integer codes as uint8" in str(info.value) and "pixels" not in str(info.value)
