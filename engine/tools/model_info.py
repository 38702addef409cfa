"""`hb_model_info FILE [-v]`: what a `.onnx`, `.bc` or `.hbm` holds, in hb's model-summary layout.

Prints the deps (tool that built it, opsets, the onnxruntime here), the stored parameters
(march, stage, config hash, compile parameters of an `.hbm`), one block per input (both views,
mean / scale, runtime tensor, input_source) and per output, and ``deleted nodes: NAME`` for every
removed boundary node. ``-v`` adds the node table (``Node ON Subgraph Type``) and the `.hbm` build
info. A missing or damaged file is one ``ERROR`` line and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.problems import HbError

RULE = "#############"


def _fmt(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return "".join(f"{v}," for v in value)  # hb: comma-joined with a trailing comma
    return str(value)


def _shape(shape: Any) -> str:
    return "x".join(str(d) for d in shape) if shape else "None"


BRIEF_ITEMS = 4  # values of a long per-channel list shown without -v


def _brief(value, verbose: bool):
    """A removed node's per-channel scales / zero points shortened (1000 of them made a 30 kB line):
    the first few, then how many and their range; all of them with -v."""
    if verbose:
        return value
    if isinstance(value, dict):
        return {k: _brief(v, verbose) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 2 * BRIEF_ITEMS and all(isinstance(v, (int, float)) for v in value):
        return [*value[:BRIEF_ITEMS], f"… {len(value)} values in [{min(value):g}, {max(value):g}] (-v: all)"]
    return value


def describe(path: str | Path, verbose: bool = False) -> list[str]:
    """The lines `hb_model_info` prints for `path`."""
    import onnxruntime as ort

    from engine.compile.partition import NODE_TABLE_HEADER, format_table, node_table, partition
    from engine.compile.program import CONFIG_SHA256, MARCH, STAGE, VERSION, metadata
    from engine.runtime.model import load
    from engine.runtime.threads import plan_of

    model = load(path)
    meta = metadata(model.program)
    build = model.manifest.get("build", {})
    lines = [f"{RULE} model deps info {RULE}",
             f"hbcompile version: {build.get('version') or meta.get(VERSION, 'unknown')}",
             f"model format: {model.format}" + (f" (.hbm format {model.manifest.get('format_version')})"
                                                if model.format == "hbm" else ""),
             "opsets: " + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.program.opset_import),
             f"onnxruntime version: {ort.__version__}",
             f"{RULE} model_parameters info {RULE}",
             f"model file: {path}",
             f"BPU march: {model.manifest.get('march') or meta.get(MARCH, 'None')}",
             f"stage: {build.get('source', {}).get('stage') or meta.get(STAGE, 'None')}",
             f"config sha256: {build.get('config_sha256') or meta.get(CONFIG_SHA256, 'None')}"]
    for spec in model.inputs:
        info = spec.info
        lines += [f"---------input info : {spec.name} ---------",
                  f"input_name: {spec.name}",
                  f"input_type_rt: {info.get('input_type_rt', 'None')}",
                  f"input_space&range: {info.get('input_space_and_range', 'None')}",
                  f"input_layout_rt: {info.get('input_layout_rt', 'None')}",
                  f"input_type_train: {info.get('input_type_train', 'None')}",
                  f"input_layout_train: {info.get('input_layout_train', 'None')}",
                  f"norm_type: {info.get('norm_type', 'None')}",
                  f"input_shape: {_shape(info.get('train_shape') or spec.shape)}",
                  f"mean_value: {_fmt(info.get('mean_value'))}",
                  f"scale_value: {_fmt(info.get('scale_value'))}",
                  f"std_value: {_fmt(info.get('std_value'))}",
                  f"tensor: {spec.describe()}"]
        if "input_source" in info:
            lines.append(f"input_source: {info['input_source']}")
        if spec.quantization:
            lines.append(f"quantization: {json.dumps(_brief(spec.quantization, verbose))}")
    for spec in model.outputs:
        lines += [f"---------output info : {spec.name} ---------", f"tensor: {spec.dtype} {_shape(spec.shape)}"]
        if spec.quantization:
            lines.append(f"quantization: {json.dumps(_brief(spec.quantization, verbose))}")
    params = build.get("compiler_parameters")
    if params:
        lines.append(f"{RULE} compiler_parameters info {RULE}")
        lines += [f"{k}: {v}" for k, v in params.items() if k != "march"]
        opt = build.get("optimize", {})
        if opt:
            lines.append(f"optimize: {opt.get('level')} {json.dumps(opt.get('rewrites', {}))}"
                         + (f" (fell back: {opt['fallback']})" if opt.get("fallback") else ""))
    plan = plan_of(model.manifest)
    if plan is not None:
        lines.append(plan.describe())
    removed = model.manifest.get("removed_nodes") or [r for s in (*model.inputs, *model.outputs)
                                                       for r in s.info.get("removed_nodes", [])]
    lines += [f"deleted nodes: {r.get('name')}" for r in removed]
    if verbose:
        lines += ["", "The model node information:",
                  format_table(NODE_TABLE_HEADER, node_table(partition(model.program)))]
        if build:
            lines += ["", "build info:", json.dumps(build, indent=1, sort_keys=True)]
    return lines


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hb_model_info", description="Show what a .onnx / .bc / .hbm model holds.")
    parser.add_argument("model", help="model file (.onnx, .bc or .hbm)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print the node table and build info")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        for line in describe(args.model, args.verbose):
            print(line)
    except HbError as exc:
        for p in exc.problems:
            print(f"ERROR {p.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
