"""calibrate's sensitivity ranking reaches the artefacts users open: `{prefix}.html`'s sensitivity
section and `{prefix}_quant_info.json`, with the broken node first and mixed precision's move."""

from __future__ import annotations

import json
import re

from engine.pipeline import Engine
from tests.unit.report.sens_support import BROKEN, write_chain_project


def test_html_and_quant_info_carry_calibrates_ranking(tmp_path):
    report = Engine().run(write_chain_project(tmp_path, target=0.999))
    assert report.ok, [p.render() for p in report.problems]
    wd = report.config.working_dir
    page = (wd / "chain.html").read_text()
    start = page.index('<h2 id="sensitivity">')
    first = re.search(r'<tr class="moved"><td class="n">1</td><td>([^<]+)</td>', page[start:])
    assert first and first.group(1) == BROKEN and page.index("<h2>Similarity</h2>") < start
    info = json.loads((wd / "chain_quant_info.json").read_text())
    ranking = info["hbcompile_sensitivity"]["ranking"]
    assert ranking[0]["node"] == BROKEN and ranking[0]["mixed_precision"] == "int16"
    assert info[BROKEN]["sensitivity"]["rank"] == 1


def test_no_ranking_no_section(tmp_path):
    report = Engine().run(write_chain_project(tmp_path, target=0.0, sensitivity=0))
    assert report.ok
    wd = report.config.working_dir
    assert 'id="sensitivity"' not in (wd / "chain.html").read_text()
    assert "hbcompile_sensitivity" not in json.loads((wd / "chain_quant_info.json").read_text())
