"""Hover over stdio: keys (description, type, default, allowed values, deprecation), values, model names."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from engine import schema
from tests.lsp.support import DATA, HbClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = (DATA / "diagnostics" / "good.hb.yaml").read_text().split("# ----")[0].replace(
    "  calibration_type: max\n", "  calibration_type: max\n  run_on_cpu: Conv_0; Relu_2\n  preprocess_on: false\n")


async def hover(client: HbClient, uri: str, line: int, char: int) -> types.Hover | None:
    return await client.text_document_hover_async(types.HoverParams(types.TextDocumentIdentifier(uri),
                                                                    types.Position(line, char)))


def span(h: types.Hover) -> tuple[int, int, int]:
    return h.range.start.line, h.range.start.character, h.range.end.character


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def doc(client: HbClient, workspace: Path) -> str:
    uri = client.open(workspace / "hover.hb.yaml", TEXT)
    await client.wait_diagnostics(uri, 1)
    for _ in range(400):  # wait until the model is read (node hovers need it)
        h = await hover(client, uri, 16, 15)
        if h is not None and "Conv" in h.contents.value:
            break
        await asyncio.sleep(0.025)
    return uri


async def test_key_hover_has_description_type_default_and_values(client: HbClient, doc: str):
    h = await hover(client, doc, 9, 4)  # input_type_rt
    assert span(h) == (9, 2, 15)
    text = h.contents.value
    ks = schema.key_schema("input_parameters", "input_type_rt")
    assert text.startswith("**input_type_rt** — `input_parameters.input_type_rt` · string, `;` list, one item per input")
    assert ks["description"] in text
    assert f"- `nv12` — {ks['x-hb-enum-descriptions']['nv12']}" in text
    assert "yuv444_128" not in text  # hidden values are not advertised


async def test_default_and_deprecation(client: HbClient, doc: str):
    h = await hover(client, doc, 15, 4)  # calibration_type
    assert "Default: `default`" in h.contents.value and "- `kl` — " in h.contents.value
    dep = await hover(client, doc, 17, 5)  # preprocess_on
    assert "**Deprecated on hb_compile marches.** hb_compile ignores it; hbcompile still applies" in dep.contents.value
    assert "Default: `false`" in dep.contents.value


async def test_deprecation_follows_the_march_generation():
    """input_layout_rt is deprecated on hb_compile (nash) marches only: a bayes-e config gets no such note."""
    from hblsp.documents import ConfigDoc
    from hblsp.features.completion import Env, key_items
    from hblsp.features.hover import hover_at

    def doc(march: str) -> ConfigDoc:
        text = (f"model_parameters:\n  march: {march}\ninput_parameters:\n  input_layout_rt: NHWC\n  \n")
        return ConfigDoc("file:///tmp/g.hb.yaml", 1, text, True, Path("/tmp"), check_files=False)

    nash, bayes = doc("nash-e"), doc("bayes-e")
    assert "**Deprecated on hb_compile marches.**" in hover_at(nash, types.Position(3, 4), None).contents.value
    assert "Deprecated" not in hover_at(bayes, types.Position(3, 4), None).contents.value
    from hblsp.cursor import cursor_at

    def tags(d: ConfigDoc) -> dict[str, object]:
        items, _ = key_items(d, cursor_at(d.positions.lines, 4, 2), Env())
        return {i.label: i.tags for i in items}

    assert tags(nash)["norm_type"] == [types.CompletionItemTag.Deprecated]
    assert tags(bayes)["norm_type"] is None


async def test_section_hover(client: HbClient, doc: str):
    h = await hover(client, doc, 5, 3)
    assert span(h) == (5, 0, 16)
    assert h.contents.value == "**input_parameters** (section)\n\n" + schema.section_schema(
        "input_parameters")["description"]


async def test_value_hover_explains_the_value(client: HbClient, doc: str):
    h = await hover(client, doc, 9, 19)  # nv12
    ks = schema.key_schema("input_parameters", "input_type_rt")
    assert span(h) == (9, 17, 21)
    assert h.contents.value == f"**`nv12`** (input_type_rt): {ks['x-hb-enum-descriptions']['nv12']}"
    march = await hover(client, doc, 2, 11)
    assert "- optimize_level: O0, O1, O2" in march.contents.value


async def test_node_and_input_hover(client: HbClient, doc: str):
    relu = await hover(client, doc, 16, 23)  # Relu_2 in run_on_cpu: Conv_0; Relu_2
    assert span(relu) == (16, 22, 28)
    assert relu.contents.value == "**Relu_2** · `Relu`\n- input `bn_out`: 1x4x8x8\n- output `relu_out`: 1x4x8x8"
    data = await hover(client, doc, 6, 15)
    assert data.contents.value == "**data** · model input\n- shape: 1x3x8x8\n- type: float32"


async def test_unicode_line_positions_are_utf16(client: HbClient, workspace: Path):
    """'😀' is 2 UTF-16 units: the item `data` starts at unit 21 (code point 20)."""
    uri = client.open(workspace / "unicode.hb.yaml", "input_parameters:\n  input_name: '😀数据; data'  # 注释\n")
    h = await hover(client, uri, 1, 22)
    assert span(h) == (1, 21, 25) and h.contents.value.startswith("**input_name**")
    first = await hover(client, uri, 1, 16)
    assert span(first) == (1, 15, 19)
    assert await hover(client, uri, 1, 30) is None  # inside the comment


async def test_nothing_on_blank_lines_or_unknown_keys(client: HbClient, workspace: Path):
    uri = client.open(workspace / "blank.hb.yaml", "model_parameters:\n\n  whatever: 1\n")
    assert await hover(client, uri, 1, 0) is None
    assert await hover(client, uri, 2, 4) is None
