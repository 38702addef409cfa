"""Node removal: strip Quantize / Dequantize / Transpose / Cast / Reshape / Softmax at the model's borders.

`model_parameters.remove_node_type` / `remove_node_name` (reference §4; hb_model_modifier does the
same to a `.bin`): the application then feeds the quantized codes itself, or reads raw integer
outputs and dequantizes / transposes / reshapes them in its own post-processing, saving a CPU
pass per frame. The result is `{prefix}_quantized_removed_model.bc`.

Rules:
- a node is removable only **on a border**: at the head, its data input is a model input read by
  no other node (types Quantize, Transpose, Cast, Reshape); at the tail, its output is a model
  output read by no other node (types Dequantize, Transpose, Cast, Reshape, Softmax). Anything else
  is a `Problem` naming the node and saying why.
- the border tensor keeps the model's input / output **name**, so application code keeps working;
  its type and shape become those of the tensor on the other side of the removed node.
- types are applied in list order, each until no node of that type is left on a border (the graph
  is re-checked after every removal, so ``Dequantize;Softmax`` removes a tail Softmax that a tail
  Dequantize was hiding); then names, in list order. A name may also be the node that produces a
  tail Dequantize's input (``/model.23/cv2.0/cv2.0.2/Conv``: its Dequantize goes), a float node of
  the `.bc`'s node map, or a calibration node ``<tensor>_HzCalibration`` (the Dequantize of that
  tensor at a model output, or the Quantize of that model input).
- the result carries no initializer that nothing reads (the removed nodes' scales, perms, shapes,
  and whatever the `.bc` carried unread: onnxruntime warns about each when it opens the file).
- each removed node's parameters (scale / zero point / dtype / axis, perm, shapes, from / to
  dtype, axis) are returned, recorded in ``hbcompile.removed_nodes`` and logged as
  ``deleted nodes: NAME``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.compile.program import (
    NODE_MAP,
    REMOVED_NODES,
    TENSOR_MAP,
    TensorType,
    drop_unused_initializers,
    graph_inputs,
    json_metadata,
    set_metadata,
    tensor_types,
)
from engine.problems import ConfigError, Problem, error, warning

log = logging.getLogger("hbcompile")

MP = "model_parameters"
# config word → program op types it covers (DequantizeFilter: hb's Dequantize + filter, here a Dequantize)
OPS: dict[str, frozenset[str]] = {
    "Quantize": frozenset({"QuantizeLinear"}),
    "Dequantize": frozenset({"DequantizeLinear"}),
    "DequantizeFilter": frozenset({"DequantizeLinear"}),
    "Transpose": frozenset({"Transpose"}),
    "Cast": frozenset({"Cast"}),
    "Reshape": frozenset({"Reshape"}),
    "Softmax": frozenset({"Softmax", "QLinearSoftmax"}),
}
HEAD = frozenset({"Quantize", "Transpose", "Cast", "Reshape"})
TAIL = frozenset({"Dequantize", "DequantizeFilter", "Transpose", "Cast", "Reshape", "Softmax"})
CALIBRATION_SUFFIX = "_HzCalibration"


@dataclass(frozen=True)
class RemovedNode:
    name: str
    op_type: str
    position: str  # input | output
    tensor: str  # the model input / output it was on (the name is kept)
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _word(op_type: str) -> str | None:
    return next((w for w, ops in OPS.items() if op_type in ops and w != "DequantizeFilter"), None)


class _Graph:
    """The model with its producer / consumer maps, rebuilt after every removal."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.inputs = {i.name for i in graph_inputs(model)}
        self.outputs = {o.name for o in g.output}
        self.consts = {t.name for t in g.initializer} | \
            {o for n in g.node if n.op_type == "Constant" for o in n.output}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in dict.fromkeys(n.input):
                if i:
                    self.readers.setdefault(i, []).append(n)
        self.nodes = {n.name: n for n in g.node}

    def data_input(self, node: onnx.NodeProto) -> str:
        return node.input[0] if node.input else ""

    def position(self, node: onnx.NodeProto) -> tuple[str | None, str]:
        """("input" / "output", "") when removable at that border, else (None, why not)."""
        word = _word(node.op_type)
        x = self.data_input(node)
        out = node.output[0] if node.output else ""
        others = [i for i in node.input[1:] if i and i not in self.consts]
        if word is None:
            return None, (f"only {', '.join(sorted(HEAD))} at a model input or {', '.join(sorted(TAIL - {'DequantizeFilter'}))} "
                          f"at a model output can be removed, and it is a {node.op_type}")
        if others:
            return None, f"its input '{others[0]}' is computed at run time (only the data input may be)"
        if x in self.inputs and word in HEAD:
            shared = [r.name for r in self.readers.get(x, []) if r is not node]
            if shared:
                return None, f"the model input '{x}' is also read by node '{shared[0]}'"
            if out in self.outputs:
                return None, f"its output '{out}' is also a model output"
            return "input", ""
        if out in self.outputs and word in TAIL:
            shared = [r.name for r in self.readers.get(out, [])]
            if shared:
                return None, f"the model output '{out}' is also read by node '{shared[0]}'"
            if x in self.inputs or x in self.outputs:
                return None, f"its input '{x}' is itself a model {'input' if x in self.inputs else 'output'}"
            return "output", ""
        where = []
        if x in self.inputs:
            where.append(f"a {word} cannot be removed at a model input")
        elif out in self.outputs:
            where.append(f"a {word} cannot be removed at a model output")
        else:
            src = self.producer.get(x)
            dst = self.readers.get(out, [])
            where.append(f"it is not on a border: its input '{x}' comes from "
                         + (f"node '{src.name}'" if src is not None else "a constant")
                         + f" and its output '{out}' is read by "
                         + (f"node '{dst[0].name}'" if dst else "no model output"))
        return None, where[0]


def _const(model: onnx.ModelProto, name: str):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t) if n.attribute and n.attribute[0].type == \
                onnx.AttributeProto.TENSOR else None
    return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _number(value) -> Any:
    arr = value.tolist() if hasattr(value, "tolist") else value
    return arr


def _params(model: onnx.ModelProto, node: onnx.NodeProto, types: dict[str, TensorType]) -> dict[str, Any]:
    """What the application needs to redo the removed node itself."""
    x, y = node.input[0], node.output[0]
    tx, ty = types.get(x), types.get(y)
    shapes = {"input_shape": list(tx.shape) if tx and tx.shape is not None else None,
              "output_shape": list(ty.shape) if ty and ty.shape is not None else None,
              "input_dtype": tx.dtype if tx else None, "output_dtype": ty.dtype if ty else None}
    op = node.op_type
    if op in ("QuantizeLinear", "DequantizeLinear"):
        scale = _const(model, node.input[1]) if len(node.input) > 1 else None
        zp = _const(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        codes = (ty if op == "QuantizeLinear" else tx)
        out = {"scale": _number(scale) if scale is not None else None,
               "zero_point": _number(zp) if zp is not None else 0,
               "dtype": zp.dtype.name if zp is not None else (codes.dtype if codes else "uint8"), **shapes}
        if scale is not None and scale.ndim:
            out["axis"] = int(_attr(node, "axis", 1))
        return out
    if op == "Transpose":
        perm = _attr(node, "perm")
        return {"perm": list(perm) if perm is not None else None, **shapes}
    if op == "Cast":
        return {"from": shapes["input_dtype"], "to": shapes["output_dtype"], **shapes}
    if op == "Reshape":
        return dict(shapes)
    if op == "Softmax":
        return {"axis": int(_attr(node, "axis", -1)), **shapes}
    if op == "QLinearSoftmax":
        vals = [_const(model, i) for i in node.input[1:5]]
        return {"axis": int(_attr(node, "axis", -1)), "input_scale": _number(vals[0]),
                "input_zero_point": _number(vals[1]), "output_scale": _number(vals[2]),
                "output_zero_point": _number(vals[3]), **shapes}
    return shapes


def _value_info(name: str, t: TensorType | None) -> onnx.ValueInfoProto:
    if t is None:
        return onnx.ValueInfoProto(name=name)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
    return helper.make_tensor_value_info(name, elem, None if t.shape is None else list(t.shape))


def _remove(model: onnx.ModelProto, node: onnx.NodeProto, position: str) -> RemovedNode:
    """Remove one border node; the border tensor keeps the model's name."""
    g = model.graph
    types = tensor_types(model)
    params = _params(model, node, types)
    x, y = node.input[0], node.output[0]
    if position == "input":
        # readers of y read the model input x, which now has y's type
        for n in g.node:
            for k, i in enumerate(n.input):
                if i == y:
                    n.input[k] = x
        for k, vi in enumerate(g.input):
            if vi.name == x:
                g.input[k].CopyFrom(_value_info(x, types.get(y)))
        border, gone = x, y
    else:
        # the producer of x writes the model output y, which now has x's type
        for n in g.node:
            for k, o in enumerate(n.output):
                if o == x:
                    n.output[k] = y
            for k, i in enumerate(n.input):
                if i == x:
                    n.input[k] = y
        for k, vi in enumerate(g.output):
            if vi.name == y:
                g.output[k].CopyFrom(_value_info(y, types.get(x)))
        border, gone = y, x
    g.node.remove(node)
    kept = [v for v in g.value_info if v.name not in (gone, border)]
    del g.value_info[:]
    g.value_info.extend(kept)
    return RemovedNode(node.name, node.op_type, position, border, params)


def _by_name(gr: _Graph, name: str) -> tuple[list[onnx.NodeProto], str]:
    """The border nodes a `remove_node_name` entry designates, or why none."""
    model = gr.model
    if name in gr.nodes:
        node = gr.nodes[name]
        pos, why = gr.position(node)
        if pos is not None:
            return [node], ""
        # the node producing a tail Dequantize's input; or one program node of a float node whose last
        # one does (a Gemm is MatMulInteger → Add → Dequantize, and the MatMulInteger carries the name)
        tails = _tail_dequantizes(gr, [o for o in node.output if o]) or _mapped_tail_dequantizes(gr, name)
        if tails:
            return tails, ""
        return [], f"Node '{name}' ({node.op_type}) cannot be removed: {why}"
    tensor_map = json_metadata(model, TENSOR_MAP, {}) or {}
    if name.endswith(CALIBRATION_SUFFIX):
        t = name[: -len(CALIBRATION_SUFFIX)]
        held = (tensor_map.get(t) or {}).get("tensor", t)
        found = _tail_dequantizes(gr, [held, t])
        found += [n for n in gr.model.graph.node if n.op_type == "QuantizeLinear" and n.output[0] in (held, t)
                  and gr.position(n)[0] == "input"]
        if found:
            return found, ""
        return [], (f"Calibration node '{name}' has no Dequantize at a model output nor Quantize at a model "
                    "input to remove")
    node_map = json_metadata(model, NODE_MAP, {}) or {}
    if name in node_map:
        found = _mapped_tail_dequantizes(gr, name)
        progs = [gr.nodes[p] for p in node_map[name] if p in gr.nodes and gr.position(gr.nodes[p])[0]]
        if found or progs:
            return found or progs, ""
        return [], f"Node '{name}' cannot be removed: it is not on a border and feeds no Dequantize at a model output"
    return [], f"Node '{name}' given in remove_node_name is not in the model"


def _mapped_tail_dequantizes(gr: _Graph, name: str) -> list[onnx.NodeProto]:
    """The tail Dequantizes reading an output of the program nodes that implement float node `name`."""
    programs = (json_metadata(gr.model, NODE_MAP, {}) or {}).get(name) or []
    return _tail_dequantizes(gr, [o for p in programs if p in gr.nodes for o in gr.nodes[p].output if o])


def _tail_dequantizes(gr: _Graph, tensors: Sequence[str]) -> list[onnx.NodeProto]:
    return [r for t in tensors for r in gr.readers.get(t, [])
            if r.op_type == "DequantizeLinear" and gr.position(r)[0] == "output"]


def remove_nodes(bc_model: onnx.ModelProto, types: Sequence[str] = (),
                 names: Sequence[str] = ()) -> tuple[onnx.ModelProto, list[RemovedNode]]:
    """A copy of `bc_model` without the border nodes `types` / `names` designate (module docstring).

    Raises `ConfigError` listing every node that cannot be removed (nothing is removed then).
    """
    model = onnx.ModelProto()
    model.CopyFrom(bc_model)
    unknown = [t for t in types if t not in OPS]
    if unknown:
        raise ConfigError(error("remove-node-type", f"Unsupport removing {unknown} now", (MP, "remove_node_type")))
    removed: list[RemovedNode] = []
    problems: list[Problem] = []
    for word in types:
        count = 0
        while True:
            gr = _Graph(model)
            node = next((n for n in model.graph.node
                         if n.op_type in OPS[word] and _allowed_at(word, gr.position(n)[0])), None)
            if node is None:
                break
            removed.append(_remove(model, node, gr.position(node)[0]))
            count += 1
        if not count:
            problems.append(warning("remove-node-none", f"remove_node_type {word}: no {word} node at a model input or "
                                                        "output to remove", (MP, "remove_node_type")))
    errs: list[Problem] = []
    for name in names:
        gr = _Graph(model)
        nodes, why = _by_name(gr, name)
        if not nodes:
            errs.append(error("remove-node-name", why, (MP, "remove_node_name")))
            continue
        for node in nodes:
            gr = _Graph(model)
            pos = gr.position(node)[0]
            if pos is not None:
                removed.append(_remove(model, node, pos))
    if errs:
        raise ConfigError(errs)
    for p in problems:
        log.warning(p.message)
    if removed:
        previous = json_metadata(model, REMOVED_NODES, []) or []
        set_metadata(model, REMOVED_NODES, [*previous, *(r.to_json() for r in removed)])
    for r in removed:
        log.info(f"deleted nodes: {r.name}")
    # the removed nodes' scales and perms, and whatever the `.bc` carried unread (R1 m9)
    drop_unused_initializers(model)
    onnx.checker.check_model(model)
    return model, removed


def _allowed_at(word: str, position: str | None) -> bool:
    return (position == "input" and word in HEAD) or (position == "output" and word in TAIL)
