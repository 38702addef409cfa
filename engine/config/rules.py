"""Semantic rules over a schema-valid config: the cross-key checks JSON Schema cannot say.

Each rule is a small function registered with `@rule`, reading a `RuleContext` and yielding
`Problem`s at key paths. The CLI and the language server run the same list. Rules that need the
model (input names, shapes, node names) live in `engine.config.model_rules` and run once the
model is known.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from engine import schema
from engine.config import values as V
from engine.config.quant_config import QuantConfig, read_quant_config
from engine.config.schema_check import (
    deprecated_here,
    deprecation_text,
    format_error,
    input_batch_range,
    input_batch_range_error,
    march_generation,
)
from engine.problems import HbError, Problem, error, warning

MP, IP, CP, XP, CO = ("model_parameters", "input_parameters", "calibration_parameters",
                      "compiler_parameters", "custom_op")

PER_INPUT_KEYS = ("input_name", "input_type_train", "input_layout_train", "input_type_rt", "input_layout_rt",
                  "input_space_and_range", "input_shape", "norm_type", "mean_value", "scale_value", "std_value")
IMAGE_CHANNELS = {"rgb": 3, "bgr": 3, "yuv444": 3, "yuv444_128": 3, "yuv_bt601_full": 3, "yuv_bt601_video": 3,
                  "gray": 1}
_DEFAULT_PAIRS = {  # reference §9; the schema's x-hb-train-rt-pairs wins when present
    "rgb": ["rgb", "bgr", "nv12", "yuv444", "yuv444_128", "yuv420sp_bt601_video"],
    "bgr": ["bgr", "rgb", "nv12", "yuv444", "yuv444_128", "yuv420sp_bt601_video"],
    "yuv444": ["yuv444", "yuv444_128", "nv12"],
    "gray": ["gray"],
    "featuremap": ["featuremap"],
}


@dataclass(frozen=True)
class RuleContext:
    data: dict[str, dict[str, Any]]
    base_dir: Path
    check_files: bool = True
    read_model: bool = True  # False: the caller compares the lists with the model itself (hblsp, off its event loop)

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.data.get(section, {}).get(key, default)

    @cached_property
    def quant(self) -> QuantConfig:
        """quant_config read and mapped once per load (the rule reports its problems, the loader builds
        the Config's options from the same result)."""
        return read_quant_config(self.get(CP, "quant_config"), self.base_dir, self.data.get(CP, {}), self.check_files)

    def has(self, section: str, key: str) -> bool:
        return key in self.data.get(section, {})

    def path(self, section: str, key: str) -> Path | None:
        v = self.get(section, key)
        return None if v is None else V.resolve_path(v, self.base_dir)

    def per_input(self, key: str) -> list[str | None]:
        return V.split_list(self.get(IP, key))

    @cached_property
    def model_inputs(self) -> list[str] | None:
        """The input names of the ONNX model the config names, when it can be read (files checked only):
        what decides between per-input lists that disagree. Read on demand, never for a config whose
        lists agree (the model rules compare those with the model once it is parsed)."""
        if not (self.check_files and self.read_model) or not isinstance(self.get(MP, "onnx_model"), str):
            return None
        return model_input_names(self.path(MP, "onnx_model"))


def model_input_names(path: Path) -> list[str] | None:
    """An ONNX file's graph inputs (initializers excluded; external weight files not read), memoised per file version
    (`path_stamp`: a model replaced by a same-size file with its mtime put back, as `cp -p` or a rename does, is
    another version); None when it cannot be read (the parse stage says why)."""
    from engine.pipeline.hashing import path_stamp  # here: engine.pipeline's package imports engine.config

    stamp = path_stamp(path)
    names = None if stamp is None else _onnx_input_names(*stamp)
    return None if names is None else list(names)


@lru_cache(maxsize=8)
def _onnx_input_names(path: str, *version: int) -> tuple[str, ...] | None:
    from engine.frontend.model_info import read_model_info

    try:
        return tuple(read_model_info(path).input_names)
    except (HbError, OSError, ValueError):
        return None


Rule = Callable[[RuleContext], Iterable[Problem]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def run_rules(ctx: RuleContext) -> list[Problem]:
    out: list[Problem] = []
    for fn in RULES:
        out.extend(fn(ctx))
    return out


def legal_pairs() -> dict[str, list[str]]:
    return schema.train_rt_pairs() or _DEFAULT_PAIRS


def accepted_rts(train: str | None) -> set[str] | None:
    """The input_type_rt values an input of input_type_train `train` converts to (itself among them; reference
    §9), None for a train type the pairs do not list: what the check accepts and completion offers."""
    pairs = legal_pairs()
    return {train, *pairs[train]} if train in pairs else None


# ---------------------------------------------------------------- model_parameters

@rule
def model_file(ctx: RuleContext) -> Iterator[Problem]:
    has_onnx, has_caffe = ctx.has(MP, "onnx_model"), ctx.has(MP, "caffe_model") or ctx.has(MP, "prototxt")
    if has_onnx and has_caffe:
        yield error("model-both", "It is not supported to specify both onnx_model and caffe_model, please specify it "
                    "based on the actual", (MP, "caffe_model" if ctx.has(MP, "caffe_model") else "prototxt"))
        return
    if not has_onnx and not has_caffe:
        if MP in ctx.data:
            yield error("model-missing", "The model file has not been correctly specified, please specify the "
                        "caffe_model or the onnx_model in your yaml config file", (MP,), data={"on_key": True})
        return
    if has_caffe:
        missing = [k for k in ("caffe_model", "prototxt") if not ctx.has(MP, k)]
        if missing:
            yield error("missing-key", "Key 'model_parameters' error: Missing keys: "
                        + ", ".join(f"'{k}'" for k in missing), (MP,), data={"on_key": True, "missing": missing})
    for key in ("onnx_model", "caffe_model", "prototxt"):
        if not ctx.has(MP, key):
            continue
        p = ctx.path(MP, key)
        suffix = (schema.key_schema(MP, key) or {}).get("x-hb-suffix") or {
            "onnx_model": ".onnx", "caffe_model": ".caffemodel", "prototxt": ".prototxt"}[key]
        if p.suffix.lower() != suffix:
            yield error("model-suffix", f"The file invalid: {ctx.get(MP, key)}. It should be a '{suffix}' file",
                        (MP, key))
        elif ctx.check_files and not p.is_file():
            yield error("file-missing", f"Can not find file specified: {ctx.get(MP, key)},please check the "
                        "configuration", (MP, key), data={"resolved": str(p)})


@rule
def prefix_is_a_file_name(ctx: RuleContext) -> Iterator[Problem]:
    """Every artefact is `working_dir/{prefix}…`: a separator would write outside working_dir or fail there."""
    v = ctx.get(MP, "output_model_file_prefix")
    if isinstance(v, str) and ("/" in v or "\\" in v or v in (".", "..")):
        yield error("bad-prefix", f"Invalid output_model_file_prefix: '{v}', expected a file name prefix without "
                    "'/' or '\\' (the outputs are written into working_dir)", (MP, "output_model_file_prefix"))
    elif isinstance(v, str) and len(v.encode()) > MAX_PREFIX_BYTES:
        yield error("bad-prefix", f"Invalid output_model_file_prefix: {len(v.encode())} bytes long, expected at most "
                    f"{MAX_PREFIX_BYTES} (the output '{{prefix}}{LONGEST_ARTEFACT_SUFFIX}' and the temporary file it "
                    f"is written through must fit a file name's {MAX_FILE_NAME_BYTES} bytes)",
                    (MP, "output_model_file_prefix"))


MAX_FILE_NAME_BYTES = 255  # NAME_MAX of Linux file systems (ext4, xfs, btrfs, tmpfs)
LONGEST_ARTEFACT_SUFFIX = "_quantized_removed_model.bc"
# atomic writes (engine.pipeline.cache._new_temp) write `.{name}.{12 hex digits}` beside the file (mkdtemp's
# `.{name}.` + 8 characters for folders is shorter)
TEMP_NAME_EXTRA = len(".") + len(".") + 12
MAX_PREFIX_BYTES = MAX_FILE_NAME_BYTES - len(LONGEST_ARTEFACT_SUFFIX) - TEMP_NAME_EXTRA


@rule
def node_info_format(ctx: RuleContext) -> Iterator[Problem]:
    v = ctx.get(MP, "node_info")
    if isinstance(v, str):
        for item in V.split_names(v):
            name, sep, dtype = item.rpartition(":")
            if not sep or not name.strip() or dtype.strip() not in ("int8", "int16"):
                yield error("node-info-format", f"The format you gave is {v}, currently we only support the following "
                            "format: Conv_0:int16;Conv_1:int16", (MP, "node_info"))
                return


@rule
def debug_keys(ctx: RuleContext) -> Iterator[Problem]:
    """Debug switches hb documents that the engine has nothing to act on: say so instead of silence
    (debug_mode: dump_calibration_data is acted on by the calibrate stage)."""
    if ctx.get(MP, "layer_out_dump") is True:
        yield warning("no-effect", "Please note that the parameter 'layer_out_dump' is recorded but has no effect "
                      "here: no per-layer outputs are added to the model (the node table in *_node_info.csv and "
                      "*_quant_info.json compares every node's output with the float model instead)",
                      (MP, "layer_out_dump"), data={"on_key": True})


@rule
def no_effect_keys(ctx: RuleContext) -> Iterator[Problem]:
    """Keys the schema marks `x-hb-no-effect`: accepted, recorded in the stage keys, not acted on; a value
    other than the default says so instead of being ignored in silence."""
    for section, body in ctx.data.items():
        for key, value in body.items() if isinstance(body, dict) else ():
            ks = schema.key_schema(section, key) or {}
            if ks.get("x-hb-no-effect") and value != ks.get("default"):
                yield warning("no-effect", f"Please note that the parameter '{key}' is recorded but has no effect "
                              f"here: {ks['x-hb-no-effect']}", (section, key), data={"on_key": True})


@rule
def remove_node_types(ctx: RuleContext) -> Iterator[Problem]:
    allowed = schema.item_enum(MP, "remove_node_type") or ["Quantize", "Transpose", "Dequantize", "Cast",
                                                           "Reshape", "Softmax", "DequantizeFilter"]
    bad = [t for t in V.split_names(ctx.get(MP, "remove_node_type")) if t not in allowed]
    if bad:
        yield error("remove-node-type", f"Unsupport removing {bad} now", (MP, "remove_node_type"),
                    data={"allowed": allowed})


# ---------------------------------------------------------------- input_parameters

def _item_enum_problems(ctx: RuleContext, section: str, key: str) -> Iterator[Problem]:
    allowed = schema.item_enum(section, key)
    if not allowed:
        return
    public = schema.item_enum(section, key, hidden=False)
    for i, item in enumerate(V.split_list(ctx.get(section, key))):
        if item is not None and item not in allowed:
            yield error("invalid-enum", f"The specified {key} is invalid, the {key}: '{item}' can only be specified "
                        f"as values in {public}", (section, key), data={"item": i, "allowed": public})


@rule
def per_input_enums(ctx: RuleContext) -> Iterator[Problem]:
    for key in ("input_type_rt", "input_type_train", "input_layout_train", "input_layout_rt",
                "input_space_and_range", "norm_type"):
        yield from _item_enum_problems(ctx, IP, key)
    yield from _item_enum_problems(ctx, CP, "cal_data_type")


@rule
def per_input_counts(ctx: RuleContext) -> Iterator[Problem]:
    """Per-input lists that disagree in length: the model's input count decides when the model can be
    read (and a name of input_name that is no model input is named); else the length most lists have,
    input_name's on a tie. Lists that agree are compared with the model by the model rules."""
    counts = {k: n for k, n in list_lengths(ctx.data).items() if n}
    if len(set(counts.values())) <= 1:
        return
    model_names = ctx.model_inputs
    if model_names is not None:
        yield from input_name_problems([n for n in ctx.per_input("input_name") if n], model_names)
        yield from list_count_problems(counts, len(model_names), "model")
        return
    tally = Counter(counts.values())
    most = [n for n, c in tally.items() if c == max(tally.values())]
    yield from list_count_problems(counts, counts["input_name"] if counts.get("input_name") in most else max(most),
                                   "lists")


def list_lengths(data: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The length of every per-input list the config gives (and of cal_data_dir's `;` list), empty ones too."""
    ip, cp = data.get(IP) or {}, data.get(CP) or {}
    counts = {key: len(V.split_list(ip[key])) for key in PER_INPUT_KEYS if key in ip}
    if "cal_data_dir" in cp:
        counts["cal_data_dir"] = len(V.split_list(cp["cal_data_dir"]))
    return counts


def list_count_problems(counts: dict[str, int], expect: int, by: str) -> Iterator[Problem]:
    """hb_compile's count error on every list whose length is not `expect` (`by`: "model" when the model's
    input count says so, "lists" when the other lists do: the language server lets the model's word
    replace the lists' once it has read the model)."""
    for key, n in counts.items():
        if n == expect:
            continue
        if key == "cal_data_dir":
            yield error("list-count", f"Wrong cal_dir num given, cal_dir num {n} is not equal to input num {expect}",
                        (CP, key), data={"given": n, "expected": expect, "by": by})
        else:
            yield error("list-count", f"Wrong {key} num received. Num of {key} given: {n} is not equal to input "
                        f"num {expect}", (IP, key), data={"given": n, "expected": expect, "by": by})


def input_name_problems(given: list[str], model_names: list[str]) -> Iterator[Problem]:
    """Names of input_name that are not model inputs, and names given twice (reference §5)."""
    for i, name in enumerate(given):
        if name not in model_names:
            yield error("input-name-unknown", f"The input_name '{name}' is not an input of the model; the model's "
                        f"inputs are {model_names}", (IP, "input_name"), data={"item": i, "allowed": model_names})
    dupes = {n for n in given if given.count(n) > 1}
    if dupes:
        yield error("input-name-duplicate", f"Duplicate input_name {sorted(dupes)}", (IP, "input_name"))


def _shapes(ctx: RuleContext) -> tuple[list[tuple[int, ...] | None], list[Problem]]:
    shapes, problems = [], []
    for i, item in enumerate(ctx.per_input("input_shape")):
        try:
            shapes.append(V.parse_shape(item))
        except V.ValueFormatError:
            shapes.append(None)
            problems.append(error("bad-format", format_error((IP, "input_shape"), item), (IP, "input_shape"),
                                  data={"item": i}))
    return shapes, problems


def _at(items: list, i: int) -> Any:
    return items[i] if i < len(items) else None


def channel_axis(layout: str | None) -> int:
    return 3 if layout == "NHWC" else 1


@rule
def input_shapes_and_types(ctx: RuleContext) -> Iterator[Problem]:
    shapes, problems = _shapes(ctx)
    yield from problems
    rts, trains = ctx.per_input("input_type_rt"), ctx.per_input("input_type_train")
    layouts = ctx.per_input("input_layout_train")
    pairs = legal_pairs()
    known_rts = schema.item_enum(IP, "input_type_rt") or []
    n = max(len(rts), len(trains), len(shapes))
    for i in range(n):
        rt, train, shape, layout = _at(rts, i), _at(trains, i), _at(shapes, i), _at(layouts, i)
        name = _at(ctx.per_input("input_name"), i) or i
        # a value that is no input_type_rt at all is told once, by per_input_enums, not also as a conversion
        accepted = accepted_rts(train)
        if rt and accepted is not None and rt not in accepted and rt in known_rts:
            yield error("input-illegal-conversion", f"The input_type_train '{train}' of the input {name} is not "
                        f"supported to be transformed to input_type_rt '{rt}' now", (IP, "input_type_rt"),
                        data={"item": i, "allowed": pairs[train]})
        if train and train != "featuremap" and not layout and (ctx.has(IP, "input_type_train")):
            yield error("missing-key", "Key 'input_parameters' error: Missing keys: 'input_layout_train'",
                        (IP,), data={"on_key": True, "missing": ["input_layout_train"], "item": i})
        if shape is not None:
            yield from shape_problems(i, rt, train, layout, shape, (IP, "input_shape"))


def shape_problems(i: int, rt: str | None, train: str | None, layout: str | None, shape: tuple[int, ...],
                   shape_path: tuple) -> Iterator[Problem]:
    """Checks of one input's shape against its types and layout; the shape comes from input_shape
    or, when that is absent, from the model (engine.config.inputs runs this then, with `shape_path`
    the section: a problem of the shape itself is then placed on the input's input_type_rt, the
    written value that asks for what the model's shape cannot give)."""
    rt_or_shape = shape_path if len(shape_path) > 1 else (IP, "input_type_rt")
    if rt and rt != "featuremap" and len(shape) != 4:
        yield error("input-not-4d", f"The specified input_type_rt is {rt}, but the input_shape is not "
                    "four-dimensional, please set the input_type_rt and input_type_train to featuremap",
                    rt_or_shape, data={"item": i})
        return
    if len(shape) == 4 and layout in ("NCHW", "NHWC"):
        want = IMAGE_CHANNELS.get(train or "")
        resolved: str | None = layout  # the layout the shape is really in: H and W are read from it
        if want is not None and shape[channel_axis(layout)] != want:
            other = "NHWC" if layout == "NCHW" else "NCHW"
            if shape[channel_axis(other)] == want:
                msg = (f"Input_layout_train says {layout} but seems like layout of input_shape is {other}: "
                       f"{V.format_shape(shape)}, try use {other} in input_layout_train")
                fix = resolved = other
            else:
                msg = (f"Input_type_train {train} input_layout_train {layout} and input_shape "
                       f"{V.format_shape(shape)} does not seem right. Please double check.")
                fix = resolved = None
            yield error("input-layout-shape", msg, (IP, "input_layout_train"), data={"item": i, "replace_item": fix})
        if resolved is not None:
            h, w = (shape[2], shape[3]) if resolved == "NCHW" else (shape[1], shape[2])
            if rt == "nv12" and (h % 2 or w % 2):
                yield error("input-nv12-odd-size", f"The input shape: {V.format_shape(shape)} is invalid, nv12 "
                            "type does not support odd number input size", rt_or_shape,
                            data={"item": i, "fix_key": "input_shape"})


@rule
def input_space(ctx: RuleContext) -> Iterator[Problem]:
    rts = ctx.per_input("input_type_rt")
    for i, space in enumerate(ctx.per_input("input_space_and_range")):
        if space == "bt601_video" and _at(rts, i) != "nv12":
            yield error("input-space-not-nv12", f"input_space_and_range 'bt601_video' is only valid with "
                        f"input_type_rt 'nv12', but input {i} has '{_at(rts, i)}'", (IP, "input_space_and_range"),
                        data={"item": i})


@rule
def normalization(ctx: RuleContext) -> Iterator[Problem]:
    rts, trains = ctx.per_input("input_type_rt"), ctx.per_input("input_type_train")
    shapes, _ = _shapes(ctx)
    layouts = ctx.per_input("input_layout_train")
    parsed: dict[str, list] = {}
    for key in ("mean_value", "scale_value", "std_value"):
        try:
            parsed[key] = V.per_input_numbers(ctx.get(IP, key))
        except V.ValueFormatError as exc:
            yield error("bad-format", format_error((IP, key), exc), (IP, key))
            parsed[key] = []
    n = max([len(v) for v in parsed.values()] + [len(rts), len(ctx.per_input("norm_type"))] or [0])
    for i in range(n):
        mean, scale, std = (_at(parsed[k], i) for k in ("mean_value", "scale_value", "std_value"))
        if scale is not None and std is not None:
            yield error("scale-and-std", "Only one of scale_value and std_value can be specified", (IP, "std_value"),
                        data={"item": i})
        if _at(rts, i) == "featuremap" and any(v is not None for v in (mean, scale, std)):
            key = "mean_value" if mean is not None else ("scale_value" if scale is not None else "std_value")
            name = _at(ctx.per_input("input_name"), i) or i
            yield error("featuremap-norm", f"Input_type_rt {name} is featuremap, this input only support "
                        "norm_type no_preprocess", (IP, key), data={"item": i})
        if std is not None and any(s == 0 for s in std):
            yield error("std-zero", "std_value must not contain 0", (IP, "std_value"), data={"item": i})
        if scale is not None and any(s == 0 for s in scale):
            yield error("scale-zero", "scale_value must not contain 0: it multiplies the input, a 0 makes that "
                        "channel 0 for every image", (IP, "scale_value"), data={"item": i})
        shape, layout, train = _at(shapes, i), _at(layouts, i), _at(trains, i)
        channels = None
        if shape is not None and len(shape) == 4 and layout in ("NCHW", "NHWC"):
            channels = shape[channel_axis(layout)]
        elif train in IMAGE_CHANNELS:
            channels = IMAGE_CHANNELS[train]
        for key, vals in (("mean_value", mean), ("scale_value", scale), ("std_value", std)):
            if vals is not None and channels is not None and len(vals) not in (1, channels):
                want = "1 value" if channels == 1 else f"1 or {channels} values"
                yield error("norm-channels", f"Wrong {key} format {' '.join(f'{v:g}' for v in vals)}: input {i} has "
                            f"{channels} channel{'s' * (channels != 1)}, so give {want}, found {len(vals)}",
                            (IP, key), data={"item": i})
    yield from _norm_type(ctx, parsed)


_NORM_OF = {(False, False, False): "no_preprocess", (True, False, False): "data_mean",
            (False, True, False): "data_scale", (True, True, False): "data_mean_and_scale",
            (False, False, True): "data_std", (True, False, True): "data_mean_and_std"}


def derived_norm_type(mean, scale, std) -> str:
    return _NORM_OF.get((mean is not None, scale is not None, std is not None), "no_preprocess")


def _norm_type(ctx: RuleContext, parsed: dict[str, list]) -> Iterator[Problem]:
    if not ctx.has(IP, "norm_type"):
        return
    for i, given in enumerate(ctx.per_input("norm_type")):
        if given is None:
            continue
        mean, scale, std = (_at(parsed[k], i) for k in ("mean_value", "scale_value", "std_value"))
        derived = derived_norm_type(mean, scale, std)
        needs_mean = "mean" in given
        needs_scale = "scale" in given
        if deprecated_here(schema.key_schema(IP, "norm_type") or {}, ctx.data):
            # hb_compile derives norm_type (reference §15: a deprecated key warns, never fails)
            if given != derived and not given.startswith("mean_file"):
                absent = [k for k, need, v in (("mean_value", needs_mean, mean),
                                               ("scale_value", needs_scale, scale if std is None else std))
                          if need and v is None]
                why = (f"asks for {' and '.join(absent)} but none is given" if absent
                       else "does not match the given mean/scale/std values")
                yield warning("norm-type-mismatch", f"norm_type '{given}' of input {i} {why}; using '{derived}'",
                              (IP, "norm_type"), data={"item": i})
            continue
        if needs_mean and mean is None:
            yield error("mean-missing", f"Mean value not given: input {i} norm type {given} require mean value "
                        "input but not given", (IP, "norm_type"), data={"item": i})
        elif needs_scale and scale is None and std is None:
            yield error("scale-missing", f"Scale value not given: input {i} norm type {given} require scale value "
                        "input but not given", (IP, "norm_type"), data={"item": i})
        elif given != derived and not given.startswith("mean_file"):
            yield warning("norm-type-mismatch", f"norm_type '{given}' of input {i} does not match the given "
                          f"mean/scale/std values; using '{derived}'", (IP, "norm_type"), data={"item": i})


@rule
def input_layout_rt(ctx: RuleContext) -> Iterator[Problem]:
    """hb_compile (nash-*) deprecates input_layout_rt, yet hbcompile lays the .bc/.hbm input out by it:
    the warning says which, per input; hb_mapper marches take it as a normal key (nv12: no layout)."""
    if not ctx.has(IP, "input_layout_rt"):
        return
    implied_of = schema.load_schema().get("x-hb-rt-layout", {})
    rts, names = ctx.per_input("input_type_rt"), ctx.per_input("input_name")
    in_use = []
    for i, layout in enumerate(ctx.per_input("input_layout_rt")):
        rt = _at(rts, i)
        if layout is None or rt is None or rt == "featuremap" or rt not in implied_of:
            continue
        implied = implied_of[rt]
        if implied is None:
            if march_generation(ctx.data) == "hb_mapper":
                yield warning("layout-rt-unused", f"input_layout_rt {layout} of input {_at(names, i) or i} has no "
                              f"effect: input_type_rt {rt} has no layout", (IP, "input_layout_rt"),
                              data={"item": i})
        elif layout != implied:
            in_use.append((i, rt, implied, layout))
    if not deprecated_here(schema.key_schema(IP, "input_layout_rt") or {}, ctx.data):
        return
    if not in_use:
        yield warning("deprecated-key", deprecation_text(IP, "input_layout_rt"), (IP, "input_layout_rt"),
                      data={"on_key": True, "replacement": None})
    for i, rt, implied, layout in in_use:
        yield warning("deprecated-key", "Please note that the parameter 'input_layout_rt' has been deprecated: "
                      f"hb_compile lays the runtime input out as input_type_rt implies ({rt}: {implied}). hbcompile "
                      f"still applies it: the .bc/.hbm input {_at(names, i) or i} takes layout {layout}",
                      (IP, "input_layout_rt"), data={"item": i, "replacement": None, "in_use": True})


@rule
def preprocess_on(ctx: RuleContext) -> Iterator[Problem]:
    """Deprecated in hb_compile (nash-*), yet `True` is what lets hbcompile read image files."""
    if not ctx.has(CP, "preprocess_on") or not deprecated_here(schema.key_schema(CP, "preprocess_on") or {},
                                                               ctx.data):
        return
    reads = ctx.get(CP, "preprocess_on") is True and ctx.has(CP, "cal_data_dir") \
        and ctx.get(CP, "calibration_type") not in ("skip", "load")
    msg = ("Please note that the parameter 'preprocess_on' has been deprecated: hb_compile reads prepared .npy "
           "calibration samples only (or use calibration_type: skip). hbcompile still applies it: jpg/jpeg/png/bmp "
           "files in cal_data_dir are decoded and resized to the input size") if reads else \
        deprecation_text(CP, "preprocess_on")
    yield warning("deprecated-key", msg, (CP, "preprocess_on"), data={"on_key": True, "replacement": None,
                                                                     "in_use": reads})


@rule
def input_batch(ctx: RuleContext) -> Iterator[Problem]:
    if not ctx.has(IP, "input_batch"):
        return
    raw = ctx.get(IP, "input_batch")
    try:
        batch = int(str(raw).strip())
    except ValueError:
        yield error("bad-format", format_error((IP, "input_batch"), raw), (IP, "input_batch"))
        return
    lo, hi = input_batch_range(ctx.get(MP, "march"))
    if not lo <= batch <= hi:
        yield error("out-of-range", input_batch_range_error(batch, ctx.data), (IP, "input_batch"))
    shapes, _ = _shapes(ctx)
    for i, shape in enumerate(shapes):
        if shape and shape[0] != 1 and batch != 1:
            yield error("input-batch-shape", f"input_batch needs the first dim of input_shape to be 1, input {i} "
                        f"has {V.format_shape(shape)}", (IP, "input_batch"))


@rule
def separate(ctx: RuleContext) -> Iterator[Problem]:
    if ctx.get(IP, "separate_batch") is True and ctx.has(IP, "separate_name"):
        yield error("separate-exclusive", "separate_batch and separate_name cannot be specified at the same time",
                    (IP, "separate_name"))


# ---------------------------------------------------------------- calibration_parameters

@rule
def calibration_dirs(ctx: RuleContext) -> Iterator[Problem]:
    ctype = ctx.get(CP, "calibration_type", "default")
    if not ctx.has(CP, "cal_data_dir"):
        if ctype not in ("skip", "load") and MP in ctx.data:
            yield warning("calibration-skip", "cal_data_dir is not given: calibration_type becomes 'skip' "
                          "(random data; the model is only good for performance checks)", (CP,),
                          data={"on_key": True})
        return
    if not ctx.check_files:
        return
    for i, d in enumerate(V.split_list(ctx.get(CP, "cal_data_dir"))):
        if d is None:
            continue
        p = V.resolve_path(d, ctx.base_dir)
        if p.is_file():  # a sample file given for its folder
            yield error("cal-dir-missing", f"Cal_data_dir {d} is a file, expected the folder of calibration samples "
                        f"(e.g. {p.parent.name or '.'})", (CP, "cal_data_dir"), data={"item": i, "resolved": str(p)})
        elif not p.is_dir():
            yield error("cal-dir-missing", f"Cal_data_dir does not exist: {d}", (CP, "cal_data_dir"),
                        data={"item": i, "resolved": str(p)})


@rule
def working_dir_outside_calibration(ctx: RuleContext) -> Iterator[Problem]:
    """Artefacts written into a calibration folder would be read as samples by the next run (a `.hbm`
    as a raw uint8 sample: 'cannot reshape array of size ...'); a sub-folder is not read."""
    working_dir = ctx.path(MP, "working_dir") or ctx.base_dir / "model_output"
    if ctx.check_files and working_dir.is_file():  # told now, not when the run has calibrated and wants to write
        yield error("working-dir-file", f"Cannot write into working_dir {ctx.get(MP, 'working_dir', './model_output')}: "
                    "it is a file, expected a folder (made when missing) for the outputs", (MP, "working_dir"))
        return
    for d in V.split_list(ctx.get(CP, "cal_data_dir")):
        if d is not None and _same_folder(working_dir, V.resolve_path(d, ctx.base_dir)):
            yield error("working-dir-is-calibration", f"working_dir {ctx.get(MP, 'working_dir', './model_output')} "
                        f"is the cal_data_dir {d}: the outputs would be read as calibration samples by the next "
                        "run; choose another working_dir", (MP, "working_dir"))
            return


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


_SUFFIX_TYPES = {"_f32": "float32", "_uint8": "uint8"}  # reference §6: a folder-name hint (hb_mapper: _f32)


@rule
def cal_data_type_vs_suffix(ctx: RuleContext) -> Iterator[Problem]:
    """Reference §6: an explicit cal_data_type wins over the folder's `_f32` suffix, with a warning when they
    disagree (a raw float32 file read as uint8 has 4x the values: 'cannot reshape array of size ...')."""
    dirs, types = V.split_list(ctx.get(CP, "cal_data_dir")), V.split_list(ctx.get(CP, "cal_data_type"))
    for i, (d, given) in enumerate(zip(dirs, types)):
        if d is None or given is None:
            continue
        name = Path(d.rstrip("/\\")).name
        hinted = next((t for suffix, t in _SUFFIX_TYPES.items() if name.endswith(suffix)), None)
        if hinted is not None and hinted != given:
            yield warning("cal-data-type-suffix", f"cal_data_type '{given}' of input {i} disagrees with the name of "
                          f"its cal_data_dir '{name}' (the suffix means {hinted}); raw calibration files are read as "
                          f"{given}", (CP, "cal_data_type"), data={"item": i, "replace_item": hinted})


@rule
def cpu_and_bpu(ctx: RuleContext) -> Iterator[Problem]:
    """A node named in both lists: the planner puts it on the CPU (run_on_cpu is applied first); say so."""
    on_bpu = V.split_names(ctx.get(CP, "run_on_bpu"))
    for name in dict.fromkeys(n for n in V.split_names(ctx.get(CP, "run_on_cpu")) if n in on_bpu):
        yield warning("cpu-and-bpu", f"The node '{name}' is given in both run_on_cpu and run_on_bpu: run_on_cpu "
                      "wins, it runs on CPU (node_info, when it names the node, decides over both)",
                      (CP, "run_on_bpu"), data={"name": name})


@rule
def quant_config(ctx: RuleContext) -> Iterator[Problem]:
    """What of quant_config has nothing to act on here (the rest becomes engine options in the loader)."""
    if ctx.has(CP, "quant_config"):
        yield from ctx.quant.problems


@rule
def optimization_values(ctx: RuleContext) -> Iterator[Problem]:
    import re

    ks = schema.key_schema(CP, "optimization") or {}
    allowed = schema.item_enum(CP, "optimization")
    pattern = re.compile(ks.get("x-hb-item-pattern", r"^$"))
    for item in V.split_comma(ctx.get(CP, "optimization")):
        if item not in allowed and not pattern.match(item):
            public = schema.item_enum(CP, "optimization", hidden=False)
            yield error("invalid-enum", f"The specified optimization is invalid, the optimization: '{item}' can only "
                        f"be specified as values in {public + ['set_{OpType}_input_int16', 'set_{OpType}_output_int16']}",
                        (CP, "optimization"))


# ---------------------------------------------------------------- compiler_parameters

@rule
def balance(ctx: RuleContext) -> Iterator[Problem]:
    mode = ctx.get(XP, "compile_mode")
    if mode == "balance" and not ctx.has(XP, "balance_factor"):
        yield error("balance-factor", "Parameter compile_mode is set to balance, please set balance_factor to use "
                    "this mode", (XP, "compile_mode"))
    elif mode != "balance" and ctx.has(XP, "balance_factor"):
        yield warning("balance-factor-unused", "balance_factor only takes effect with compile_mode: balance",
                      (XP, "balance_factor"), data={"on_key": True})


@rule
def march_ranges(ctx: RuleContext) -> Iterator[Problem]:
    march = ctx.get(MP, "march")
    spec = schema.marches().get(march)
    if not spec:
        return
    if ctx.has(XP, "core_num"):
        lo, hi = spec.get("core_num", [1, 1])[:2]
        v = ctx.get(XP, "core_num")
        if isinstance(v, int) and not lo <= v <= hi:
            yield error("out-of-range", f"Invalid core_num: {v}, march {march} supports {lo}~{hi}",
                        (XP, "core_num"))
    if ctx.has(XP, "optimize_level"):
        allowed = spec.get("optimize_level") or []
        v = ctx.get(XP, "optimize_level")
        if allowed and v not in allowed:
            yield warning("optimize-level-generation", f"optimize_level {v} is not available on march {march} "
                          f"({allowed}); {max(allowed)} is used", (XP, "optimize_level"),
                          data={"allowed": allowed})
    if ctx.has(XP, "max_time_per_fc"):
        v = ctx.get(XP, "max_time_per_fc")
        lo, hi = (spec.get("max_time_per_fc") or [1000, 4294967295])[:2]
        if isinstance(v, int) and v != 0 and not lo <= v <= hi:
            yield error("out-of-range", f"Invalid max_time_per_fc: {v}, it should be 0 or in {lo}~{hi} for march "
                        f"{march}", (XP, "max_time_per_fc"))
    if ctx.get(XP, "max_l2m_size") and spec.get("max_l2m_size_supported") is False:
        yield warning("l2m-unsupported", f"max_l2m_size is not supported on march {march}; it is ignored",
                      (XP, "max_l2m_size"))


def rt_by_input(inputs: Any, model_inputs: list[str] | None = None) -> dict[str, str | None]:
    """Each input's input_type_rt by name, paired as every check pairs them: by place in input_name, else in
    the model's inputs (when read); a one-input config without names maps "" to its one rt type."""
    if not isinstance(inputs, dict):
        return {}
    rts = V.split_list(inputs.get("input_type_rt"))
    names = V.split_list(inputs.get("input_name"))
    if not any(names):
        names = list(model_inputs or [])
    if names:
        return {n: _at(rts, i) for i, n in enumerate(names) if n}
    return {"": rts[0]} if len(rts) == 1 else {}


def sources_of(rt: str) -> set[str]:
    """The input_source values an input of rt type `rt` accepts (x-hb-rt-types: featuremap from ddr only)."""
    return {src for src, types in _source_rt_types().items() if rt in types}


def _source_rt_types() -> dict[str, list[str]]:
    return (schema.key_schema(XP, "input_source") or {}).get("x-hb-rt-types", {})


def input_source_problems(given: Any, rts: dict[str, str | None], known: bool) -> Iterator[Problem]:
    """input_source against the inputs' rt types (reference §7, x-hb-rt-types) and, when `known` (input_name
    given, or the model read), against the input names. `_default_value` is hb's own internal key."""
    if not isinstance(given, dict):
        return
    accepts = _source_rt_types()
    for name, src in given.items():
        if name == "_default_value" or src not in accepts:
            continue  # a bad value is the schema's enum error
        if known and name not in rts:
            yield error("input-source-name", f"input_source names '{name}', which is not a model input "
                        f"({', '.join(map(str, rts))})", (XP, "input_source", name),
                        data={"on_key": True, "allowed": list(rts)})
            continue
        rt = rts.get(name) if known else next(iter(rts.values()), None)
        if rt is not None and rt not in accepts[src]:
            yield error("input-source", f"Wrong input_source received. input type rt : {rt} does not support "
                        f"input_source {src}", (XP, "input_source", name),
                        data={"allowed": sorted(sources_of(rt), key=list(accepts).index)})


@rule
def input_source(ctx: RuleContext) -> Iterator[Problem]:
    """Without the model: names checked against input_name when given; rt types by name, or, for a
    one-input config without input_name, against that input's rt type."""
    rts = rt_by_input(ctx.data.get(IP, {}))
    if rts:
        yield from input_source_problems(ctx.get(XP, "input_source"), rts, "" not in rts)


@rule
def cache(ctx: RuleContext) -> Iterator[Problem]:
    mode = ctx.get(XP, "cache_mode")
    if mode and mode != "disable" and not ctx.get(XP, "cache_path"):
        yield error("cache-path", f"cache_mode is '{mode}' but cache_path is not given", (XP, "cache_mode"))


# ---------------------------------------------------------------- custom_op

@rule
def custom_op(ctx: RuleContext) -> Iterator[Problem]:
    if CO not in ctx.data:
        return
    if not ctx.has(CO, "custom_op_method"):
        yield error("custom-op-method", "Custom_op_method is not specified", (CO,), data={"on_key": True})
    folder = ctx.path(CO, "custom_op_dir") or ctx.base_dir
    for f in V.split_names(ctx.get(CO, "op_register_files")):
        if not f.endswith(".py"):
            yield error("custom-op-file", f"File {f} is not a python file, please check op_register_files",
                        (CO, "op_register_files"))
        elif ctx.check_files and not (folder / f).is_file():
            yield error("file-missing", f"Can not find file specified: {f},please check the configuration",
                        (CO, "op_register_files"))
