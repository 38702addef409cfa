"""O2: a float conv's requantization Cast<int32> → DequantizeLinear(M) → QuantizeLinear(1, z) as one
QuantizeLinear(acc, S, z, axis 1) — kept only with a divisor S that gives the same code for every
accumulator near a rounding tie, which is every accumulator where the two can differ."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import engine.compile.optimize as optimize
from engine.compile.optimize import optimize_program
from engine.runtime.session import open_session


def narrow_program(weight_scales: np.ndarray, y_scale: float = 0.004, relu: bool = False) -> onnx.ModelProto:
    """gray uint8 pixels → 1 → C 3×3 QLinearConv (→ Clip at the zero point: a Relu on codes)."""
    rng = np.random.default_rng(5)
    c = len(weight_scales)
    inits = {"s": np.float32(1 / 255), "z": np.uint8(128), "w": rng.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8),
             "ws": weight_scales.astype(np.float32), "wz": np.zeros(c, np.int8),
             "b": rng.integers(-20000, 20000, c).astype(np.int32), "ys": np.float32(y_scale), "lo": np.uint8(128)}
    nodes = [helper.make_node("QLinearConv", ["x", "s", "z", "w", "ws", "wz", "ys", "z", "b"], ["c"], name="conv",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    if relu:
        nodes.append(helper.make_node("Clip", ["c", "lo"], ["r"], name="relu"))
    nodes.append(helper.make_node("DequantizeLinear", ["r" if relu else "c", "ys", "z"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 20, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 20, 20])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, seeds: int = 6) -> None:
    sa, sb = open_session(a.SerializeToString()), open_session(b.SerializeToString())
    for seed in range(seeds):
        x = np.random.default_rng(seed).integers(0, 256, (1, 1, 20, 20)).astype(np.uint8)
        p, q = sa.run(None, {"x": x})[0], sb.run(None, {"x": x})[0]
        assert p.tobytes() == q.tobytes()


@pytest.mark.parametrize("relu", [False, True])
def test_the_narrow_conv_ends_in_one_quantize_linear(relu):
    program = narrow_program(np.random.default_rng(7).uniform(1e-3, 4e-3, 8), relu=relu)
    result = optimize_program(program, "O2")
    assert result.rewrites["narrow_conv_in_float"] == 1 and result.checked and not result.fallback
    ops = Counter(n.op_type for n in result.program.graph.node)
    assert ops["Cast"] == 0 and ops["Conv"] == 1 and ops["QuantizeLinear"] == 1
    quantize = next(n for n in result.program.graph.node if n.op_type == "QuantizeLinear")
    assert quantize.name == "conv" and next(a.i for a in quantize.attribute if a.name == "axis") == 1
    same_outputs(program, result.program)


def test_tiny_multipliers_keep_the_cast_and_dequantize_form():
    """A multiplier so small that a tie has more than TIE_RADIUS_MAX integers on each side: the
    three-node requantization stays, and the conv still runs in float with the same codes."""
    program = narrow_program(np.full(4, 1e-5), y_scale=1.0)
    result = optimize_program(program, "O2")
    ops = Counter(n.op_type for n in result.program.graph.node)
    assert result.rewrites["narrow_conv_in_float"] == 1 and ops["Cast"] == 1 and ops["Conv"] == 1
    same_outputs(program, result.program)


def tail(multiplier: np.ndarray, zero_point: np.ndarray):
    """Cast<int32> → DequantizeLinear(M, axis 1) → QuantizeLinear(1, z): the long requantization."""
    c = len(multiplier)
    nodes = [helper.make_node("Cast", ["acc"], ["acc32"], name="t_accumulator", to=TensorProto.INT32),
             helper.make_node("DequantizeLinear", ["acc32", "m", "m_zero"], ["v"], name="t_multiplier", axis=1),
             helper.make_node("QuantizeLinear", ["v", "one", "zy"], ["y"], name="t")]
    constants = [numpy_helper.from_array(multiplier.astype(np.float32), "m"),
                 numpy_helper.from_array(np.zeros(c, np.int32), "m_zero"),
                 numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                 numpy_helper.from_array(np.asarray(zero_point), "zy")]
    return nodes, constants


def run(nodes, constants, acc: np.ndarray) -> np.ndarray:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("acc", TensorProto.FLOAT, list(acc.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return open_session(model.SerializeToString()).run(None, {"acc": acc})[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_chosen_divisor_gives_every_accumulator_its_code(seed):
    """The claim behind the tie check: whatever divisor passes it gives the long form's code for every
    integer accumulator in the range, not only near the ties (all of them run here)."""
    rng = np.random.default_rng(seed)
    multiplier = rng.uniform(1.5e-3, 8e-3, 6).astype(np.float32)
    zero_point = np.uint8(128)
    bound = np.full(6, 120_000)
    nodes, constants = tail(multiplier, zero_point)
    found = optimize._divided_requantization(nodes, constants, multiplier, zero_point, bound, "t")
    assert found is not None  # these seeds' multipliers have one (see the next test for one without)
    quantize, tensors = found
    acc = np.tile(np.arange(-120_000, 120_001, dtype=np.float32), (1, 6, 1))
    assert run(nodes, constants, acc).tobytes() == run(quantize, tensors, acc).tobytes()


def test_a_divisor_is_refused_where_a_tie_would_round_the_other_way():
    """A multiplier of PP-OCR cls: acc 84881 · M lands a hair above 138.5 where acc / fl(1/M) lands on
    it (and rounds to even, one code lower). The plain reciprocal gives another code there, and no
    float32 neighbour fits every tie of this channel: the long form is kept."""
    multiplier = np.array([0.0016316962], np.float32)
    acc = np.array([[[84881.0]]], np.float32)
    nodes, constants = tail(multiplier, np.uint8(0))
    reciprocal = [helper.make_node("QuantizeLinear", ["acc", "d", "dz"], ["y"], axis=1)]
    divisor = [numpy_helper.from_array((np.float32(1) / multiplier).astype(np.float32), "d"),
               numpy_helper.from_array(np.array([0], np.uint8), "dz")]
    assert run(nodes, constants, acc).tobytes() != run(reciprocal, divisor, acc).tobytes()
    assert optimize._divided_requantization(nodes, constants, multiplier, np.uint8(0), np.array([300_000]), "t") is None
    assert optimize._divided_requantization(nodes, constants, multiplier, np.uint8(0), np.array([80_000]), "t") \
        is not None  # that tie out of the accumulator's reach: a divisor fits the rest


def per_channel_search(multiplier: np.ndarray, zero_point: np.generic, bound: np.ndarray):
    """The divisor search one channel at a time (the form `_find_divisor` had before it searched blocks of
    channels at once): (the near-tie accumulators [C, width], the chosen divisors or None)."""
    m = multiplier.astype(np.float64)
    radius = np.ceil(optimize.TIE_SLACK / m).astype(np.int64) + 1
    info = np.iinfo(zero_point.dtype)
    ties = np.arange(int(info.min) - int(zero_point) - 1, int(info.max) - int(zero_point) + 1) + 0.5
    rows = []
    for c in range(len(m)):
        near = np.rint(ties / m[c]).astype(np.int64)[:, None] + np.arange(-radius[c], radius[c] + 1)[None, :]
        near = np.unique(near[np.abs(near) <= bound[c]])
        rows.append(near if near.size else np.zeros(1, np.int64))
    width = max(len(r) for r in rows)
    acc = np.stack([np.pad(r, (0, width - len(r)), mode="edge") for r in rows])
    accf = acc.astype(np.float32)
    want = np.clip(np.rint(accf * multiplier.reshape(-1, 1)) + int(zero_point), info.min, info.max)
    divisor = (np.float32(1) / multiplier).astype(np.float32)
    chosen = np.zeros_like(divisor)
    for c in range(len(m)):
        for step in sorted(range(-optimize.DIVISOR_STEPS, optimize.DIVISOR_STEPS + 1), key=abs):
            s = np.float32(divisor[c] + step * np.spacing(divisor[c]))
            got = np.clip(np.rint(accf[c] / s) + int(zero_point), info.min, info.max)
            if np.array_equal(got, want[c]):
                chosen[c] = s
                break
        else:
            return acc, None
    return acc, chosen


@pytest.mark.parametrize("seed", range(12))
def test_the_blocked_search_finds_what_the_per_channel_search_found(seed, monkeypatch):
    """Same accumulators, same divisors (or the same refusal) for multipliers over three decades (seeds
    0-5: mostly refused) and over the range where convs have divisors (6-11, many of them not the plain
    reciprocal), output zero points of uint8 / int8, bounds that cut rows short or empty them, and blocks
    of a few channels."""
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(optimize, "SEARCH_BLOCK", int(rng.choice([5_000, 60_000, 1 << 21])))
    c = int(rng.integers(1, 40))
    wide = seed < 6
    multiplier = (10 ** rng.uniform(-4.5, -1.5, c) if wide else rng.uniform(1.5e-3, 8e-3, c)).astype(np.float32)
    zero_point = np.uint8(rng.integers(0, 256)) if seed % 2 else np.int8(rng.integers(-128, 128))
    bound = rng.choice([0, 50, 5_000, 120_000, 2 ** 24] if wide else [0, 5_000, 120_000], c)
    acc, chosen = per_channel_search(multiplier, zero_point, bound)
    m = multiplier.astype(np.float64)
    radius = np.ceil(optimize.TIE_SLACK / m).astype(np.int64) + 1
    info = np.iinfo(zero_point.dtype)
    ties = np.arange(int(info.min) - int(zero_point) - 1, int(info.max) - int(zero_point) + 1) + 0.5
    blocked = optimize._near_ties(ties, m, radius, bound)
    assert blocked.dtype == acc.dtype and blocked.tobytes() == acc.tobytes()
    accf = blocked.astype(np.float32)
    want = np.clip(np.rint(accf * multiplier.reshape(-1, 1)) + int(zero_point), info.min, info.max)
    found = optimize._first_divisors(accf, want, (np.float32(1) / multiplier).astype(np.float32), int(zero_point),
                                     info)
    assert (found is None) == (chosen is None)
    if chosen is not None:
        assert found.tobytes() == chosen.tobytes()


def test_a_channel_without_a_divisor_refuses_the_whole_conv_in_the_blocked_search():
    """The PP-OCR cls channel without a divisor among three that have one: None, as channel by channel."""
    multiplier = np.array([0.0021, 0.0016316962, 0.0043], np.float32)
    bound = np.array([300_000, 300_000, 300_000])
    acc, chosen = per_channel_search(multiplier, np.uint8(0), bound)
    assert chosen is None
    nodes, constants = tail(multiplier, np.uint8(0))
    assert optimize._divided_requantization(nodes, constants, multiplier, np.uint8(0), bound, "t") is None
