"""The sensitivity section of `{prefix}.html`: culprits worst first beside the similarity table,
isolated against accumulated loss, mixed precision's moves marked; drawn in real Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from engine.compile.perf_html import GREY, RED, render, sensitivity_section
from engine.report.culprits import load_culprits
from tests.unit.report.sens_support import BROKEN, compiled_chain


@pytest.fixture(scope="module")
def page_parts(tmp_path_factory):
    """The real chain run's perf json, similarity rows and calibrate's ranking (mixed precision moved
    the broken node to int16)."""
    report, _, entry = compiled_chain(tmp_path_factory.mktemp("chain"))
    perf = json.loads((report.config.working_dir / "chain.json").read_text())
    rows = report.results["report"]
    return perf, rows["nodes"], rows["outputs"], load_culprits(entry)


def _section(page: str) -> str:
    return page[page.index('<h2 id="sensitivity">'):].split("<h2", 2)[1]


def test_section_ranks_the_broken_node_first_beside_the_similarity_table(page_parts):
    perf, nodes, outputs, culprits = page_parts
    page = render(perf, nodes, outputs, culprits)
    assert page.index("<h2>Similarity</h2>") < page.index('<h2 id="sensitivity">Sensitivity</h2>') \
        < page.index("<h2>March profile")
    section = _section(page)
    table_rows = re.findall(r"<tr( class=\"\w+\")?><td class=\"n\">(\d+)</td><td>([^<]+)</td>", section)
    assert [(r[1], r[2]) for r in table_rows[:2]] == [("1", BROKEN), ("2", "conv_c+relu_c")]
    assert table_rows[0][0] == ' class="moved"' and table_rows[1][0] == ""  # the moved row is marked
    labels = re.findall(r'text-anchor="end">([^<]+)<title>', section)
    assert labels[0] == f"1. {BROKEN} → int16" and labels[1] == "2. conv_c+relu_c" and len(labels) == 5
    # isolated loss (activation red + weight orange, stacked) and accumulated loss (grey) on their own
    # scales: the broken node's activation bar is the longest red one, conv_c's grey bar the longest grey
    bars = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)" height="[\d.]+" fill="(#\w+)"><title>([^<]+)',
                      section)
    red = {t.split(" — ")[0]: float(w) for w, fill, t in bars if fill == RED}
    grey = {t.split(" — ")[0]: float(w) for w, fill, t in bars if fill == GREY}
    assert max(red, key=red.get) == f"1. {BROKEN} → int16" and red[f"1. {BROKEN} → int16"] == pytest.approx(340)
    assert max(grey, key=grey.get) == "2. conv_c+relu_c" and len(red) == len(grey) == len(culprits.rows)
    assert "moved <b" in section and "1 row</b> (1 to int16): green in the table." in section
    assert re.search(r"every node int8: output cosine 0\.4\d+ on 1 calibration sample; mixed precision, on its "
                     r"evaluation samples: 0\.[0-6]\d+ -&gt; 0\.999", section)


def test_no_ranking_no_section(page_parts):
    perf, nodes, outputs, culprits = page_parts
    assert 'id="sensitivity"' not in render(perf, nodes, outputs)
    empty = type(culprits)([], 1.0, 1, 0)
    assert "No quantized node to rank" in sensitivity_section(empty)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _red_pixels(html: str, tmp_path, name: str) -> int:
    from PIL import Image

    path, png = tmp_path / f"{name}.html", tmp_path / f"{name}.png"
    path.write_text(html)
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--screenshot={png}", "--window-size=1200,6000", f"file://{path}"],
                          capture_output=True, text=True, timeout=120)
    assert png.exists(), proc.stderr[-2000:]
    assert not [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(np.all(np.abs(pixels - [0xD1, 0x49, 0x5B]) < 12, axis=2).sum())


@pytest.mark.skipif(_chromium() is None, reason="chromium is not on PATH (Debian: apt-get install -y chromium)")
def test_section_draws_in_chromium(page_parts, tmp_path):
    perf, nodes, outputs, culprits = page_parts
    without = _red_pixels(render(perf, nodes, outputs), tmp_path, "without")
    with_section = _red_pixels(render(perf, nodes, outputs, culprits), tmp_path, "with")
    # the broken node's activation bar spans the isolated chart's plot (340 × 12 px): measured 4,180
    # red pixels, none without the section
    assert with_section - without > 3000, (with_section, without)
