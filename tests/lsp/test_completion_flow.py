"""Completion in flow collections and node_info's string form (review R1 #5), and only the values
the config checks accept (R1 m10: optimize_level by march, input_source by the input's rt type),
driven over stdio like test_completion.

`|` in a case marks the cursor; the text around it is the config of `tests/conftest.py`
(model.onnx: Conv_0 → BatchNormalization_1 → Relu_2 → GlobalAveragePool_3, input `data`, nv12).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from hblsp.cursor import cursor_at
from tests.conftest import GOOD_CONFIG
from tests.lsp.support import HbClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODES = ["Conv_0", "BatchNormalization_1", "Relu_2", "GlobalAveragePool_3"]
BASE = GOOD_CONFIG.replace("  march: nash-e\n", "  march: nash-e\n  <here>\n")


def with_cursor(text: str) -> tuple[str, int, int]:
    """The text without its `|`, and the cursor's line and column."""
    at = text.index("|")
    before = text[:at]
    return text.replace("|", "", 1), before.count("\n"), at - (before.rfind("\n") + 1)


async def complete_in(client: HbClient, uri: str, text: str) -> types.CompletionList:
    clean, line, col = with_cursor(text)
    client.replace(uri, clean)
    result = await client.text_document_completion_async(types.CompletionParams(
        types.TextDocumentIdentifier(uri), types.Position(line, col)))
    assert isinstance(result, types.CompletionList), text
    return result


def labels(result: types.CompletionList) -> list[str]:
    return [i.label for i in sorted(result.items, key=lambda i: i.sort_text or i.label)]


def edit(result: types.CompletionList, label: str) -> tuple[str, int, int]:
    item = next(i for i in result.items if i.label == label)
    return item.text_edit.new_text, item.text_edit.range.start.character, item.text_edit.range.end.character


def node_line(value: str) -> str:
    return BASE.replace("<here>", f"node_info: {value}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def doc(client: HbClient, workspace: Path) -> str:
    """One open config whose model has been read (node names come from it)."""
    uri = client.open(workspace / "flow.hb.yaml", GOOD_CONFIG)
    await client.wait_diagnostics(uri, 1)
    for _ in range(400):  # the model read finishes in the background
        if "Conv_0" in labels(await complete_in(client, uri, node_line("{|}"))):
            break
        await asyncio.sleep(0.025)
    return uri


async def test_node_name_keys_in_a_flow_mapping(client: HbClient, doc: str):
    """`node_info: {Co|: {ON: BPU}}`: the names narrowed by what is typed, replacing the typed key only."""
    result = await complete_in(client, doc, node_line("{Co|: {ON: BPU}}"))
    assert labels(result) == ["Conv_0"]
    assert edit(result, "Conv_0") == ("Conv_0", 14, 16)  # a colon follows: the name alone
    fresh = await complete_in(client, doc, node_line("{Relu_2: {ON: BPU}, |}"))
    assert labels(fresh) == ["Conv_0", "BatchNormalization_1", "GlobalAveragePool_3"]  # Relu_2 is there
    assert edit(fresh, "Conv_0") == ("Conv_0: {$0}", 33, 33)  # a node's settings open on the same line


async def test_node_fields_and_their_values_in_nested_flow(client: HbClient, doc: str):
    fields = await complete_in(client, doc, node_line("{Relu_2: {|}}"))
    assert labels(fields) == ["ON", "InputType", "OutputType"]
    assert edit(fields, "ON") == ("ON: ${1|BPU,CPU|}", 23, 23)
    rest = await complete_in(client, doc, node_line("{Relu_2: {ON: CPU, |}}"))
    assert labels(rest) == ["InputType", "OutputType"]
    on = await complete_in(client, doc, node_line("{Relu_2: {ON: |}}"))
    assert labels(on) == ["BPU", "CPU"] and edit(on, "CPU") == ("CPU", 27, 27)
    typed = await complete_in(client, doc, node_line("{Relu_2: {ON: C|}}"))
    assert edit(typed, "CPU") == ("CPU", 27, 28)
    output = await complete_in(client, doc, node_line("{Relu_2: {ON: BPU, OutputType: |}}"))
    assert labels(output) == ["int8", "int16"]


async def test_flow_mapping_across_lines(client: HbClient, doc: str):
    text = BASE.replace("<here>", "node_info: {\n    Relu_2: {ON: CPU},\n    |\n  }")
    keys = await complete_in(client, doc, text)
    assert labels(keys) == ["Conv_0", "BatchNormalization_1", "GlobalAveragePool_3"]
    values = await complete_in(client, doc, text.replace("    |\n", "    Conv_0: {InputType: |},\n"))
    assert labels(values) == ["int8", "int16"]


async def test_node_info_string_form(client: HbClient, doc: str):
    """`'Relu_2:int16; |'`: node names (those already set last), `name:` inserted; after it the types."""
    names = await complete_in(client, doc, node_line("'Relu_2:int16; |'"))
    assert labels(names) == ["Conv_0", "BatchNormalization_1", "GlobalAveragePool_3", "Relu_2"]
    assert edit(names, "Conv_0") == ("Conv_0:", 28, 28)
    first = await complete_in(client, doc, node_line("'Rel|:int16'"))
    assert labels(first) == ["Relu_2"] and edit(first, "Relu_2") == ("Relu_2", 14, 17)
    dtypes = await complete_in(client, doc, node_line("'Relu_2:int16; Conv_0:|'"))
    assert labels(dtypes) == ["int8", "int16"] and edit(dtypes, "int16") == ("int16", 35, 35)
    plain = await complete_in(client, doc, node_line("Relu_2:in|"))
    assert labels(plain) == ["int8", "int16"] and edit(plain, "int8") == ("int8", 20, 22)


async def test_flow_forms_offer_what_block_forms_offer(client: HbClient, doc: str):
    """input_source's input names and sources, and a section written as a flow mapping."""
    block = BASE.replace("  <here>\n", "").replace("  optimize_level: O2\n", "  optimize_level: O2\n  input_source:\n")
    block_keys = await complete_in(client, doc, block.replace("input_source:\n", "input_source:\n    |\n"))
    flow_keys = await complete_in(client, doc, block.replace("input_source:\n", "input_source: {|}\n"))
    assert labels(flow_keys) == labels(block_keys) == ["data"]
    block_values = await complete_in(client, doc, block.replace("input_source:\n", "input_source:\n    data: |\n"))
    flow_values = await complete_in(client, doc, block.replace("input_source:\n", "input_source: {data: |}\n"))
    assert labels(flow_values) == labels(block_values) and labels(flow_values)
    section = BASE.replace("  <here>\n", "").replace("compiler_parameters:\n  compile_mode: latency\n  optimize_level: O2",
                                                   "compiler_parameters: {compile_mode: |}")
    assert labels(await complete_in(client, doc, section)) == ["latency", "bandwidth", "balance"]
    keys = await complete_in(client, doc, section.replace("{compile_mode: |}", "{compile_mode: latency, |}"))
    assert "optimize_level" in labels(keys) and "compile_mode" not in labels(keys)


async def test_nothing_inside_a_list_for_a_string_key(client: HbClient, doc: str):
    """`run_on_cpu: [|]`: the schema takes a `;` string there (a list is a type error), so no node names."""
    text = BASE.replace("  <here>\n", "").replace("  calibration_type: max", "  calibration_type: max\n  run_on_cpu: [|]")
    assert not (await complete_in(client, doc, text)).items
    string = await complete_in(client, doc, text.replace("[|]", "'Conv_0; |'"))
    assert labels(string) == ["BatchNormalization_1", "Relu_2", "GlobalAveragePool_3", "Conv_0"]


async def test_block_form_is_unchanged_after_a_closed_flow(client: HbClient, doc: str):
    """A closed flow mapping above the cursor does not capture it: the block keys are offered."""
    text = BASE.replace("<here>", "node_info: {Relu_2: {ON: CPU}}\n  out|")
    result = await complete_in(client, doc, text)
    assert "output_nodes" in labels(result) and "node_info" not in labels(result)  # node_info is there
    assert edit(result, "output_nodes") == ("output_nodes: $1", 2, 5)


async def test_optimize_level_offers_the_march_levels(client: HbClient, doc: str):
    """nash-* takes O0–O2 (O3 is warned about and replaced by O2); bayes-e takes O0–O3 (x-hb-marches)."""
    text = BASE.replace("  <here>\n", "").replace("  optimize_level: O2", "  optimize_level: |")
    assert labels(await complete_in(client, doc, text)) == ["O0", "O1", "O2"]
    flow = text.replace("compiler_parameters:\n  compile_mode: latency\n  optimize_level: |",
                        "compiler_parameters: {optimize_level: |}")
    assert labels(await complete_in(client, doc, flow)) == ["O0", "O1", "O2"]
    bayes = text.replace("march: nash-e", "march: bayes-e")
    assert labels(await complete_in(client, doc, bayes)) == ["O0", "O1", "O2", "O3"]
    key = text.replace("  optimize_level: |", "  optimize|")
    assert edit(await complete_in(client, doc, key), "optimize_level")[0] == "optimize_level: ${1|O0,O1,O2|}"


async def test_hover_reads_the_same_flow_context(client: HbClient, doc: str):
    """Hover shares the cursor: a node name key, an inner key and a value of a flow mapping are explained."""
    text = node_line("{Relu_2: {ON: CPU}}")
    client.replace(doc, text)
    line = text.splitlines().index("  node_info: {Relu_2: {ON: CPU}}")

    async def hover(col: int) -> types.Hover:
        got = await client.text_document_hover_async(types.HoverParams(types.TextDocumentIdentifier(doc),
                                                                       types.Position(line, col)))
        assert got is not None, col
        return got

    node, key, value = await hover(16), await hover(24), await hover(28)
    assert "Relu" in node.contents.value and (node.range.start.character, node.range.end.character) == (14, 20)
    assert key.contents.value.startswith("**ON** — `model_parameters.node_info.Relu_2.ON`")
    assert value.contents.value == "**`CPU`** (ON): Run this node on the CPU in float."
    assert (value.range.start.character, value.range.end.character) == (27, 30)


async def test_input_source_offers_the_sources_of_the_input_type(client: HbClient, workspace: Path):
    """two.onnx: `img` nv12 (pyramid, resizer), `feat` featuremap (ddr only), as the input_source check
    pairs input_name with input_type_rt; without input_name, by the model's input order."""
    text = GOOD_CONFIG.replace("model.onnx", "two.onnx").replace("input_name: data", "input_name: 'img; feat'") \
        .replace("input_type_rt: nv12", "input_type_rt: 'nv12; featuremap'") \
        .replace("  optimize_level: O2\n", "  optimize_level: O2\n  input_source: {img: |}\n")
    uri = client.open(workspace / "two_sources.hb.yaml", text.replace("|", ""))
    await client.wait_diagnostics(uri, 1)
    assert labels(await complete_in(client, uri, text)) == ["pyramid", "resizer"]
    assert labels(await complete_in(client, uri, text.replace("{img: |}", "{feat: |}"))) == ["ddr"]
    block = text.replace("{img: |}", "\n    feat: |")
    assert labels(await complete_in(client, uri, block)) == ["ddr"]
    for _ in range(400):  # without input_name the model's input order pairs them (once the model is read)
        unnamed = await complete_in(client, uri, block.replace("  input_name: 'img; feat'\n", ""))
        if labels(unnamed) == ["ddr"]:
            break
        await asyncio.sleep(0.025)
    assert labels(unnamed) == ["ddr"]
    keys = await complete_in(client, uri, text.replace("{img: |}", "{|}"))  # the model's input names
    assert edit(keys, "img")[0] == "img: ${1|pyramid,resizer|}" and edit(keys, "feat")[0] == "feat: ${1|ddr|}"
    client.close(uri)


@pytest.mark.parametrize(("text", "path", "in_value", "key"), [
    ("a:\n  node_info: {x: {ON: |}}\n", ("a", "node_info", "x", "ON"), True, "ON"),
    ("a:\n  node_info: {x: {O|N: CPU}}\n", ("a", "node_info", "x"), False, "ON"),
    ("a: {b: [c, |]}\n", ("a", "b"), True, "b"),
    ("a: {b: [c, {d: |}]}\n", ("a", "b", "d"), True, "d"),
    ("a:\n  b: {c: 'un|\n  d: 1\n", ("a", "b", "c"), True, "c"),  # an unclosed quote: the tokens before it
    ("a:\n  b: {c: 1}\n  |\n", ("a",), False, ""),
    ("a:\n  b|: {c: 1}\n", ("a",), False, "b"),
])
async def test_cursor_in_flow(text: str, path: tuple[str, ...], in_value: bool, key: str):
    clean, line, col = with_cursor(text)
    cur = cursor_at(clean.splitlines(), line, col)
    assert (cur.path, cur.in_value, cur.key) == (path, in_value, key)
