"""The daemon's code identity scans the installed folders as os.walk does: a symlinked folder (here a
cycle) is not entered (review r2: scandir's is_dir() follows links, so a cycle recursed without end)."""

from __future__ import annotations

import os

from engine.daemon_client import _stamps


def test_a_linked_folder_cycle_is_not_entered(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    os.symlink(tmp_path, tmp_path / "pkg" / "loop")
    names = [s.split("\0")[0] for s in _stamps(str(tmp_path), "")]
    assert "pkg/mod.py" in names
    assert not any(n.startswith("pkg/loop/") for n in names)
