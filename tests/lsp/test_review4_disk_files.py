"""An open config's diagnostics follow the files it names on disk (review §6, r13): a model or
calibration folder that is deleted or moved away gets its error, one that appears loses it, within
the watcher's delay and without an edit — also for a config that has errors (it is not compiled,
so the live recompile does not watch it)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import onnx
import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, client_capabilities

from hblsp.features.disk_files import named_paths
from tests.conftest import conv_relu_model
from tests.lsp.support import DATA, SERVER, HbClient, fmt, make_client

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETTINGS = {"debounceMs": 0, "watchDelayMs": 100, "compileOnSave": False}
WAIT = 15.0  # the watcher's delay is 0.1 s; generous for a loaded 2-core machine


def make_disk_client() -> HbClient:
    client = make_client()
    client.set_configuration(SETTINGS, section="hblsp")
    return client


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER, client_factory=make_disk_client),
                    scope="module")
async def client(lsp_client: HbClient, tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), root_uri=root.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="disk")]))
    yield
    await lsp_client.shutdown_session()


def config_text(**replace: str) -> str:
    text = (DATA / "diagnostics" / "good.hb.yaml").read_text().split("# ----")[0]
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


async def published_after(client: HbClient, uri: str, seen: int, where, what: str) -> list[types.Diagnostic]:
    """The first diagnostics published for `uri` after the `seen` first ones that match `where`."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for params in client.published.get(uri, [])[seen:]:
            if where(params.diagnostics):
                return list(params.diagnostics)
        await asyncio.sleep(0.02)
    raise AssertionError(f"no publish with {what} within {WAIT:.0f} s; last: "
                         f"{[fmt(d) for d in (client.published[uri] or [None])[-1].diagnostics]}")


def codes(diagnostics: list[types.Diagnostic]) -> list[str]:
    return sorted(str(d.code) for d in diagnostics)


async def opened(client: HbClient, path: Path, text: str, want: list[str]) -> tuple[str, int]:
    path.write_text(text)
    uri = client.open(path, text)
    await published_after(client, uri, 0, lambda ds: codes(ds) == want, f"codes {want}")
    await asyncio.sleep(0.5)  # the model read and the watch settle
    return uri, len(client.published[uri])


async def test_a_model_moved_away_and_back(client: HbClient, tmp_path: Path):
    onnx.save(conv_relu_model(), str(tmp_path / "model.onnx"))
    (tmp_path / "calib").mkdir()
    uri, seen = await opened(client, tmp_path / "moved.hb.yaml", config_text(), [])
    os.rename(tmp_path / "model.onnx", tmp_path / "model.onnx.bak")
    got = await published_after(client, uri, seen, lambda ds: "file-missing" in codes(ds), "file-missing")
    assert [fmt(d) for d in got] == ["1:14-1:24 error file-missing: Can not find file specified: model.onnx,please "
                                     "check the configuration"]
    seen = len(client.published[uri])
    os.rename(tmp_path / "model.onnx.bak", tmp_path / "model.onnx")
    assert await published_after(client, uri, seen, lambda ds: not ds, "no diagnostics") == []
    seen = len(client.published[uri])
    (tmp_path / "model.onnx").unlink()  # deleted, not moved (a compile the move back started may fail too)
    await published_after(client, uri, seen, lambda ds: "file-missing" in codes(ds), "file-missing")


async def test_a_calibration_folder_moved_away_and_back(client: HbClient, tmp_path: Path):
    onnx.save(conv_relu_model(), str(tmp_path / "model.onnx"))
    (tmp_path / "calib").mkdir()
    uri, seen = await opened(client, tmp_path / "cal.hb.yaml", config_text(), [])
    shutil.move(tmp_path / "calib", tmp_path / "calib.bak")
    got = await published_after(client, uri, seen, lambda ds: "cal-dir-missing" in codes(ds), "cal-dir-missing")
    assert [fmt(d) for d in got] == ["14:16-14:21 error cal-dir-missing: Cal_data_dir does not exist: calib"]
    seen = len(client.published[uri])
    shutil.move(tmp_path / "calib.bak", tmp_path / "calib")
    assert await published_after(client, uri, seen, lambda ds: not ds, "no diagnostics") == []


async def test_a_config_with_errors_sees_its_model_and_folder_appear(client: HbClient, tmp_path: Path):
    """Opened before the export wrote the model (in a folder that does not exist yet either)."""
    text = config_text(**{"onnx_model: model.onnx": "onnx_model: export/model.onnx",
                          "input_name: data": "input_name: image"})
    uri, seen = await opened(client, tmp_path / "early.hb.yaml", text, ["cal-dir-missing", "file-missing"])
    (tmp_path / "calib").mkdir()
    await published_after(client, uri, seen, lambda ds: codes(ds) == ["file-missing"], "only file-missing")
    seen = len(client.published[uri])
    (tmp_path / "export").mkdir()
    onnx.save(conv_relu_model(), str(tmp_path / "export" / "model.tmp"))
    os.replace(tmp_path / "export" / "model.tmp", tmp_path / "export" / "model.onnx")
    got = await published_after(client, uri, seen, lambda ds: codes(ds) == ["input-name-unknown"],
                                "the model's own check (the model was read)")
    assert "the model's inputs are ['data']" in got[0].message


async def test_a_closed_config_is_no_longer_watched(client: HbClient, tmp_path: Path):
    onnx.save(conv_relu_model(), str(tmp_path / "model.onnx"))
    (tmp_path / "calib").mkdir()
    uri, _ = await opened(client, tmp_path / "closed.hb.yaml", config_text(), [])
    client.close(uri)
    await asyncio.sleep(0.3)
    seen = len(client.published[uri])
    (tmp_path / "model.onnx").unlink()
    await asyncio.sleep(1.0)
    assert len(client.published[uri]) == seen


async def test_named_paths_are_every_path_key_resolved_against_the_config_folder(tmp_path: Path):
    data = {"model_parameters": {"onnx_model": "m/model.onnx", "working_dir": "out", "march": "nash-e"},
            "calibration_parameters": {"cal_data_dir": "a; /abs/b", "quant_config": {"model_config": {}}},
            "input_parameters": {"input_name": "data"}}
    assert named_paths(data, tmp_path) == frozenset({tmp_path / "m" / "model.onnx", tmp_path / "out",
                                                     tmp_path / "a", Path("/abs/b")})
    assert named_paths({"model_parameters": {"onnx_model": ["not", "a", "path"]}}, tmp_path) == frozenset()
    assert named_paths(None, tmp_path) == frozenset()


async def test_a_read_failed_by_a_vanishing_file_is_not_kept_for_identical_copies(tmp_path: Path):
    """The model moved away while it is read (and back: the same stamp): the failure is not stored
    under its content digest, where it stood for every copy of the same bytes ("Can not find file"
    naming the first path)."""
    from concurrent.futures import ThreadPoolExecutor

    from hblsp.models import PENDING, ModelCache, ModelSource, read_state

    first, copy = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    first.parent.mkdir()
    copy.parent.mkdir()
    onnx.save(conv_relu_model(), str(first))
    shutil.copy(first, copy)

    def moved_during_read(source: ModelSource):
        if source.files[0] != first:
            return read_state(source)
        first.rename(first.with_suffix(".bak"))
        state = read_state(source)
        first.with_suffix(".bak").rename(first)
        return state

    with ThreadPoolExecutor(1) as pool:
        cache = ModelCache(pool, lambda s: None, reader=moved_during_read)
        assert cache.peek(ModelSource("onnx_model", (first,))) is PENDING
        await asyncio.wrap_future(cache._pending[ModelSource("onnx_model", (first,))])
        await asyncio.sleep(0.05)
        state = await cache.wait(ModelSource("onnx_model", (copy,)))
        while state is PENDING:
            await asyncio.sleep(0.05)
            state = await cache.wait(ModelSource("onnx_model", (copy,)))
    assert state.status == "ready", state.problems
    assert state.info.input_names == ["data"]
