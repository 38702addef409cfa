"""Completion over stdio: keys, every enum, `;` lists, model names, paths — also in broken YAML."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from engine import schema
from hblsp import schema_view as sv
from tests.lsp.support import DATA, HbClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

GOOD = (DATA / "diagnostics" / "good.hb.yaml").read_text().split("# ----")[0]


async def complete(client: HbClient, uri: str, line: int, char: int) -> types.CompletionList:
    result = await client.text_document_completion_async(types.CompletionParams(
        types.TextDocumentIdentifier(uri), types.Position(line, char)))
    assert isinstance(result, types.CompletionList)
    return result


def labels(result: types.CompletionList) -> list[str]:
    return [i.label for i in sorted(result.items, key=lambda i: i.sort_text or i.label)]


def edit_of(result: types.CompletionList, label: str) -> types.TextEdit:
    item = next(i for i in result.items if i.label == label)
    assert isinstance(item.text_edit, types.TextEdit)
    return item.text_edit


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def doc(client: HbClient, workspace: Path) -> str:
    """The good config, open and checked once (so its model is read and warm)."""
    uri = client.open(workspace / "complete.hb.yaml", GOOD)
    await client.wait_diagnostics(uri, 1)
    for _ in range(400):  # the model read finishes in the background
        if any(i.label == "Conv_0" for i in (await complete_value(client, uri, "run_on_cpu")).items):
            break
        await asyncio.sleep(0.025)
    return uri


async def complete_value(client: HbClient, uri: str, key_line: str, section: str = "calibration_parameters"):
    """Put `  key_line: ` at the end of `section` and complete there (the text is restored after)."""
    lines = GOOD.splitlines()
    at = next(i for i, text in enumerate(lines) if text.startswith(section)) + 1
    new = lines[:at] + [f"  {key_line}: "] + lines[at:]
    client.replace(uri, "\n".join(new) + "\n")
    result = await complete(client, uri, at, len(new[at]))
    client.replace(uri, GOOD)
    return result


async def test_sections_come_with_their_required_keys(client: HbClient, workspace: Path):
    text = "model_parameters:\n  march: nash-e\n\n"
    uri = client.open(workspace / "sections.hb.yaml", text)
    result = await complete(client, uri, 2, 0)
    assert labels(result) == [s for s in schema.sections() if s != "model_parameters"]
    item = next(i for i in result.items if i.label == "input_parameters")
    assert item.insert_text_format == types.InsertTextFormat.Snippet
    assert item.text_edit.new_text == (
        "input_parameters:\n"
        "  input_type_train: ${1|rgb,bgr,yuv444,gray,featuremap|}\n"
        "  input_type_rt: ${2|nv12,yuv444,rgb,bgr,gray,featuremap|}")
    assert item.text_edit.range == types.Range(start=types.Position(2, 0), end=types.Position(2, 0))


async def test_section_keys_skip_present_ones_and_put_deprecated_last(client: HbClient, doc: str):
    lines = GOOD.splitlines()
    client.replace(doc, "\n".join(lines[:5] + ["  "] + lines[5:]) + "\n")
    result = await complete(client, doc, 5, 2)
    client.replace(doc, GOOD)
    got = labels(result)
    present = {"onnx_model", "march", "working_dir", "output_model_file_prefix"}
    assert set(got) == set(schema.keys("model_parameters")) - present
    deprecated = [k for k in schema.keys("model_parameters") if schema.is_deprecated("model_parameters", k)]
    assert deprecated and got[-len(deprecated):] == deprecated
    for item in result.items:
        assert (list(item.tags or []) == [types.CompletionItemTag.Deprecated]) == (item.label in deprecated)
    node_type = next(i for i in result.items if i.label == "remove_node_type")
    assert node_type.text_edit.new_text == (
        "remove_node_type: ${1|Quantize,Transpose,Dequantize,Cast,Reshape,Softmax|}")
    assert "Default" not in node_type.documentation.value and "Quantize" in node_type.documentation.value


async def test_partial_key_in_broken_yaml(client: HbClient, workspace: Path):
    """`  inp` has no colon: the document does not parse, completion still knows the section."""
    text = GOOD.replace("  input_shape: 1x3x8x8\n", "  inp\n")
    line = text.splitlines().index("  inp")
    uri = client.open(workspace / "partial.hb.yaml", text)
    result = await complete(client, uri, line, 5)
    assert "input_shape" in labels(result) and "input_name" not in labels(result)  # input_name is present
    assert edit_of(result, "input_shape").range == types.Range(start=types.Position(line, 2),
                                                               end=types.Position(line, 5))


ENUM_KEYS = [(s, k) for s, k, ks in schema.iter_keys() if sv.value_choices(ks) and "boolean" not in sv.types_of(ks)]


async def test_every_enum_key_is_covered():
    keys = {k for _, k in ENUM_KEYS}
    assert {"input_type_rt", "input_type_train", "input_layout_train", "norm_type", "march", "calibration_type",
            "compile_mode", "optimize_level", "cal_data_type", "debug_mode", "input_space_and_range"} <= keys


@pytest.mark.parametrize(("section", "key"), ENUM_KEYS, ids=[k for _, k in ENUM_KEYS])
async def test_enum_values(client: HbClient, workspace: Path, section: str, key: str):
    uri = client.open(workspace / f"enum_{key}.hb.yaml", f"{section}:\n  {key}: \n")
    result = await complete(client, uri, 1, len(key) + 4)
    public = schema.item_enum(section, key, hidden=False)
    assert labels(result) == public
    described = (schema.key_schema(section, key) or {}).get("x-hb-enum-descriptions") or {}
    for item in result.items:
        if item.label in described:
            assert item.documentation.value.startswith(described[item.label])
    client.close(uri)


async def test_march_values_say_what_board_they_are(client: HbClient, workspace: Path):
    uri = client.open(workspace / "march.hb.yaml", "model_parameters:\n  march: \n")
    result = await complete(client, uri, 1, 9)
    bayes_e = next(i for i in result.items if i.label == "bayes-e")
    assert "RDK X5" in bayes_e.documentation.value
    assert "- optimize_level: O0, O1, O2, O3\n- core_num: 1–1" in bayes_e.documentation.value


async def test_list_item_after_the_last_semicolon(client: HbClient, workspace: Path):
    uri = client.open(workspace / "list.hb.yaml", "input_parameters:\n  input_type_rt: 'nv12; rg'\n")
    result = await complete(client, uri, 1, 26)
    assert labels(result) == ["nv12", "yuv444", "rgb", "bgr", "gray", "featuremap"]
    assert edit_of(result, "rgb") == types.TextEdit(range=types.Range(start=types.Position(1, 24),
                                                                      end=types.Position(1, 26)), new_text="rgb")


async def test_input_type_rt_offers_what_each_inputs_train_type_converts_to(client: HbClient, workspace: Path):
    """Review s7 R-L 7: with input_type_train gray, five of the six offered values were then refused as an
    illegal conversion. Each item of the `;` list is narrowed by its own input's input_type_train."""
    text = "input_parameters:\n  input_type_train: 'gray; rgb; featuremap'\n  input_type_rt: 'x; y; z'\n"
    uri = client.open(workspace / "rt_by_train.hb.yaml", text)
    assert labels(await complete(client, uri, 2, 18)) == ["gray"]
    assert labels(await complete(client, uri, 2, 21)) == ["nv12", "yuv444", "rgb", "bgr"]
    assert labels(await complete(client, uri, 2, 24)) == ["featuremap"]


async def test_value_right_after_the_colon_gets_a_space(client: HbClient, workspace: Path):
    uri = client.open(workspace / "colon.hb.yaml", "compiler_parameters:\n  compile_mode:\n")
    result = await complete(client, uri, 1, 15)
    assert edit_of(result, "latency").new_text == " latency"


async def test_model_names(client: HbClient, doc: str):
    nodes = ["Conv_0", "BatchNormalization_1", "Relu_2", "GlobalAveragePool_3"]
    for key, section in (("run_on_cpu", "calibration_parameters"), ("run_on_bpu", "calibration_parameters"),
                         ("output_nodes", "model_parameters"), ("remove_node_name", "model_parameters")):
        result = await complete_value(client, doc, key, section)
        assert labels(result) == nodes, key
    conv = next(i for i in result.items if i.label == "Conv_0")
    assert conv.detail == "Conv → 1x4x8x8"
    inputs = await complete_value(client, doc, "input_name", "input_parameters")
    assert labels(inputs) == ["data"] and inputs.items[0].detail == "input 1x3x8x8 float32"


async def test_node_info_takes_node_names_as_keys_then_its_fields(client: HbClient, doc: str):
    lines = GOOD.splitlines()
    text = "\n".join(lines[:5] + ["  node_info:", "    "] + lines[5:]) + "\n"
    client.replace(doc, text)
    keys = await complete(client, doc, 6, 4)
    assert labels(keys) == ["Conv_0", "BatchNormalization_1", "Relu_2", "GlobalAveragePool_3"]
    assert edit_of(keys, "Relu_2").new_text == "Relu_2:\n      $0"
    client.replace(doc, text.replace("    \n", "    Relu_2:\n      \n", 1))
    fields = await complete(client, doc, 7, 6)
    assert labels(fields) == ["ON", "InputType", "OutputType"]
    client.replace(doc, text.replace("    \n", "    Relu_2:\n      ON: \n", 1))
    on = await complete(client, doc, 7, 10)
    client.replace(doc, GOOD)
    assert labels(on) == ["BPU", "CPU"]


async def test_input_source_takes_input_names(client: HbClient, doc: str):
    text = GOOD.replace("  optimize_level: O2\n", "  optimize_level: O2\n  input_source:\n    \n")
    client.replace(doc, text)
    keys = await complete(client, doc, 20, 4)
    client.replace(doc, text.replace("    \n", "    data: \n"))
    values = await complete(client, doc, 20, 10)
    client.replace(doc, GOOD)
    assert labels(keys) == ["data"] and labels(values) == ["pyramid", "resizer"]  # nv12: not from ddr


async def test_paths(client: HbClient, doc: str):
    models = await complete_value(client, doc, "onnx_model", "model_parameters")
    assert labels(models) == ["calib/", "calib2/", "models/", "bad.onnx", "dynamic.onnx", "model.onnx", "two.onnx"]
    assert edit_of(models, "models/").new_text == "models/"
    lines = GOOD.splitlines()
    client.replace(doc, "\n".join(lines[:1] + ["  onnx_model: models/"] + lines[2:]) + "\n")
    nested = await complete(client, doc, 1, 20)
    client.replace(doc, GOOD)
    assert labels(nested) == ["nested.onnx"] and edit_of(nested, "nested.onnx").new_text == "models/nested.onnx"
    folders = await complete_value(client, doc, "cal_data_dir")
    assert labels(folders) == ["calib/", "calib2/", "models/"]
    assert edit_of(folders, "calib/").new_text == "calib"  # a folder value: no trailing slash


async def test_nothing_in_comments(client: HbClient, workspace: Path):
    uri = client.open(workspace / "comment.hb.yaml", "# march: \nmodel_parameters:\n  march: nash-e  # \n")
    for line, char in ((0, 9), (2, 18)):
        assert await client.text_document_completion_async(types.CompletionParams(
            types.TextDocumentIdentifier(uri), types.Position(line, char))) is None


async def test_one_shared_edit_range_when_the_client_takes_item_defaults(tmp_path: Path):
    """Pure core: with `itemDefaults.editRange`, the range is sent once and items carry only text."""
    from hblsp.documents import ConfigDoc
    from hblsp.features.completion import Env, complete_at

    doc = ConfigDoc("file:///x/c.hb.yaml", 1, "compiler_parameters:\n  compile_mode: la\n", True, tmp_path)
    full = complete_at(doc, types.Position(1, 18), Env())
    shared = complete_at(doc, types.Position(1, 18), Env(edit_range_default=True))
    assert shared.item_defaults.edit_range == types.Range(start=types.Position(1, 16), end=types.Position(1, 18))
    assert [(i.text_edit, i.text_edit_text) for i in shared.items] == [(None, i.text_edit.new_text)
                                                                       for i in full.items]
    plain = complete_at(doc, types.Position(1, 18), Env(snippets=False))
    assert [i.text_edit.new_text for i in plain.items] == ["latency", "bandwidth", "balance"]


async def test_many_node_names_are_capped_and_filtered(tmp_path: Path):
    """Pure core: a 1200-node model offers `completionLimit` names (incomplete), narrowed by what is typed."""
    import onnx
    from onnx import TensorProto, helper

    from engine.frontend.model_info import model_info
    from hblsp.documents import ConfigDoc
    from hblsp.features.completion import Env, complete_at

    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"Relu_{i}") for i in range(1200)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("t1200", TensorProto.FLOAT, [1])])
    info = model_info(onnx.helper.make_model(graph))
    text = "calibration_parameters:\n  run_on_cpu: \nmodel_parameters:\n  node_info:\n    Relu_119\n"
    doc = ConfigDoc("file:///x/c.hb.yaml", 1, text, True, tmp_path)
    capped = complete_at(doc, types.Position(1, 14), Env(limit=100, model=info))
    assert capped.is_incomplete and len(capped.items) == 100
    keys = complete_at(doc, types.Position(4, 12), Env(limit=100, model=info))
    assert not keys.is_incomplete
    assert [i.label for i in keys.items] == ["Relu_119"] + [f"Relu_119{d}" for d in range(10)]
