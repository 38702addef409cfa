"""Hostile input: each gets a diagnostic (or is refused at the transport), and the server keeps answering."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from lsprotocol import types

from tests.lsp.support import DATA, HbClient, fmt

pytestmark = pytest.mark.asyncio(loop_scope="module")

GOOD = (DATA / "diagnostics" / "good.hb.yaml").read_text().split("# ----")[0]


async def still_answers(client: HbClient, workspace: Path) -> None:
    uri = client.open(workspace / f"alive_{random.random():.6f}.hb.yaml", GOOD)
    h = await client.text_document_hover_async(types.HoverParams(types.TextDocumentIdentifier(uri),
                                                                 types.Position(2, 3)))
    assert h is not None and h.contents.value.startswith("**march**")
    assert await client.wait_diagnostics(uri, 1) == []
    client.close(uri)


async def only(client: HbClient, uri: str) -> str:
    [d] = await client.wait_diagnostics(uri, 1)
    return fmt(d)


async def test_binary_garbage(client: HbClient, workspace: Path):
    garbage = random.Random(7).randbytes(20000).decode("latin-1")
    uri = client.open(workspace / "garbage.hb.yaml", garbage)
    assert await only(client, uri) == ("0:0-0:1 error yaml-binary: The config is not a text file "
                                       "(it contains NUL bytes)")
    await still_answers(client, workspace)


async def test_ten_megabytes(client: HbClient, workspace: Path):
    text = GOOD + "# padding padding padding padding padding padding padding padding padding padding\n" * 130_000
    assert len(text) > 10_000_000
    uri = client.open(workspace / "huge.hb.yaml", text)
    assert await only(client, uri) == (f"0:0-0:1 error config-too-big: The config is {len(text)} bytes; a config "
                                       "is expected to be under 1000000 bytes")
    await still_answers(client, workspace)


async def test_deep_nesting(client: HbClient, workspace: Path):
    uri = client.open(workspace / "deep.hb.yaml", "model_parameters: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert (await only(client, uri)).startswith("0:1017-0:1018 error yaml-syntax: yaml file parse failed: while "
                                                "increasing flow level, exceeded maximum nesting depth")
    block = "".join(" " * i + f"k{i}:\n" for i in range(1200))
    uri = client.open(workspace / "deep_block.hb.yaml", block)
    assert " error yaml-syntax: " in await only(client, uri)
    await still_answers(client, workspace)


async def test_billion_laughs(client: HbClient, workspace: Path):
    levels = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
    uri = client.open(workspace / "laughs.hb.yaml", "\n".join(levels) + "\n")
    assert (await only(client, uri)).endswith("error yaml-alias: YAML anchors and aliases (&, *) are not allowed "
                                               "in a config")
    await still_answers(client, workspace)


async def test_invalid_utf8_in_the_text(client: HbClient, workspace: Path):
    """A lone surrogate (how undecodable bytes reach a JSON string) is reported, not crashed on."""
    uri = client.open(workspace / "surrogate.hb.yaml", GOOD.replace("nash-e", "nash-\udcff"))
    assert await only(client, uri) == "2:14-2:15 error config-encoding: The config is not UTF-8 text (byte 57)"
    await still_answers(client, workspace)


async def test_invalid_utf8_on_the_wire(client: HbClient, workspace: Path):
    """A message whose body is not UTF-8 is dropped by the transport; the next one is served."""
    body = json.dumps({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": (workspace / "wire.hb.yaml").as_uri(), "languageId": "yaml", "version": 1,
        "text": "XX"}}}).encode().replace(b"XX", b"\xff\xfe\xc3(")
    client._server.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    await still_answers(client, workspace)
    assert (workspace / "wire.hb.yaml").as_uri() not in client.published


async def test_model_that_is_not_onnx(client: HbClient, workspace: Path, tmp_path: Path):
    fake = tmp_path / "weights.onnx"
    fake.write_bytes(os.urandom(4096))
    uri = client.open(workspace / "fake_model.hb.yaml", GOOD.replace("onnx_model: model.onnx",
                                                                     f"onnx_model: {fake}"))
    [d] = await client.wait_diagnostics(uri, 1, where=lambda ds: len(ds) == 1)
    assert (d.code, d.range.start.line, d.range.start.character) == ("model-invalid", 1, 14)
    assert d.message.startswith(f"Onnx file invalid: '{fake}': ")
    await still_answers(client, workspace)


async def test_requests_for_unknown_documents(client: HbClient, workspace: Path):
    ghost = types.TextDocumentIdentifier((workspace / "never_opened.hb.yaml").as_uri())
    assert await client.text_document_hover_async(types.HoverParams(ghost, types.Position(0, 0))) is None
    assert await client.text_document_completion_async(types.CompletionParams(ghost, types.Position(0, 0))) is None
    assert await client.text_document_code_action_async(types.CodeActionParams(
        ghost, types.Range(start=types.Position(0, 0), end=types.Position(0, 0)),
        types.CodeActionContext(diagnostics=[]))) is None
    uri = client.open(workspace / "short.hb.yaml", "model_parameters:\n")
    far = await client.text_document_hover_async(types.HoverParams(types.TextDocumentIdentifier(uri),
                                                                   types.Position(40, 300)))
    assert far is None
    await still_answers(client, workspace)
