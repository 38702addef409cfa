"""Shared fixtures: tiny generated models and config writers (no hub downloads, ever)."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
# A developer's running `hblsp daemon` must not serve the tests' in-process CLI calls;
# tests/daemon opts back in with its own socket.
os.environ.setdefault("HBCOMPILE_NO_DAEMON", "1")


def conv_relu_model(shape=(1, 3, 8, 8), dynamic_batch: bool = False, opset: int = 17,
                    input_name: str = "data", seed: int = 0) -> onnx.ModelProto:
    """Conv(3→4) → BatchNorm → Relu → GlobalAveragePool: small, real, with BN to fold."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    w = rng.standard_normal((4, c, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32) * 0.1
    mean, var = rng.standard_normal(4).astype(np.float32) * 0.1, rng.uniform(0.5, 1.5, 4).astype(np.float32)
    dims = ["N", *shape[1:]] if dynamic_batch else list(shape)
    nodes = [helper.make_node("Conv", [input_name, "w", "b"], ["conv_out"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["conv_out", "gamma", "beta", "mean", "var"], ["bn_out"]),
             helper.make_node("Relu", ["bn_out"], ["relu_out"]),
             helper.make_node("GlobalAveragePool", ["relu_out"], ["output"])]
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w, "w"), (b, "b"), (gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"))]
    g = helper.make_graph(nodes, "conv_relu", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [dims[0], 4, 1, 1])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def two_input_model() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 4, 4])
    b = helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 3, 4, 4])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 3, 4, 4])
    g = helper.make_graph([helper.make_node("Add", ["img", "feat"], ["sum"])], "two", [a, b], [out])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


GOOD_CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: tiny
input_parameters:
  input_name: data
  input_type_train: rgb
  input_layout_train: NCHW
  input_type_rt: nv12
  input_shape: 1x3x8x8
  mean_value: 128 128 128
  scale_value: 0.0078125
calibration_parameters:
  calibration_type: max
compiler_parameters:
  compile_mode: latency
  optimize_level: O2
"""


@pytest.fixture
def project(tmp_path: Path):
    """A folder with model.onnx and a writer for config.yaml; returns a small helper object."""

    class Project:
        root = tmp_path

        def model(self, model: onnx.ModelProto | None = None, name: str = "model.onnx") -> Path:
            path = tmp_path / name
            onnx.save(model or conv_relu_model(), str(path))
            return path

        def config(self, text: str = GOOD_CONFIG, name: str = "config.yaml") -> Path:
            path = tmp_path / name
            path.write_text(textwrap.dedent(text))
            return path

        def artefacts(self) -> list[str]:
            wd = tmp_path / "model_output"
            return sorted(p.name for p in wd.iterdir() if p.is_file()) if wd.is_dir() else []

    p = Project()
    p.model()
    return p


@contextmanager
def hb_records(keep: Callable[[logging.LogRecord], Any] = lambda record: record,
               level: int = logging.DEBUG) -> Iterator[list]:
    """What the 'hbcompile' logger (which may not propagate to the root logger) emits meanwhile with its
    level set to `level` (every level by default), each record passed through `keep` (None drops it)."""
    records: list = []

    class Keep(logging.Handler):
        def emit(self, record):
            kept = keep(record)
            if kept is not None:
                records.append(kept)

    logger = logging.getLogger("hbcompile")
    handler, before = Keep(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


@pytest.fixture
def hb_log():
    """Records of the 'hbcompile' logger."""
    with hb_records() as records:
        yield records
