"""working_dir holds one run's artefacts: a file the new run does not produce is removed, not left
beside the new ones (an old removed-node `.bc` next to a new `.hbm` misleads)."""

from __future__ import annotations

import pytest

from engine.pipeline import Engine
from tests.pipeline.test_stage_cache import PLAIN


def test_an_artefact_the_new_run_does_not_make_is_removed(project):
    project.model()
    removing = PLAIN.replace("  output_model_file_prefix: tiny\n",
                             "  output_model_file_prefix: tiny\n  remove_node_type: Dequantize\n")
    cfg = project.config(removing)
    first = Engine().run(cfg)
    assert first.ok, [p.render() for p in first.problems]
    assert "tiny_quantized_removed_model.bc" in project.artefacts()

    project.config(PLAIN)
    second = Engine().run(cfg)
    assert second.ok and second.stage("compile").status == "ran"
    names = project.artefacts()
    assert "tiny_quantized_removed_model.bc" not in names
    assert {"tiny.hbm", "tiny_quantized_model.bc", "tiny_advice.json"} <= set(names)

    project.config(removing)  # back: the reused entry publishes it again
    third = Engine().run(cfg)
    assert third.ok and third.stage("compile").status == "reused"
    assert "tiny_quantized_removed_model.bc" in project.artefacts()


def test_artefacts_of_stages_a_run_stops_before_are_removed(project):
    """`hb_compile --skip compile` after a full run: the old `.hbm` / perf report are not this config's
    model, so they leave working_dir; the next full run publishes them again."""
    project.model()
    cfg = project.config(PLAIN)
    assert Engine().run(cfg).ok
    assert {"tiny.hbm", "tiny.json", "tiny.html"} <= set(project.artefacts())

    skipped = Engine().run(cfg, until="report")
    assert skipped.ok
    names = set(project.artefacts())
    assert "tiny_quantized_model.bc" in names
    assert not {"tiny.hbm", "tiny.json", "tiny.html", "tiny_advice.json"} & names

    again = Engine().run(cfg)
    assert again.ok and again.stage("compile").status == "reused"
    assert {"tiny.hbm", "tiny.json", "tiny.html"} <= set(project.artefacts())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_artefacts_get_the_mode_the_umask_gives(project, umask):
    """Artefacts are written through temp files (mkstemp: 0600) and renamed into place; they must end
    up with the mode a plain open() gives, so another user or a server can read the .hbm."""
    import os
    import stat

    project.model()
    from engine.pipeline.engine import replace_folder

    cfg = project.config(PLAIN)
    folder = project.root / "entry" / "calibration_data"  # a folder artefact, as dump_calibration_data makes
    folder.mkdir(parents=True)
    (folder / "0.npy").write_bytes(b"x")
    old = os.umask(umask)
    try:
        report = Engine().run(cfg)
        replace_folder(folder, project.root / "model_output" / "calibration_data")
    finally:
        os.umask(old)
    assert report.ok, [p.render() for p in report.problems]
    wd = project.root / "model_output"
    files = [wd / n for n in ("tiny.hbm", "tiny_quantized_model.bc", "tiny_node_info.csv", "tiny.html",
                              "tiny_quant_info.json", "tiny_calibrated_model.onnx")]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o666 & ~umask)}
    dumped = wd / "calibration_data"
    assert stat.S_IMODE(dumped.stat().st_mode) == 0o777 & ~umask


def test_a_warm_engine_still_notices_a_working_dir_that_went_away(project):
    """The write probe runs once per engine and working_dir; later runs ask os.access, so a
    working_dir deleted (recreated) or replaced by a file between runs is still handled."""
    import shutil

    project.model()
    cfg = project.config(PLAIN)
    engine = Engine()
    assert engine.run(cfg).ok
    wd = project.root / "model_output"
    shutil.rmtree(wd)
    assert engine.run(cfg).ok and (wd / "tiny.hbm").is_file()  # deleted: made again
    shutil.rmtree(wd)
    wd.write_text("not a folder")
    blocked = engine.run(cfg)
    assert not blocked.ok
    assert any("Cannot write into working_dir" in p.message for p in blocked.problems)

