"""The model cache: one read per content hash, re-read on change, size limit, bad files, child reader."""

from __future__ import annotations

import asyncio
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest

from hblsp.models import PENDING, ModelCache, ModelSource, ProcessReader, read_state
from tests.conftest import conv_relu_model, two_input_model

pytestmark = pytest.mark.asyncio


def onnx_source(path: Path) -> ModelSource:
    return ModelSource("onnx_model", (path,))


async def settle(cache: ModelCache, source: ModelSource):
    state = await cache.wait(source)
    assert state is not PENDING
    return state


async def test_identical_copies_are_read_once_and_changes_are_read_again(tmp_path: Path):
    a, b = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx"
    a.parent.mkdir()
    b.parent.mkdir()
    onnx.save(conv_relu_model(), str(a))
    shutil.copy(a, b)
    loaded: list[ModelSource] = []
    with ThreadPoolExecutor(1) as pool:
        cache = ModelCache(pool, loaded.append)
        assert cache.peek(onnx_source(a)) is PENDING
        first = await settle(cache, onnx_source(a))
        second = await settle(cache, onnx_source(b))
        assert first.info.node_names == ["Conv_0", "BatchNormalization_1", "Relu_2", "GlobalAveragePool_3"]
        assert second is first and cache.loads == 1
        os.utime(b, ns=(1, 1))  # touched, same bytes: hashed again, not read again
        assert await settle(cache, onnx_source(b)) is first and cache.loads == 1
        onnx.save(two_input_model(), str(a))
        changed = await settle(cache, onnx_source(a))
        assert changed.info.input_names == ["img", "feat"] and cache.loads == 2
    assert loaded == [onnx_source(a), onnx_source(b), onnx_source(b), onnx_source(a)]


async def test_missing_big_and_bad_models(tmp_path: Path):
    big, bad = tmp_path / "big.onnx", tmp_path / "bad.onnx"
    onnx.save(conv_relu_model(), str(big))
    bad.write_bytes(b"\x08\x01garbage" * 100)
    with ThreadPoolExecutor(1) as pool:
        cache = ModelCache(pool, lambda s: None, max_bytes=100)
        assert cache.peek(onnx_source(tmp_path / "nowhere.onnx")) is None
        skipped = await settle(cache, onnx_source(big))
        assert skipped.status == "skipped" and skipped.problems[0].code == "model-too-big-for-editor"
        assert skipped.problems[0].path == ("model_parameters", "onnx_model")
        cache.max_bytes = 1 << 30
        failed = await settle(cache, onnx_source(bad))
        assert failed.status == "failed" and failed.info is None
        assert failed.problems[0].code == "model-invalid"
        assert failed.problems[0].message.startswith(f"Onnx file invalid: '{bad}': ")


async def test_child_process_reader(tmp_path: Path):
    good, bad = tmp_path / "m.onnx", tmp_path / "bad.onnx"
    onnx.save(conv_relu_model(), str(good))
    bad.write_text("not onnx")
    reader = ProcessReader(timeout=60)
    ready = await asyncio.to_thread(reader, onnx_source(good))
    failed = await asyncio.to_thread(reader, onnx_source(bad))
    assert ready == read_state(onnx_source(good))
    assert ready.info.value_shapes["conv_out"] == (1, 4, 8, 8)
    assert failed.status == "failed" and failed.problems == read_state(onnx_source(bad)).problems


async def test_reader_process_cannot_write_to_the_lsp_channel(tmp_path: Path):
    """The child's stdout carries only its answer: a chatty library's output goes to stderr."""
    import pickle
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import os
        import hblsp.models as models

        def chatty(source):
            print("chatter on stdout", flush=True)
            os.write(1, b"raw chatter on fd 1\\n")
            return models.ModelState("ready", digest=str(source.files))

        models.read_state = chatty
        models._child_main(["onnx_model", "a.onnx"])
    """))
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert pickle.loads(out.stdout).digest == "(PosixPath('a.onnx'),)"
    assert b"chatter on stdout" in out.stderr and b"raw chatter on fd 1" in out.stderr


async def test_a_read_that_takes_too_long_is_stopped(tmp_path: Path):
    good = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), str(good))
    state = await asyncio.to_thread(ProcessReader(timeout=0.001), onnx_source(good))
    assert state.status == "failed"
    assert state.problems[0].message == f"Onnx file invalid: '{good}': reading it took longer than 0.001 s"
