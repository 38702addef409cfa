"""Incremental compile (issue #8): a compiler_parameters edit that builds the same program runs
neither the optimize_level rewrites (with their bit-exactness checks) nor the latency measurement."""

from __future__ import annotations

import shutil

import onnx

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


def test_later_stages_share_one_plan_and_give_what_fresh_plans_give(project, monkeypatch):
    """ptq, quantize, report and compile plan the same model, thresholds and options: the plan is made
    once per engine. Its users only read it: fresh plans in every stage give the same artefacts."""
    import engine.stages.ptq as ptq

    write_samples(project.root / "cal")
    cfg = project.config(CONFIG)
    made = []
    real = ptq.make_plan

    def counted(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ptq, "make_plan", counted)
    engine = Engine()
    run_ok(engine, cfg)
    assert len(made) == 1
    names = ("tiny_ptq_model.onnx", "tiny_quantized_model.bc", "tiny_node_info.csv", "tiny_quant_info.json")
    shared = {n: (project.root / "model_output" / n).read_bytes() for n in names}
    shared_hbm = read_hbm(project.root / "model_output" / "tiny.hbm").program

    shutil.rmtree(project.root / "model_output")
    monkeypatch.setattr(ptq, "stage_plan", lambda ctx, model: real(
        model, ptq.load_thresholds(ctx.input("calibrate", "thresholds.json")), ptq.QuantOptions.from_config(ctx.config)))
    for module in ("quantize", "report", "compile"):
        monkeypatch.setattr(f"engine.stages.{module}.stage_plan", ptq.stage_plan)
    run_ok(Engine(), cfg)
    assert {n: (project.root / "model_output" / n).read_bytes() for n in names} == shared
    assert read_hbm(project.root / "model_output" / "tiny.hbm").program == shared_hbm


def test_a_calibration_change_that_moves_no_threshold_neither_optimizes_nor_runs_the_models(project, monkeypatch,
                                                                                           tmp_path_factory):
    """A new calibration file whose values stay inside every `max` range (a copy of one already there)
    re-runs calibrate and every later stage (calibrate's own summary of the set changes), but the
    calibrated model and the `.bc` come out byte for byte as before: the optimized program is found by
    its key under the old quantize entry, the report's rows by their values' digests — and every
    artefact equals a cold engine's on the same files."""
    import engine.similarity as similarity

    samples = write_samples(project.root / "cal")
    cfg = project.config(CONFIG)
    engine = Engine()
    first = run_ok(engine, cfg)
    out = project.root / "model_output"
    before = {n: (out / n).read_bytes() for n in ("tiny_calibrated_model.onnx", "tiny_quantized_model.bc")}
    shutil.copy(samples[1], project.root / "cal" / "s09.npy")

    def optimized_again(program, level):
        raise AssertionError(f"{level} optimized again")

    runs = []
    real_run = similarity.run_model
    monkeypatch.setattr("engine.compile.package.optimize_program", optimized_again)
    monkeypatch.setattr(similarity, "run_model", lambda *a, **k: runs.append(1) or real_run(*a, **k))
    monkeypatch.setattr("engine.stages.report.quantized_values", lambda *a: (runs.append(2), ({}, {}))[1])
    again = run_ok(engine, cfg)
    monkeypatch.undo()
    assert again.ran == ["config", "calibrate", "ptq", "quantize", "report", "compile"], again.ran
    assert again.stage("quantize").key != first.stage("quantize").key  # a new entry: the memo is another owner's
    assert {n: (out / n).read_bytes() for n in before} == before
    assert runs == []  # neither the calibrated model nor the .bc ran: every row came from the memo
    assert len(memo(project, "optimized_program")) == 2  # linked under the new owner too
    warm = {n: (out / n).read_bytes() for n in ("tiny_node_info.csv", "tiny_quant_info.json")}
    warm_hbm = read_hbm(out / "tiny.hbm")

    cold = tmp_path_factory.mktemp("cold")
    for name in ("model.onnx", "config.yaml"):
        shutil.copy(project.root / name, cold / name)
    shutil.copytree(project.root / "cal", cold / "cal")
    run_ok(Engine(), cold / "config.yaml")
    assert {n: (cold / "model_output" / n).read_bytes() for n in warm} == warm
    cold_hbm = read_hbm(cold / "model_output" / "tiny.hbm")  # its metadata holds the other folder's config digest
    assert onnx.load_from_string(cold_hbm.program).graph == onnx.load_from_string(warm_hbm.program).graph
    assert cold_hbm.manifest["build"]["optimize"] == warm_hbm.manifest["build"]["optimize"]
