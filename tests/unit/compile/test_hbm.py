"""The .hbm: round trip bit-exact to the .bc at every optimize level, and clear errors for damaged files."""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile.hbm import MAGIC, decode_hbm, encode_hbm, read_hbm, write_hbm
from engine.compile.optimize import bit_identical, fold_dq_q, optimize_program
from engine.compile.package import build_hbm
from engine.compile.params import resolve
from engine.config.model import CompilerParameters
from engine.problems import ModelError
from engine.runtime.model import load
from engine.runtime.session import open_session
from engine.runtime.threads import ThreadPlan
from tests.unit.compile.compile_support import conv_net, integer_program, mid_conv_net, nv12_program


def emulated_conv_program() -> onnx.ModelProto:
    """A BPU op run by float kernels, as the lowering emulates ops without an integer kernel:
    the weight is its int8 codes × scales at run time, the bias its int32 codes dequantized."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(np.array(0.04, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(rng.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8), "w_codes"),
             numpy_helper.from_array(rng.uniform(0.002, 0.01, (6, 1, 1, 1)).astype(np.float32), "w_scale"),
             numpy_helper.from_array(rng.integers(-500, 500, 6).astype(np.int32), "b_codes"),
             numpy_helper.from_array(np.full(6, 0.0002, np.float32), "b_scale"),
             numpy_helper.from_array(np.zeros(6, np.int32), "b_zero"),
             numpy_helper.from_array(np.array(0.08, np.float32), "so")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dq_in"),
             helper.make_node("Cast", ["w_codes"], ["w_f"], name="w_cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["w_f", "w_scale"], ["w"], name="w_scale_mul"),
             helper.make_node("DequantizeLinear", ["b_codes", "b_scale", "b_zero"], ["b"], name="b_dq", axis=0),
             helper.make_node("Conv", ["xf", "w", "b"], ["c"], name="conv_emulated", pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "so", "z"], ["cq"], name="q_out"),
             helper.make_node("DequantizeLinear", ["cq", "so", "z"], ["y"], name="dq_out")]
    graph = helper.make_graph(nodes, "emulated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="hbcompile.march", value="nash-e")
    return model


@pytest.fixture(scope="module")
def programs():
    nv12, _ = nv12_program(conv_net(cpu_op=None))
    return {"island_lut": integer_program(conv_net(cpu_op="Abs")), "nv12": nv12,
            "emulated_conv": emulated_conv_program()}


def options(level: str = "O2", march: str = "nash-e"):
    opts, problems = resolve(CompilerParameters(optimize_level=level), march)
    assert not [p for p in problems if p.is_error]
    return opts


@pytest.mark.parametrize("level", ["O0", "O1", "O2"])
@pytest.mark.parametrize("name", ["island_lut", "nv12", "emulated_conv"])
def test_round_trip_is_bit_exact_to_the_bc(programs, tmp_path, name, level):
    bc_path = tmp_path / "m.bc"
    onnx.save(programs[name], str(bc_path))
    build = build_hbm(programs[name], options(level), config_sha256="c0ffee", timestamp="2026-01-01T00:00:00+00:00")
    hbm_path = build.write(tmp_path / "m.hbm")
    hbm = read_hbm(hbm_path)
    assert hbm.version == (1, 1) and hbm.manifest == json.loads(json.dumps(build.manifest))
    assert hbm.manifest["build"]["config_sha256"] == "c0ffee"
    assert hbm.manifest["build"]["optimize"]["level"] == level
    assert hbm.manifest["program"]["sha256"] == hashlib.sha256(hbm.program).hexdigest()
    assert not build.optimize.fallback
    bc, deployed = load(bc_path), load(hbm_path)
    assert [s.name for s in deployed.inputs] == [s.name for s in bc.inputs]
    for seed in range(3):
        feeds = bc.random_inputs(seed)
        a, b = bc.run(feeds), deployed.run(feeds)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), (name, level, k)


def test_o2_constant_folds_the_emulated_weights_and_stays_exact(programs):
    result = optimize_program(programs["emulated_conv"], "O2")
    assert result.checked and not result.fallback
    assert result.rewrites["onnxruntime_basic"] >= 2  # at least the Cast·Mul of the weight folded into one constant
    assert {"Cast", "Mul"}.isdisjoint(n.op_type for n in result.program.graph.node)
    assert result.nodes < len(programs["emulated_conv"].graph.node)


def test_o0_stores_the_program_as_is(programs):
    build = build_hbm(programs["island_lut"], options("O0"))
    assert build.program.SerializeToString() == programs["island_lut"].SerializeToString()


def test_fold_dq_q_is_the_identity_on_every_code():
    """DQ → Q with equal parameters: removed by O1, and the removed pair was exact for all 256 codes."""
    for seed, scale in enumerate((0.0037, 0.1, 1.7, 113.0)):
        zp = int(np.random.default_rng(seed).integers(0, 256))
        inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                 numpy_helper.from_array(np.array(zp, np.uint8), "z")]
        nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"], name="dq"),
                 helper.make_node("QuantizeLinear", ["f", "s", "z"], ["q"], name="q"),
                 helper.make_node("Identity", ["q"], ["y"], name="out")]
        graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.UINT8, [256])],
                                  [helper.make_tensor_value_info("y", TensorProto.UINT8, [256])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        codes = np.arange(256, dtype=np.uint8)
        np.testing.assert_array_equal(open_session(model.SerializeToString()).run(None, {"x": codes})[0], codes)
        assert fold_dq_q(model) == 1
        assert [n.op_type for n in model.graph.node] == ["Identity"] and model.graph.node[0].input[0] == "x"


def test_bit_identical_reports_the_output_that_differs(programs):
    other = onnx.ModelProto()
    other.CopyFrom(programs["emulated_conv"])
    for t in other.graph.initializer:
        if t.name == "w_codes":
            t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), "w_codes"))
    same, why = bit_identical(programs["emulated_conv"], other)
    assert not same and "'y'" in why


def test_manifest_holds_specs_and_build_info(programs):
    build = build_hbm(programs["nv12"], options("O1", "nash-e"), config_sha256="abc", source_name="tiny")
    m = build.manifest
    assert m["march"] == "nash-e" and m["format_version"] == "1.1"
    (spec,) = m["inputs"]
    assert spec["input_type_rt"] == "nv12" and spec["dtype"] == "uint8" and spec["shape"] == [1, 24, 16]
    assert spec["input_type_train"] == "rgb" and spec["train_shape"] == [1, 3, 16, 16]
    assert spec["input_source"] == "pyramid"  # reference §7 default for nv12
    assert m["outputs"] == [{"name": "y", "shape": [1, 16, 1, 1], "dtype": "float32"}]
    b = m["build"]
    assert b["tool"] == "hbcompile" and b["version"] and b["timestamp"] and b["source"]["name"] == "tiny"
    assert b["compiler_parameters"]["optimize_level"] == "O1"
    assert b["source"]["sha256"] == hashlib.sha256(programs["nv12"].SerializeToString()).hexdigest()


@pytest.fixture(scope="module")
def mid_program():
    return integer_program(mid_conv_net(64), samples=2)


def test_the_build_records_a_thread_plan_that_load_honours(programs, mid_program, tmp_path):
    """The compile stage's build gives a program of small kernels 1 thread and one of large kernels the
    whole budget (a static rule: the same plan on every build), and the runtime opens each .hbm with the
    threads its plan gives for the budget."""
    small = build_hbm(programs["island_lut"], options("O2"), threads=True)
    large = build_hbm(mid_program, options("O2"), threads=True)
    small_plan, large_plan = (ThreadPlan.from_json(b.manifest["build"]["threads"]) for b in (small, large))
    assert small_plan.limit == 1 and large_plan.limit is None
    for name, build, plan in (("small", small, small_plan), ("large", large, large_plan)):
        path = build.write(tmp_path / f"{name}.hbm")
        for budget in (1, 2):
            deployed = load(path, threads=budget)
            assert deployed.threads == plan.threads_for(budget) <= budget
            assert deployed.session.get_session_options().intra_op_num_threads == deployed.threads
    assert load(tmp_path / "small.hbm", threads=2).threads == 1
    assert "threads" not in build_hbm(programs["island_lut"], options("O2")).manifest["build"]  # not asked: no plan
    again = build_hbm(mid_program, options("O2"), threads=True)
    assert again.manifest["build"]["threads"] == large.manifest["build"]["threads"]


def test_bc_and_hbm_give_the_same_bits_at_every_thread_count(mid_program, tmp_path):
    """Threads change how the kernels are scheduled, not what they compute: the .bc and the .hbm at
    1 and 2 threads (the plan forced either way) agree bit for bit on a program whose convs are split
    between threads."""
    bc_path = tmp_path / "m.bc"
    onnx.save(mid_program, str(bc_path))
    build = build_hbm(mid_program, options("O2"))
    hbms = {}
    for used, limit in ((1, 1), (2, None)):
        manifest = {**build.manifest, "build": {**build.manifest["build"],
                                                "threads": ThreadPlan(limit).to_json()}}
        hbms[used] = write_hbm(tmp_path / f"m{used}.hbm", build.program_bytes, manifest)
    runs = [load(bc_path, threads=1), load(bc_path, threads=2), load(hbms[1], threads=2), load(hbms[2], threads=2)]
    assert [r.threads for r in runs] == [1, 2, 1, 2]
    for seed in range(3):
        feeds = runs[0].random_inputs(seed)
        outs = [r.run(feeds) for r in runs]
        for k in outs[0]:
            assert len({o[k].tobytes() for o in outs}) == 1, (seed, k)


def test_program_memo_gives_the_same_hbm_without_optimizing_again(programs, tmp_path, monkeypatch):
    """O2 checks its rewrites in onnxruntime: the memo keeps the result by program, level and
    implementation, and the .hbm built from it is the one built without it, byte for byte."""
    import engine.compile.package as package
    from engine.compile.package import ProgramMemo

    memo = ProgramMemo(tmp_path / "memo", "0123456789abcdef" * 4)
    plain = build_hbm(programs["island_lut"], options("O2"), timestamp="t")
    first = build_hbm(programs["island_lut"], options("O2"), timestamp="t", memo=memo)
    [saved] = list((tmp_path / "memo").iterdir())
    assert saved.name.startswith("0123456789abcdef-")  # owned by that stage entry: pruned with it

    def optimized_again(program, level):
        raise AssertionError(f"{level} optimized again")

    monkeypatch.setattr(package, "optimize_program", optimized_again)
    again = build_hbm(programs["island_lut"], options("O2"), timestamp="t", memo=memo)
    assert encode_hbm(again.program_bytes, again.manifest) == encode_hbm(first.program_bytes, first.manifest) \
        == encode_hbm(plain.program.SerializeToString(), plain.manifest)
    assert again.optimize.rewrites == plain.optimize.rewrites and again.optimize.checked
    with pytest.raises(AssertionError, match="O1 optimized again"):  # another level: another entry
        build_hbm(programs["island_lut"], options("O1"), memo=memo)
    monkeypatch.setattr(package, "optimizer_version", lambda: "another optimizer")
    with pytest.raises(AssertionError, match="O2 optimized again"):  # another implementation: another entry
        build_hbm(programs["island_lut"], options("O2"), memo=memo)


def test_program_memo_recomputes_an_unreadable_entry(programs, tmp_path):
    from engine.compile.package import ProgramMemo

    memo = ProgramMemo(tmp_path, "f" * 64)
    first = build_hbm(programs["nv12"], options("O2"), timestamp="t", memo=memo)
    [saved] = list(tmp_path.iterdir())
    saved.write_bytes(saved.read_bytes()[:40])  # torn
    again = build_hbm(programs["nv12"], options("O2"), timestamp="t", memo=memo)
    assert again.program_bytes == first.program_bytes and again.manifest == first.manifest
    assert saved.read_bytes().split(b"\n", 1)[1] == first.program_bytes  # written again


# ----------------------------------------------------------------------------------- damaged files

@pytest.fixture
def hbm_bytes(programs):
    return encode_hbm(programs["island_lut"], {"march": "nash-e", "inputs": [], "outputs": []})


def _sections(data: bytes) -> dict[str, tuple[int, int]]:
    count = struct.unpack_from("<I", data, 12)[0]
    out = {}
    for i in range(count):
        name, offset, length, _ = struct.unpack_from("<16sQQ32s", data, 48 + 64 * i)
        out[name.rstrip(b"\0").decode()] = (offset, length)
    return out


@pytest.mark.parametrize("section", ["program", "manifest"])
def test_a_flipped_byte_names_its_section(hbm_bytes, tmp_path, section):
    offset, length = _sections(hbm_bytes)[section]
    damaged = bytearray(hbm_bytes)
    damaged[offset + length // 2] ^= 0x40
    path = tmp_path / "bad.hbm"
    path.write_bytes(bytes(damaged))
    with pytest.raises(ModelError) as info:
        read_hbm(path)
    msg = info.value.problems[0].message
    assert f"checksum mismatch in section '{section}'" in msg and "bad.hbm" in msg


def test_a_damaged_section_table_is_reported(hbm_bytes):
    damaged = bytearray(hbm_bytes)
    damaged[48 + 20] ^= 0x01  # inside the first entry's offset
    with pytest.raises(ModelError, match="section 'table'"):
        decode_hbm(bytes(damaged))


@pytest.mark.parametrize("cut", [0, 5, 30, 48 + 10, -1, -1000])
def test_truncated_files_say_so(hbm_bytes, tmp_path, cut):
    path = tmp_path / "cut.hbm"
    path.write_bytes(hbm_bytes[:cut] if cut >= 0 else hbm_bytes[:len(hbm_bytes) + cut])
    with pytest.raises(ModelError, match="truncated"):
        read_hbm(path)


def test_wrong_magic(tmp_path, programs):
    path = tmp_path / "model.hbm"
    onnx.save(programs["island_lut"], str(path))  # an ONNX file with the .hbm suffix
    with pytest.raises(ModelError, match=r"not an \.hbm file \(bad magic"):
        read_hbm(path)


def test_newer_major_version_is_refused(hbm_bytes):
    data = bytearray(hbm_bytes)
    struct.pack_into("<H", data, 8, 2)
    with pytest.raises(ModelError, match=r"format version 2\.1 is not supported"):
        decode_hbm(bytes(data))


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="Can not find the .hbm file"):
        read_hbm(tmp_path / "none.hbm")


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, programs):
    write_hbm(tmp_path / "a.hbm", programs["island_lut"], {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.hbm"]
    assert read_hbm(tmp_path / "a.hbm").sections.keys() == {"manifest", "program"}
    assert (tmp_path / "a.hbm").read_bytes().startswith(MAGIC)


# ---- O2: per-channel scaling (a diagonal 1×1 QLinearConv as elementwise ops) ----------------------------
def image_program(diagonal: bool = True, bias_scale: float = 1.0, c2_bias: int = 900) -> onnx.ModelProto:
    """uint8 NHWC pixels → Transpose → 1×1 QLinearConv (the input conversion: per-channel mean/std,
    weights as uint8 codes + 128, int32 bias) → 3×3 QLinearConv 3 → 8 (int8 weights, int32 bias
    ±`c2_bias`) → DequantizeLinear. `diagonal=False` mixes channels (a colour matrix)."""
    rng = np.random.default_rng(7)
    mean, std = np.array([123.7, 116.3, 103.5]), np.array([58.4, 57.1, 57.4])
    m = np.diag(1 / std) if diagonal else np.array([[1.0, 0.3, -0.2], [0.1, 0.9, 0.2], [-0.3, 0.2, 1.1]]) / 58
    s_w = (np.abs(m).max(axis=1) / 127).astype(np.float32)
    w = (np.rint(m / s_w[:, None]) + 128).astype(np.uint8).reshape(3, 3, 1, 1)
    bias = (np.rint(-(m @ mean) / s_w) * bias_scale).astype(np.int32)
    w2 = rng.integers(-60, 61, (8, 3, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "one": np.array(1.0, np.float32), "zero": np.array(0, np.uint8), "w": w, "w_scale": s_w,
        "w_zero": np.full(3, 128, np.uint8), "n_scale": np.array(2.2 / 127, np.float32), "z128": np.array(128, np.uint8),
        "bias": bias, "w2": w2, "w2_scale": np.full(8, 0.004, np.float32), "w2_zero": np.zeros(8, np.int8),
        "b2": rng.integers(-c2_bias, c2_bias + 1, 8).astype(np.int32), "y_scale": np.array(0.05, np.float32)}.items()]
    nodes = [helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("QLinearConv", ["x_nchw", "one", "zero", "w", "w_scale", "w_zero", "n_scale", "z128", "bias"],
                              ["n"], name="HZ_PREPROCESS_FOR_x", kernel_shape=[1, 1]),
             helper.make_node("QLinearConv", ["n", "n_scale", "z128", "w2", "w2_scale", "w2_zero", "y_scale", "z128",
                                               "b2"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("DequantizeLinear", ["c", "y_scale", "z128"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "image", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def every_code_image() -> np.ndarray:
    """16×16×3 pixels where each channel takes all 256 values (in a different order per channel)."""
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(256) for _ in range(3)], axis=-1).reshape(1, 16, 16, 3).astype(np.uint8)


def conv_kinds(model: onnx.ModelProto) -> list[list[int]]:
    inits = {t.name: t for t in model.graph.initializer}
    return [list(inits[n.input[3]].dims) for n in model.graph.node if n.op_type == "QLinearConv"]


def test_o2_runs_a_diagonal_1x1_conv_as_elementwise_ops_bit_exactly():
    program = image_program()
    result = optimize_program(program, "O2")
    assert result.rewrites["per_channel_scaling"] == 1 and result.checked and not result.fallback
    assert result.rewrites["narrow_conv_in_float"] == 1  # the 3-channel 3×3 conv (next tests)
    assert conv_kinds(result.program) == []
    before, after = open_session(program.SerializeToString()), open_session(result.program.SerializeToString())
    for x in (every_code_image(), np.random.default_rng(3).integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)):
        np.testing.assert_array_equal(before.run(None, {"x": x})[0], after.run(None, {"x": x})[0])


def test_o2_keeps_integer_convs_whose_accumulator_float32_cannot_hold():
    result = optimize_program(image_program(bias_scale=2 ** 12, c2_bias=2 ** 25), "O2")
    assert result.rewrites["per_channel_scaling"] == 0 and result.rewrites["narrow_conv_in_float"] == 0
    assert conv_kinds(result.program) == [[3, 3, 1, 1], [8, 3, 3, 3]] and not result.fallback


def test_o2_per_channel_scaling_is_checked_on_every_code(monkeypatch):
    """A replacement that is wrong for a few codes of one channel is not applied."""
    import engine.compile.optimize as optimize

    real = optimize._diagonal_scaling

    def off_by_a_hair(node, inits):
        s = real(node, inits)
        return None if s is None else optimize._Scaling(
            s.x_zero_point, s.d, s.bias, s.multiplier * np.float32([1, 1, 1.01]), s.y_zero_point)

    program = image_program()
    exact = real(program.graph.node[1], {t.name: t for t in program.graph.initializer})
    acc = (np.arange(256, dtype=np.float32) * exact.d[2] + exact.bias[2])
    codes = [np.clip(np.rint(acc * m), -128, 127) for m in (exact.multiplier[2], exact.multiplier[2] * np.float32(1.01))]
    assert 0 < np.count_nonzero(codes[0] != codes[1]) < 128  # the wrong multiplier moves some codes, not all
    monkeypatch.setattr(optimize, "_diagonal_scaling", off_by_a_hair)
    monkeypatch.setattr(optimize, "NARROW_INPUT", 0)
    result = optimize_program(program, "O2")
    assert result.rewrites["per_channel_scaling"] == 0
    assert conv_kinds(result.program) == [[3, 3, 1, 1], [8, 3, 3, 3]]


def test_o2_runs_a_conv_on_few_channels_as_a_float_conv_of_the_same_integers():
    """The 3 → 3 colour matrix and the 3 → 8 3×3 QLinearConv become DequantizeLinear → Conv →
    Cast<int32> → DequantizeLinear (× M) → QuantizeLinear, and give the same codes."""
    program = image_program(diagonal=False)
    result = optimize_program(program, "O2")
    assert result.rewrites["narrow_conv_in_float"] == 2 and result.checked and not result.fallback
    assert conv_kinds(result.program) == []
    assert Counter(n.op_type for n in result.program.graph.node)["Conv"] == 2
    before, after = open_session(program.SerializeToString()), open_session(result.program.SerializeToString())
    for seed in range(4):
        x = np.random.default_rng(seed).integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
        np.testing.assert_array_equal(before.run(None, {"x": x})[0], after.run(None, {"x": x})[0])


def test_o2_narrow_conv_is_checked_against_the_integer_kernel(monkeypatch):
    """A float replacement whose multiplier is a hair off is refused by the per-node check."""
    import engine.compile.optimize as optimize

    real = optimize._narrow_conv

    def off(node, inits):
        parts = real(node, inits)
        return None if parts is None else (*parts[:3], parts[3] * np.float32(1.01), parts[4])

    monkeypatch.setattr(optimize, "_narrow_conv", off)
    result = optimize_program(image_program(diagonal=False), "O2")  # both convs read 3 channels
    assert result.rewrites["narrow_conv_in_float"] == 0 and conv_kinds(result.program) == [[3, 3, 1, 1], [8, 3, 3, 3]]
