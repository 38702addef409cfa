"""Values of the wrong YAML type get their type error only (review §3, r03): the model-aware rules
must not read a value the schema refused (a `[1, 3, 8, 8]` list as four one-number shapes, a
mapping's Python repr as an input name), nor ask for a key that is there with the wrong type. The
CLI stops at the schema error; hblsp keeps the model's checks of the other keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from tests.lsp.support import HbClient, fmt
from tests.lsp.test_diagnostics import config

pytestmark = pytest.mark.asyncio(loop_scope="module")

WRONG_TYPE = "wrong-type"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def warm(client: HbClient, workspace: Path) -> None:
    """Each model read once, so a config opened later gets its model-aware diagnostics in its first publish."""
    for model in ("model.onnx", "two.onnx", "dynamic.onnx"):
        uri = client.open(workspace / f"warm_{model}.hb.yaml", config(model, **{"input_name: data": "input_name: x"}))
        await client.wait_diagnostics(uri, 1, where=lambda ds: any(d.code == "input-name-unknown" for d in ds))
        client.close(uri)


async def diagnostics(client: HbClient, workspace: Path, name: str, text: str) -> list[types.Diagnostic]:
    uri = client.open(workspace / f"{name}.hb.yaml", text)
    got = await client.wait_diagnostics(uri, 1)
    client.close(uri)
    return got


async def test_list_input_shape_gets_the_type_error_only(client: HbClient, workspace: Path, warm):
    got = await diagnostics(client, workspace, "list_shape", config(**{"input_shape: 1x3x8x8":
                                                                         "input_shape: [1, 3, 8, 8]"}))
    assert [fmt(d) for d in got] == ["10:15-10:27 error wrong-type: Wrong parameter 'input_shape' specified, str value is required "
                   "but get type <class 'list'>"]


async def test_mapping_input_name_gets_the_type_error_only(client: HbClient, workspace: Path, warm):
    got = await diagnostics(client, workspace, "dict_name", config(**{"input_name: data": "input_name: {a: 1}"}))
    assert [fmt(d) for d in got] == ["6:14-6:20 error wrong-type: Wrong parameter 'input_name' specified, str value is required "
                   "but get type <class 'dict'>"]


async def test_a_wrongly_typed_key_is_not_reported_missing(client: HbClient, workspace: Path, warm):
    """Two inputs need input_name, a dynamic model needs input_shape: both are there, with the wrong type."""
    two = await diagnostics(client, workspace, "two_dict_name", config("two.onnx", **{
        "input_name: data": "input_name: {img: 1, feat: 2}", "input_type_train: rgb": "input_type_train: rgb;rgb",
        "input_layout_train: NCHW": "input_layout_train: NCHW;NCHW", "input_type_rt: nv12": "input_type_rt: nv12;nv12",
        "input_shape: 1x3x8x8": "input_shape: 1x3x4x4;1x3x4x4", "mean_value: 128 128 128": "mean_value: 1;1",
        "scale_value: 0.0078125": "scale_value: 1;1", "cal_data_dir: calib": "cal_data_dir: calib;calib2"}))
    assert [d.code for d in two] == [WRONG_TYPE], [fmt(d) for d in two]
    dynamic = await diagnostics(client, workspace, "dynamic_list_shape", config("dynamic.onnx", **{
        "input_shape: 1x3x8x8": "input_shape: [1, 3, 8, 8]"}))
    assert [d.code for d in dynamic] == [WRONG_TYPE], [fmt(d) for d in dynamic]


async def test_model_checks_of_the_other_keys_still_run(client: HbClient, workspace: Path, warm):
    got = await diagnostics(client, workspace, "list_shape_bad_name", config(**{
        "input_shape: 1x3x8x8": "input_shape: [1, 3, 8, 8]", "input_name: data": "input_name: image"}))
    assert [fmt(d) for d in got] == [
        "6:14-6:19 error input-name-unknown: The input_name 'image' is not an input of the model; the model's "
        "inputs are ['data']",
        "10:15-10:27 error wrong-type: Wrong parameter 'input_shape' specified, str value is required but get type "
        "<class 'list'>"]
