"""hb_compile's modes (reference §2.1): which config a command line stands for.

config (`-c`), fast-perf (`--fast-perf -m --march`), check (`-m --march`). hb_compile's bc
recompile (`-c -m x.bc`) is refused with one line: a `.bc` carries no float model to rebuild
from, and `-c` alone compiles the `.hbm`. fast-perf and check generate their YAML, written beside
their outputs so the run is reproducible and the language server can open it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import yaml

from engine import schema
from engine.problems import HbError, Problem, error

log = logging.getLogger("hbcompile")
FAST_PERF_DIR = Path("model_output")
FAST_PERF_CONFIG = "fast_perf_config.yaml"
_OPTIONS = {("model_parameters", "march"): "--march", ("model_parameters", "prototxt"): "--proto"}


def _fail(code: str, message: str) -> HbError:
    return HbError(error(code, message))


def config_for_mode(args: argparse.Namespace) -> tuple[Path, str | None]:
    if args.fast_perf:
        if args.config:
            raise _fail("cli-mode", f"fast-perf mode is turned on, the incoming config file {args.config} cannot "
                        "be used")
        if not args.model:
            raise _fail("cli-mode", "Please use -m/--model to provide model information")
        return generate_config(args, fast_perf_dir(Path(args.model)), fast_perf=True), None
    if args.config and args.model:
        if not str(args.model).endswith(".bc"):
            raise _fail("cli-mode", "Only recompiling the bc model is supported")
        raise _fail("cli-mode", f"Recompiling a .bc model ({args.model}) is not supported by hbcompile: run "
                    f"-c {args.config} alone, which builds the .hbm from the config's model")
    if args.config:
        if args.input_shape or args.proto or args.march:
            raise _fail("cli-mode", "Invalid parameter configuration: -i/--input-shape, --proto and --march are used "
                        "with -m/--model; with -c put input_shape / prototxt / march in the config")
        return Path(args.config), None
    if args.model:
        if getattr(args, "sensitivity", None) is not None:  # refused before any work: check mode has no calibrate
            raise _fail("cli-mode", "--sensitivity needs the calibrate stage, which check mode (-m/--model without "
                        "-c) does not reach: it stops after optimize; use -c with a config")
        return generate_config(args, Path(".hb_compile"), fast_perf=False), "optimize"
    raise _fail("cli-mode", "The model file or config file is missing, please specify either -m/--model or "
                "-c/--config parameter.")


def fast_perf_dir(model: Path, now: float | None = None) -> Path:
    """Where fast-perf writes: `model_output/`, or `model_output_{timestamp}/` when `model_output/` holds
    another run's artefacts (reference §2.1). A perf-only model built without calibration data must not
    replace a config run's calibrated deliverables (the `.hbm`, node_info, html) nor sit among them; a
    fast-perf run of the same model reuses its own folder (and its cached stages)."""
    if not _holds_other_run(FAST_PERF_DIR, model):
        return FAST_PERF_DIR
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now))
    target, n = Path(f"{FAST_PERF_DIR}_{stamp}"), 1
    while target.exists():
        target, n = Path(f"{FAST_PERF_DIR}_{stamp}_{n}"), n + 1
    log.info(f"{FAST_PERF_DIR}/ holds the artefacts of another run; fast-perf writes to {target}/")
    return target


def _holds_other_run(folder: Path, model: Path) -> bool:
    """True when `folder` has entries and is not an earlier fast-perf run of `model`."""
    try:
        if not folder.is_dir() or not any(folder.iterdir()):
            return False
        generated = yaml.safe_load((folder / FAST_PERF_CONFIG).read_text()) or {}
    except (OSError, yaml.YAMLError):  # no fast-perf config there (a config run's folder) or not ours
        return True
    mp = generated.get("model_parameters") if isinstance(generated, dict) else None
    if not isinstance(mp, dict):
        return True
    return str(mp.get("onnx_model") or mp.get("caffe_model") or "") != str(model.resolve())


def generate_config(args: argparse.Namespace, working_dir: Path, fast_perf: bool) -> Path:
    """A config for a bare model: inputs typed automatically, no calibration data (skip)."""
    if not args.march:
        raise _fail("cli-mode", "--march is required with -m/--model (check and fast-perf modes)")
    if args.march not in schema.marches() and schema.marches():
        raise _fail("cli-mode", f"The specified march '{args.march}' is invalid, the march parameter only supports "
                    f"values in {list(schema.marches())}")
    model = Path(args.model).resolve()
    mp: dict = {"march": args.march, "working_dir": str(working_dir.resolve()),
                "output_model_file_prefix": model.stem}
    if model.suffix == ".caffemodel":
        if not args.proto:
            raise _fail("cli-mode", "Key 'model_parameters' error: Missing keys: 'prototxt' (give --proto)")
        mp.update(caffe_model=str(model), prototxt=str(Path(args.proto).resolve()))
    elif model.suffix == ".onnx":
        if args.proto:
            raise _fail("cli-mode", f"Invalid parameter configuration: --proto {args.proto} is the prototxt of a "
                        f"Caffe model (-m x.caffemodel); {args.model} is an ONNX model")
        mp["onnx_model"] = str(model)
    else:
        raise _fail("model-suffix", f"The file invalid: {args.model}. It should be a '.onnx' or '.caffemodel' file")
    overrides = {name: shape for name, shape in (args.input_shape or [])}
    ip = _auto_inputs(mp, overrides)
    cfg = {"model_parameters": mp, "input_parameters": ip,
           "calibration_parameters": {"calibration_type": "skip"} | ({"optimization": "run_fast"} if fast_perf else {}),
           "compiler_parameters": {"optimize_level": "O2", "compile_mode": "latency"}}
    working_dir.mkdir(parents=True, exist_ok=True)
    path = working_dir / (FAST_PERF_CONFIG if fast_perf else "check_config.yaml")
    path.write_text("# generated by hb_compile " + ("--fast-perf" if fast_perf else "check mode") + "\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
    return path


def _auto_inputs(mp: dict, overrides: dict[str, str]) -> dict:
    """nv12/bgr for 4-D C=3 inputs with even H, W; featuremap otherwise (hb_compile's rule)."""
    from engine.config import values as V
    from engine.frontend.model_info import model_info
    from engine.stages.parse import load_float_model

    paths = {k: Path(mp[k]) for k in ("onnx_model", "caffe_model", "prototxt") if k in mp}
    info = model_info(load_float_model(**paths)[0])
    unknown = [n for n in overrides if n not in info.input_names]
    if unknown:
        raise _fail("input-name-unknown", f"-i/--input-shape names {unknown}, but the model's inputs are "
                    f"{info.input_names}")
    names, trains, rts, layouts, shapes = [], [], [], [], []
    for t in info.inputs:
        try:
            shape = V.parse_shape(overrides[t.name]) if t.name in overrides else (
                tuple(t.shape) if t.is_static else None)
        except V.ValueFormatError:
            raise _fail("input-shape-format", f"-i/--input-shape {t.name} {overrides[t.name]}: expected a shape "
                        "like 1x3x224x224 (dimensions ≥ 1 joined by 'x')") from None
        if shape is None:
            raise _fail("input-dynamic", f"The model is a dynamically input model. Please specify the input shape "
                        f"with -i {t.name} NxCxHxW")
        image = len(shape) == 4 and shape[1] == 3 and shape[2] % 2 == 0 and shape[3] % 2 == 0
        names.append(t.name)
        trains.append("bgr" if image else "featuremap")
        rts.append("nv12" if image else "featuremap")
        layouts.append("NCHW")
        shapes.append(V.format_shape(shape))
    return {"input_name": ";".join(names), "input_type_train": ";".join(trains),
            "input_layout_train": ";".join(layouts), "input_type_rt": ";".join(rts),
            "input_shape": ";".join(shapes)}


def on_command_line(problems: list[Problem], generated: Path, args: argparse.Namespace) -> list[Problem]:
    """Problems placed in a config the tool generated (check / fast-perf mode) told on the option they came
    from: the user wrote `-i data 1x3x16`, not line 12 of `.hb_compile/check_config.yaml`."""
    try:
        names = str((yaml.safe_load(generated.read_text()) or {}).get("input_parameters", {}).get("input_name",
                                                                                                   "")).split(";")
    except (OSError, yaml.YAMLError, AttributeError):
        names = []
    given = dict(args.input_shape or [])
    out = []
    for p in problems:
        if p.file not in (None, str(generated)):
            out.append(p)
            continue
        label = _OPTIONS.get(tuple(p.path[:2]), f"-m/--model {args.model}")
        if tuple(p.path[:2]) == ("input_parameters", "input_shape"):
            item = p.data.get("item")
            name = names[item] if isinstance(item, int) and item < len(names) else None
            if name in given:
                label = f"-i/--input-shape {name} {given[name]}"
            elif len(given) == 1 and item is None:
                label = "-i/--input-shape " + " ".join(next(iter(given.items())))
            elif given:
                label = "-i/--input-shape"
        out.append(dataclasses.replace(p, file=label, span=None))
    return out
