"""Incremental compile (issue #8): a compiler_parameters edit that builds the same program runs
neither the optimize_level rewrites (with their bit-exactness checks) nor the latency measurement."""

from __future__ import annotations

from engine.compile.hbm import read_hbm
from engine.pipeline import Engine
from tests.pipeline.test_incremental import CONFIG, memo, run_ok, write_samples


def test_a_compile_mode_edit_reuses_the_optimized_program(project, monkeypatch):
    write_samples(project.root / "cal")
    cfg = project.config(CONFIG)
    engine = Engine()
    first = run_ok(engine, cfg)
    hbm = project.root / "model_output" / "tiny.hbm"
    before = read_hbm(hbm)
    [saved] = memo(project, "optimized_program")
    assert saved[:16] == first.stage("quantize").key[:16]  # owned by the quantize entry

    def optimized_again(program, level):
        raise AssertionError(f"{level} optimized again")

    monkeypatch.setattr("engine.compile.package.optimize_program", optimized_again)
    project.config(CONFIG.replace("compile_mode: latency", "compile_mode: bandwidth"))
    again = run_ok(engine, cfg)
    assert again.ran == ["config", "compile"]
    after = read_hbm(hbm)
    assert after.program == before.program
    assert after.manifest["build"]["optimize"] == before.manifest["build"]["optimize"]
    assert after.manifest["build"]["compiler_parameters"]["compile_mode"] == "bandwidth"
    monkeypatch.undo()

    project.config(CONFIG.replace("optimize_level: O2", "optimize_level: O1"))
    run_ok(engine, cfg)  # another level: optimized (O1) and kept beside
    assert len(memo(project, "optimized_program")) == 2
