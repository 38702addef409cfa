"""Fusion groups: node sets the quantizer treats as one integer op, kept in the model itself.

Stored in `metadata_props["hb_fusion_groups"]` as JSON, so the optimized model file alone says
what is fused (and Netron shows it):

    [{"name": "Conv_0+Relu_1", "type": "Conv+Relu", "nodes": ["Conv_0", "Relu_1"], "kind": "conv_act"}]

kinds: `conv_act` (Conv + Relu/Clip/LeakyRelu: one output scale), `conv_add` (Conv + residual Add:
the Add accumulates onto the Conv's int32 result), `activation` (a decomposed activation such as
SiLU or GELU left as several nodes: one lookup-table op). Each grouping pass owns one kind and
recomputes it from the current graph on every run, so the groups always match the final graph.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import onnx

KEY = "hb_fusion_groups"
KINDS = ("conv_act", "conv_add", "activation")


@dataclass(frozen=True)
class FusionGroup:
    name: str  # hb_compile style: the node names joined by "+"
    type: str  # the op types joined by "+" ("Conv+Relu"), or the activation's name ("SiLU")
    nodes: tuple[str, ...]
    kind: str

    @classmethod
    def of(cls, nodes: list[onnx.NodeProto], kind: str, type_: str | None = None) -> FusionGroup:
        return cls("+".join(n.name for n in nodes), type_ or "+".join(n.op_type for n in nodes),
                   tuple(n.name for n in nodes), kind)


def read_groups(model: onnx.ModelProto) -> list[FusionGroup]:
    raw = next((p.value for p in model.metadata_props if p.key == KEY), "[]")
    return [FusionGroup(g["name"], g["type"], tuple(g["nodes"]), g["kind"]) for g in json.loads(raw)]


def write_groups(model: onnx.ModelProto, kind: str, groups: list[FusionGroup]) -> int:
    """Replace every group of `kind` by `groups`; returns how many groups were added or dropped.

    Groups are kept in graph order of their first node so the JSON reads like the model.
    """
    assert kind in KINDS and all(g.kind == kind for g in groups)
    old = read_groups(model)
    new_count = len(set(groups) - {g for g in old if g.kind == kind})
    merged = [g for g in old if g.kind != kind] + groups
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    merged.sort(key=lambda g: (order.get(g.nodes[0], len(order)), KINDS.index(g.kind)))
    value = json.dumps([{**asdict(g), "nodes": list(g.nodes)} for g in merged])
    for i in reversed(range(len(model.metadata_props))):
        if model.metadata_props[i].key == KEY:
            del model.metadata_props[i]
    if merged:
        model.metadata_props.add(key=KEY, value=value)
    removed = len({g for g in old if g.kind == kind} - set(groups))
    return new_count + removed
