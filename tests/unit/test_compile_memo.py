"""What the compile stage keeps between compiler_parameters edits (issue #8) and that none of it goes
stale: the optimized program by `.bc` digest, placement and level; the tensor types shared by the
O0 / O1 programs of one `.bc`; the estimate's options-independent part by program digest; the
latency by program structure. Each kept answer is compared with the answer computed afresh."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from engine.compile import program as program_mod
from engine.compile.hbm import read_hbm
from engine.compile.optimize import optimize_program
from engine.compile.package import ProgramMemo, build_hbm, program_key
from engine.compile.params import resolve
from engine.compile.perf import estimate, perf_json, program_structure
from engine.compile.program import PLACEMENT, metadata, set_metadata
from engine.config.model import CompilerParameters
from engine.runtime.model import load
from tests.conftest import REPO
from tests.unit.compile.compile_support import conv_net, integer_program


def options(level: str = "O2", **kw):
    opts, problems = resolve(CompilerParameters(optimize_level=level, **kw), "nash-e")
    assert not [p for p in problems if p.is_error], problems
    return opts


def sha256(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def with_o1_work(program: onnx.ModelProto, identity: bool = True) -> onnx.ModelProto:
    """`program` plus what O1 removes: a copy of a constant one node reads instead of the original
    (dedupe_initializers), a constant nothing reads (remove_dead) and, with `identity`, an Identity
    between two nodes (remove_identity)."""
    out = onnx.ModelProto()
    out.CopyFrom(program)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    reader = next(n for n in g.node if any(i in inits for i in n.input[1:]))
    k = next(k for k, i in enumerate(reader.input) if k and i in inits)
    copy = onnx.TensorProto()
    copy.CopyFrom(inits[reader.input[k]])
    copy.name = reader.input[k] + "_copy"
    g.initializer.append(copy)
    reader.input[k] = copy.name
    g.initializer.append(numpy_helper.from_array(np.arange(4, dtype=np.int8), "unused"))
    if identity:
        first = g.node[0]
        readers = [n for n in g.node if first.output[0] in n.input]
        for n in readers:
            for j, i in enumerate(n.input):
                if i == first.output[0]:
                    n.input[j] = "first_out_id"
        g.node.insert(1, helper.make_node("Identity", [first.output[0]], ["first_out_id"], name="first_identity"))
    onnx.checker.check_model(out)
    return out


@pytest.fixture(scope="module")
def bc() -> onnx.ModelProto:
    return with_o1_work(integer_program(conv_net(cpu_op="Abs")))


@pytest.fixture(scope="module")
def sharing_only() -> onnx.ModelProto:
    """Only constants O1 shares or drops: its O0 and O1 programs do the same work."""
    return with_o1_work(integer_program(conv_net(cpu_op="Abs", seed=3)), identity=False)


# ------------------------------------------------------------------------------- optimized program

def test_the_memo_gives_each_level_its_own_program(bc, tmp_path):
    """A memo that answered an O1 build with the O2 program (or the reverse) would ship the wrong
    program under the manifest's level: every level through one memo equals it built without one."""
    memo = ProgramMemo(tmp_path, "a" * 64)
    fresh = {level: build_hbm(bc, options(level), timestamp="t") for level in ("O0", "O1", "O2")}
    for level in ("O2", "O1", "O0", "O2", "O1"):
        kept = build_hbm(bc, options(level), timestamp="t", memo=memo)
        assert kept.program_bytes == fresh[level].program.SerializeToString(), level
        assert kept.manifest == fresh[level].manifest, level
    assert len(list(tmp_path.iterdir())) == 2  # O1 and O2: O0 is the .bc itself, not kept
    assert len({fresh[level].program_sha256 for level in fresh}) == 3  # three programs: the check can fail


def test_a_program_filed_by_another_owner_is_found_by_its_key(bc, tmp_path, monkeypatch):
    """A calibration change that moves no threshold writes the same `.bc` into a new quantize entry: the
    program is found under the old owner's name, linked under the new one (kept when the old entry is
    pruned), and a program of another key is still optimized."""
    from engine.compile import package
    from engine.pipeline.cache import memo_name

    old, new = ProgramMemo(tmp_path, "a" * 64), ProgramMemo(tmp_path, "b" * 64)
    first = build_hbm(bc, options("O2"), timestamp="t", memo=old)
    optimized: list[str] = []
    real = package.optimize_program
    monkeypatch.setattr(package, "optimize_program", lambda program, level: optimized.append(level) or
                        real(program, level))
    again = build_hbm(bc, options("O2"), timestamp="t", memo=new)
    assert optimized == [] and again.program_bytes == first.program_bytes and again.manifest == first.manifest
    key = program_key(sha256(bc), None, "O2")
    assert (tmp_path / memo_name("b" * 64, f"{key}.opt")).is_file()
    (tmp_path / memo_name("a" * 64, f"{key}.opt")).unlink()  # the old owner pruned
    assert build_hbm(bc, options("O2"), timestamp="t", memo=new).program_bytes == first.program_bytes
    build_hbm(bc, options("O1"), timestamp="t", memo=new)  # another key: optimized
    assert optimized == ["O1"]


def test_the_program_key_names_everything_the_program_is_made_from():
    key = program_key("b" * 64, '{"conv": {"on": "BPU"}}', "O2")
    assert key != program_key("c" * 64, '{"conv": {"on": "BPU"}}', "O2")  # another .bc
    assert key != program_key("b" * 64, '{"conv": {"on": "CPU"}}', "O2")  # another placement
    assert key != program_key("b" * 64, None, "O2")  # no placement stamped
    assert key != program_key("b" * 64, '{"conv": {"on": "BPU"}}', "O1")  # another level
    assert key == program_key("b" * 64, '{"conv": {"on": "BPU"}}', "O2")


def test_a_given_source_digest_builds_the_same_hbm(bc):
    """The compile stage passes the digest of the file it read: the manifest is the one the
    serialized `.bc` gives."""
    given = build_hbm(bc, options("O1"), timestamp="t", source_sha256=sha256(bc))
    assert given.manifest == build_hbm(bc, options("O1"), timestamp="t").manifest


# ------------------------------------------------------------------------------------ tensor types

def probes(monkeypatch) -> list[int]:
    """Counts the onnxruntime sessions made from now on, with no tensor types kept."""
    from engine.compile import package

    program_mod._types_memo.clear()
    package._family_types.clear()
    made: list[int] = []
    real = ort.InferenceSession

    def counted(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counted)
    return made


def test_o0_and_o1_programs_share_their_types(bc, sharing_only, monkeypatch):
    """O1's rewrites drop and rewire values, never make or retype one: an O0 / O1 program of a `.bc`
    reads its types from another level's program when that one has all its values — what
    onnxruntime says of the program itself — and probes only when it has not."""
    builds = {level: build_hbm(bc, options(level)) for level in ("O0", "O1", "O2")}
    rewrites = builds["O1"].optimize.rewrites
    assert rewrites["remove_identity"] and rewrites["dedupe_initializers"] and rewrites["remove_dead"]
    probed = {level: program_mod._tensor_types(b.program) for level, b in builds.items()}
    assert "first_out_id" in probed["O0"] and "first_out_id" not in probed["O1"]  # a value O1 dropped

    made = probes(monkeypatch)
    for level in ("O0", "O1", "O0", "O1"):
        assert builds[level].tensor_types() == probed[level], level
    assert len(made) == 1  # O0's values include O1's: one probe for both
    assert builds["O2"].tensor_types() == probed["O2"] and len(made) == 2  # O2 makes values: its own probe

    made = probes(monkeypatch)
    assert builds["O1"].tensor_types() == probed["O1"] and builds["O0"].tensor_types() == probed["O0"]
    assert len(made) == 2  # O1 lacks the Identity's output O0 has: O0 is probed

    shared = {level: build_hbm(sharing_only, options(level)) for level in ("O0", "O1")}
    expected = {level: program_mod._tensor_types(b.program) for level, b in shared.items()}
    made = probes(monkeypatch)
    assert shared["O1"].tensor_types() == expected["O1"] and shared["O0"].tensor_types() == expected["O0"]
    assert len(made) == 1  # digits' case: O1 only shares and drops constants, O0 reads O1's types


def test_kept_types_refuse_a_program_with_values_the_source_lacks(bc):
    o2 = optimize_program(bc, "O2").program
    assert program_mod.kept_types(o2, program_mod._tensor_types(bc)) is None
    o0 = optimize_program(bc, "O0").program
    assert program_mod.kept_types(o0, program_mod._tensor_types(optimize_program(bc, "O1").program)) is None


# ---------------------------------------------------------------------------------- estimate, latency

def test_the_kept_estimate_part_gives_the_fresh_estimate(bc):
    """Two option sets on one program digest: each estimate equals the one made without the memo,
    and the second does not change the first one's layers."""
    program = optimize_program(bc, "O2").program
    digest = sha256(program)
    latency, bandwidth = options(compile_mode="latency"), options(compile_mode="bandwidth", core_num=1, advice=0.001)
    first = estimate(program, latency, "m", digest=digest)
    first_json = json.dumps(perf_json(first))
    second = estimate(program, bandwidth, "m", digest=digest)
    assert json.dumps(perf_json(first)) == first_json
    assert first_json == json.dumps(perf_json(estimate(program, latency, "m")))
    assert json.dumps(perf_json(second)) == json.dumps(perf_json(estimate(program, bandwidth, "m")))
    assert first.layers[0] is not second.layers[0]


def test_structure_leaves_out_constant_sharing_not_work(bc, sharing_only):
    o0, o1 = (optimize_program(sharing_only, level).program for level in ("O0", "O1"))
    assert sha256(o0) != sha256(o1) and len(o1.graph.initializer) < len(o0.graph.initializer)
    assert program_structure(o0) == program_structure(o1)  # the same operators on the same kinds of constants
    with_identity = [optimize_program(bc, level).program for level in ("O0", "O1")]
    assert program_structure(with_identity[0]) != program_structure(with_identity[1])  # O1 ran one node less
    assert program_structure(o0, digest=sha256(o0)) == program_structure(o0)
    wired = onnx.ModelProto()
    wired.CopyFrom(o0)
    node = next(n for n in wired.graph.node if n.op_type == "QLinearConv")
    node.input[0], node.input[3] = node.input[3], node.input[0]  # other wiring: another structure
    assert program_structure(wired) != program_structure(o0)


# ------------------------------------------------------------------------------ the stage, warm engine

def test_optimize_level_edits_in_a_warm_engine_ship_that_levels_program(tmp_path):
    """The bundled example in one engine, optimize_level O2 → O1 → O0 → O2 (with compile_mode
    bandwidth: not the first entry reused whole; compile alone re-runs): each `.hbm` holds what
    `optimize_program` gives for the stamped `.bc` at that level, its manifest and perf report say
    that level, and it computes the `.bc`'s bits."""
    from engine.pipeline import Engine

    example = REPO / "examples" / "digits"
    for name in ("digits.onnx", "digits.hb.yaml"):
        shutil.copy(example / name, tmp_path / name)
    shutil.copytree(example / "calibration_data", tmp_path / "calibration_data")
    config = tmp_path / "digits.hb.yaml"
    out = tmp_path / "model_output"
    engine = Engine()
    shipped = {}
    text = config.read_text()
    assert "optimize_level: O2" in text and "compile_mode: latency" in text
    for k, (level, mode) in enumerate((("O2", "latency"), ("O1", "latency"), ("O0", "latency"), ("O2", "bandwidth"))):
        config.write_text(text.replace("optimize_level: O2", f"optimize_level: {level}")
                          .replace("compile_mode: latency", f"compile_mode: {mode}"))
        report = engine.run(config)
        assert report.ok, [p.render() for p in report.problems]
        assert k == 0 or report.ran == ["config", "compile"], report.ran
        hbm = read_hbm(out / "digits.hbm")
        stamped = onnx.load(str(out / "digits_quantized_model.bc"))
        set_metadata(stamped, PLACEMENT, metadata(hbm.model())[PLACEMENT])
        assert hbm.program == optimize_program(stamped, level).program.SerializeToString(), level
        assert hbm.manifest["build"]["optimize"]["level"] == level
        assert json.loads((out / "digits.json").read_text())["summary"]["optimize_level"] == level
        shipped.setdefault(level, hbm.program)
        assert hbm.program == shipped[level]
        bc_model, deployed = load(out / "digits_quantized_model.bc"), load(out / "digits.hbm")
        feeds = bc_model.random_inputs(k)
        a, b = bc_model.run(feeds), deployed.run(feeds)
        assert all(a[n].tobytes() == b[n].tobytes() for n in a), level
    assert len(set(shipped.values())) == 3
