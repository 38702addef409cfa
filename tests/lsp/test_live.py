"""Live recompile over stdio (issue #8): save / command / file change → `$/progress` → `hblsp/compileResult`.

Each test compiles its own copy of examples/digits (32 calibration samples) in one `python -m
hblsp` per module, so the engine stays warm across tests the way it does in an editor. The slow
configs (cancel, a change during a run) add a few hundred random calibration samples so that
calibration is still going when the test acts; the tests act on the first calibration progress
report, never after a sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import pytest_lsp
from lsprotocol import types
from onnx import TensorProto, helper
from pytest_lsp import ClientServerConfig, client_capabilities
from pytest_lsp.client import DEFAULT_CLIENT_FEATURES, register_lsp_features

from tests.conftest import REPO
from tests.lsp.support import SERVER, HbClient, publish, register_capability

pytestmark = pytest.mark.asyncio(loop_scope="module")

DIGITS = REPO / "examples" / "digits"
TIMEOUT = 120.0  # generous: a loaded 2-core machine; a test fails on a wrong value, not on slowness
SETTINGS = {"debounceMs": 0, "watchDelayMs": 100}


class LiveClient(HbClient):
    """Records what the live recompile sends: results, progress (with arrival times), log lines."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.results: list[dict[str, Any]] = []
        self.progress: list[tuple[str, dict[str, Any]]] = []  # (token, value) in arrival order
        self.logs: list[str] = []
        self.hint_refreshes = 0

    async def until(self, what: str, predicate, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.01)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}; results {[summary(r) for r in self.results]}, "
                           f"all logs {self.logs}, "
                           f"logs {self.logs[-5:]}")

    def results_for(self, uri: str) -> list[dict[str, Any]]:
        return [r for r in self.results if r["uri"] == uri]

    async def next_result(self, uri: str, after: int) -> dict[str, Any]:
        """The first result for `uri` beyond the `after` already seen."""
        return await self.until(f"result #{after + 1} for {uri}",
                                lambda: (self.results_for(uri)[after:] or [None])[0])

    def tokens_with(self, fragment: str, since: int = 0) -> list[str]:
        """Progress tokens begun after the first `since` progress messages, whose begin names `fragment`."""
        return [t for t, v in self.progress[since:] if v.get("kind") == "begin" and fragment in v.get("message", "")]

    def calibrating(self, fragment: str, since: int = 0) -> str | None:
        """The first such token whose run has reported a calibration sample."""
        return next((t for t in self.tokens_with(fragment, since) if any(
            v.get("message", "").startswith("calibrate: calibration sample") for v in self.values(t))), None)

    def values(self, token: str) -> list[dict[str, Any]]:
        return [v for t, v in self.progress if t == token]

    def execute(self, command: str, uri: str, **extra):
        return self.workspace_execute_command_async(types.ExecuteCommandParams(
            command=command, arguments=[{"uri": uri, **extra}]))

    def save(self, uri: str, path: Path, text: str) -> int:
        """What an editor does: the buffer changes, the file is written, didSave."""
        path.write_text(text)
        version = self.replace(uri, text)
        self.text_document_did_save(types.DidSaveTextDocumentParams(types.TextDocumentIdentifier(uri)))
        return version


def summary(result: dict[str, Any]) -> str:
    stages = ",".join(f"{s['name']}={s['status']}" for s in result["stages"])
    return f"{Path(result['uri']).name} v{result['version']} ok={result['ok']} [{stages}]"


def as_dict(value: Any) -> Any:
    """pygls hands untyped JSON over as named tuples: back to plain dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: as_dict(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: as_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_dict(v) for v in value]
    return value


def plain_json_converter():
    """pygls turns an unknown notification's params into named tuples, renaming keys that are not
    identifiers (`{prefix}_quantized_model.bc` → `_0`): keep them as the JSON the server sent."""
    from pygls.protocol import JsonRPCNotification, default_converter

    converter = default_converter()
    converter.register_structure_hook(JsonRPCNotification, lambda obj, cls: cls(**obj))
    return converter


def make_live_client() -> LiveClient:
    client = LiveClient(converter_factory=plain_json_converter)
    features = dict(DEFAULT_CLIENT_FEATURES)
    features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS] = publish
    features[types.CLIENT_REGISTER_CAPABILITY] = register_capability

    def progress(client: LiveClient, params: types.ProgressParams) -> None:
        client.progress.append((params.token, as_dict(params.value)))

    def result(client: LiveClient, params: Any) -> None:
        client.results.append(as_dict(params))

    def log_message(client: LiveClient, params: types.LogMessageParams) -> None:
        client.logs.append(params.message)

    def inlay_refresh(client: LiveClient, params: None) -> None:
        client.hint_refreshes += 1

    features[types.PROGRESS] = progress
    features["hblsp/compileResult"] = result
    features[types.WINDOW_LOG_MESSAGE] = log_message
    features[types.WORKSPACE_INLAY_HINT_REFRESH] = inlay_refresh
    register_lsp_features(client, features)
    client.set_configuration(SETTINGS, section="hblsp")
    return client


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER, client_factory=make_live_client), scope="module")
async def client(lsp_client: LiveClient, tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    capabilities = client_capabilities("visual-studio-code")  # a current VS Code also refreshes inlay hints
    capabilities.workspace.inlay_hint = types.InlayHintWorkspaceClientCapabilities(refresh_support=True)
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=capabilities, root_uri=root.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="live")]))
    yield
    await lsp_client.shutdown_session()


def digits(tmp_path: Path, extra_samples: int = 0) -> Path:
    """A copy of the bundled example (optionally with more, random, calibration samples)."""
    work = tmp_path / "digits"
    shutil.copytree(DIGITS, work, ignore=shutil.ignore_patterns("model_output", "*.py", "heldout.npz"))
    rng = np.random.default_rng(0)
    for i in range(extra_samples):
        rng.integers(0, 256, (1, 1, 32, 32), dtype=np.uint8).tofile(work / "calibration_data" / f"extra_{i:04d}.gray")
    return work / "digits.hb.yaml"


async def open_config(client: LiveClient, path: Path) -> str:
    uri = client.open(path, path.read_text())
    await client.wait_diagnostics(uri, 1)
    return uri


async def compiled(client: LiveClient, path: Path) -> str:
    """Open the config and run it once (on save), as the starting point of a test."""
    uri = await open_config(client, path)
    client.save(uri, path, path.read_text())
    result = await client.next_result(uri, 0)
    assert result["ok"], result["problems"]
    return uri


def stage_map(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {s["name"]: (s["status"], s["reason"]) for s in result["stages"]}


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines()) if fragment in line)


async def test_save_compiles_with_progress_result_diagnostics_and_table(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path)
    uri = await open_config(client, path)
    text = path.read_text()
    mark = len(client.progress)
    version = client.save(uri, path, text)
    result = await client.next_result(uri, 0)

    assert result["ok"] and not result["cancelled"] and result["version"] == version, result["problems"]
    assert [(s["name"], s["status"]) for s in result["stages"]] == [
        ("config", "ran"), ("parse", "ran"), ("optimize", "ran"), ("calibrate", "ran"), ("ptq", "ran"),
        ("quantize", "ran"), ("report", "ran"), ("compile", "ran")]
    assert stage_map(result)["calibrate"][1] == "no earlier run"
    assert result["calibration"] == {"samples": 32, "computed": 32, "reused": 0, "method": result["calibration"]["method"]}
    out = path.parent / "model_output"
    assert Path(result["working_dir"]) == out
    assert result["artefacts"]["{prefix}_quantized_model.bc"] == str(out / "digits_quantized_model.bc")
    assert all(Path(p).is_file() for p in result["artefacts"].values())
    table = result["table"]
    assert table["calibrated"] is True and [o["tensor"] for o in table["outputs"]] == ["logits"]
    assert table["outputs"][0]["quantized_cosine"] > 0.99
    assert any(n["node_type"] == "Conv+Relu" and len(n["nodes"]) == 2 for n in table["nodes"])
    assert result["thresholds"] == {"node": 0.99, "output": 0.8}

    # $/progress: begin → one report per stage that ran (the engine's reason), a percentage in calibrate → end
    [token] = client.tokens_with("digits.hb.yaml: saved", mark)
    values = client.values(token)
    assert values[0]["kind"] == "begin" and values[0]["cancellable"] is True and values[-1]["kind"] == "end"
    reports = [v["message"] for v in values if v["kind"] == "report"]
    for stage in ("parse", "optimize", "calibrate", "ptq", "quantize", "report", "compile"):
        assert f"{stage}: no earlier run" in reports, reports
    assert any(v.get("percentage") == 100 and v["message"].startswith("calibrate: calibration sample 32/32")
               for v in values if v["kind"] == "report")
    assert values[-1]["message"].startswith("done in ")

    # diagnostics: the outputs' Quantized Cosine on the model line, following the document version
    line = line_of(text, "onnx_model:")
    diagnostics = await client.wait_diagnostics(uri, version, where=lambda ds: any(d.code == "output-cosine" for d in ds))
    [info] = [d for d in diagnostics if d.code == "output-cosine"]
    cos = table["outputs"][0]
    assert info.message == (f"Output Quantized Cosine: logits {cos['quantized_cosine']:.6f} "
                            f"(calibrated {cos['cosine']:.6f})")
    assert info.severity == types.DiagnosticSeverity.Information and info.source == "hb_compile"
    assert (info.range.start.line, info.range.start.character, info.range.end.character) == (line, 2, 12)
    moved = client.replace(uri, "# a new first line\n" + text)  # an edit moves it with its key
    diagnostics = await client.wait_diagnostics(uri, moved)
    assert [d.range.start.line for d in diagnostics if d.code == "output-cosine"] == [line + 1]
    assert client.hint_refreshes >= 1

    shown = await client.execute("hblsp.showTable", uri)
    assert as_dict(shown) == result


async def test_one_changed_calibration_file_reruns_that_sample_only(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path)
    uri = await compiled(client, path)
    sample = path.parent / "calibration_data" / "digit_003.gray"
    data = bytearray(sample.read_bytes())
    data[100:140] = bytes(255 - b for b in data[100:140])
    mark = len(client.progress)
    sample.write_bytes(bytes(data))  # written in place, outside the editor: the watcher sees it

    result = await client.next_result(uri, 1)
    assert result["ok"], result["problems"]
    stages = stage_map(result)
    assert stages["parse"] == ("reused", "unchanged") and stages["optimize"] == ("reused", "unchanged")
    assert stages["calibrate"] == ("ran", "1 of 32 calibration files changed")
    assert [stages[s][0] for s in ("ptq", "quantize", "report", "compile")] == ["ran"] * 4
    assert (result["calibration"]["computed"], result["calibration"]["reused"]) == (1, 31)
    assert "digits.hb.yaml: calibration_data/digit_003.gray changed; compiling" in [
        m.removeprefix("hblsp: ") for m in client.logs]
    [token] = client.tokens_with("digits.hb.yaml: files changed", mark)
    assert "calibrate: 1 of 32 calibration files changed" in [v.get("message") for v in client.values(token)]


async def test_opening_a_config_loads_the_engine_once_before_any_run(client: LiveClient, tmp_path: Path):
    """The first open of a config loads the engine's modules on the compile worker (`preload`), once
    per server: the log says so exactly once however many configs open."""
    for name in ("a", "b"):
        path = digits(tmp_path / name)
        await open_config(client, path)
    await client.until("the engine preload", lambda: any("engine loaded in" in m for m in client.logs))
    loaded = [m for m in client.logs if "engine loaded in" in m]
    assert len(loaded) == 1, loaded
    assert float(loaded[0].rsplit(" in ", 1)[1].removesuffix(" s")) > 0


async def test_an_opened_config_is_watched_before_its_first_run(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path)
    logs = len(client.logs)
    uri = await open_config(client, path)  # opened, never saved nor compiled
    await client.until("the open's watch", lambda: any("digits.hb.yaml: watching 34 input files" in m
                                                        for m in client.logs[logs:]))
    assert client.results_for(uri) == []
    new = path.parent / "calibration_data" / "digit_099.gray"  # a new sample dropped into the folder
    new.write_bytes(bytes(255 - b for b in (path.parent / "calibration_data" / "digit_001.gray").read_bytes()))
    result = await client.next_result(uri, 0)
    assert result["ok"], result["problems"]
    assert result["calibration"]["samples"] == 33
    assert "digits.hb.yaml: calibration_data/digit_099.gray changed; compiling" in [
        m.removeprefix("hblsp: ") for m in client.logs]


async def test_a_compiler_parameters_change_reuses_calibration(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path)
    uri = await compiled(client, path)
    version = client.save(uri, path, path.read_text().replace("optimize_level: O2", "optimize_level: O1"))
    result = await client.next_result(uri, 1)
    assert result["ok"] and result["version"] == version
    stages = stage_map(result)
    assert [stages[s][0] for s in ("parse", "optimize", "calibrate", "ptq", "quantize", "report")] == ["reused"] * 6
    assert stages["compile"] == ("ran", "config changed: compiler_parameters")
    assert (result["calibration"]["computed"], result["calibration"]["reused"]) == (0, 32)  # not the earlier run's
    assert result["table"]["outputs"] == client.results_for(uri)[0]["table"]["outputs"]


async def test_atomic_renames_count_touches_do_not_and_the_config_is_watched(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path)
    uri = await compiled(client, path)
    cal = path.parent / "calibration_data"
    logs = len(client.logs)
    os.utime(cal / "digit_007.gray")  # a touch: new mtime, same bytes
    await client.until("the touch to be judged", lambda: any("contents unchanged; nothing to run" in m
                                                              for m in client.logs[logs:]))
    assert len(client.results_for(uri)) == 1

    tmp = cal / ".digit_005.gray.tmp"  # an editor's or a tool's safe save: temp file, then rename
    tmp.write_bytes(bytes(255 - b for b in (cal / "digit_005.gray").read_bytes()))
    os.replace(tmp, cal / "digit_005.gray")
    result = await client.next_result(uri, 1)
    assert stage_map(result)["calibrate"] == ("ran", "1 of 32 calibration files changed")
    assert result["calibration"]["computed"] == 1

    # the config changed outside the editor (the buffer still holds the old text): compiled from disk
    path.write_text(path.read_text().replace("compile_mode: latency", "compile_mode: bandwidth"))
    result = await client.next_result(uri, 2)
    assert result["ok"] and result["version"] is None
    assert stage_map(result)["compile"] == ("ran", "config changed: compiler_parameters")
    assert stage_map(result)["calibrate"][0] == "reused"


async def test_cancel_mid_run_from_the_command_and_from_the_progress_bar(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path, extra_samples=400)
    uri = await open_config(client, path)

    mark = len(client.progress)
    assert as_dict(await client.execute("hblsp.compile", uri)) == {"started": True}
    token = await client.until("calibration to start", lambda: client.calibrating("digits.hb.yaml", mark))
    assert as_dict(await client.execute("hblsp.cancel", uri)) == {"cancelled": True}
    result = await client.next_result(uri, 0)
    assert result["cancelled"] and not result["ok"] and result["table"] is None
    assert stage_map(result)["calibrate"] == ("cancelled", "cancelled")
    assert client.values(token)[-1] == {"kind": "end", "message": "cancelled"}
    assert as_dict(await client.execute("hblsp.cancel", uri)) == {"cancelled": False}  # nothing is going now

    # the client's cancel button on the progress notification
    mark = len(client.progress)
    client.save(uri, path, path.read_text())
    token = await client.until("calibration to start again", lambda: client.calibrating("digits.hb.yaml", mark))
    client.window_work_done_progress_cancel(types.WorkDoneProgressCancelParams(token=token))
    result = await client.next_result(uri, 1)
    assert result["cancelled"] and stage_map(result)["calibrate"][0] == "cancelled"
    assert as_dict(await client.execute("hblsp.showTable", uri)) == result


async def test_changes_during_a_run_cancel_it_and_queue_one_rerun(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path, extra_samples=300)
    uri = await open_config(client, path)
    text = path.read_text()
    mark = len(client.progress)
    client.save(uri, path, text)
    await client.until("calibration to start", lambda: client.calibrating("digits.hb.yaml", mark))
    versions = [client.save(uri, path, text.replace("jobs: 2", f"jobs: {jobs}")) for jobs in (3, 4, 1)]
    result = await client.next_result(uri, 0)
    assert result["ok"] and result["version"] == versions[-1], summary(result)
    assert stage_map(result)["compile"][0] == "ran"
    tokens = client.tokens_with("digits.hb.yaml: saved", mark)
    # the run that was going, then one re-run at a time: 2 when the three saves land together,
    # up to 4 when a loaded machine spaces them out; never more runs than saves, never two at once
    assert 2 <= len(tokens) <= 4
    for superseded in tokens[:-1]:
        assert client.values(superseded)[-1] == {"kind": "end", "message": "superseded by a newer change"}
    await client.until("the re-run's end", lambda: client.values(tokens[-1])[-1]["kind"] == "end")
    assert len(client.results_for(uri)) == 1  # the superseded run sent nothing


def custom_op_model(path: Path) -> None:
    """A model whose parse fails: an operator from a domain no one can run."""
    g = helper.make_graph([helper.make_node("Foo", ["input"], ["logits"], domain="com.custom")], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 32, 32])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.custom", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))


async def test_a_failing_model_is_an_error_on_its_key_and_the_next_run_works(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path)
    custom_op_model(path.parent / "custom.onnx")
    good = path.read_text()
    bad = good.replace("onnx_model: digits.onnx", "onnx_model: custom.onnx")
    path.write_text(bad)
    uri = await open_config(client, path)
    assert as_dict(await client.execute("hblsp.compile", uri)) == {"started": True}
    result = await client.next_result(uri, 0)
    assert not result["ok"] and result["table"] is None
    assert stage_map(result)["parse"][0] == "failed"
    [problem] = [p for p in result["problems"] if p["severity"] == "error"]
    assert problem["path"] == ["model_parameters", "onnx_model"]
    assert problem["message"].startswith("nodes:['Foo'] are specified as domain:com.custom")

    line = line_of(bad, "onnx_model:")
    diagnostics = await client.wait_diagnostics(uri, 1, where=lambda ds: any(d.code == "model-custom-domain"
                                                                              for d in ds))
    [error] = [d for d in diagnostics if d.code == "model-custom-domain"]
    assert error.severity == types.DiagnosticSeverity.Error and error.message == problem["message"]
    assert (error.range.start.line, error.range.start.character, error.range.end.character) == (line, 14, 25)

    version = client.save(uri, path, good)  # the fix: the server is alive and the next run works
    result = await client.next_result(uri, 1)
    assert result["ok"] and result["table"] is not None
    diagnostics = await client.wait_diagnostics(uri, version, where=lambda ds: any(d.code == "output-cosine"
                                                                                   for d in ds))
    assert not [d for d in diagnostics if d.severity == types.DiagnosticSeverity.Error]


async def test_inlay_hints_beside_node_names_and_the_threshold_warning(client: LiveClient, tmp_path: Path):
    path = digits(tmp_path)
    text = path.read_text().replace(
        "  calibration_type: default\n",
        "  calibration_type: default\n  run_on_bpu: '/features/features.3/Conv; /features/features.2/Relu'\n")
    path.write_text(text)
    uri = await compiled(client, path)
    table = client.results_for(uri)[0]["table"]
    rows = {n["node"]: n for n in table["nodes"]}
    line = line_of(text, "run_on_bpu:")
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri),
        range=types.Range(start=types.Position(0, 0), end=types.Position(len(text.splitlines()), 0))))
    got = [(h.position.line, h.position.character, h.label) for h in hints]
    conv = rows["/features/features.3/Conv"]
    group = next(n for n in table["nodes"] if "/features/features.2/Relu" in n["nodes"])
    start = text.splitlines()[line].index("'") + 1
    assert got == [
        (line, start + len("/features/features.3/Conv"), f"cos {conv['quantized_cosine']:.6f}"),
        (line, len(text.splitlines()[line]) - 1, f"cos {group['quantized_cosine']:.6f}"),
    ]
    assert group["node"] in hints[1].tooltip.value  # a member of a fused group shows the group's row

    # a stricter node threshold (a setting): the warning names every node under it, with its cosine
    strict = min(n["quantized_cosine"] for n in table["nodes"]) + 1e-6
    refreshes = client.hint_refreshes
    client.set_configuration({**SETTINGS, "nodeCosineThreshold": strict}, section="hblsp")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    try:
        diagnostics = await client.wait_diagnostics(uri, where=lambda ds: any(d.code == "low-cosine" for d in ds))
        await client.until("an inlay hint refresh", lambda: client.hint_refreshes > refreshes)  # "< 0.99" marks
        [warning] = [d for d in diagnostics if d.code == "low-cosine"]
        worst = min(table["nodes"], key=lambda n: n["quantized_cosine"])
        assert warning.message == (f"1 node under Quantized Cosine {strict:g}: {worst['node']} "
                                   f"{worst['quantized_cosine']:.6f}")
        assert warning.severity == types.DiagnosticSeverity.Warning
        assert warning.range.start.line == line_of(text, "onnx_model:")
    finally:
        client.set_configuration(SETTINGS, section="hblsp")
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))


async def test_a_reopened_config_is_watched_again_and_shows_no_old_run(client: LiveClient, tmp_path: Path):
    """Closed and reopened (`:bd` then `:e`), a config was no longer watched (its old inputs made `opened`
    return early) and the last run's cosines came back on it, though the file may have changed meanwhile."""
    path = digits(tmp_path)
    uri = await compiled(client, path)
    await client.wait_diagnostics(uri, where=lambda ds: any(d.code == "output-cosine" for d in ds))
    client.close(uri)
    path.write_text(path.read_text().replace("onnx_model: digits.onnx", "onnx_model: ./digits.onnx"))
    client.published.pop(uri, None)
    logs = len(client.logs)
    uri = await open_config(client, path)
    await client.until("the reopen's watch", lambda: any("digits.hb.yaml: watching" in m for m in client.logs[logs:]))
    assert not any(d.code == "output-cosine" for p in client.published[uri] for d in p.diagnostics)
    runs = len(client.results_for(uri))
    sample = path.parent / "calibration_data" / "digit_005.gray"
    sample.write_bytes(bytes(255 - b for b in sample.read_bytes()))
    result = await client.next_result(uri, runs)
    assert result["ok"] and stage_map(result)["calibrate"] == ("ran", "1 of 32 calibration files changed")


async def test_a_failed_runs_model_check_is_shown_once_and_goes_with_the_fix(client: LiveClient, tmp_path: Path):
    """Review s7 R-L 4: a run failing on a model check (input_name not a model input) placed its copy of the
    problem beside the live check's (the same error twice), and the copy stayed after the fix until the next run."""
    path = digits(tmp_path)
    good = path.read_text()
    path.write_text(good.replace("input_name: input", "input_name: image"))
    uri = await open_config(client, path)
    await client.wait_diagnostics(uri, 1, where=lambda ds: any(d.code == "input-name-unknown" for d in ds))
    assert as_dict(await client.execute("hblsp.compile", uri)) == {"started": True}
    result = await client.next_result(uri, 0)
    assert not result["ok"] and stage_map(result)["parse"][0] == "failed"
    await asyncio.sleep(0.5)  # the run's diagnostics are published after its result
    shown = client.published[uri][-1].diagnostics
    assert [d.code for d in shown if d.severity == types.DiagnosticSeverity.Error] == ["input-name-unknown"]
    version = client.replace(uri, good)  # fixed, not saved
    fixed = await client.wait_diagnostics(uri, version)
    assert not [d for d in fixed if d.severity == types.DiagnosticSeverity.Error], [d.message for d in fixed]
