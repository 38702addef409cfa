"""Settings pulled with `workspace/configuration`: file patterns, file checks, bad values named once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lsprotocol import types

from hblsp.settings import DEFAULT_PATTERNS, Settings, parse_settings
from tests.lsp.support import DATA, HbClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

BROKEN = (DATA / "diagnostics" / "file_missing.hb.yaml").read_text().split("# ----")[0]


def configuration_changed(client: HbClient, settings: dict) -> None:
    client.set_configuration(settings, section="hblsp")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))


async def until(predicate, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError


async def test_patterns_and_file_checks_follow_the_settings(client: HbClient, workspace: Path):
    await until(lambda: client.registrations)  # asked to hear about settings changes
    assert [r.method for r in client.registrations] == ["workspace/didChangeConfiguration"]
    other = client.open(workspace / "model.cfg.yaml", BROKEN)  # not an hb name: silent
    known = client.open(workspace / "known.hb.yaml", BROKEN)
    [missing] = await client.wait_diagnostics(known, 1)
    assert missing.code == "file-missing" and other not in client.published

    configuration_changed(client, {"filePatterns": ["*.cfg.yaml"]})
    [d] = await client.wait_diagnostics(other, 1)
    assert d.code == "file-missing"
    await until(lambda: list(client.published[known][-1].diagnostics) == [])  # no longer an hb config

    configuration_changed(client, {"filePatterns": ["*.cfg.yaml"], "checkFiles": False})
    await until(lambda: len(client.published[other]) > 1)
    assert list(client.published[other][-1].diagnostics) == []


async def test_bad_values_keep_defaults_and_are_named(client: HbClient):
    configuration_changed(client, {"debounceMs": "fast", "filePatterns": "*.yaml", "modeline": False})
    await until(lambda: any("hblsp settings" in m.message for m in client.messages))
    [message] = [m for m in client.messages if "hblsp settings" in m.message]
    assert message.type == types.MessageType.Warning
    assert message.message == ("hblsp settings: hblsp.debounceMs: 'fast' is not valid, using 150; "
                               "hblsp.filePatterns: '*.yaml' is not valid, using " + repr(DEFAULT_PATTERNS))
    configuration_changed(client, {"debounceMs": "fast", "filePatterns": "*.yaml", "modeline": True})
    await asyncio.sleep(0.3)  # the same bad values again: not told twice
    assert sum("hblsp settings" in m.message for m in client.messages) == 1


async def test_parse_settings_unit():
    parsed = parse_settings({"debounceMs": 40, "maxModelMegabytes": 0, "completionLimit": True, "unknown": 1})
    assert parsed.settings == Settings(debounce_ms=40)
    assert parsed.problems == ["hblsp.maxModelMegabytes: 0 is not valid, using 1024",
                               "hblsp.completionLimit: True is not valid, using 500"]
    assert parse_settings(None).settings == Settings()
    assert parse_settings([1]).problems == ["settings 'hblsp' must be an object, found list"]
