"""The plan key's digests of calibrate's entry files: read once per file version, shared by content."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

from engine.stages import ptq


def test_entry_files_are_hashed_once_per_version(tmp_path, monkeypatch):
    ctx = SimpleNamespace(engine=SimpleNamespace(warm={}))
    a, b = tmp_path / "a" / "thresholds.json", tmp_path / "b" / "thresholds.json"
    for f in (a, b):
        f.parent.mkdir()
        f.write_text('{"x": {"threshold": 1.5}}')
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real(self))
    want = hashlib.sha256(a.read_bytes()).hexdigest()
    reads.clear()
    assert ptq._entry_digest(ctx, a) == want and ptq._entry_digest(ctx, a) == want
    assert reads == [a]  # the second stage asking reads nothing
    assert ptq._entry_digest(ctx, b) == want  # another entry with the same content: the same key part
    a.write_text('{"x": {"threshold": 2.5}}')  # (entries never change; a rewrite is another version)
    os.utime(a, ns=(time.time_ns() + 10**9,) * 2)
    assert ptq._entry_digest(ctx, a) == hashlib.sha256(b'{"x": {"threshold": 2.5}}').hexdigest()
    assert ptq._entry_digest(ctx, tmp_path / "missing.json") == ""
