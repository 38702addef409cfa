"""Shared artefacts for the preprocess tests: real photos, small generated conv models, an ORT runner."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skimage import data as skdata

PHOTOS = {"astronaut": skdata.astronaut, "chelsea": skdata.chelsea, "coffee": skdata.coffee}


def photo(name: str) -> np.ndarray:
    """A bundled RGB uint8 photo cropped to even height and width (NV12 needs both even)."""
    img = PHOTOS[name]()
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    return np.ascontiguousarray(img[:h, :w])


def conv_model(shape: tuple[int, ...], layout: str = "NCHW", out_channels: int = 4, seed: int = 0,
               name: str = "images", opset: int = 17) -> onnx.ModelProto:
    """float input `name` of `shape` (NCHW or NHWC) → 3×3 Conv → Relu; NHWC models transpose first."""
    rng = np.random.default_rng(seed)
    c = shape[3] if layout == "NHWC" else shape[1]
    w = rng.normal(0, 0.3, (out_channels, c, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, out_channels).astype(np.float32)
    out_hw = [shape[1], shape[2]] if layout == "NHWC" else [shape[2], shape[3]]
    out_shape = [shape[0], out_channels, *out_hw]
    nodes, x = [], name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes.append(helper.make_node("Conv", [x, "w", "b"], ["conv"], name="conv0", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["conv"], ["out"], name="relu0"))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 13 else 6
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
