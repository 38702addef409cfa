"""Errors stop at the edge: a failing handler is logged, reported once, and answered with None."""

from __future__ import annotations

import logging

import pytest

from hblsp.server import HbServer, build, guarded

pytestmark = pytest.mark.asyncio


async def test_a_bug_in_a_handler_is_logged_and_answered(caplog):
    ls = HbServer()
    reported: list[str] = []
    ls.window_show_message = lambda params: reported.append(params.message)
    ls.window_log_message = lambda params: None

    def hover(ls, params):
        raise KeyError("boom")

    async def symbols(ls, params):
        raise ValueError("bang")

    with caplog.at_level(logging.ERROR, logger="hblsp"):
        assert guarded(ls, "textDocument/hover", hover)(ls, None) is None
        assert guarded(ls, "textDocument/hover", hover)(ls, None) is None
        assert await guarded(ls, "textDocument/documentSymbol", symbols)(ls, None) is None
    assert reported == ["hblsp: textDocument/hover failed ('boom'); see the hblsp log",
                        "hblsp: textDocument/documentSymbol failed (bang); see the hblsp log"]
    assert sum("KeyError: 'boom'" in r.getMessage() for r in caplog.records) == 2


async def test_every_feature_registers_and_capabilities_are_declared():
    ls = build()
    features = ls.protocol.fm.features
    for method in ("textDocument/didOpen", "textDocument/didChange", "textDocument/didClose",
                   "textDocument/completion", "textDocument/hover", "textDocument/codeAction",
                   "textDocument/documentSymbol", "textDocument/foldingRange", "workspace/didChangeConfiguration"):
        assert method in features, method
    options = ls.protocol.fm.feature_options
    assert options["textDocument/completion"].trigger_characters == [":", ";", "/", ","]
    assert options["textDocument/codeAction"].code_action_kinds == ["quickfix"]
    ls.shutdown()


async def test_the_console_script_also_runs_the_daemon_commands():
    """`hblsp daemon status` reaches hblsp.daemon (not the LSP argument parser)."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as run_dir:  # no developer's daemon socket is found here
        env = {**os.environ, "HBCOMPILE_DAEMON_SOCKET": os.path.join(run_dir, "daemon.sock")}
        out = subprocess.run([sys.executable, "-c", "import sys; from hblsp.server import main; "
                              "sys.exit(main(['daemon', 'status']))"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert out.stdout.strip() == "hblsp daemon: not running" and out.returncode == 1
