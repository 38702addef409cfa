"""Caffe net -> ONNX model (opset 17, float32, static shapes, unique node and tensor names).

Blob names: Caffe lets a layer write a blob in place (top == bottom), ONNX needs one name per
tensor. The last value written to a blob keeps the blob's name (so outputs, and whatever the
user knows by a Caffe name, keep it); earlier values are `<blob>_<layer that wrote it>`. Net
inputs always keep their names. Nodes are named after their layers (helper nodes
`<layer>_<what>`). The graph's outputs are the blobs whose last value no layer reads, in the
order they were written.

A BatchNorm followed by a Scale on its output (the usual Caffe pair) becomes one
BatchNormalization carrying the Scale's gamma / beta, which the optimize stage folds into the
preceding Conv.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
from onnx import shape_inference

from engine.frontend.caffe.graph import Graph
from engine.frontend.caffe.layers import CONVERTERS, Ctx
from engine.frontend.caffe.reader import CaffeNet, Layer, model_error, read_net, unsupported
from engine.problems import ModelError, error

SUPPORTED = frozenset(CONVERTERS)
PRODUCER = "hbcompile.caffe"


def convert(prototxt: Path, caffemodel: Path,
            input_shapes: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """Read `prototxt` + `caffemodel` and convert them; `input_shapes` overrides input shapes."""
    net = read_net(Path(prototxt), Path(caffemodel), SUPPORTED)
    return build(net, input_shapes or {})


def build(net: CaffeNet, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    g = Graph()
    shapes = _input_shapes(net, input_shapes)
    for name, shape in shapes.items():
        g.add_input(name, shape)
    writes = Counter(t for layer in net.layers for t in layer.tops)
    for blob in writes:
        g.tensors.reserve(blob)
    current = {name: name for name in shapes}  # blob -> tensor holding its latest value
    unread: dict[str, None] = {}  # blobs whose latest value no layer has read yet, in write order

    def tensor_for(blob: str, layer: Layer) -> str:
        writes[blob] -= 1
        if writes[blob] == 0 and blob not in shapes:
            return blob
        return g.tensors.unique(f"{blob}_{layer.name}")

    i = 0
    while i < len(net.layers):
        layer = net.layers[i]
        if layer.type not in CONVERTERS:
            raise unsupported(layer.name, layer.type, net.prototxt)
        if not layer.tops:
            raise _net_error(net, f"layer '{layer.name}' (type {layer.type}) has no top")
        missing = [b for b in layer.bottoms if b not in current]
        if missing or not layer.bottoms:
            what = f"reads blob '{missing[0]}', which no earlier layer or input produces" if missing else "has no bottom"
            raise _net_error(net, f"layer '{layer.name}' (type {layer.type}) {what}")
        bottoms = [current[b] for b in layer.bottoms]
        fused = _scale_to_fuse(net.layers, i)
        if fused is not None:
            writes[layer.tops[0]] -= 1  # the BatchNorm's own value is never materialized
        writer = fused or layer
        tops = [tensor_for(t, writer) for t in writer.tops]
        ctx = Ctx(layer, g, bottoms, tops, net.caffemodel, net.prototxt, fused)
        produced = CONVERTERS[layer.type](ctx)
        for blob in layer.bottoms:
            unread.pop(blob, None)
        for blob, tensor in zip(writer.tops, produced, strict=True):
            current[blob] = tensor
            unread.pop(blob, None)
            unread[blob] = None
        try:
            unshaped = g.infer_pending()
        except shape_inference.InferenceError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise ctx.fail(f"its inputs do not fit (ONNX shape inference: {reason})") from None
        if unshaped:
            raise ctx.fail(f"gives an empty or unknown output shape {g.shapes.get(unshaped[0])} for inputs "
                           f"{[g.shapes.get(b) for b in bottoms]}")
        i += 2 if fused is not None else 1

    outputs = []
    node_outputs = {o for n in g.nodes for o in n.output}
    for blob in unread:
        tensor = current[blob]
        if tensor != blob and blob not in node_outputs and blob not in shapes:
            # an aliasing layer (Split, Dropout, identity Power) made the value: name it as the blob
            g.node("Identity", [tensor], [blob], f"{blob}_output")
            tensor = blob
        elif tensor in outputs or tensor in shapes:
            copy = g.tensors.unique(f"{blob}_output")
            g.node("Identity", [tensor], [copy], f"{blob}_output")
            tensor = copy
        outputs.append(tensor)
    if not outputs:
        raise _net_error(net, "the net has no output (every blob is read by a later layer)")
    model = g.model(net.name, outputs, PRODUCER)
    onnx.checker.check_model(model)
    return model


def _scale_to_fuse(layers: Sequence[Layer], i: int) -> Layer | None:
    """The Scale right after BatchNorm `i` that only rescales its output per channel, if any."""
    bn = layers[i]
    if bn.type != "BatchNorm" or i + 1 >= len(layers) or len(bn.tops) != 1:
        return None
    p = bn.param.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        return None
    sc = layers[i + 1]
    if sc.type != "Scale" or list(sc.bottoms) != [bn.tops[0]] or len(sc.tops) != 1:
        return None
    sp = sc.param.scale_param
    if (sp.axis, sp.num_axes) != (1, 1):
        return None
    if sc.tops[0] != bn.tops[0]:  # the BatchNorm value stays visible: nobody else may read it
        for later in layers[i + 2:]:
            if bn.tops[0] in later.bottoms:
                return None
            if bn.tops[0] in later.tops:
                break
    return sc


def _input_shapes(net: CaffeNet, given: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    unknown = [n for n in given if n not in net.inputs]
    if unknown:
        raise ModelError(error("caffe-input-unknown", f"input_shape given for '{unknown[0]}', but the inputs of "
                               f"Caffe net {net.prototxt} are {list(net.inputs)}", ("input_parameters", "input_shape")))
    if not net.inputs:
        raise _net_error(net, "the net has no input (no `input` and no Input layer)")
    shapes = {}
    for name, shape in net.inputs.items():
        shape = list(given.get(name, shape) or [])
        if not shape or any(int(d) <= 0 for d in shape):
            raise ModelError(error("caffe-input-shape", f"The shape of model input:{name} is {shape} which has "
                                   f"dimensions of 0. Please specify input-shape parameter.",
                                   ("input_parameters", "input_shape")))
        shapes[name] = [int(d) for d in shape]
    return shapes


def _net_error(net: CaffeNet, what: str) -> ModelError:
    return model_error("caffe-net-invalid", f"Caffe prototxt {net.prototxt}: {what}", "prototxt")
