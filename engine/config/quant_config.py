"""calibration_parameters.quant_config (hb_compile's fine-grained quantization config) → the options the
engine already has, and a warning for each field that has nothing to act on here.

Levels `model_config < op_config < subgraph_config < node_config` (reference §6). What maps:

| quant_config | becomes |
|---|---|
| `model_config.all_node_type: int16` | `optimization: set_all_nodes_int16` (`int8`: the default) |
| `model_config.model_output_type: int8/int16` | `optimization: set_model_output_int8/16` |
| `model_config.activation.calibration_type` | `calibration_type` (several values: `default`, the search) |
| `model_config.activation.max_percentile / per_channel` | the same calibration_parameters keys |
| `model_config.activation.asymmetric: true` | `optimization: asymmetric` |
| `model_config.weight.bias_correction` | `optimization: bias_correction` |
| `op_config.<OpType>.qtype: int16` | `optimization: set_<OpType>_input_int16, set_<OpType>_output_int16` |
| `node_config.<node>.qtype: int16` | `node_info: {<node>: {InputType: int16, OutputType: int16}}` |
| `node_config.<node>.qtype: float32 / float16` | `node_info: {<node>: {ON: CPU}}` (float32 on the CPU) |

`qtype: int16` asks for the node's computation in int16, so its inputs and its output are int16 (as
`set_all_nodes_int16` does for every node). The user's own `node_info`, `optimization` and per-key
calibration values are merged with these: node_info entries win per node; quant_config's activation
settings win over calibration_type / max_percentile / per_channel (a warning says so when they differ).
A string value is the path of a JSON file holding the same object (for `calibration_type: load` it is the
thresholds source instead, see engine.stages.calibrate.load_source).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import schema
from engine.config import values as V
from engine.problems import Problem, warning

CP = "calibration_parameters"
KEY = (CP, "quant_config")
LEVELS = ("model_config", "op_config", "subgraph_config", "node_config")


@dataclass(frozen=True)
class QuantConfig:
    """What a quant_config asks of the engine, in the config's own terms."""

    optimization: tuple[str, ...] = ()
    node_info: dict[str, dict[str, str]] = field(default_factory=dict)
    calibration_type: str | None = None
    max_percentile: float | None = None
    per_channel: bool | None = None
    problems: tuple[Problem, ...] = ()
    source: Mapping | None = None  # the object read (from the config, or the JSON file it names)


def _no_effect(path: tuple, what: str) -> Problem:
    dotted = ".".join(str(p) for p in path[1:])
    return warning("quant-config-no-effect", f"Please note that the parameter '{dotted}' is recorded but has no "
                   f"effect here: {what}", path, data={"on_key": True})


def load_quant_config(value: Any, base_dir: Path, calibration_type: str | None,
                      check_files: bool = True) -> tuple[Mapping | None, list[Problem]]:
    """The quant_config object: the dict itself, or the JSON object in the file a string names."""
    if isinstance(value, Mapping):
        return value, []
    if not isinstance(value, str) or not value.strip() or calibration_type == "load" or not check_files:
        return None, []
    p = V.resolve_path(value, base_dir)
    if p.suffix.lower() != ".json":
        return None, [_no_effect(KEY, f"'{value}' is not a .json file; quant_config names a JSON file of "
                                      "model_config / op_config / subgraph_config / node_config (or, with "
                                      "calibration_type: load, the thresholds source)")]
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [warning("file-missing", f"Can not find file specified: {value},please check the "
                              "configuration", KEY, data={"resolved": str(p)})]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [warning("quant-config-unreadable", f"Cannot read quant_config {value}: {exc}", KEY)]
    if not isinstance(data, dict):
        return None, [warning("quant-config-unreadable", f"quant_config {value} holds a {type(data).__name__}, "
                              "expected a JSON object of model_config / op_config / subgraph_config / node_config",
                              KEY)]
    return data, []


def read_quant_config(value: Any, base_dir: Path, given: Mapping[str, Any] | None = None,
                      check_files: bool = True) -> QuantConfig:
    """Map a quant_config onto engine options. `given` is calibration_parameters (for the warnings that
    one of its keys is overridden)."""
    given = given or {}
    qc, problems = load_quant_config(value, base_dir, given.get("calibration_type"), check_files)
    if qc is None:
        return QuantConfig(problems=tuple(problems))
    m = _Mapper(given)
    m.problems += problems
    for level, body in qc.items():
        path = KEY + (level,)
        if level not in LEVELS:
            m.problems.append(_no_effect(path, f"the levels are {', '.join(LEVELS)}"))
        elif not isinstance(body, Mapping):
            m.problems.append(_no_effect(path, f"expected an object, found {type(body).__name__}"))
        elif level == "model_config":
            m.model_config(body, path)
        elif level == "op_config":
            for op, entry in body.items():
                m.qtype_entry(entry, path + (op,), op=str(op))
        elif level == "node_config":
            for node, entry in body.items():
                m.qtype_entry(entry, path + (node,), node=str(node))
        elif body:
            m.problems.append(_no_effect(path, "subgraphs are not configured separately; use node_config per "
                                               "node, or model_parameters.node_info"))
    return QuantConfig(tuple(dict.fromkeys(m.optimization)), m.node_info, m.calibration_type, m.max_percentile,
                       m.per_channel, tuple(m.problems), qc)


class _Mapper:
    def __init__(self, given: Mapping[str, Any]):
        self.given = given
        self.optimization: list[str] = []
        self.node_info: dict[str, dict[str, str]] = {}
        self.calibration_type: str | None = None
        self.max_percentile: float | None = None
        self.per_channel: bool | None = None
        self.problems: list[Problem] = []

    def model_config(self, body: Mapping, path: tuple) -> None:
        for key, v in body.items():
            at = path + (key,)
            if key == "all_node_type":
                if v == "int16":
                    self.optimization.append("set_all_nodes_int16")
                elif v != "int8":
                    self.problems.append(_no_effect(at, f"'{v}': all_node_type takes int8 or int16 here"))
            elif key == "model_output_type":
                if v in ("int8", "int16"):
                    self.optimization.append(f"set_model_output_{v}")
                else:
                    self.problems.append(_no_effect(at, f"'{v}': model_output_type takes int8 or int16 here"))
            elif key == "activation" and isinstance(v, Mapping):
                self.activation(v, at)
            elif key == "weight" and isinstance(v, Mapping):
                for wkey, wv in v.items():
                    if wkey == "bias_correction" and wv not in (None, False):
                        self.optimization.append("bias_correction")
                    elif wkey != "bias_correction":
                        self.problems.append(_no_effect(at + (wkey,), "weights are int8 symmetric per output "
                                                                      "channel"))
            else:
                self.problems.append(_no_effect(at, "model_config maps all_node_type, model_output_type, activation "
                                                    "(calibration_type, max_percentile, per_channel, asymmetric) "
                                                    "and weight.bias_correction"))

    def activation(self, body: Mapping, path: tuple) -> None:
        allowed = schema.item_enum(CP, "calibration_type")
        for key, v in body.items():
            at = path + (key,)
            values = list(v) if isinstance(v, list) else [v]
            if key == "calibration_type":
                if values and all(t in allowed for t in values):
                    self.calibration_type = values[0] if len(values) == 1 else "default"
                    self._overrides("calibration_type", self.calibration_type, at)
                else:
                    self.problems.append(_no_effect(at, f"{v!r}: the calibration types are {allowed}"))
            elif key == "max_percentile" and values and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                            and 0 <= x <= 1 for x in values):
                self.max_percentile = float(values[0])
                if len(values) > 1:
                    self.problems.append(_no_effect(at, f"one max_percentile is used here ({values[0]}), there is "
                                                        "no search over several"))
                self._overrides("max_percentile", self.max_percentile, at)
            elif key == "per_channel" and values and all(isinstance(x, bool) for x in values):
                self.per_channel = bool(values[0])
                if len(set(values)) > 1:
                    self.problems.append(_no_effect(at, f"one per_channel is used here ({values[0]}), there is "
                                                        "no search over both"))
                self._overrides("per_channel", self.per_channel, at)
            elif key == "asymmetric" and values and all(isinstance(x, bool) for x in values):
                if values[0]:
                    self.optimization.append("asymmetric")
            else:
                self.problems.append(_no_effect(at, "activation maps calibration_type, max_percentile, "
                                                    "per_channel and asymmetric"))

    def _overrides(self, key: str, value: Any, path: tuple) -> None:
        if key in self.given and self.given[key] != value:
            self.problems.append(warning("quant-config-overrides", f"quant_config sets {key} {value!r}, which "
                                         f"overrides calibration_parameters.{key} {self.given[key]!r}", path,
                                         data={"on_key": True}))

    def qtype_entry(self, entry: Any, path: tuple, op: str | None = None, node: str | None = None) -> None:
        if not isinstance(entry, Mapping):
            self.problems.append(_no_effect(path, f"expected an object such as {{qtype: int16}}, found "
                                                  f"{type(entry).__name__}"))
            return
        for key, v in entry.items():
            at = path + (key,)
            if key != "qtype":
                self.problems.append(_no_effect(at, "per node and per op type, qtype (int8, int16, float32) is "
                                                    "what maps"))
            elif v == "int16" and op is not None:
                self.optimization += [f"set_{op}_input_int16", f"set_{op}_output_int16"]
            elif v == "int16" and node is not None:
                self.node_info.setdefault(node, {}).update({"InputType": "int16", "OutputType": "int16"})
            elif v in ("float32", "float16") and node is not None:
                self.node_info.setdefault(node, {})["ON"] = "CPU"
                if v == "float16":
                    self.problems.append(warning("quant-config-float16", f"quant_config node '{node}' asks for "
                                                 "float16, which is not available here: it runs in float32 on the "
                                                 "CPU", at, data={"on_key": True}))
            elif v in ("float32", "float16"):
                self.problems.append(_no_effect(at, f"{op} nodes are not placed by op type; name them in "
                                                    "node_config or run_on_cpu"))
            elif v != "int8":
                self.problems.append(_no_effect(at, f"'{v}': qtype takes int8, int16, float16 or float32"))
