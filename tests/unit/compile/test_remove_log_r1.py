"""R1 m3: a removed boundary node is logged once, as hb_compile words it (reference §12.7:
``deleted nodes: NAME``) — the compile stage logged it a second time after `remove_nodes` had."""

from __future__ import annotations

from collections import Counter

from engine.pipeline import Engine
from tests.conftest import hb_records
from tests.pipeline.test_stage_cache import PLAIN

REMOVING = PLAIN.replace("  output_model_file_prefix: tiny\n",
                         "  output_model_file_prefix: tiny\n  remove_node_type: Dequantize\n")


def _deleted_lines(records) -> Counter:
    return Counter(r.getMessage() for r in records if r.getMessage().startswith("deleted nodes"))


def test_each_removed_node_is_logged_once_in_a_run_and_in_a_reused_run(project):
    cfg = project.config(REMOVING)
    engine = Engine()
    with hb_records() as records:
        report = engine.run(cfg)
    assert report.ok, [p.render() for p in report.problems]
    removed = report.stage("compile")
    assert removed.status == "ran"
    lines = _deleted_lines(records)
    assert lines and set(lines.values()) == {1}, lines
    assert all(line.startswith("deleted nodes: ") for line in lines)

    with hb_records() as records:  # the reused entry tells its lines again: still once each
        again = Engine().run(cfg)
    assert again.ok and again.stage("compile").status == "reused"
    assert _deleted_lines(records) == lines
