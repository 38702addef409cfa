"""hblsp responsiveness: a real `python -m hblsp` over stdio, driven like an editor would.

A 200-line config (every section, comments, node_info for 20 nodes of a 200-node model) is opened,
then edited 200 times (each edit awaited until its diagnostics arrive), completion and hover are
requested 200 times each, and the server's resident memory is read once it is idle.

Printed, against the issue's targets and against the peer measured in the same run — the engine's
own check of the same text in this process (`load_config_text` + the model rules), i.e. what the
CLI spends before it starts converting:
- didChange → publishDiagnostics p50 / p95, server side (from the server's `--log-timings` lines:
  change received → diagnostics sent; debounce set to 0 ms) and as the client sees it (plus the
  pipe both ways); target ≤ 30 ms;
- completion and hover p50 / p95: in the server's handler (`--log-timings`) and as the client sees
  the round trip, including this pygls client turning the JSON answer into objects — an editor's
  own cost, not the server's (target: completion p95 ≤ 10 ms);
- idle RSS of the server with the model read (target ≤ 120 MB).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table  # noqa: E402

EDITS = 200
REQUESTS = 200
TARGETS = {"server_diagnostics_p50_ms": 30.0, "server_diagnostics_p95_ms": 30.0, "server_completion_p95_ms": 10.0,
           "client_completion_p95_ms": 10.0, "idle_rss_mb": 120.0}
TIMING = re.compile(r"diagnostics \S+ v(\d+): \d+ in ([\d.]+) ms after the change")
HANDLER = re.compile(r"(textDocument/completion|textDocument/hover) in ([\d.]+) ms")


def chain_model(path: Path, convs: int = 100) -> list[str]:
    """Conv → Relu × `convs` (200 named nodes), 16 channels at 32×32: a small real network."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "images"
    for i in range(convs):
        cin = 3 if i == 0 else 16
        w = numpy_helper.from_array((rng.standard_normal((16, cin, 3, 3)) * 0.1).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"Conv_{2 * i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"Relu_{2 * i + 1}"))
        x = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 16, 32, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return [n.name for n in nodes]


def config_200_lines(nodes: list[str]) -> str:
    lines = ["# hb_compile config for the chain model (bench)", "model_parameters:",
             "  # the float model and the target", "  onnx_model: model.onnx", "  march: nash-e",
             "  working_dir: model_output", "  output_model_file_prefix: chain", "  node_info:"]
    for name in nodes[:40:2]:
        lines += [f"    {name}:", "      ON: BPU", "      InputType: int8"]
    lines += ["input_parameters:", "  input_name: images", "  input_type_train: rgb", "  input_layout_train: NCHW",
              "  input_type_rt: nv12", "  input_shape: 1x3x32x32", "  mean_value: 123.68 116.78 103.94",
              "  scale_value: 0.0171 0.0175 0.0174", "calibration_parameters:", "  cal_data_dir: calib",
              "  calibration_type: max", "  max_percentile: 0.99999", "  per_channel: false",
              f"  run_on_cpu: {'; '.join(nodes[-4:])}", "compiler_parameters:", "  compile_mode: latency",
              "  optimize_level: O2", "  core_num: 1", "  debug: true", "  jobs: 4", "  advice: 0",
              "  max_time_per_fc: 0"]
    i = 0
    while len(lines) < 200:  # the rest: the kind of comments hb templates are full of
        lines.append(f"# note {i}: calibration images are 32x32 RGB crops, same preprocessing as training")
        i += 1
    return "\n".join(lines) + "\n"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def drive(root: Path, text: str) -> dict:
    import psutil
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("hblsp-bench", "1")
    published: dict[int, tuple[float, int]] = {}

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def on_publish(ls, params: types.PublishDiagnosticsParams) -> None:
        published[params.version] = (time.perf_counter(), len(params.diagnostics))

    async def diagnostics_for(version: int, count: int | None = None, timeout: float = 60.0) -> float:
        deadline = time.perf_counter() + timeout
        while version not in published or (count is not None and published[version][1] != count):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no diagnostics for version {version}")
            await asyncio.sleep(0.0002)
        return published[version][0]

    log = root / "hblsp.log"
    await client.start_io(sys.executable, "-m", "hblsp", "--log-file", str(log), "--log-timings")
    caps = types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
        completion=types.CompletionClientCapabilities(
            completion_item=types.ClientCompletionItemOptions(snippet_support=True),
            completion_list=types.CompletionListCapabilities(item_defaults=["editRange"]))))
    await client.initialize_async(types.InitializeParams(capabilities=caps, root_uri=root.as_uri(),
                                                         initialization_options={"hblsp": {"debounceMs": 0}}))
    client.initialized(types.InitializedParams())
    uri = (root / "chain.hb.yaml").as_uri()
    doc = types.TextDocumentIdentifier(uri)
    lines = text.splitlines()
    march_line = lines.index("  march: nash-e")
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "yaml", 1, text)))
    await diagnostics_for(1)
    for _ in range(400):  # the model is read in the background; wait until completion offers its nodes
        r = await client.text_document_completion_async(types.CompletionParams(doc, types.Position(
            lines.index("  node_info:") + 1, 4)))
        if r and any(i.label == "Conv_0" for i in r.items):
            break
        await asyncio.sleep(0.05)

    change_ms = []
    for v in range(2, EDITS + 2):
        bad = v % 2 == 0  # alternate an invalid march (one diagnostic) and a valid one (none)
        new = "nash-q" if bad else "nash-e"
        rng = types.Range(start=types.Position(march_line, 9), end=types.Position(march_line, 15))
        t = time.perf_counter()
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=v, uri=uri), [types.TextDocumentContentChangePartial(rng, new)]))
        change_ms.append((await diagnostics_for(v, 1 if bad else 0) - t) * 1000)

    positions = [types.Position(lines.index("  input_type_rt: nv12"), 17),  # enum value
                 types.Position(march_line, 9),  # march values
                 types.Position(lines.index("  node_info:") + 1, 4),  # node names as keys
                 types.Position(lines.index("  optimize_level: O2"), 2)]  # keys of a section
    completion_ms, hover_ms = [], []
    for i in range(REQUESTS):
        t = time.perf_counter()
        result = await client.text_document_completion_async(types.CompletionParams(doc, positions[i % 4]))
        completion_ms.append((time.perf_counter() - t) * 1000)
        assert result is not None and result.items
        t = time.perf_counter()
        h = await client.text_document_hover_async(types.HoverParams(doc, positions[i % 4]))
        hover_ms.append((time.perf_counter() - t) * 1000)
        assert h is not None

    await asyncio.sleep(2.0)  # idle: nothing pending
    server = psutil.Process(client._server.pid)
    rss = server.memory_info().rss + sum(c.memory_info().rss for c in server.children(recursive=True))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    logged = log.read_text()
    server_ms = [float(m.group(2)) for m in TIMING.finditer(logged) if int(m.group(1)) >= 2]
    handlers = [(m.group(1), float(m.group(2))) for m in HANDLER.finditer(logged)]
    return {"change_ms": change_ms, "server_ms": server_ms, "completion_ms": completion_ms, "hover_ms": hover_ms,
            "server_completion_ms": [t for name, t in handlers if name.endswith("completion")][-REQUESTS:],
            "server_hover_ms": [t for name, t in handlers if name.endswith("hover")][-REQUESTS:],
            "idle_rss_mb": rss / 2**20}


def peer_ms(root: Path, text: str) -> float:
    """The engine's own check of the same text, in this process (median of 50)."""
    from engine.config import load_config_text
    from engine.config.inputs import check_with_model
    from engine.config.loader import normalize
    from engine.frontend.model_info import read_model_info

    info = read_model_info(root / "model.onnx")
    times = []
    for _ in range(50):
        t = time.perf_counter()
        result = load_config_text(text, root)
        check_with_model(normalize(result.doc.root.to_python())[0], info)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "calib").mkdir()
        nodes = chain_model(root / "model.onnx")
        text = config_200_lines(nodes)
        assert len(text.splitlines()) == 200
        got = asyncio.run(drive(root, text))
        peer = peer_ms(root, text)
    assert len(got["server_ms"]) == EDITS, len(got["server_ms"])
    result = {
        "server_diagnostics_p50_ms": statistics.median(got["server_ms"]),
        "server_diagnostics_p95_ms": pct(got["server_ms"], 0.95),
        "client_diagnostics_p50_ms": statistics.median(got["change_ms"]),
        "client_diagnostics_p95_ms": pct(got["change_ms"], 0.95),
        "server_completion_p50_ms": statistics.median(got["server_completion_ms"]),
        "server_completion_p95_ms": pct(got["server_completion_ms"], 0.95),
        "client_completion_p50_ms": statistics.median(got["completion_ms"]),
        "client_completion_p95_ms": pct(got["completion_ms"], 0.95),
        "server_hover_p95_ms": pct(got["server_hover_ms"], 0.95), "client_hover_p95_ms": pct(got["hover_ms"], 0.95),
        "idle_rss_mb": got["idle_rss_mb"], "engine_check_ms": peer,
    }
    rows = []
    for key, value in result.items():
        target = TARGETS.get(key)
        verdict = "" if target is None else ("ok" if value <= target else "OVER")
        ratio = f"{value / peer:.2f}x" if key.endswith("_ms") and key != "engine_check_ms" else ""
        rows.append((key, f"{value:.1f}", "" if target is None else f"<= {target:g}", verdict, ratio))
    print_table(f"hblsp over stdio: 200-line config, {EDITS} edits, {REQUESTS} completions/hovers "
                "(ratio: to the engine's own in-process check of the same text)", rows,
                ("metric", "value", "target", "", "vs engine check"))
    return result


if __name__ == "__main__":
    main()
