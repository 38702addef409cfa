"""Per-input specs resolved against the model, and the rules that need the model to check.

`resolve_inputs` is the one place where the `;` lists of input_parameters / calibration become
one `InputSpec` per model input (in `input_name` order). `check_with_model` holds the rules that
need input names, shapes and node names; the CLI runs them in the parse stage, the language
server as soon as it has read the model.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.config import values as V
from engine.config.model import Config
from engine.config.rules import (
    CP,
    IP,
    MP,
    XP,
    derived_norm_type,
    input_name_problems,
    input_source_problems,
    list_count_problems,
    list_lengths,
    rt_by_input,
    shape_problems,
)
from engine.frontend.model_info import ModelInfo
from engine.problems import ConfigError, Fix, Problem, error, errors, warning

FLOAT32 = 1  # onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    type_train: str
    layout_train: str | None
    type_rt: str
    layout_rt: str | None
    space_and_range: str
    norm_type: str
    mean: tuple[float, ...] | None
    scale: tuple[float, ...] | None
    std: tuple[float, ...] | None
    cal_data_dir: Path | None
    cal_data_type: str | None

    @property
    def is_image(self) -> bool:
        return self.type_rt != "featuremap"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "input_type_train": self.type_train,
                "input_layout_train": self.layout_train, "input_type_rt": self.type_rt,
                "input_layout_rt": self.layout_rt, "input_space_and_range": self.space_and_range,
                "norm_type": self.norm_type, "mean_value": self.mean, "scale_value": self.scale,
                "std_value": self.std}


def _at(items, i):
    return items[i] if i < len(items) else None


def _names(data: dict, info: ModelInfo) -> list[str]:
    given = [n for n in V.split_list(data.get(IP, {}).get("input_name"))]
    return [n for n in given if n] or info.input_names


def check_with_model(data: dict[str, dict[str, Any]], info: ModelInfo) -> list[Problem]:
    return list(_model_rules(data, info))


def _model_rules(data: dict[str, dict[str, Any]], info: ModelInfo) -> Iterator[Problem]:
    ip = data.get(IP, {})
    model_names = info.input_names
    given = [n for n in V.split_list(ip.get("input_name")) if n]
    if len(model_names) > 1 and not given:
        yield error("input-names-required", "Model has more than one input! It is necessary to explicitly specify "
                    "all the input_name to ensure the sequence is correct.", (IP,), data={"on_key": True,
                                                                                           "inputs": model_names})
        return
    yield from input_name_problems(given, model_names)
    counts = list_lengths(data)
    counts.pop("input_name", None)
    if given:
        counts["input_name"] = len(given)
    yield from list_count_problems(counts, len(model_names), "model")
    by_name = {t.name: t for t in info.inputs}
    names = given or model_names
    for i, name in enumerate(names):
        t = by_name.get(name)
        if t is not None and t.elem_type not in (0, FLOAT32):
            yield error("input-dtype", f"Input '{name}' of the model has element type {t.dtype_name}; hbcompile "
                        "takes float32 model inputs only (calibration samples and runtime inputs are fed as "
                        "float32): export the model with a float32 input, or cast inside the model",
                        (IP, "input_name") if given else (IP,), data={"item": i} if given else {"on_key": True})
    for t in info.outputs:
        if t.name in by_name:
            yield error("output-is-input", f"Output '{t.name}' of the model is its input '{t.name}' itself, which "
                        "no node computes; hbcompile compiles the nodes between inputs and outputs: take that "
                        "output out of the model, or compute it (e.g. an Identity node with its own output name)",
                        (MP, "onnx_model"))
    try:
        shapes = [V.parse_shape(s) for s in V.split_list(ip.get("input_shape"))]
    except V.ValueFormatError:
        shapes = []
    for i, name in enumerate(names):
        t = by_name.get(name)
        if t is None:
            continue
        shape = _at(shapes, i)
        if shape is None and t.is_static:  # the model's own shape against types and layout
            yield from shape_problems(i, _at(V.split_list(ip.get("input_type_rt")), i),
                                      _at(V.split_list(ip.get("input_type_train")), i),
                                      _at(V.split_list(ip.get("input_layout_train")), i),
                                      tuple(int(d) for d in t.shape), (IP,))
        if shape is None and not t.is_static:
            yield error("input-dynamic", "The model is a dynamically input model. Please specify the 'input_shape' "
                        f"parameter in the 'input_parameters' (input '{name}' has shape {list(t.shape or [])})",
                        (IP, "input_shape") if "input_shape" in ip else (IP,),
                        data={"on_key": "input_shape" not in ip, "item": i})
        elif shape is not None and t.shape is not None:
            if len(shape) != len(t.shape):
                yield error("input-shape-rank", f"input_shape {V.format_shape(shape)} of input '{name}' has "
                            f"{len(shape)} dims but the model input has {len(t.shape)}: {list(t.shape)}",
                            (IP, "input_shape"), data={"item": i})
            elif any(isinstance(m, int) and m != s for m, s in zip(t.shape, shape)):
                yield warning("input-shape-differs", f"input_shape {V.format_shape(shape)} of input '{name}' differs "
                              f"from the model's {list(t.shape)}; the given shape is used", (IP, "input_shape"),
                              data={"item": i})
    if not given:  # with input_name given, the config rules checked input_source by those names already
        yield from input_source_problems(data.get(XP, {}).get("input_source"), rt_by_input(ip, model_names), True)
    yield from _optimization_op_types(data.get(CP, {}).get("optimization"), info)
    known = set(info.node_names)
    for name, where, path, place in _named_nodes(data):
        if name and name not in known and not name.endswith("_HzCalibration"):
            sev = error if where == "output_nodes" else warning  # an output that is not there cannot be built
            yield sev("node-unknown", f"The node '{name}' given in {where} is not a node of the model", path,
                      data={"name": name, **place})




def _fused_op_types() -> frozenset[str]:
    """Op types the optimize stage writes in place of a decomposed pattern of Mul and others
    (engine.passes.fuse_activations, fuse_hard_sigmoid): absent from the parsed model, yet what
    `set_{OpType}_…` then finds. Imported when asked: the passes bring onnx's reference evaluator."""
    from engine.passes.activations import GATED, HARD_SIGMOID

    return frozenset({HARD_SIGMOID.op} | {a.op for a in GATED})


def _optimization_op_types(value: Any, info: ModelInfo) -> Iterator[Problem]:
    """`set_{OpType}_input/output_int*` applies to nodes whose op type is exactly OpType: a type no node has
    (`set_conv_output_int16`, a typo) changes nothing, which the run would not say."""
    present = sorted({n.op_type for n in info.nodes})
    if not present:
        return
    lower = {t.lower(): t for t in present}
    for i, item in enumerate(str(value).split(",") if value is not None else ()):
        m = V.OP_BITS_ITEM.fullmatch(item.strip())
        if m is None or m.group(1) in present or m.group(1) == "model" \
                or ("Mul" in present and m.group(1) in _fused_op_types()):  # set_model_output_*: the outputs
            continue
        op = m.group(1)
        close = lower.get(op.lower()) or next(iter(difflib.get_close_matches(op, present, n=1, cutoff=0.6)), None)
        hint = f"did you mean '{close}'?" if close else f"the model's op types are {', '.join(present)}"
        fixes = (Fix(f"Use '{close}'", item.strip().replace(f"set_{op}_", f"set_{close}_", 1)),) if close else ()
        yield warning("optimization-op-unknown", f"The optimization '{item.strip()}' names op type '{op}', which no "
                      f"node of the model has: it changes nothing; {hint}", (CP, "optimization"),
                      data={"item": i, "sep": ",", "op_type": op, "present": present},
                      fixes=fixes)


def _named_nodes(data: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, tuple, dict[str, Any]]]:
    """(node name, the key as told, its path, where on that path: the item of a `;` list, or the name as a
    key) for every node name the config writes: the `;` lists, quant_config's node_config and node_info
    (a mapping, or `name: …` items)."""
    for section, key in ((MP, "output_nodes"), (MP, "remove_node_name"), (CP, "run_on_cpu"), (CP, "run_on_bpu")):
        for i, name in enumerate(V.split_list(data.get(section, {}).get(key))):
            if name:
                yield name, key, (section, key), {"item": i}
    qc = data.get(CP, {}).get("quant_config")
    node_config = qc.get("node_config") if isinstance(qc, dict) else None
    for name in node_config if isinstance(node_config, dict) else ():
        yield str(name), "quant_config.node_config", (CP, "quant_config", "node_config", name), {"on_key": True}
    node_info = data.get(MP, {}).get("node_info")
    if isinstance(node_info, dict):
        for name in node_info:
            yield str(name), "node_info", (MP, "node_info", name), {"on_key": True}
    else:
        for item in V.split_names(node_info):
            yield item.rpartition(":")[0].strip(), "node_info", (MP, "node_info"), {"on_key": True}


MODEL_CHECK = "model_check"  # Problem.data key: raised by `check_with_model`, which editors run on every version


def resolve_inputs(config: Config, info: ModelInfo) -> list[InputSpec]:
    """One InputSpec per model input; raises ConfigError when the config does not fit the model."""
    problems = check_with_model(config.data, info)
    if errors(problems):  # marked: a language server shows its own live copy of these (`MODEL_CHECK`)
        raise ConfigError([replace(p, data={**p.data, MODEL_CHECK: True}) for p in errors(problems)])
    ip, cal = config.inputs, config.calibration
    by_name = {t.name: t for t in info.inputs}
    names = [n for n in ip.input_name if n] or info.input_names
    specs = []
    for i, name in enumerate(names):
        t = by_name[name]
        shape = _at(ip.input_shape, i) or tuple(int(d) for d in (t.shape or ()))
        train = _at(ip.input_type_train, i) or "featuremap"
        rt = _at(ip.input_type_rt, i) or train
        mean, scale, std = _at(ip.mean_value, i), _at(ip.scale_value, i), _at(ip.std_value, i)
        specs.append(InputSpec(
            name=name, shape=tuple(shape), type_train=train, layout_train=_at(ip.input_layout_train, i),
            type_rt=rt, layout_rt=_at(ip.input_layout_rt, i),
            space_and_range=_at(ip.input_space_and_range, i) or "regular",
            norm_type=derived_norm_type(mean, scale, std), mean=mean, scale=scale, std=std,
            cal_data_dir=_at(cal.cal_data_dir, i), cal_data_type=_at(cal.cal_data_type, i)))
    return specs


__all__ = ["MODEL_CHECK", "InputSpec", "check_with_model", "resolve_inputs"]
