"""Package the `.bc` into the `.hbm`: resolve the compiler parameters, optimize the program, write the manifest.

The compile stage calls `build_hbm(bc, options)` then `HbmBuild.write(path)`; caching and config
loading stay with the pipeline. The manifest (docs/formats.md) is what `engine.runtime` and
`hb_model_info` read without opening the program: march, the runtime-view input specs (rt type,
layout, shape, dtype, input_source), output specs, the parameters of removed boundary nodes, and
build info (tool version, config hash, compile parameters, optimization applied, timestamp,
checksums of the `.bc` it came from and of the program it holds).

`ProgramMemo` keeps optimized programs by what they are computed from (`program_key`) — the `.bc`'s
sha256 (the compile stage hashes the file it reads), the placement stamped into it, the level, and
the implementation (the source of the optimizer and of what it runs, and the onnx / onnxruntime /
numpy versions): O2's rewrites check themselves bit for bit in onnxruntime (0.34 CPU s on PP-OCRv4
det, 20 ms on digits), and a compile_mode / balance / advice / jobs edit builds the same program
again — from the memo, without copying, stamping or serializing the `.bc`. A file is found by its key
under any owner (`ProgramMemo.found`): a calibration change that moves no threshold writes the same
`.bc` into a new quantize entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
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
from engine.compile.partition import placement_table, stamp_placement
from engine.compile.program import (
    CONFIG_SHA256,
    MARCH,
    REMOVED_NODES,
    STAGE,
    TensorType,
    io_specs,
    json_metadata,
    kept_types,
    metadata,
    tensor_types,
)
from engine.pipeline.recent import Recent
from engine.quantize.types import QuantPlan
from engine.runtime.threads import plan_for

log = logging.getLogger("hbcompile")
# what optimize_program's result depends on besides its input: these modules' source and versions
OPTIMIZER_MODULES = ("engine.compile.optimize", "engine.compile.program", "engine.runtime.session",
                     "engine.runtime.feeds")
# of ProgramMemo's file format and key (2: keyed by the `.bc`'s sha256 and the placement stamped into it, so a
# hit neither copies and stamps the `.bc` nor serializes and hashes the stamped copy)
MEMO_VERSION = 2
LEVELS_KEEPING_TYPES = ("O0", "O1")  # optimize.py: O0 is the `.bc`; O1 only drops and rewires nodes and constants


FAMILY_KEEP = 8  # `.bc`s whose O0 / O1 program types are kept
_family_types: Recent[str, dict[str, TensorType]] = Recent(FAMILY_KEEP)  # `.bc` sha256 → its O0 / O1 programs' types


@dataclass
class HbmBuild:
    program: onnx.ModelProto
    manifest: dict[str, Any]
    optimize: OptimizeResult
    program_bytes: bytes = field(repr=False)

    def write(self, path: str | Path, atomic: bool = True) -> Path:
        """The `.hbm` file; the manifest's program sha256 is of `program_bytes`: not hashed again."""
        return write_hbm(path, self.program_bytes, self.manifest, atomic=atomic, program_sha256=self.program_sha256)

    @property
    def program_sha256(self) -> str:
        return self.manifest["program"]["sha256"]

    def tensor_types(self) -> dict[str, TensorType]:
        """The program's `tensor_types`. A program at O0 or O1 (or O2 fallen back to O1) keeps each
        value of its `.bc` it keeps at all with its name and type, so every such program of one `.bc`
        gives the same type for a name: one read from another level's program (`kept_types`) when
        it has every value — an optimize_level edit between O0 and O1 of digits (O1 shares and
        drops constants only) does not load the program in onnxruntime again."""
        if not (self.optimize.level in LEVELS_KEEPING_TYPES or self.optimize.fallback):
            return tensor_types(self.program, self.program_sha256)
        source = self.manifest["build"]["source"]["sha256"]
        family = _family_types.get(source) or {}
        types = tensor_types(self.program, self.program_sha256,
                             derive=lambda: kept_types(self.program, family) if family else None)
        _family_types.put(source, {**family, **types})
        return types


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


def program_key(source_sha256: str, placement: str | None, level: str) -> str:
    """What an optimized program is computed from: the `.bc` (the sha256 of its bytes), the placement
    stamped into it (`placement_table`'s JSON, None without a plan), the level and the optimizer's
    implementation (`optimizer_version`)."""
    stamp = _sha256(placement.encode()) if placement is not None else None
    return _sha256(json.dumps([MEMO_VERSION, source_sha256, stamp, level, optimizer_version()]).encode())[:32]


@dataclass(frozen=True)
class ProgramMemo:
    """Optimized programs in `folder`, one file each (a JSON line, then the program's bytes), named
    `memo_name(owner, program_key)`: `owner` is the stage entry of the `.bc` (quantize's), pruned
    with it. Only an accelerator: a missing or unreadable file is optimized again."""

    folder: Path
    owner: str

    def path(self, key: str) -> Path:
        from engine.pipeline.cache import memo_name

        return self.folder / memo_name(self.owner, f"{key}.opt")

    def found(self, key: str) -> Path:
        """This owner's file of `key`, or one another owner filed (linked under this owner's name, so it lives as
        long as this owner too): the key names everything the program is made from, the owner only how long it is
        kept. A calibration change that leaves the `.bc` byte for byte as it was (thresholds unmoved) gives a new
        quantize entry and the same key (PP-OCRv4 det: O2 0.64 CPU s saved)."""
        from engine.pipeline.cache import memo_name

        path = self.path(key)
        if path.is_file():
            return path
        other = next(self.folder.glob(memo_name("*", f"{key}.opt")), None)  # the owner part as a wildcard
        if other is None:
            return path
        try:
            os.link(other, path)
        except FileExistsError:  # another run linked it meanwhile
            pass
        except OSError:  # links refused (or the file pruned meanwhile: then read as missing)
            return other
        return path

    def optimize(self, key: str, level: str, program: Callable[[], onnx.ModelProto]) -> tuple[OptimizeResult, bytes]:
        """`optimize_program(program(), level)` and the optimized program's bytes, from the memo file
        of `key` (`program_key`, this owner's or another's) when there: `program` is only called to optimize."""
        from engine.pipeline.cache import atomic_write_bytes

        path = self.found(key)
        try:
            head, body = path.read_bytes().split(b"\n", 1)
            meta = json.loads(head)
            optimized = onnx.ModelProto()
            optimized.ParseFromString(body)
            return OptimizeResult(optimized, meta["level"], meta["rewrites"], meta["fallback"], meta["checked"]), body
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # protobuf's DecodeError is a ValueError
            if not isinstance(e, FileNotFoundError):
                log.debug(f"optimized program memo {path.name} unreadable ({e}); optimizing again")
        result = optimize_program(program(), level)
        body = result.program.SerializeToString()
        head = json.dumps({"level": result.level, "rewrites": result.rewrites, "fallback": result.fallback,
                           "checked": result.checked}).encode()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path(key), head + b"\n" + body)
        except OSError as e:
            log.debug(f"optimized program memo {self.path(key).name} not saved: {e}")
        return result, body


def build_hbm(bc: onnx.ModelProto, options: CompileOptions, *, plan: QuantPlan | None = None,
              config_sha256: str | None = None, timestamp: str | None = None, source_name: str = "",
              memo: ProgramMemo | None = None, source_sha256: str | None = None,
              threads: bool = False) -> HbmBuild:
    """The `.hbm` contents for `bc` (a `.bc` or `*_quantized_removed_model.bc`).

    With the `plan` the `.bc` was lowered from, the program also records the plan's placement
    (``hbcompile.placement``, metadata only) so tools partition the `.hbm` as the plan did.
    `memo`: optimized programs kept across runs (the compile stage's). `source_sha256`: the sha256
    of `bc`'s bytes when the caller read them from its file (else `bc` is serialized to take it).
    `threads`: decide the program's `ThreadPlan` (`plan_for`: one thread for small kernels, else the
    whole budget) and record it in the manifest (``build.threads``), so the runtime opens the `.hbm`
    with the threads that make it fastest; False: no plan (the runtime uses the whole thread budget).
    """
    meta = metadata(bc)
    source_sha256 = source_sha256 or _sha256(bc.SerializeToString())
    placement = json.dumps(placement_table(plan), sort_keys=True) if plan is not None else None

    def stamped() -> onnx.ModelProto:
        if placement is None:
            return bc
        program = onnx.ModelProto()
        program.CopyFrom(bc)
        stamp_placement(program, plan)
        return program

    if memo is not None and options.optimize_level != "O0":  # O0 is the stamped `.bc` itself: nothing to keep
        result, program_bytes = memo.optimize(program_key(source_sha256, placement, options.optimize_level),
                                              options.optimize_level, stamped)
    else:
        result = optimize_program(stamped(), options.optimize_level)
        program_bytes = result.program.SerializeToString()
    inputs, outputs = io_specs(bc, "runtime", source_sha256)  # the placement stamp changes neither
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
    build = HbmBuild(result.program, manifest, result, program_bytes)
    if threads:  # the types are the perf estimate's too (kept by the program's digest)
        manifest["build"]["threads"] = plan_for(result.program, build.tensor_types()).to_json()
    return build
