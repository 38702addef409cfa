"""Diagnostics over stdio: the corpus in data/diagnostics/, full values for key cases, edits, debounce.

Corpus files are real configs; each ends with `# expect:` lines (LSP range, severity, code, a
fragment of the message) and the published diagnostics must match them one to one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from tests.lsp.support import DATA, HbClient, big_model, expectations, fmt

pytestmark = pytest.mark.asyncio(loop_scope="module")

CORPUS = sorted((DATA / "diagnostics").glob("*.hb.yaml"))
WARM = {"model.onnx": "input-name-unknown", "two.onnx": "input-name-unknown",
        "dynamic.onnx": "input-name-unknown", "bad.onnx": "model-invalid"}


def config(model: str = "model.onnx", **replace: str) -> str:
    text = (DATA / "diagnostics" / "good.hb.yaml").read_text().split("# ----")[0]
    text = text.replace("onnx_model: model.onnx", f"onnx_model: {model}")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def warm(client: HbClient, workspace: Path) -> None:
    """Read every model once, so each corpus file gets its final diagnostics in one publish."""
    for model, code in WARM.items():
        uri = client.open(workspace / f"warm_{model}.hb.yaml", config(model, **{"input_name: data": "input_name: x"}))
        await client.wait_diagnostics(uri, 1, where=lambda ds, code=code: any(d.code == code for d in ds))
        client.close(uri)


async def test_corpus_size():
    broken = [p for p in CORPUS if expectations(p.read_text())]
    assert len(broken) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.name.split(".")[0] for p in CORPUS])
async def test_corpus(client: HbClient, workspace: Path, warm, path: Path):
    text = path.read_text()
    uri = client.open(workspace / path.name, text)
    got = await client.wait_diagnostics(uri, 1)
    client.close(uri)
    want = expectations(text)
    unmatched = [d for d in got if not any(e.matches(d) for e in want)]
    missing = [e for e in want if not any(e.matches(d) for d in got)]
    assert not unmatched and not missing and len(got) == len(want), "\n".join(
        ["got:"] + [fmt(d) for d in got] + ["want:"] + [str(e) for e in want])
    assert all(d.source == "hb_compile" for d in got)


def diag(rng: tuple[int, int, int, int], severity: int, code: str, message: str, **extra) -> types.Diagnostic:
    return types.Diagnostic(range=types.Range(start=types.Position(rng[0], rng[1]), end=types.Position(rng[2], rng[3])),
                            severity=types.DiagnosticSeverity(severity), code=code, source="hb_compile",
                            message=message, **extra)


def strip(ds: list[types.Diagnostic]) -> list[types.Diagnostic]:
    """Diagnostics without `data` (fix hints, checked in test_code_actions)."""
    return [types.Diagnostic(range=d.range, severity=d.severity, code=d.code, source=d.source, message=d.message,
                             tags=d.tags) for d in ds]


async def test_unknown_key_then_fixed_by_an_edit(client: HbClient, workspace: Path, warm):
    """Full diagnostics for a misspelt key; typing the fix (an incremental edit) clears them."""
    uri = client.open(workspace / "edit_key.hb.yaml", config(**{"  march: nash-e": "  marhc: nash-e"}))
    assert strip(await client.wait_diagnostics(uri, 1)) == [
        diag((0, 0, 0, 16), 1, "missing-key", "Key 'model_parameters' error: Missing keys: 'march'"),
        diag((2, 2, 2, 7), 1, "unknown-key", "Wrong key 'marhc' in model_parameters, did you mean 'march'?"),
    ]
    version = client.edit(uri, (2, 5), (2, 7), "ch")  # marhc -> march
    assert await client.wait_diagnostics(uri, version) == []


async def test_enum_item_then_fixed(client: HbClient, workspace: Path, warm):
    uri = client.open(workspace / "edit_enum.hb.yaml", config(**{"input_type_rt: nv12": "input_type_rt: nv13"}))
    got = await client.wait_diagnostics(uri, 1)
    assert strip(got) == [
        diag((9, 17, 9, 21), 1, "invalid-enum", "The specified input_type_rt is invalid, the input_type_rt: 'nv13' "
             "can only be specified as values in ['nv12', 'yuv444', 'rgb', 'bgr', 'gray', 'featuremap']"),
    ]  # one error per token: 'nv13' is not also told as an illegal conversion from rgb
    assert got[0].data["hints"]["allowed"][0] == "nv12"  # closest first, for the quick fix
    version = client.edit(uri, (9, 20), (9, 21), "2")
    assert await client.wait_diagnostics(uri, version) == []


async def test_model_aware_input_name_then_fixed(client: HbClient, workspace: Path, warm):
    uri = client.open(workspace / "edit_input.hb.yaml", config(**{"input_name: data": "input_name: image"}))
    assert strip(await client.wait_diagnostics(uri, 1)) == [
        diag((6, 14, 6, 19), 1, "input-name-unknown",
             "The input_name 'image' is not an input of the model; the model's inputs are ['data']")]
    version = client.edit(uri, (6, 14), (6, 19), "data")
    assert await client.wait_diagnostics(uri, version) == []
    version = client.edit(uri, (10, 15), (10, 22), "1x3x7x8")  # odd H for nv12, and not the model's shape
    assert strip(await client.wait_diagnostics(uri, version)) == [
        diag((10, 15, 10, 22), 1, "input-nv12-odd-size",
             "The input shape: 1x3x7x8 is invalid, nv12 type does not support odd number input size"),
        diag((10, 15, 10, 22), 2, "input-shape-differs",
             "input_shape 1x3x7x8 of input 'data' differs from the model's [1, 3, 8, 8]; the given shape is used"),
    ]


async def test_deprecated_key_is_a_tagged_warning_naming_its_replacement(client: HbClient, workspace: Path, warm):
    uri = client.open(workspace / "deprecated.hb.yaml", config(**{
        "  output_model_file_prefix: tiny": "  output_model_file_prefix: tiny\n  set_node_data_type: Conv_0:int16"}))
    [d] = await client.wait_diagnostics(uri, 1)
    assert (fmt(d), list(d.tags)) == ("5:2-5:20 warning deprecated-key: Please note that the parameter "
                                "'set_node_data_type' has been deprecated. Specifying this parameter will have no "
                                "effect (use 'model_parameters.node_info' instead)", [types.DiagnosticTag.Deprecated])
    assert d.data["hints"]["replacement"] == "model_parameters.node_info"


async def test_burst_of_edits_is_checked_once_for_the_last_version(client: HbClient, workspace: Path, warm):
    """Debounce: five quick edits publish once, for the final version; earlier versions never appear."""
    uri = client.open(workspace / "burst.hb.yaml", config())
    assert await client.wait_diagnostics(uri, 1) == []
    versions = [client.edit(uri, (2, 9), (2, 15), march) for march in ("nash-a", "nash-b", "nash-c", "nash-d",
                                                                         "nash-x")]
    got = await client.wait_diagnostics(uri, versions[-1])
    assert [d.code for d in got] == ["invalid-enum"] and "'nash-x'" in got[0].message
    await asyncio.sleep(0.3)  # longer than the debounce: nothing else may arrive
    after_open = [p.version for p in client.published[uri]][1:]
    assert after_open[-1] == versions[-1]
    assert len(after_open) <= 2  # one check for the burst (two if this machine stalled 150 ms mid-burst)


async def test_closing_clears_and_reopening_checks_again(client: HbClient, workspace: Path, warm):
    uri = client.open(workspace / "reopen.hb.yaml", config(**{"march: nash-e": "march: nash-x"}))
    assert len(await client.wait_diagnostics(uri, 1)) == 1
    client.close(uri)
    for _ in range(200):
        if not client.published[uri][-1].diagnostics:
            break
        await asyncio.sleep(0.01)
    assert list(client.published[uri][-1].diagnostics) == []
    client.published[uri].clear()
    client.open(workspace / "reopen.hb.yaml", config(**{"march: nash-e": "march: nash-y"}))
    [d] = await client.wait_diagnostics(uri, 1)
    assert "'nash-y'" in d.message


async def test_other_yaml_gets_nothing_and_a_modeline_opts_in(client: HbClient, workspace: Path, warm):
    k8s = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers: []\n"
    other = client.open(workspace / "deployment.yaml", k8s)
    modeline = client.open(workspace / "settings.yaml", "# hb_compile config\n" + config(**{"nash-e": "nash-x"}))
    got = await client.wait_diagnostics(modeline, 1)
    assert [d.code for d in got] == ["invalid-enum"] and got[0].range.start.line == 3
    assert other not in client.published  # checked before the modeline file, published nothing
    completion = await client.text_document_completion_async(types.CompletionParams(
        types.TextDocumentIdentifier(other), types.Position(1, 6)))
    hover = await client.text_document_hover_async(types.HoverParams(
        types.TextDocumentIdentifier(other), types.Position(0, 2)))
    assert completion is None and hover is None


async def test_model_read_never_blocks_the_config_checks(client: HbClient, workspace: Path, warm, tmp_path: Path):
    """A big model: the config's own problems come first, hover answers, the model's come after."""
    big = big_model(tmp_path / "big.onnx", 96)
    text = config(str(big), **{"march: nash-e": "march: nash-x", "input_name: data": "input_name: image"})
    uri = client.open(workspace / "big.hb.yaml", text)
    first = await client.wait_diagnostics(uri, 1)
    assert [d.code for d in first] == ["invalid-enum"]  # schema problem, model still being read
    hover = await client.text_document_hover_async(types.HoverParams(types.TextDocumentIdentifier(uri),
                                                                     types.Position(2, 4)))
    assert hover is not None and "march" in hover.contents.value
    assert len(client.published[uri]) == 1  # answered while the model was still being read
    final = await client.wait_diagnostics(uri, 1, where=lambda ds: len(ds) > 1, timeout=60)
    assert sorted(d.code for d in final) == ["input-name-unknown", "invalid-enum"]
