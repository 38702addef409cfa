"""Generated Caffe nets: prototxt + caffemodel pairs for every layer the Caffe frontend converts.

Written with the frontend's own message classes, the way Caffe saves them: the prototxt is the
net without blobs (text format), the caffemodel the whole net with blobs (binary). Weights are
random from a fixed seed. Each net records which Caffe layer produces each output blob, because
OpenCV's importer (the test oracle) names outputs by layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from engine.frontend.caffe import proto
from engine.frontend.caffe.reader import V1_TYPES

V1 = proto.V1LayerType.values_by_name
V1_NAMES = {v2: v1 for v1, v2 in V1_TYPES.items()}  # "Convolution" -> "CONVOLUTION"


@dataclass(frozen=True)
class CaffeFiles:
    prototxt: Path
    caffemodel: Path
    inputs: dict[str, list[int]]
    outputs: dict[str, str]  # output blob -> the layer that writes it last


@dataclass
class NetWriter:
    name: str
    seed: int = 0
    legacy: bool = False  # V1 `layers` with 4-D num/channels/height/width blobs
    net: object = field(init=False)
    inputs: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.net = proto.NetParameter(name=self.name)
        self.rng = np.random.default_rng(self.seed)

    # ---- inputs -------------------------------------------------------------------------------

    def input(self, name: str, shape: Sequence[int], form: str = "layer") -> str:
        """form: `layer` (Input layer), `input_dim` or `input_shape` (deprecated net fields)."""
        self.inputs[name] = list(shape)
        if form == "layer":
            self.net.layer.add(name=f"{name}_input", type="Input", top=[name],
                               input_param={"shape": [{"dim": list(shape)}]})
        elif form == "input_dim":
            self.net.input.append(name)
            self.net.input_dim.extend(shape)
        elif form == "input_shape":
            self.net.input.append(name)
            self.net.input_shape.add(dim=list(shape))
        else:
            raise ValueError(form)
        return name

    def inputs_layer(self, shapes: dict[str, Sequence[int]]) -> None:
        """One Input layer with several tops."""
        self.inputs.update({k: list(v) for k, v in shapes.items()})
        self.net.layer.add(name="inputs", type="Input", top=list(shapes),
                           input_param={"shape": [{"dim": list(s)} for s in shapes.values()]})

    # ---- layers -------------------------------------------------------------------------------

    def weights(self, *shape: int, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def layer(self, type_: str, name: str, bottom: str | Sequence[str], top: str | Sequence[str],
              blobs: Sequence[np.ndarray] = (), **params) -> object:
        bottoms = [bottom] if isinstance(bottom, str) else list(bottom)
        tops = [top] if isinstance(top, str) else list(top)
        if self.legacy:
            v1_type = V1[type_] if type_ in V1 else V1[V1_NAMES[type_]]
            layer = self.net.layers.add(name=name, type=v1_type.number, bottom=bottoms, top=tops)
        else:
            layer = self.net.layer.add(name=name, type=type_, bottom=bottoms, top=tops)
        for key, value in params.items():
            getattr(layer, key).MergeFrom(type(getattr(layer, key))(**value))
        for b in blobs:
            blob = layer.blobs.add()
            if self.legacy:
                dims = [1] * (4 - b.ndim) + list(b.shape)
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.SetInParent()  # Caffe writes `shape {}` even for a 0-D blob
                blob.shape.dim.extend(b.shape)
            blob.data.extend(np.asarray(b, np.float32).ravel().tolist())
        return layer

    # ---- common pieces --------------------------------------------------------------------

    def conv(self, name: str, bottom: str, top: str, cin: int, cout: int, k: int = 3, bias: bool = True,
             **conv) -> str:
        blobs = [self.weights(cout, cin // conv.get("group", 1), k, k, scale=1 / np.sqrt(cin * k * k))]
        if bias:
            blobs.append(self.weights(cout, scale=0.1))
        self.layer("Convolution", name, bottom, top, blobs,
                   convolution_param=dict(num_output=cout, kernel_size=[k], bias_term=bias, **conv))
        return top

    def bn_scale(self, name: str, blob: str, c: int, factor: float = 1.0) -> str:
        """BatchNorm + Scale(bias) in place, as Caffe ResNets write them."""
        mean = self.weights(c, scale=0.2) * factor
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32) * factor
        self.layer("BatchNorm", f"bn_{name}", blob, blob, [mean, var, np.array([factor], np.float32)],
                   batch_norm_param=dict(use_global_stats=True))
        self.layer("Scale", f"scale_{name}", blob, blob,
                   [self.rng.uniform(0.5, 1.5, c).astype(np.float32), self.weights(c, scale=0.1)],
                   scale_param=dict(bias_term=True))
        return blob

    # ---- output -------------------------------------------------------------------------------

    def write(self, directory: Path) -> CaffeFiles:
        directory.mkdir(parents=True, exist_ok=True)
        prototxt, caffemodel = directory / f"{self.name}.prototxt", directory / f"{self.name}.caffemodel"
        caffemodel.write_bytes(self.net.SerializeToString())
        text = proto.NetParameter()
        text.CopyFrom(self.net)
        for layer in list(text.layer) + list(text.layers):
            del layer.blobs[:]
        prototxt.write_text(text_format.MessageToString(text))
        layers = list(self.net.layer) + list(self.net.layers)
        outputs = {}
        for i, layer in enumerate(layers):
            for t in layer.top:
                if not any(t in later.bottom for later in layers[i + 1:]):
                    outputs[t] = layer.name
                else:
                    outputs.pop(t, None)
        return CaffeFiles(prototxt, caffemodel, dict(self.inputs), outputs)



# ---- one net per layer form -----------------------------------------------------------------------

def _single(name: str, shape: Sequence[int], type_: str, blobs: Callable[[NetWriter], list] = lambda w: [],
            form: str = "layer", **params) -> NetWriter:
    w = NetWriter(name)
    w.input("data", shape, form)
    w.layer(type_, name, "data", "out", blobs(w), **params)
    return w


def _conv_basic() -> NetWriter:
    w = NetWriter("conv_basic")
    w.input("data", [1, 3, 9, 9])
    w.conv("conv", "data", "out", 3, 4, pad=[1])
    return w


def _conv_group_dilation() -> NetWriter:
    w = NetWriter("conv_group_dilation")
    w.input("data", [1, 4, 11, 11], "input_dim")
    w.conv("conv", "data", "out", 4, 6, bias=False, group=2, dilation=[2], pad=[2])
    return w


def _conv_hw() -> NetWriter:
    w = NetWriter("conv_hw")
    w.input("data", [1, 3, 10, 12], "input_shape")
    w.layer("Convolution", "conv", "data", "out", [w.weights(5, 3, 3, 5, scale=0.2), w.weights(5, scale=0.1)],
            convolution_param=dict(num_output=5, kernel_h=3, kernel_w=5, pad_h=1, pad_w=2, stride_h=2, stride_w=1))
    return w


def _deconv() -> NetWriter:
    w = NetWriter("deconv")
    w.input("data", [1, 4, 5, 5])
    w.layer("Deconvolution", "deconv", "data", "out", [w.weights(4, 3, 4, 4, scale=0.3), w.weights(6, scale=0.1)],
            convolution_param=dict(num_output=6, group=2, kernel_size=[4], stride=[2], pad=[1]))
    return w


def _inner_product() -> NetWriter:
    w = NetWriter("inner_product")
    w.input("data", [2, 3, 4, 4])
    w.layer("InnerProduct", "fc", "data", "out", [w.weights(10, 48, scale=0.2), w.weights(10, scale=0.1)],
            inner_product_param=dict(num_output=10))
    return w


def _inner_product_transpose() -> NetWriter:
    w = NetWriter("inner_product_transpose")
    w.input("data", [2, 12])
    w.layer("InnerProduct", "fc", "data", "out", [w.weights(12, 7, scale=0.3)],
            inner_product_param=dict(num_output=7, transpose=True, bias_term=False))
    return w


def _inner_product_axis() -> NetWriter:
    w = NetWriter("inner_product_axis")
    w.input("data", [2, 3, 8])
    w.layer("InnerProduct", "fc", "data", "out", [w.weights(5, 8, scale=0.3), w.weights(5, scale=0.1)],
            inner_product_param=dict(num_output=5, axis=2))
    return w


def _batch_norm_scale() -> NetWriter:
    w = NetWriter("batch_norm_scale")
    w.input("data", [1, 3, 8, 8])
    w.conv("conv", "data", "conv", 3, 6, pad=[1])
    w.bn_scale("conv", "conv", 6, factor=0.5)  # the moving-average factor blob is not 1
    w.layer("ReLU", "relu", "conv", "conv")
    return w


def _batch_norm_alone() -> NetWriter:
    w = NetWriter("batch_norm_alone")
    w.input("data", [2, 4, 5, 5])
    w.layer("BatchNorm", "bn", "data", "bn", [w.weights(4, scale=0.3) * 3, w.rng.uniform(0.5, 2, 4).astype(
        np.float32) * 3, np.array([3.0], np.float32)], batch_norm_param=dict(eps=1e-3))
    w.layer("ReLU", "relu", "bn", "out")
    return w


def _batch_norm_batch_stats() -> NetWriter:
    w = NetWriter("batch_norm_batch_stats")
    w.input("data", [2, 4, 5, 5])
    w.layer("BatchNorm", "bn", "data", "out", [np.zeros(4, np.float32), np.ones(4, np.float32),
                                                np.ones(1, np.float32)],
            batch_norm_param=dict(use_global_stats=False))
    return w


def _scale_alone() -> NetWriter:
    w = NetWriter("scale_alone")
    w.input("data", [1, 4, 5, 5])
    w.layer("Scale", "scale", "data", "out", [w.weights(4), w.weights(4, scale=0.1)],
            scale_param=dict(bias_term=True))
    return w


def _scale_two_bottoms() -> NetWriter:
    w = NetWriter("scale_two_bottoms")
    w.inputs_layer({"data": [1, 4, 5, 5], "factor": [1, 4]})
    w.layer("Scale", "scale", ["data", "factor"], "out", [w.weights(4, scale=0.1)],
            scale_param=dict(axis=0, bias_term=True))
    return w


def _relu_leaky() -> NetWriter:
    return _single("relu_leaky", [1, 3, 6, 6], "ReLU", relu_param=dict(negative_slope=0.1))


def _relu() -> NetWriter:
    return _single("relu", [1, 3, 6, 6], "ReLU")


def _prelu() -> NetWriter:
    return _single("prelu", [1, 3, 6, 6], "PReLU", lambda w: [w.weights(3)])


def _prelu_shared() -> NetWriter:
    return _single("prelu_shared", [1, 3, 6, 6], "PReLU", lambda w: [np.array(0.3, np.float32)],
                   prelu_param=dict(channel_shared=True))


def _sigmoid() -> NetWriter:
    return _single("sigmoid", [1, 3, 6, 6], "Sigmoid")


def _tanh() -> NetWriter:
    return _single("tanh", [1, 3, 6, 6], "TanH")


def _elu() -> NetWriter:
    return _single("elu", [1, 3, 6, 6], "ELU", elu_param=dict(alpha=0.5))


def _pool(name: str, shape: Sequence[int], **pooling) -> Callable[[], NetWriter]:
    return lambda: _single(name, shape, "Pooling", pooling_param=pooling)


POOLS = {
    "pool_max_ceil": _pool("pool_max_ceil", [1, 2, 10, 10], pool=0, kernel_size=3, stride=2),
    "pool_max_pad": _pool("pool_max_pad", [1, 2, 10, 10], pool=0, kernel_size=3, stride=2, pad=1),
    "pool_ave_overhang_pad": _pool("pool_ave_overhang_pad", [1, 2, 10, 10], pool=1, kernel_size=3, stride=2, pad=1),
    "pool_ave_overhang": _pool("pool_ave_overhang", [1, 2, 10, 10], pool=1, kernel_size=3, stride=2),
    "pool_ave_pad": _pool("pool_ave_pad", [1, 2, 10, 10], pool=1, kernel_size=3, stride=1, pad=1),
    "pool_ave_clipped": _pool("pool_ave_clipped", [1, 2, 5, 5], pool=1, kernel_size=2, stride=2, pad=1),
    "pool_max_clipped": _pool("pool_max_clipped", [1, 2, 5, 5], pool=0, kernel_size=2, stride=2, pad=1),
    "pool_ave_hw": _pool("pool_ave_hw", [1, 2, 9, 7], pool=1, kernel_h=3, kernel_w=2, stride_h=2, stride_w=1,
                         pad_h=1, pad_w=0),
    "pool_global_max": _pool("pool_global_max", [1, 3, 5, 7], pool=0, global_pooling=True),
    "pool_global_ave": _pool("pool_global_ave", [1, 3, 5, 7], pool=1, global_pooling=True),
    "pool_ave_floor": _pool("pool_ave_floor", [1, 2, 10, 10], pool=1, kernel_size=3, stride=2, pad=1,
                            round_mode=1),
    "pool_max_floor": _pool("pool_max_floor", [1, 2, 11, 11], pool=0, kernel_size=2, stride=2, round_mode=1),
}


def _eltwise(name: str, n: int, **eltwise) -> Callable[[], NetWriter]:
    def make() -> NetWriter:
        w = NetWriter(name)
        w.inputs_layer({f"x{i}": [1, 3, 4, 4] for i in range(n)})
        w.layer("Eltwise", name, [f"x{i}" for i in range(n)], "out", eltwise_param=eltwise)
        return w
    return make


ELTWISE = {
    "eltwise_sum": _eltwise("eltwise_sum", 2),
    "eltwise_sum_coeff": _eltwise("eltwise_sum_coeff", 3, coeff=[0.5, -2.0, 1.0]),
    "eltwise_sub": _eltwise("eltwise_sub", 2, coeff=[1.0, -1.0]),
    "eltwise_prod": _eltwise("eltwise_prod", 3, operation=0),
    "eltwise_max": _eltwise("eltwise_max", 3, operation=2),
}


def _concat(name: str, **concat) -> Callable[[], NetWriter]:
    def make() -> NetWriter:
        w = NetWriter(name)
        w.inputs_layer({"a": [1, 2, 3, 4], "b": [1, 2, 3, 4]})
        w.layer("Concat", "concat", ["a", "b"], "out", concat_param=concat)
        return w
    return make


def _slice_points() -> NetWriter:
    w = NetWriter("slice_points")
    w.input("data", [1, 5, 3, 3])
    w.layer("Slice", "slice", "data", ["s0", "s1", "s2"], slice_param=dict(axis=1, slice_point=[1, 3]))
    w.layer("Concat", "concat", ["s2", "s0", "s1"], "out")  # reordered: shows each piece
    return w


def _slice_equal() -> NetWriter:
    w = NetWriter("slice_equal")
    w.input("data", [1, 2, 6, 3])
    w.layer("Slice", "slice", "data", ["s0", "s1"], slice_param=dict(slice_dim=2))
    w.layer("Eltwise", "sub", ["s0", "s1"], "out", eltwise_param=dict(coeff=[1.0, -1.0]))
    return w


def _split() -> NetWriter:
    w = NetWriter("split")
    w.input("data", [1, 3, 4, 4])
    w.layer("Split", "split", "data", ["a", "b"])
    w.layer("ReLU", "relu", "a", "a_relu")  # "b" is read by nobody: an output made by Split itself
    return w


def _flatten() -> NetWriter:
    return _single("flatten", [2, 3, 4, 5], "Flatten")


def _flatten_axes() -> NetWriter:
    return _single("flatten_axes", [2, 3, 4, 5], "Flatten", flatten_param=dict(axis=1, end_axis=2))


def _reshape() -> NetWriter:
    return _single("reshape", [2, 3, 4, 4], "Reshape", reshape_param=dict(shape=dict(dim=[0, -1, 8])))


def _reshape_axis() -> NetWriter:
    return _single("reshape_axis", [2, 6, 4], "Reshape", reshape_param=dict(shape=dict(dim=[2, -1]), axis=1,
                                                                            num_axes=1))


def _softmax() -> NetWriter:
    return _single("softmax", [2, 5, 3, 3], "Softmax")


def _softmax_axis() -> NetWriter:
    return _single("softmax_axis", [2, 5, 3, 4], "Softmax", softmax_param=dict(axis=3))


def _dropout() -> NetWriter:
    w = NetWriter("dropout")
    w.input("data", [1, 3, 5, 5])
    w.conv("conv", "data", "conv", 3, 4)
    w.layer("Dropout", "drop", "conv", "conv", dropout_param=dict(dropout_ratio=0.3))  # in place
    return w


def _permute() -> NetWriter:
    return _single("permute", [1, 3, 4, 5], "Permute", permute_param=dict(order=[0, 2, 3, 1]))


def _power() -> NetWriter:
    return _single("power", [1, 3, 4, 4], "Power", power_param=dict(power=2.0, scale=0.5, shift=1.0))


def _crop() -> NetWriter:
    w = NetWriter("crop")
    w.inputs_layer({"data": [1, 3, 10, 10], "ref": [1, 3, 6, 7]})
    w.layer("Crop", "crop", ["data", "ref"], "out", crop_param=dict(axis=2, offset=[1, 2]))
    return w


def _upsample() -> NetWriter:
    return _single("upsample", [1, 3, 4, 5], "Upsample", upsample_param=dict(scale=2))


def _interp_zoom() -> NetWriter:
    return _single("interp_zoom", [1, 3, 5, 6], "Interp", interp_param=dict(zoom_factor=2))


def _interp_size() -> NetWriter:
    return _single("interp_size", [1, 3, 5, 6], "Interp", interp_param=dict(height=9, width=4))


LAYER_NETS: dict[str, Callable[[], NetWriter]] = {
    "conv_basic": _conv_basic,
    "conv_group_dilation": _conv_group_dilation,
    "conv_hw": _conv_hw,
    "deconv": _deconv,
    "inner_product": _inner_product,
    "inner_product_transpose": _inner_product_transpose,
    "inner_product_axis": _inner_product_axis,
    "batch_norm_scale": _batch_norm_scale,
    "batch_norm_alone": _batch_norm_alone,
    "batch_norm_batch_stats": _batch_norm_batch_stats,
    "scale_alone": _scale_alone,
    "scale_two_bottoms": _scale_two_bottoms,
    "relu": _relu,
    "relu_leaky": _relu_leaky,
    "prelu": _prelu,
    "prelu_shared": _prelu_shared,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "elu": _elu,
    **POOLS,
    **ELTWISE,
    "concat_axis": _concat("concat_axis", axis=1),
    "concat_dim": _concat("concat_dim", concat_dim=2),
    "concat_negative": _concat("concat_negative", axis=-1),
    "slice_points": _slice_points,
    "slice_equal": _slice_equal,
    "split": _split,
    "flatten": _flatten,
    "flatten_axes": _flatten_axes,
    "reshape": _reshape,
    "reshape_axis": _reshape_axis,
    "softmax": _softmax,
    "softmax_axis": _softmax_axis,
    "dropout": _dropout,
    "permute": _permute,
    "power": _power,
    "crop": _crop,
    "upsample": _upsample,
    "interp_zoom": _interp_zoom,
    "interp_size": _interp_size,
}


# ---- whole nets ------------------------------------------------------------------------------------

def resnet_style() -> NetWriter:
    """A small ResNet deploy net: conv + BatchNorm/Scale pairs + in-place ReLU, MAX pooling with
    ceil rounding, a projection block and an identity block (Eltwise SUM), AVE pooling whose last
    window hangs over the input (ceil), InnerProduct, Softmax."""
    w = NetWriter("resnet_style", seed=1)
    w.input("data", [1, 3, 32, 32])
    w.conv("conv1", "data", "conv1", 3, 8, k=7, stride=[2], pad=[3])
    w.bn_scale("conv1", "conv1", 8, factor=0.9)
    w.layer("ReLU", "conv1_relu", "conv1", "conv1")
    w.layer("Pooling", "pool1", "conv1", "pool1", pooling_param=dict(pool=0, kernel_size=3, stride=2))  # 16 -> 8

    def block(name: str, bottom: str, cin: int, cout: int, project: bool) -> str:
        if project:
            w.conv(f"res{name}_branch1", bottom, f"res{name}_branch1", cin, cout, k=1, bias=False)
            w.bn_scale(f"{name}_branch1", f"res{name}_branch1", cout)
            shortcut = f"res{name}_branch1"
        else:
            shortcut = bottom
        mid = cout // 2
        x = w.conv(f"res{name}_branch2a", bottom, f"res{name}_branch2a", cin, mid, k=1, bias=False)
        w.bn_scale(f"{name}_branch2a", x, mid)
        w.layer("ReLU", f"res{name}_branch2a_relu", x, x)
        x = w.conv(f"res{name}_branch2b", x, f"res{name}_branch2b", mid, mid, k=3, bias=False, pad=[1])
        w.bn_scale(f"{name}_branch2b", x, mid)
        w.layer("ReLU", f"res{name}_branch2b_relu", x, x)
        x = w.conv(f"res{name}_branch2c", x, f"res{name}_branch2c", mid, cout, k=1, bias=False)
        w.bn_scale(f"{name}_branch2c", x, cout)
        w.layer("Eltwise", f"res{name}", [shortcut, x], f"res{name}")
        w.layer("ReLU", f"res{name}_relu", f"res{name}", f"res{name}")
        return f"res{name}"

    x = block("2a", "pool1", 8, 16, project=True)
    x = block("2b", x, 16, 16, project=False)
    w.layer("Pooling", "pool5", x, "pool5", pooling_param=dict(pool=1, kernel_size=3, stride=2))  # 8 -> 4, overhang
    w.layer("InnerProduct", "fc10", "pool5", "fc10", [w.weights(10, 16 * 4 * 4, scale=0.1), w.weights(10, scale=0.1)],
            inner_product_param=dict(num_output=10))
    w.layer("Softmax", "prob", "fc10", "prob")
    return w


def legacy_v1() -> NetWriter:
    """A V1 (`layers { type: CONVOLUTION }`) net with input + input_dim and 4-D legacy blobs."""
    w = NetWriter("legacy_v1", seed=2, legacy=True)
    w.input("data", [1, 3, 12, 12], "input_dim")
    w.conv("conv1", "data", "conv1", 3, 6, k=3, stride=[1])
    w.layer("RELU", "relu1", "conv1", "conv1")
    w.layer("POOLING", "pool1", "conv1", "pool1", pooling_param=dict(pool=0, kernel_size=2, stride=2))  # 10 -> 5
    w.layer("INNER_PRODUCT", "fc", "pool1", "fc", [w.weights(4, 6 * 5 * 5, scale=0.1), w.weights(4, scale=0.1)],
            inner_product_param=dict(num_output=4))
    w.layer("DROPOUT", "drop", "fc", "fc")
    w.layer("SOFTMAX", "prob", "fc", "prob")
    return w


def write(name: str, directory: Path) -> CaffeFiles:
    """Write the net called `name` (a LAYER_NETS key, `resnet_style` or `legacy_v1`)."""
    makers = {**LAYER_NETS, "resnet_style": resnet_style, "legacy_v1": legacy_v1}
    return makers[name]().write(directory)
