"""Read a Caffe net: the prototxt (text NetParameter) for structure, the caffemodel for blobs.

Like Caffe's `Net(prototxt, TEST)` + `CopyTrainedLayersFrom(caffemodel)`: layer parameters come
from the prototxt only, blobs are matched to layers by name, layers are filtered by the TEST
phase rules, legacy V1 `layers { type: CONVOLUTION }` nets are upgraded to the current form, and
the net inputs are gathered from `input` + `input_dim` / `input_shape` and from `Input` layers.
Every failure is a `ModelError` whose one line names the file.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from engine.frontend.caffe import proto
from engine.problems import ModelError, error

MP = "model_parameters"

# Caffe's UpgradeV1LayerType (src/caffe/util/upgrade_proto.cpp): V1 enum name -> layer type.
V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
# Parameter fields V1LayerParameter shares (same message types) with LayerParameter.
V1_PARAMS = ("concat_param", "convolution_param", "dropout_param", "eltwise_param", "inner_product_param",
             "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param", "slice_param",
             "tanh_param")


@dataclass(frozen=True)
class Blob:
    """One learned blob of a layer. `legacy` when its shape came from num/channels/height/width."""

    data: np.ndarray
    legacy: bool = False


@dataclass(frozen=True)
class Layer:
    """One active layer, in current (V2) form; `param` is a caffe.LayerParameter without blobs."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    param: object
    blobs: tuple[Blob, ...] = ()


@dataclass
class CaffeNet:
    name: str
    inputs: dict[str, list[int] | None]  # net inputs in order; None = no shape given
    layers: list[Layer] = field(default_factory=list)
    prototxt: str = ""
    caffemodel: str = ""


def model_error(code: str, message: str, key: str = "caffe_model") -> ModelError:
    return ModelError(error(code, message, (MP, key)))


def read_net(prototxt: Path, caffemodel: Path, supported: frozenset[str] = frozenset()) -> CaffeNet:
    """Parse both files into the TEST-phase net; `supported` (the convertible layer types) lets a
    field outside our schema inside an unconvertible layer be reported as that layer."""
    for path, key in ((prototxt, "prototxt"), (caffemodel, "caffe_model")):
        if not Path(path).is_file():
            raise model_error("file-missing", f"Can not find file specified: {path},please check the configuration", key)
    net = read_prototxt(Path(prototxt), supported)
    weights = read_caffemodel(Path(caffemodel))
    out = CaffeNet(name=net.name, inputs=_net_inputs(net, str(prototxt)), prototxt=str(prototxt),
                   caffemodel=str(caffemodel))
    state = _state(net)
    for param in _layers_v2(net):
        if not _included(param, state):
            continue
        if param.type == "Input":
            _input_layer(param, out.inputs, str(prototxt))
            continue
        blobs = weights.take(param.name)
        out.layers.append(Layer(param.name, param.type, tuple(param.bottom), tuple(param.top), param, blobs))
    return out


def read_prototxt(path: Path, supported: frozenset[str] = frozenset()):
    """Text NetParameter, parsed strictly (a misspelt field is an error, not a silent default).

    A field outside our schema inside a layer the TEST phase leaves out (Data layers of a
    train_val prototxt) is skipped; inside a layer of a type we do not convert it is reported as
    that layer, in hb_mapper's words. `supported` empty: every error is a syntax error.
    """
    text = _read_text(path, "prototxt")
    while True:
        net = proto.NetParameter()
        try:
            text_format.Parse(text, net)
            return net
        except text_format.ParseError as exc:
            err = exc
        found = _layer_at(text, err.GetLine(), err.GetColumn()) if supported else None
        if found is None:
            break
        param, start, end = found
        if not _included(param, _state(_lenient(text))):
            # blank the layer out, keeping line and column numbers of the rest
            text = text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]
            continue
        if param.type not in supported and param.type != "Input":
            raise unsupported(param.name, param.type, str(path))
        break
    line, col = err.GetLine(), err.GetColumn()
    where = f"{path}:{line}:{col}" if line is not None else str(path)
    reason = str(err)
    if reason.startswith(f"{line}:{col} : "):
        reason = reason[len(f"{line}:{col} : "):]
    raise model_error("model-invalid", f"Caffe prototxt file invalid: {where}: {reason}", "prototxt")


def _lenient(text: str):
    net = proto.NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError:
        net.Clear()
    return net


def _layer_at(text: str, line: int | None, col: int | None):
    """The top-level `layer { }` / `layers { }` block holding 1-based (line, col), parsed without
    its unknown fields, with its character span; None if there is none or it does not parse."""
    if line is None:
        return None
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    if line > len(starts):
        return None
    offset = starts[line - 1] + max((col or 1) - 1, 0)
    for start, end in _layer_spans(text):
        if start <= offset < end:
            block = _lenient(text[start:end])
            layers = _layers_v2(block)
            return (layers[0], start, end) if len(layers) == 1 else None
    return None


_TOKEN = re.compile(r"""#[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[{}]|\b(?:layers?)\b""")


def _layer_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the top-level layer blocks (comments and strings skipped)."""
    spans, depth, start = [], 0, None
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0 and start is not None:
                spans.append((start, m.end()))
                start = None
        elif tok in ("layer", "layers") and depth == 0:
            start = m.start()
    return spans


def unsupported(name: str, type_: str, file: str) -> ModelError:
    """hb_mapper's wording (`ValueError: Not support layer name=accuracy type=Accuracy`)."""
    return model_error("caffe-layer-unsupported", f"Not support layer name={name} type={type_} (in {file})", "prototxt")


def _read_text(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise model_error("model-invalid", f"Caffe prototxt file invalid: {path}: not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})", key) from None
    except OSError as exc:
        raise model_error("file-missing", f"Can not read file {path}: {exc.strerror}", key) from None


class _Weights:
    """Blobs per layer name, handed out in order (a name may repeat in both files)."""

    def __init__(self, by_name: dict[str, deque[tuple[Blob, ...]]]):
        self.by_name = by_name

    def take(self, name: str) -> tuple[Blob, ...]:
        queue = self.by_name.get(name)
        return queue.popleft() if queue else ()


def read_caffemodel(path: Path) -> _Weights:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise model_error("file-missing", f"Can not read file {path}: {exc.strerror}") from None
    weights = proto.CaffeModelWeights()
    try:
        weights.ParseFromString(data)
    except DecodeError as exc:
        raise model_error("model-invalid", f"Caffe model file invalid: {path}: {exc}") from None
    if not weights.layer and not weights.layers:
        raise model_error("model-invalid", f"Caffe model file invalid: {path}: it holds no layers "
                          f"(empty file, or not a .caffemodel)")
    by_name: dict[str, deque[tuple[Blob, ...]]] = defaultdict(deque)
    for layer in list(weights.layer) + list(weights.layers):
        if layer.blobs:
            by_name[layer.name].append(tuple(_blob(b, layer.name, i, path) for i, b in enumerate(layer.blobs)))
    return _Weights(by_name)


def _blob(b, layer: str, index: int, path: Path) -> Blob:
    legacy = not b.HasField("shape") and any(b.HasField(f) for f in ("num", "channels", "height", "width"))
    if b.HasField("shape"):
        shape = [int(d) for d in b.shape.dim]
    elif legacy:
        shape = [b.num, b.channels, b.height, b.width]
    else:
        shape = [len(b.data) or len(b.double_data)]
    values = np.asarray(b.data if len(b.data) else b.double_data, dtype=np.float32)
    count = int(np.prod(shape, dtype=np.int64))
    if values.size != count:
        raise model_error("model-invalid", f"Caffe model file invalid: {path}: layer '{layer}' blob {index} has "
                          f"{values.size} values but its shape {shape} needs {count}")
    return Blob(values.reshape(shape), legacy)


def _layers_v2(net) -> list:
    """`layer` entries as they are, legacy `layers` upgraded (a net uses one form or the other)."""
    if not net.layers:
        return list(net.layer)
    upgraded = []
    for v1 in net.layers:
        p = proto.LayerParameter(name=v1.name, bottom=list(v1.bottom), top=list(v1.top))
        value = proto.V1LayerType.values_by_number.get(v1.type)
        p.type = V1_TYPES.get(value.name, value.name) if value else str(v1.type)
        p.include.extend(v1.include)
        p.exclude.extend(v1.exclude)
        for name in V1_PARAMS:
            if v1.HasField(name):
                getattr(p, name).CopyFrom(getattr(v1, name))
        upgraded.append(p)
    return list(net.layer) + upgraded


@dataclass(frozen=True)
class _State:
    phase: int
    level: int
    stages: frozenset[str]


def _state(net) -> _State:
    return _State(proto.Phase["TEST"].number, net.state.level, frozenset(net.state.stage))


def _meets(state: _State, rule) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    return all(s in state.stages for s in rule.stage) and not any(s in state.stages for s in rule.not_stage)


def _included(param, state: _State) -> bool:
    """Caffe's Net::FilterNet for one layer."""
    if param.include:
        return any(_meets(state, r) for r in param.include)
    return not any(_meets(state, r) for r in param.exclude)


def _net_inputs(net, file: str) -> dict[str, list[int] | None]:
    names = list(net.input)
    if net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise model_error("model-invalid", f"Caffe prototxt file invalid: {file}: {len(net.input_dim)} input_dim "
                              f"values for {len(names)} input(s); expected 4 per input", "prototxt")
        return {n: list(net.input_dim[4 * i:4 * i + 4]) for i, n in enumerate(names)}
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise model_error("model-invalid", f"Caffe prototxt file invalid: {file}: {len(net.input_shape)} "
                              f"input_shape entries for {len(names)} input(s)", "prototxt")
        return {n: [int(d) for d in s.dim] for n, s in zip(names, net.input_shape, strict=True)}
    return dict.fromkeys(names)


def _input_layer(param, inputs: dict[str, list[int] | None], file: str) -> None:
    shapes = [[int(d) for d in s.dim] for s in param.input_param.shape]
    if shapes and len(shapes) not in (1, len(param.top)):
        raise model_error("model-invalid", f"Caffe prototxt file invalid: {file}: Input layer '{param.name}' has "
                          f"{len(shapes)} shapes for {len(param.top)} tops", "prototxt")
    for i, top in enumerate(param.top):
        inputs[top] = (shapes[0] if len(shapes) == 1 else shapes[i]) if shapes else None
