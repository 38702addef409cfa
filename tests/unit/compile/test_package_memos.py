"""Packaging on a compiler edit: the `.hbm` written with the program digest the manifest already holds is the
file a fresh hash gives, and the `.bc`'s runtime specs kept per `.bc` are each build's own to fill in."""

from __future__ import annotations

import hashlib

from engine.compile.hbm import decode_hbm, encode_hbm
from engine.compile.package import build_hbm
from engine.compile.params import resolve
from engine.config.model import CompilerParameters
from tests.unit.compile.compile_support import conv_net, nv12_program


def options(**kw):
    got, problems = resolve(CompilerParameters(**kw), "nash-e")
    assert not [p for p in problems if p.is_error], problems
    return got


def test_the_hbm_written_with_the_known_digest_is_the_hashed_one(tmp_path):
    program, _ = nv12_program(conv_net())
    build = build_hbm(program, options(optimize_level="O1"), timestamp="t")
    assert build.program_bytes and build.program_sha256 == hashlib.sha256(build.program_bytes).hexdigest()
    written = build.write(tmp_path / "a.hbm").read_bytes()
    assert written == encode_hbm(build.program_bytes, build.manifest)  # sections hashed afresh
    assert decode_hbm(written).program == build.program_bytes  # its checksums hold


def test_each_build_gets_its_own_specs(tmp_path):
    program, _ = nv12_program(conv_net())
    sha = hashlib.sha256(program.SerializeToString()).hexdigest()
    first = build_hbm(program, options(input_source={"x": "resizer"}), timestamp="t", source_sha256=sha)
    second = build_hbm(program, options(), timestamp="t", source_sha256=sha)  # the specs from the memo
    assert first.manifest["inputs"][0]["input_source"] == "resizer"
    assert second.manifest["inputs"][0]["input_source"] == "pyramid"  # nv12: the default, not the first build's
    first.manifest["inputs"][0]["shape"].append(99)
    third = build_hbm(program, options(), timestamp="t", source_sha256=sha)
    assert third.manifest["inputs"] == second.manifest["inputs"] and 99 not in third.manifest["inputs"][0]["shape"]
