"""Package the `.bc` into the `.hbm`: resolve the compiler parameters, optimize the program, write the manifest.

The compile stage calls `build_hbm(bc, options)` then `HbmBuild.write(path)`; caching and config
loading stay with the pipeline. The manifest (docs/formats.md) is what `engine.runtime` and
`hb_model_info` read without opening the program: march, the runtime-view input specs (rt type,
layout, shape, dtype, input_source), output specs, the parameters of removed boundary nodes, and
build info (tool version, config hash, compile parameters, optimization applied, timestamp,
checksums of the `.bc` it came from and of the program it holds).

`ProgramMemo` keeps optimized programs by what they are computed from — the stamped program's
sha256, the level, and the implementation (the source of the optimizer and of what it runs, and the
onnx / onnxruntime / numpy versions): O2's rewrites check themselves bit for bit in onnxruntime
(0.34 CPU s on PP-OCRv4 det, 20 ms on digits), and a compile_mode / balance / advice / jobs edit
builds the same program again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import onnx

from engine import __version__
from engine.compile.hbm import FORMAT_VERSION, write_hbm
from engine.compile.optimize import OptimizeResult, optimize_program
from engine.compile.params import CompileOptions, default_source
from engine.compile.partition import stamp_placement
from engine.compile.program import (
    CONFIG_SHA256,
    MARCH,
    REMOVED_NODES,
    STAGE,
    io_specs,
    json_metadata,
    metadata,
)
from engine.quantize.types import QuantPlan

log = logging.getLogger("hbcompile")
# what optimize_program's result depends on besides its input: these modules' source and versions
OPTIMIZER_MODULES = ("engine.compile.optimize", "engine.compile.program", "engine.runtime.session",
                     "engine.runtime.feeds")
MEMO_VERSION = 1  # of ProgramMemo's file format


@dataclass
class HbmBuild:
    program: onnx.ModelProto
    manifest: dict[str, Any]
    optimize: OptimizeResult
    program_bytes: bytes = field(repr=False, default=b"")

    def write(self, path: str | Path) -> Path:
        return write_hbm(path, self.program_bytes or self.program.SerializeToString(), self.manifest)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@cache
def optimizer_version() -> str:
    """A digest of the optimizer's implementation: its modules' source and the libraries it runs."""
    import importlib.util

    import numpy as np
    import onnxruntime as ort

    h = hashlib.sha256(json.dumps([MEMO_VERSION, onnx.__version__, ort.__version__, np.__version__]).encode())
    for name in OPTIMIZER_MODULES:
        origin = importlib.util.find_spec(name).origin
        h.update(name.encode() + b"\0" + Path(origin).read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ProgramMemo:
    """Optimized programs in `folder`, one file each (a JSON line, then the program's bytes), named
    `memo_name(owner, …)`: `owner` is the stage entry of the `.bc` (quantize's), pruned with it.
    Only an accelerator: a missing or unreadable file is optimized again."""

    folder: Path
    owner: str

    def path(self, program: bytes, level: str) -> Path:
        from engine.pipeline.cache import memo_name

        key = _sha256(json.dumps([_sha256(program), level, optimizer_version()]).encode())[:32]
        return self.folder / memo_name(self.owner, f"{key}.opt")

    def optimize(self, program: onnx.ModelProto, level: str) -> tuple[OptimizeResult, bytes]:
        """`optimize_program(program, level)` and the optimized program's bytes, from the memo when there."""
        from engine.pipeline.cache import atomic_write_bytes

        path = self.path(program.SerializeToString(), level)
        try:
            head, body = path.read_bytes().split(b"\n", 1)
            meta = json.loads(head)
            optimized = onnx.ModelProto()
            optimized.ParseFromString(body)
            return OptimizeResult(optimized, meta["level"], meta["rewrites"], meta["fallback"], meta["checked"]), body
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # protobuf's DecodeError is a ValueError
            if not isinstance(e, FileNotFoundError):
                log.debug(f"optimized program memo {path.name} unreadable ({e}); optimizing again")
        result = optimize_program(program, level)
        body = result.program.SerializeToString()
        head = json.dumps({"level": result.level, "rewrites": result.rewrites, "fallback": result.fallback,
                           "checked": result.checked}).encode()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, head + b"\n" + body)
        except OSError as e:
            log.debug(f"optimized program memo {path.name} not saved: {e}")
        return result, body


def build_hbm(bc: onnx.ModelProto, options: CompileOptions, *, plan: QuantPlan | None = None,
              config_sha256: str | None = None, timestamp: str | None = None, source_name: str = "",
              memo: ProgramMemo | None = None) -> HbmBuild:
    """The `.hbm` contents for `bc` (a `.bc` or `*_quantized_removed_model.bc`).

    With the `plan` the `.bc` was lowered from, the program also records the plan's placement
    (``hbcompile.placement``, metadata only) so tools partition the `.hbm` as the plan did.
    `memo`: optimized programs kept across runs (the compile stage's).
    """
    meta = metadata(bc)
    source_sha256 = _sha256(bc.SerializeToString())
    if plan is not None:
        stamped = onnx.ModelProto()
        stamped.CopyFrom(bc)
        stamp_placement(stamped, plan)
        bc = stamped
    if memo is not None:
        result, program_bytes = memo.optimize(bc, options.optimize_level)
    else:
        result = optimize_program(bc, options.optimize_level)
        program_bytes = result.program.SerializeToString()
    inputs, outputs = io_specs(bc, "runtime")
    for spec in inputs:
        spec["input_source"] = options.input_source.get(spec["name"]) or default_source(spec.get("input_type_rt"))
    opsets = {(o.domain or "ai.onnx"): o.version for o in result.program.opset_import}
    manifest = {
        "format": "hbcompile.hbm",
        "format_version": "{}.{}".format(*FORMAT_VERSION),
        "march": options.march or meta.get(MARCH, ""),
        "inputs": inputs,
        "outputs": outputs,
        "removed_nodes": json_metadata(bc, REMOVED_NODES, []) or [],
        "build": {
            "tool": "hbcompile",
            "version": __version__,
            "config_sha256": config_sha256 if config_sha256 is not None else meta.get(CONFIG_SHA256, ""),
            "compiler_parameters": options.to_json(),
            "timestamp": timestamp or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {"name": source_name, "stage": meta.get(STAGE, ""),
                       "sha256": source_sha256},
            "optimize": {"level": options.optimize_level, "rewrites": result.rewrites,
                         "fallback": result.fallback, "checked_bit_exact": result.checked},
        },
        "program": {"format": "onnx", "ir_version": result.program.ir_version, "opsets": opsets,
                    "nodes": len(result.program.graph.node), "sha256": _sha256(program_bytes)},
    }
    return HbmBuild(result.program, manifest, result, program_bytes)
