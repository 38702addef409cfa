"""Package the `.bc` into the `.hbm`: resolve the compiler parameters, optimize the program, write the manifest.

The compile stage calls `build_hbm(bc, options)` then `HbmBuild.write(path)`; caching and config
loading stay with the pipeline. The manifest (docs/formats.md) is what `engine.runtime` and
`hb_model_info` read without opening the program: march, the runtime-view input specs (rt type,
layout, shape, dtype, input_source), output specs, the parameters of removed boundary nodes, and
build info (tool version, config hash, compile parameters, optimization applied, timestamp,
checksums of the `.bc` it came from and of the program it holds).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
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


def build_hbm(bc: onnx.ModelProto, options: CompileOptions, *, plan: QuantPlan | None = None,
              config_sha256: str | None = None, timestamp: str | None = None, source_name: str = "") -> HbmBuild:
    """The `.hbm` contents for `bc` (a `.bc` or `*_quantized_removed_model.bc`).

    With the `plan` the `.bc` was lowered from, the program also records the plan's placement
    (``hbcompile.placement``, metadata only) so tools partition the `.hbm` as the plan did.
    """
    meta = metadata(bc)
    source_sha256 = _sha256(bc.SerializeToString())
    if plan is not None:
        stamped = onnx.ModelProto()
        stamped.CopyFrom(bc)
        stamp_placement(stamped, plan)
        bc = stamped
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
