"""Per-input list counts in the editor (review r1 item 4): with `input_name: 'img'` on a two-input model the
language server showed seven count errors on the correct lists and none on input_name. It shows what the
CLI shows: the model's input count decides, the list that disagrees is told, a name not in the model is named.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from engine.config import load_config_text
from engine.frontend.model_info import model_info
from hblsp.analysis import analyse, load_text
from hblsp.models import ModelState
from tests.conftest import two_input_model
from tests.lsp.support import HbClient, fmt

ON_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

IP = "input_parameters"
TWO = """\
model_parameters:
  onnx_model: two.onnx
  march: nash-e
input_parameters:
  input_name: 'img; feat'
  input_type_train: 'rgb; featuremap'
  input_layout_train: 'NCHW; NCHW'
  input_type_rt: 'rgb; featuremap'
  input_shape: '1x3x4x4; 1x3x4x4'
  mean_value: '123 116 103; None'
calibration_parameters:
  cal_data_dir: './calib; ./calib'
  calibration_type: max
"""
ONE_LIST_EACH = (("'rgb; featuremap'", "rgb"), ("'NCHW; NCHW'", "NCHW"), ("'1x3x4x4; 1x3x4x4'", "1x3x4x4"),
                 ("'123 116 103; None'", "'123 116 103'"), ("'./calib; ./calib'", "./calib"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def warm(client: HbClient, workspace: Path) -> None:
    """two.onnx read once by the server: later documents get the model rules in their first publish."""
    uri = client.open(workspace / "warm_counts.hb.yaml", TWO.replace("'img; feat'", "'x; y'"))
    await client.wait_diagnostics(uri, 1, where=lambda ds: any(d.code == "input-name-unknown" for d in ds))
    client.close(uri)


def errors(ds) -> list[str]:
    return sorted(fmt(d) for d in ds if int(d.severity) == 1)


@ON_MODULE_LOOP
async def test_one_name_short_is_told_on_input_name_only(client: HbClient, workspace: Path, warm):
    uri = client.open(workspace / "count_short.hb.yaml", TWO.replace("'img; feat'", "'img'"))
    got = await client.wait_diagnostics(uri, 1)
    client.close(uri)
    assert errors(got) == ["4:14-4:19 error list-count: Wrong input_name num received. Num of input_name given: 1 "
                           "is not equal to input num 2"]


@ON_MODULE_LOOP
async def test_a_name_too_many_is_named(client: HbClient, workspace: Path, warm):
    uri = client.open(workspace / "count_long.hb.yaml", TWO.replace("'img; feat'", "'img; feat; extra'"))
    got = await client.wait_diagnostics(uri, 1)
    client.close(uri)
    assert errors(got) == [
        "4:14-4:32 error list-count: Wrong input_name num received. Num of input_name given: 3 is not equal to "
        "input num 2",
        "4:26-4:31 error input-name-unknown: The input_name 'extra' is not an input of the model; the model's inputs "
        "are ['img', 'feat']"]


@ON_MODULE_LOOP
async def test_the_editor_and_the_cli_loader_agree(client: HbClient, workspace: Path, warm):
    """The model says 2 against six one-item lists: the six are told, in the editor as by `load_config_text`."""
    text = TWO
    for two, one in ONE_LIST_EACH:
        text = text.replace(two, one)
    uri = client.open(workspace / "count_many.hb.yaml", text)
    got = await client.wait_diagnostics(uri, 1)
    client.close(uri)
    cli = load_config_text(text, workspace).problems
    assert sorted((d.code, d.message) for d in got if int(d.severity) == 1) == \
        sorted((p.code, p.message) for p in cli if p.is_error)
    assert {p.path[1] for p in cli if p.code == "list-count"} == {
        "input_type_train", "input_layout_train", "input_type_rt", "input_shape", "mean_value", "cal_data_dir"}


def test_the_model_count_replaces_the_lists_count_once_the_model_is_read(tmp_path):
    """Files not checked: the config rules go by the lists (most say 1, so input_name is told); once the
    server has read the model, its count (2) decides and the lists' guess is dropped, not shown beside it."""
    text = TWO
    for two, one in ONE_LIST_EACH:
        text = text.replace(two, one)
    result = load_text(text, tmp_path, check_files=False)
    before = [(p.code, p.path) for p in result.problems if p.is_error]
    assert before == [("list-count", (IP, "input_name"))]
    state = ModelState("ready", model_info(two_input_model()))
    after = analyse(result, result.data, state).problems
    told = sorted(p.path[1] for p in after if p.code == "list-count")
    assert told == sorted(["input_type_train", "input_layout_train", "input_type_rt", "input_shape", "mean_value",
                           "cal_data_dir"])
    assert all(p.message.endswith("is not equal to input num 2") for p in after if p.code == "list-count")


def test_the_editor_load_never_parses_the_model(tmp_path, monkeypatch):
    """hblsp checks documents in a thread: the config rules must not parse the ONNX file there (protobuf holds
    the GIL: an 80 MB model froze the event loop). The CLI loader reads it; the editor's load goes by the lists
    and leaves the model's word to the model rules (previous test)."""
    import onnx

    import engine.config.rules as rules
    import engine.frontend.model_info as mi

    onnx.save(two_input_model(), tmp_path / "two.onnx")
    (tmp_path / "calib").mkdir()
    text = TWO
    for two, one in ONE_LIST_EACH:
        text = text.replace(two, one)
    cli = load_config_text(text, tmp_path).problems
    assert {p.path[1] for p in cli if p.code == "list-count"} >= {"input_type_rt", "input_shape"}

    def no_parse(*args, **kwargs):
        raise AssertionError("the model was parsed on the check thread")

    monkeypatch.setattr(mi, "read_model_info", no_parse)
    rules._onnx_input_names.cache_clear()  # the CLI load above memoised this file's names
    editor = load_text(text, tmp_path)
    assert [(p.code, p.path) for p in editor.problems if p.code == "list-count"] == [("list-count", (IP, "input_name"))]


def test_a_3d_shape_on_a_4d_model_input_is_told_once_by_the_models_rank(tmp_path):
    """Review s7 R-L: `input_shape: 1x3x8` on a 4-D model showed the config rule's advice to make the input a
    featuremap beside the model's rank error on the same token; the model's rank says what is wrong."""
    from tests.conftest import GOOD_CONFIG, conv_relu_model

    text = GOOD_CONFIG.replace("input_shape: 1x3x8x8", "input_shape: 1x3x8")
    result = load_text(text, tmp_path, check_files=False)
    assert [p.code for p in result.problems if p.is_error] == ["input-not-4d"]  # no model known: the rule's word
    state = ModelState("ready", model_info(conv_relu_model()))
    after = [p.code for p in analyse(result, result.data, state).problems if p.is_error]
    assert after == ["input-shape-rank"]
