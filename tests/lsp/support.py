"""The LSP test client and workspace: a real `python -m hblsp` subprocess over stdio (pytest-lsp).

`HbClient` records every `publishDiagnostics` with its version, so a test can wait for the
diagnostics of exactly the version it sent. `make_workspace` writes the models the configs use
(generated with onnx.helper: a 1-input conv model, a 2-input model, a dynamic-batch model, a
file that is not ONNX) and a calibration folder.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import onnx
from lsprotocol import types
from onnx import TensorProto, helper
from pytest_lsp import LanguageClient
from pytest_lsp.client import DEFAULT_CLIENT_FEATURES, register_lsp_features

from tests.conftest import conv_relu_model, two_input_model

DATA = Path(__file__).parent / "data"
SERVER = [sys.executable, "-m", "hblsp"]
SEVERITY = {1: "error", 2: "warning", 3: "info", 4: "hint"}


class HbClient(LanguageClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.published: dict[str, list[types.PublishDiagnosticsParams]] = defaultdict(list)
        self.versions: dict[str, int] = {}
        self.registrations: list[types.Registration] = []

    async def wait_diagnostics(self, uri: str, version: int | None = None, where=None,
                               timeout: float = 20.0) -> list[types.Diagnostic]:
        """The first diagnostics published for `uri` at `version` (and matching `where`, if given)."""
        version = self.versions.get(uri) if version is None else version
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for params in self.published.get(uri, []):
                if params.version == version and (where is None or where(params.diagnostics)):
                    return list(params.diagnostics)
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no diagnostics for {uri} v{version}; got "
                                   f"{[(p.version, len(p.diagnostics)) for p in self.published.get(uri, [])]}")
            await asyncio.sleep(0.005)

    def open(self, path: Path, text: str, language_id: str = "yaml") -> str:
        uri = path.as_uri()
        self.versions[uri] = 1
        self.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=uri, language_id=language_id, version=1, text=text)))
        return uri

    def replace(self, uri: str, text: str) -> int:
        self.versions[uri] += 1
        self.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))
        return self.versions[uri]

    def edit(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> int:
        self.versions[uri] += 1
        rng = types.Range(start=types.Position(*start), end=types.Position(*end))
        self.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangePartial(range=rng, text=text)]))
        return self.versions[uri]

    def close(self, uri: str) -> None:
        self.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))


def publish(client: HbClient, params: types.PublishDiagnosticsParams) -> None:
    client.diagnostics[params.uri] = params.diagnostics
    client.published[params.uri].append(params)


def register_capability(client: HbClient, params: types.RegistrationParams) -> None:
    client.registrations.extend(params.registrations)


def make_client() -> HbClient:
    from pygls.protocol import default_converter

    client = HbClient(converter_factory=default_converter)
    features = dict(DEFAULT_CLIENT_FEATURES)
    features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS] = publish
    features[types.CLIENT_REGISTER_CAPABILITY] = register_capability
    register_lsp_features(client, features)
    return client


def dynamic_model() -> onnx.ModelProto:
    return conv_relu_model(dynamic_batch=True)


def make_workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(conv_relu_model(), str(root / "model.onnx"))
    onnx.save(two_input_model(), str(root / "two.onnx"))
    onnx.save(dynamic_model(), str(root / "dynamic.onnx"))
    (root / "bad.onnx").write_text("this is a text file, not an ONNX protobuf\n" * 3)
    (root / "calib").mkdir(exist_ok=True)
    (root / "calib2").mkdir(exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    onnx.save(conv_relu_model(), str(root / "models" / "nested.onnx"))
    (root / "models" / "notes.txt").write_text("not a model")
    return root


def big_model(path: Path, megabytes: int) -> Path:
    """A valid model whose file is large (one big initializer): slow to hash and read."""
    import numpy as np
    from onnx import numpy_helper

    n = megabytes * 1024 * 1024 // 4
    w = numpy_helper.from_array(np.zeros(n, dtype=np.float32), "big_w")
    g = helper.make_graph([helper.make_node("Add", ["data", "data"], ["output"], name="Add_0"),
                           helper.make_node("Identity", ["big_w"], ["w_out"], name="Keep_1")], "big",
                          [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8]),
                           helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [n])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


# ---- comparing diagnostics -------------------------------------------------------------------

def fmt_range(r: types.Range) -> str:
    return f"{r.start.line}:{r.start.character}-{r.end.line}:{r.end.character}"


def fmt(d: types.Diagnostic) -> str:
    """`line:char-line:char severity code: message` (LSP positions, 0-based)."""
    return f"{fmt_range(d.range)} {SEVERITY[int(d.severity)]} {d.code}: {d.message}"


EXPECT = re.compile(r"^# expect: (?P<range>\d+:\d+-\d+:\d+) (?P<severity>\w+) (?P<code>[\w-]+): (?P<message>.*)$")


@dataclass(frozen=True)
class Expected:
    range: str
    severity: str
    code: str
    message: str  # a fragment of the message

    def matches(self, d: types.Diagnostic) -> bool:
        return (fmt_range(d.range) == self.range and SEVERITY[int(d.severity)] == self.severity
                and d.code == self.code and self.message in d.message)


def expectations(text: str) -> list[Expected]:
    """`# expect: ...` comment lines of a corpus file (LSP ranges, 0-based)."""
    return [Expected(**m.groupdict()) for line in text.splitlines() if (m := EXPECT.match(line))]


def cli_accepts(config: Path) -> tuple[int, str]:
    """Run the real CLI's config + parse stages (model read, inputs resolved) on a config file."""
    import contextlib
    import io

    from engine.cli import main

    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(config.parent)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(["-c", str(config), "--until", "parse"])
    finally:
        os.chdir(cwd)
    return code, out.getvalue()

