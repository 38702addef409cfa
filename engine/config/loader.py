"""Config text → validated, typed `Config`, or the list of problems that prevent it.

Order (each step only when the previous one left a usable document): YAML syntax (positions
kept) → empty values dropped → JSON Schema (hb_compile wording) → semantic rules → typed Config.
Every problem is placed on its YAML token here, in one place, for the CLI and the LSP alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import schema
from engine.config import values as V
from engine.config.model import (
    CalibrationParameters,
    CompilerParameters,
    Config,
    InputParameters,
    ModelParameters,
    parse_node_info,
)
from engine.config.quant_config import QuantConfig, read_quant_config
from engine.config.rules import CP, IP, MP, XP, RuleContext, run_rules
from engine.config.schema_check import check_schema
from engine.config.yamltree import YamlDoc, parse_yaml
from engine.problems import ConfigError, Problem, Span, error, errors

MAX_CONFIG_BYTES = 1_000_000


@dataclass
class LoadResult:
    config: Config | None
    problems: list[Problem] = field(default_factory=list)
    doc: YamlDoc | None = None
    data: dict[str, Any] | None = None  # the normalized config (what rules read), also with errors
    refused: frozenset[tuple] | None = None  # (section,) / (section, key) whose value the schema refused

    def accepted(self) -> dict[str, Any]:
        """`data` without the sections and keys whose value the schema refused: what the model-aware
        rules may read of a config with errors (the editor runs them on every version; the CLI only
        on a config without errors). A `[1, 3, 8, 8]` list would be read as four shapes, a mapping's
        repr as an input name."""
        refused = self.refused_paths()
        kept: dict[str, Any] = {}
        for section, body in (self.data or {}).items():
            if (section,) in refused:
                continue
            kept[section] = {k: v for k, v in body.items() if (section, k) not in refused} \
                if isinstance(body, dict) else body
        return kept

    def refused_paths(self) -> frozenset[tuple]:
        """`refused`, checked here when loading stopped before the schema (a YAML error)."""
        if self.refused is None:
            self.refused = refused_paths(check_schema(self.data)) if self.data is not None else frozenset()
        return self.refused

    @property
    def ok(self) -> bool:
        return self.config is not None

    def raise_for_errors(self) -> Config:
        if self.config is None:
            raise ConfigError(errors(self.problems) or self.problems)
        return self.config


# A missing key's path names the mapping that lacks it; an unknown key is never read by a rule.
_NOT_A_REFUSED_VALUE = frozenset({"missing-key", "unknown-key"})


def refused_paths(schema_problems: list[Problem]) -> frozenset[tuple]:
    """The sections and keys (first two path steps) whose value the schema's errors refuse."""
    return frozenset(tuple(p.path[:2]) for p in schema_problems
                     if p.is_error and p.path and p.code not in _NOT_A_REFUSED_VALUE)


def load_config(path: str | Path, check_files: bool = True) -> Config:
    """Load a config file or raise `ConfigError` carrying every problem (warnings stay on the result)."""
    return read_config(path, check_files).raise_for_errors()


def read_config(path: str | Path, check_files: bool = True) -> LoadResult:
    path = Path(path)
    shown = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return LoadResult(None, [error("config-missing", f"Can not find file specified: {shown},please check the "
                                       "configuration", file=shown)])
    except OSError as exc:
        return LoadResult(None, [error("config-unreadable", f"Cannot read config {shown}: {exc.strerror}",
                                       file=shown)])
    if len(raw) > MAX_CONFIG_BYTES:
        return LoadResult(None, [error("config-too-big", f"The config is {len(raw)} bytes; a config is expected "
                                       f"to be under {MAX_CONFIG_BYTES} bytes", file=shown, span=Span(0, 0, 0, 1))])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LoadResult(None, [error("config-encoding", f"The config is not UTF-8 text (byte {exc.start})",
                                       file=shown, span=Span(0, 0, 0, 1))])
    return load_config_text(text, path.resolve().parent, shown, path=path, check_files=check_files)


def load_config_text(text: str, base_dir: Path, file: str | None = None, path: Path | None = None,
                     check_files: bool = True, read_model: bool = True) -> LoadResult:
    """The core: also what the language server calls on every document version. `read_model` False: the
    rules never parse the ONNX file to settle per-input lists that disagree (the language server reads
    models in a child process and lets the model rules' count replace the lists' own)."""
    if len(text) > MAX_CONFIG_BYTES:
        return LoadResult(None, [error("config-too-big", f"The config is {len(text)} characters; a config is "
                                       f"expected to be under {MAX_CONFIG_BYTES} bytes", file=file,
                                       span=Span(0, 0, 0, 1))])
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start)
        col = exc.start - (text.rfind("\n", 0, exc.start) + 1)
        return LoadResult(None, [error("config-encoding", f"The config is not valid Unicode text (character "
                                       f"{exc.start})", file=file, span=Span(line, col, line, col + 1))])
    doc = parse_yaml(text)
    if doc.root is None and not doc.problems:
        doc.problems.append(error("config-empty", "The config is empty: expected the sections model_parameters, "
                                  "input_parameters, calibration_parameters, compiler_parameters"))
    if doc.root is not None and doc.root.kind != "map":
        doc.problems.append(error("config-not-mapping", "The config must be a mapping of sections "
                                  "(model_parameters: ..., input_parameters: ...)"))
    if doc.root is None or doc.root.kind != "map":
        return LoadResult(None, locate(doc.problems, doc, file), doc)
    data, problems = normalize(doc.root.to_python())
    if errors(doc.problems):
        return LoadResult(None, locate(doc.problems, doc, file), doc, data)
    schema_problems = check_schema(data)
    problems += _drop_told_missing(schema_problems, {p.path for p in problems if p.code == "empty-value"})
    refused = refused_paths(schema_problems)
    ctx = RuleContext(data, base_dir, check_files, read_model)
    if not errors(problems):
        problems += run_rules(ctx)
    problems = locate(doc.problems + problems, doc, file)
    if errors(problems):
        return LoadResult(None, problems, doc, data, refused)
    return LoadResult(build_config(data, base_dir, path, ctx.quant if check_files else None), problems, doc, data,
                      refused)


def normalize(data: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """Drop keys left empty (hb templates leave many `''` or blank); keep '' where it is an error."""
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    for section, body in data.items():
        if body is None:
            out[section] = {}
            continue
        if not isinstance(body, dict):
            out[section] = body
            continue
        kept = {}
        required = (schema.section_schema(section) or {}).get("required") or ()
        known = schema.section_schema(section) is not None
        for key, value in body.items():
            ks = schema.key_schema(section, key) or {}
            if known and not ks:  # a misspelt key stays, empty or not: the schema says "Wrong key" for it
                kept[key] = value
                continue
            if value is None or (isinstance(value, str) and not value.strip()):
                if ks.get("x-hb-nonempty") and value is not None:
                    problems.append(error("empty-prefix", "The output_model_file_prefix cannot be empty, please "
                                          "specify a valid prefix in your yaml config file", (section, key)))
                elif key in required:
                    problems.append(_no_value(section, key, ks))
                continue
            kept[key] = value
        out[section] = kept
    return out, problems


def _no_value(section: str, key: str, ks: dict[str, Any]) -> Problem:
    """`march:` left blank is there but empty: told on its own line, not as a key missing from its section."""
    allowed = ks.get("enum") or schema.item_enum(section, key, hidden=False)
    if allowed:
        expected = f"one of {list(allowed)}" + (" (';' between inputs)" if ks.get("x-hb-list") == "per-input" else "")
    else:
        expected = f"a {ks.get('type', 'value')}"
    return error("empty-value", f"{key} has no value, expected {expected}", (section, key),
                 data={"on_key": True, "allowed": list(allowed or [])})


def _drop_told_missing(problems: list[Problem], told: set[tuple]) -> list[Problem]:
    """A required key given without a value is told once (empty-value), not also as missing."""
    out = []
    for p in problems:
        if p.code == "missing-key" and told:
            missing = [k for k in p.data.get("missing", []) if tuple(p.path) + (k,) not in told]
            if not missing:
                continue
            if len(missing) != len(p.data.get("missing", [])):
                where = p.message.split(" error: ")[0]
                p = error("missing-key", f"{where} error: Missing keys: " + ", ".join(f"'{k}'" for k in missing),
                          p.path, data={**p.data, "missing": missing})
        out.append(p)
    return out


def locate(problems: list[Problem], doc: YamlDoc, file: str | None) -> list[Problem]:
    placed = []
    for p in problems:
        span = p.span
        if span is None and p.path:
            if "item" in p.data:
                span = doc.item_span(p.path, p.data["item"], p.data.get("sep", ";"))
            if span is None:
                span = doc.span_for(p.path, on_key=bool(p.data.get("on_key")))
        placed.append(p.at(span, file))
    return placed


# ---------------------------------------------------------------- typed config

def _default(section: str, key: str, fallback: Any = None) -> Any:
    return (schema.key_schema(section, key) or {}).get("default", fallback)


def _resolve(base: Path, value: Any) -> Path | None:
    return None if value is None else V.resolve_path(value, base)


def build_config(data: dict[str, Any], base_dir: Path, path: Path | None, quant: QuantConfig | None = None) -> Config:
    """The typed Config; `quant`: quant_config as the rules already read it (else read here)."""
    mp, ip, cp, xp = (data.get(s, {}) for s in (MP, IP, CP, XP))

    def g(sec: dict, section: str, key: str, fallback: Any = None) -> Any:
        return sec.get(key, _default(section, key, fallback))

    qc = quant if quant is not None else read_quant_config(cp.get("quant_config"), base_dir, cp)
    node_info = {name: dict(entry) for name, entry in qc.node_info.items()}
    for name, entry in parse_node_info(mp.get("node_info")).items():  # the user's node_info wins per node
        node_info[name] = {**node_info.get(name, {}), **entry}
    model = ModelParameters(
        onnx_model=_resolve(base_dir, mp.get("onnx_model")),
        caffe_model=_resolve(base_dir, mp.get("caffe_model")),
        prototxt=_resolve(base_dir, mp.get("prototxt")),
        march=mp.get("march", ""),
        working_dir=_resolve(base_dir, g(mp, MP, "working_dir", "./model_output")),
        output_model_file_prefix=str(g(mp, MP, "output_model_file_prefix", "model")),
        output_nodes=tuple(V.split_names(mp.get("output_nodes"))),
        remove_node_type=tuple(V.split_names(mp.get("remove_node_type"))),
        remove_node_name=tuple(V.split_names(mp.get("remove_node_name"))),
        debug_mode=mp.get("debug_mode"),
        node_info=node_info,
        layer_out_dump=bool(g(mp, MP, "layer_out_dump", False)),
    )
    shapes = tuple(V.parse_shape(s) for s in V.split_list(ip.get("input_shape")))
    inputs = InputParameters(
        input_name=tuple(V.split_list(ip.get("input_name"))),
        input_type_train=tuple(V.split_list(ip.get("input_type_train"))),
        input_layout_train=tuple(V.split_list(ip.get("input_layout_train"))),
        input_type_rt=tuple(V.split_list(ip.get("input_type_rt"))),
        input_layout_rt=tuple(V.split_list(ip.get("input_layout_rt"))),
        input_space_and_range=tuple(V.split_list(ip.get("input_space_and_range"))),
        input_shape=shapes,
        norm_type=tuple(V.split_list(ip.get("norm_type"))),
        mean_value=tuple(V.per_input_numbers(ip.get("mean_value"))),
        scale_value=tuple(V.per_input_numbers(ip.get("scale_value"))),
        std_value=tuple(V.per_input_numbers(ip.get("std_value"))),
        input_batch=int(ip["input_batch"]) if "input_batch" in ip else None,
        separate_batch=bool(ip.get("separate_batch", False)),
        separate_name=tuple(V.split_names(ip.get("separate_name"))),
    )
    ctype = qc.calibration_type or cp.get("calibration_type", _default(CP, "calibration_type", "default"))
    if "cal_data_dir" not in cp and ctype not in ("load", "skip"):
        ctype = "skip"
    calibration = CalibrationParameters(
        cal_data_dir=tuple(_resolve(base_dir, d) for d in V.split_list(cp.get("cal_data_dir"))),
        cal_data_type=tuple(V.split_list(cp.get("cal_data_type"))),
        calibration_type=ctype,
        max_percentile=float(qc.max_percentile if qc.max_percentile is not None else g(cp, CP, "max_percentile", 1.0)),
        per_channel=bool(qc.per_channel if qc.per_channel is not None else g(cp, CP, "per_channel", False)),
        run_on_cpu=tuple(V.split_names(cp.get("run_on_cpu"))),
        run_on_bpu=tuple(V.split_names(cp.get("run_on_bpu"))),
        optimization=tuple(dict.fromkeys(V.split_comma(cp.get("optimization")) + list(qc.optimization))),
        preprocess_on=bool(g(cp, CP, "preprocess_on", False)),
        quant_config=cp.get("quant_config"),
    )
    march_spec = schema.marches().get(model.march, {})
    level = str(g(xp, XP, "optimize_level", "O2"))
    allowed_levels = march_spec.get("optimize_level")
    if allowed_levels and level not in allowed_levels:
        level = max(allowed_levels)
    compiler = CompilerParameters(
        compile_mode=g(xp, XP, "compile_mode", "latency"),
        balance_factor=xp.get("balance_factor"),
        debug=bool(g(xp, XP, "debug", True)),
        core_num=int(g(xp, XP, "core_num", 1)),
        optimize_level=level,
        input_source=dict(xp.get("input_source") or {}),
        max_time_per_fc=int(g(xp, XP, "max_time_per_fc", 0)),
        jobs=int(g(xp, XP, "jobs", 16)),
        advice=float(g(xp, XP, "advice", 0)),
        extra_params=dict(xp.get("extra_params") or {}),
    )
    resolved = {s: dict(v) if isinstance(v, dict) else v for s, v in data.items()}
    for section, key in ((MP, "onnx_model"), (MP, "caffe_model"), (MP, "prototxt"), (MP, "working_dir")):
        if key in resolved.get(section, {}):
            resolved[section][key] = str(_resolve(base_dir, resolved[section][key]))
    if isinstance(cp.get("quant_config"), str) and qc.source is not None:
        # a JSON file's content, not its name, is what the stage keys must hash (an edit re-runs calibrate)
        resolved[CP]["quant_config"] = {"file": str(_resolve(base_dir, cp["quant_config"])), **qc.source}
    return Config(path=path, base_dir=base_dir, data=resolved, model=model, inputs=inputs,
                  calibration=calibration, compiler=compiler)
