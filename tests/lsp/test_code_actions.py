"""Code actions over stdio: the quick fixes offered for a problem, and that applying each one gives a
config the real CLI accepts (`hb_compile -c ... --until parse`: config checks, model read, inputs
resolved against the model)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from tests.lsp.support import DATA, HbClient, cli_accepts, fmt

pytestmark = pytest.mark.asyncio(loop_scope="module")

CORPUS = DATA / "diagnostics"
MARCHES_CLOSEST_FIRST = ["nash-p", "nash-m", "nash-h", "nash-e", "nash-b", "nash-b-plus", "nash-b-lite",
                         "nash-starry-p", "bayes-e", "bayes", "bernoulli2"]

# corpus file, code of the problem, titles offered (in order)
CASES = [
    ("missing_march", "missing-key", ["Add missing key: march: nash-e"]),
    ("missing_required_key", "missing-key", ["Add missing key: input_type_rt: nv12"]),
    ("two_inputs_no_names", "input-names-required", ["Add missing key: input_name: img; feat"]),
    ("missing_section", "missing-key", ["Add missing key: input_parameters"]),
    ("enum_input_type_rt", "invalid-enum", [f"Replace 'nv13' with '{v}'" for v in ("nv12", "yuv444", "rgb", "bgr")]),
    ("enum_march", "invalid-enum", [f"Replace 'nash-x' with '{v}'" for v in MARCHES_CLOSEST_FIRST]),
    ("enum_list_second_item", "invalid-enum", ["Replace 'NCWH' with 'NHWC'", "Replace 'NCWH' with 'NCHW'"]),
    ("input_name_unknown", "input-name-unknown", ["Replace 'image' with 'data'"]),
    ("march_optimize_level", "optimize-level-generation", [f"Replace 'O3' with '{v}'" for v in ("O0", "O1", "O2")]),
    ("unknown_key", "unknown-key", ["Rename 'marhc' to 'march'"]),
    ("unknown_section", "unknown-key", ["Rename 'compiler_parameter' to 'compiler_parameters'"]),
    ("deprecated_key", "deprecated-key", ["Rename deprecated 'set_node_data_type' to 'node_info'",
                                          "Remove deprecated 'set_node_data_type'"]),
    ("deprecated_norm_type", "deprecated-key", ["Remove deprecated 'norm_type'"]),
    ("layout_vs_shape", "input-layout-shape", ["Use NCHW in input_layout_train"]),
]


def apply(text: str, edits: list[types.TextEdit]) -> str:
    """Apply LSP edits to an ASCII text (positions are then plain columns)."""
    assert text.isascii()
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(p: types.Position) -> int:
        return starts[p.line] + p.character if p.line < len(lines) else len(text)

    for e in sorted(edits, key=lambda e: offset(e.range.start), reverse=True):
        text = text[:offset(e.range.start)] + e.new_text + text[offset(e.range.end):]
    return text


async def actions_for(client: HbClient, uri: str, d: types.Diagnostic) -> list[types.CodeAction]:
    result = await client.text_document_code_action_async(types.CodeActionParams(
        types.TextDocumentIdentifier(uri), d.range, types.CodeActionContext(diagnostics=[d])))
    return list(result or [])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def warm(client: HbClient, workspace: Path) -> None:
    for model in ("model.onnx", "two.onnx"):
        text = (CORPUS / "good.hb.yaml").read_text().replace("model.onnx", model).replace("input_name: data",
                                                                                          "input_name: x")
        uri = client.open(workspace / f"warm_{model}.hb.yaml", text)
        await client.wait_diagnostics(uri, 1, where=lambda ds: any(d.code == "input-name-unknown" for d in ds))


@pytest.mark.parametrize(("name", "code", "titles"), CASES, ids=[f"{n}-{c}" for n, c, _ in CASES])
async def test_fixes_are_offered_and_each_gives_a_config_the_cli_accepts(client: HbClient, workspace: Path, warm,
                                                                         name: str, code: str, titles: list[str]):
    text = (CORPUS / f"{name}.hb.yaml").read_text()
    uri = client.open(workspace / f"{name}_{code}.hb.yaml", text)
    diagnostics = await client.wait_diagnostics(uri, 1)
    target = next(d for d in diagnostics if d.code == code)
    actions = [a for a in await actions_for(client, uri, target) if target in (a.diagnostics or [])]
    assert [a.title for a in actions] == titles
    assert [a.is_preferred for a in actions] == [True] + [False] * (len(titles) - 1)
    assert all(a.kind == types.CodeActionKind.QuickFix for a in actions)
    for i, action in enumerate(actions):
        fixed = apply(text, list(action.edit.changes[uri]))
        path = workspace / f"{name}_{code}_{i}.yaml"
        path.write_text(fixed)
        status, out = await asyncio.to_thread(cli_accepts, path)
        assert status == 0, f"{action.title}:\n{fixed}\n{out[-2000:]}"
    client.close(uri)


async def test_edits_are_exact(client: HbClient, workspace: Path, warm):
    """The full edits of two fixes: a key added under its section, a deprecated line removed."""
    text = (CORPUS / "unknown_key.hb.yaml").read_text()
    uri = client.open(workspace / "exact.hb.yaml", text)
    missing, unknown = await client.wait_diagnostics(uri, 1)
    [add] = await actions_for(client, uri, missing)
    assert list(add.edit.changes[uri]) == [types.TextEdit(range=types.Range(start=types.Position(5, 0),
                                                                      end=types.Position(5, 0)),
                                                    new_text="  march: nash-e\n")]
    dep = (CORPUS / "deprecated_norm_type.hb.yaml").read_text()
    uri2 = client.open(workspace / "exact2.hb.yaml", dep)
    [d] = await client.wait_diagnostics(uri2, 1)
    [remove] = await actions_for(client, uri2, d)
    assert list(remove.edit.changes[uri2]) == [types.TextEdit(range=types.Range(start=types.Position(11, 0),
                                                                          end=types.Position(12, 0)), new_text="")]


async def test_same_fix_for_two_problems_is_offered_once(client: HbClient, workspace: Path, warm):
    """'nv13' is not a value (told once, not also as an illegal conversion from rgb): each replacement appears
    once, and none that rgb cannot be converted to."""
    uri = client.open(workspace / "twice.hb.yaml", (CORPUS / "enum_input_type_rt.hb.yaml").read_text())
    diagnostics = await client.wait_diagnostics(uri, 1)
    result = await client.text_document_code_action_async(types.CodeActionParams(
        types.TextDocumentIdentifier(uri), diagnostics[0].range, types.CodeActionContext(diagnostics=diagnostics)))
    assert [a.title for a in result] == [f"Replace 'nv13' with '{v}'" for v in ("nv12", "yuv444", "rgb", "bgr")]
    assert [sorted(d.code for d in a.diagnostics) for a in result] == [["invalid-enum"]] * 4


async def test_no_fix_when_none_would_work(client: HbClient, workspace: Path, warm):
    """1x3x7x8 is odd in either layout: switching the layout is not offered."""
    uri = client.open(workspace / "odd.hb.yaml", (CORPUS / "nv12_odd_size.hb.yaml").read_text())
    diagnostics = await client.wait_diagnostics(uri, 1)
    odd = next(d for d in diagnostics if d.code == "input-nv12-odd-size")
    assert await actions_for(client, uri, odd) == [], fmt(odd)


async def test_quoted_value_keeps_its_quotes(client: HbClient, workspace: Path, warm):
    text = (CORPUS / "good.hb.yaml").read_text().replace("march: nash-e", "march: 'nash-x'")
    uri = client.open(workspace / "quoted.hb.yaml", text)
    [d] = await client.wait_diagnostics(uri, 1)
    first = (await actions_for(client, uri, d))[0]
    assert apply(text, list(first.edit.changes[uri])).splitlines()[2] == "  march: 'nash-p'"


# ------------------------------------------------------------------ flow-style sections (pure core)

FLOW = ("model_parameters: {onnx_model: m.onnx, march: nash-e}\n"
        "input_parameters: {input_type_train: rgb, input_type_rt: nv12, input_shape: 1x3x8x8}\n"
        "calibration_parameters: {calibration_type: skip}\n")


def _core_actions(text: str, line: int) -> tuple[object, list[types.CodeAction]]:
    from hblsp.documents import ConfigDoc
    from hblsp.features.code_actions import actions_for as core_actions

    doc = ConfigDoc("file:///tmp/flow.hb.yaml", 1, text, True, Path("/tmp"), check_files=False)
    rng = types.Range(start=types.Position(line, 0), end=types.Position(line, 200))
    return doc, core_actions(doc, rng, None)


async def test_missing_key_in_a_flow_mapping_goes_inside_the_braces():
    """A block line after `{…}` does not parse; the key is added as `, key: value` before the `}`."""
    from engine.config.loader import load_config_text

    doc, actions = _core_actions(FLOW, 1)
    [add] = actions
    assert add.title == "Add missing key: input_layout_train: NCHW"
    assert list(add.edit.changes[doc.uri]) == [types.TextEdit(
        range=types.Range(start=types.Position(1, 83), end=types.Position(1, 83)),
        new_text=", input_layout_train: NCHW")]
    fixed = apply(FLOW, list(add.edit.changes[doc.uri]))
    assert fixed.splitlines()[1] == ("input_parameters: {input_type_train: rgb, input_type_rt: nv12, "
                                     "input_shape: 1x3x8x8, input_layout_train: NCHW}")
    assert load_config_text(fixed, Path("/tmp"), check_files=False).problems == []


async def test_missing_keys_in_an_empty_flow_mapping():
    from engine.config.loader import load_config_text

    text = FLOW.replace("input_parameters: {input_type_train: rgb, input_type_rt: nv12, input_shape: 1x3x8x8}",
                        "input_parameters: {input_type_train: rgb, input_shape: 1x3x8x8, }")
    doc, actions = _core_actions(text, 1)
    [add] = actions
    fixed = apply(text, list(add.edit.changes[doc.uri]))
    assert fixed.splitlines()[1].startswith("input_parameters: {input_type_train: rgb, input_shape: 1x3x8x8, "
                                            "input_type_rt: ")
    assert not [p for p in load_config_text(fixed, Path("/tmp"), check_files=False).problems if p.is_error]


async def test_a_candidate_that_breaks_the_yaml_is_never_offered():
    """Even when it is the only candidate (the 'revealed errors' intersection of one set is itself)."""
    from hblsp.features.code_actions import Candidate, Edit, Fixer

    doc, _ = _core_actions(FLOW, 1)
    fixer = Fixer(doc, None)
    [missing] = [p for p in fixer.analysis.problems if p.code == "missing-key"]
    at = FLOW.index("calibration_parameters")
    broken = Candidate("block line after a flow map", (Edit(at, at, "  input_layout_train: NCHW\n"),))
    good = Candidate("inside the braces", (Edit(FLOW.index("}\ncal"), FLOW.index("}\ncal"),
                                                ", input_layout_train: NCHW"),))
    assert fixer.verified(missing, [broken]) == []
    assert fixer.verified(missing, [broken, good]) == [good]


async def test_no_removal_offered_for_a_deprecated_key_hbcompile_still_applies():
    """input_layout_rt: NCHW on nash changes the .hbm input layout: removing it is not a harmless clean-up."""
    text = ("model_parameters:\n  onnx_model: m.onnx\n  march: nash-e\n"
            "input_parameters:\n  input_type_train: rgb\n  input_layout_train: NCHW\n  input_type_rt: rgb\n"
            "  input_layout_rt: NCHW\n  input_shape: 1x3x8x8\n"
            "calibration_parameters:\n  calibration_type: skip\n")
    _, in_use = _core_actions(text, 7)
    assert not [a for a in in_use if "Remove deprecated" in a.title]
    _, unused = _core_actions(text.replace("input_type_rt: rgb", "input_type_rt: nv12")
                              .replace("input_layout_rt: NCHW", "input_layout_rt: NHWC"), 7)
    assert [a.title for a in unused if "Remove deprecated" in a.title] == ["Remove deprecated 'input_layout_rt'"]
