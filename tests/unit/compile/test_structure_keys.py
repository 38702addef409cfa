"""`program_structure` keeps its answer by the program's digest in this process (review 2, mutant C7):
two programs doing different work never get one structure key, whatever the memo holds — else the
latency memo serves one program's 'measured on this machine' for another's work."""

from __future__ import annotations

import hashlib

import onnx
import onnx.parser

from engine.compile import perf
from engine.compile.perf import STRUCTURE_KEEP, LatencyMemo, program_structure


def chain(ops: list[str], scale: float = 2.0) -> onnx.ModelProto:
    """x · scale, then the unary `ops` in order: a small float program (opset 17)."""
    lines = ["m = Mul(x, s)"]
    prev = "m"
    for k, op in enumerate(ops):
        lines.append(f"t{k} = {op}({prev})")
        prev = f"t{k}"
    lines.append(f"y = Identity({prev})")
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y)
    <float s = {{{scale}}}>
    {{
      {chr(10).join(lines)}
    }}
    """
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def sha256(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def fresh(model: onnx.ModelProto) -> str:
    """The structure computed from the program itself (no digest: nothing kept or read)."""
    return program_structure(model)


def test_two_programs_never_share_a_structure_key():
    relu, sigmoid = chain(["Relu"]), chain(["Sigmoid"])
    assert fresh(relu) != fresh(sigmoid)
    for first, second in ((relu, sigmoid), (sigmoid, relu), (relu, sigmoid)):
        perf._structure_memo.clear()
        a = program_structure(first, digest=sha256(first))
        b = program_structure(second, digest=sha256(second))  # with the first one's answer kept
        assert (a, b) == (fresh(first), fresh(second))
        assert program_structure(first, digest=sha256(first)) == a  # the kept answer is the same


def test_kept_answers_beyond_the_memo_size_stay_each_programs_own():
    """More programs than the memo keeps, twice around: every answer by digest is that program's."""
    programs = [chain(["Relu"] * k) for k in range(1, STRUCTURE_KEEP + 4)]
    expected = [fresh(p) for p in programs]
    assert len(set(expected)) == len(programs)
    perf._structure_memo.clear()
    for _ in range(2):
        got = [program_structure(p, digest=sha256(p)) for p in programs]
        assert got == expected
    assert len(perf._structure_memo) == STRUCTURE_KEEP


def test_same_work_on_other_constants_shares_the_key_other_work_does_not():
    """What the key is for: a calibration edit (other constant values) keeps the measurement, other
    operators do not."""
    base, rescaled, other = chain(["Relu", "Sigmoid"]), chain(["Relu", "Sigmoid"], scale=3.0), chain(["Sigmoid", "Relu"])
    perf._structure_memo.clear()
    keys = [program_structure(p, digest=sha256(p)) for p in (base, rescaled, other)]
    assert sha256(base) != sha256(rescaled)
    assert keys[0] == keys[1] != keys[2]


def test_the_latency_memo_measures_each_program_once_and_only_its_own(tmp_path):
    memo = LatencyMemo(tmp_path)
    relu, sigmoid = chain(["Relu"]), chain(["Sigmoid"])
    perf._structure_memo.clear()
    keys = [memo.key(p, 1, 3, digest=sha256(p)) for p in (relu, sigmoid)]
    assert keys[0] != keys[1]
    assert keys == [memo.key(p, 1, 3) for p in (relu, sigmoid)]  # by digest as without one
    for p in (relu, sigmoid, relu):
        memo.measure(p, threads=1, runs=3, digest=sha256(p))
    assert sorted(f.stem for f in tmp_path.glob("*.json")) == sorted(keys)  # two programs, two measurements
