"""The typed, immutable Config the stages read (built only from a config without errors)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import values as V

Numbers = tuple[float, ...] | None


@dataclass(frozen=True)
class ModelParameters:
    onnx_model: Path | None
    caffe_model: Path | None
    prototxt: Path | None
    march: str
    working_dir: Path
    output_model_file_prefix: str
    output_nodes: tuple[str, ...] = ()
    remove_node_type: tuple[str, ...] = ()
    remove_node_name: tuple[str, ...] = ()
    debug_mode: str | None = None
    node_info: dict[str, dict[str, str]] = field(default_factory=dict)
    layer_out_dump: bool = False

    @property
    def model_files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.onnx_model, self.caffe_model, self.prototxt) if p is not None)


@dataclass(frozen=True)
class InputParameters:
    """Per-input `;` lists, position i belonging to input i (in `input_name` order)."""

    input_name: tuple[str | None, ...] = ()
    input_type_train: tuple[str | None, ...] = ()
    input_layout_train: tuple[str | None, ...] = ()
    input_type_rt: tuple[str | None, ...] = ()
    input_layout_rt: tuple[str | None, ...] = ()
    input_space_and_range: tuple[str | None, ...] = ()
    input_shape: tuple[tuple[int, ...] | None, ...] = ()
    norm_type: tuple[str | None, ...] = ()
    mean_value: tuple[Numbers, ...] = ()
    scale_value: tuple[Numbers, ...] = ()
    std_value: tuple[Numbers, ...] = ()
    input_batch: int | None = None
    separate_batch: bool = False
    separate_name: tuple[str, ...] = ()


@dataclass(frozen=True)
class CalibrationParameters:
    cal_data_dir: tuple[Path | None, ...] = ()
    cal_data_type: tuple[str | None, ...] = ()
    calibration_type: str = "default"
    max_percentile: float = 1.0
    per_channel: bool = False
    run_on_cpu: tuple[str, ...] = ()
    run_on_bpu: tuple[str, ...] = ()
    optimization: tuple[str, ...] = ()
    preprocess_on: bool = False
    quant_config: Any = None


@dataclass(frozen=True)
class CompilerParameters:
    compile_mode: str = "latency"
    balance_factor: int | None = None
    debug: bool = True
    core_num: int = 1
    optimize_level: str = "O2"
    input_source: dict[str, str] = field(default_factory=dict)
    max_time_per_fc: int = 0
    jobs: int = 16
    advice: float = 0
    extra_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """A validated config. `data` is the user's values (empty ones dropped, paths resolved)."""

    path: Path | None
    base_dir: Path
    data: dict[str, dict[str, Any]]
    model: ModelParameters
    inputs: InputParameters
    calibration: CalibrationParameters
    compiler: CompilerParameters

    def value(self, dotted: str, default: Any = None) -> Any:
        section, _, key = dotted.partition(".")
        sec = self.data.get(section, {})
        return sec.get(key, default) if key else sec

    def slice(self, *dotted: str) -> dict[str, Any]:
        """The canonical values of the named keys/sections: what a stage key hashes."""
        return {d: _canonical(self.value(d)) for d in sorted(dotted)}

    @property
    def digest(self) -> str:
        text = json.dumps(_canonical(self.data), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def prefix(self) -> str:
        return self.model.output_model_file_prefix

    @property
    def working_dir(self) -> Path:
        return self.model.working_dir


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


STRING_FORM_FIELD = "OutputType"  # the node_info entry field the string form 'name:value' sets


def parse_node_info(value: Any) -> dict[str, dict[str, str]]:
    """String form 'Conv_0:int16;Conv_1:int16' → {'Conv_0': {'OutputType': 'int16'}, …}."""
    if isinstance(value, dict):
        return {str(k): dict(v or {}) for k, v in value.items()}
    out: dict[str, dict[str, str]] = {}
    for item in V.split_names(value):
        name, _, dtype = item.rpartition(":")
        out[name.strip()] = {STRING_FORM_FIELD: dtype.strip()}
    return out
