"""A model whose weights live in an external data file: that file is part of the parse stage's key."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from engine.frontend.onnx_model import external_data_files
from engine.pipeline import Engine
from tests.conftest import conv_relu_model
from tests.pipeline.test_stage_cache import PLAIN, statuses


def _save_external(path, scale: float) -> None:
    model = conv_relu_model()
    for init in model.graph.initializer:
        if init.name == model.graph.node[0].input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), init.name))
    (path.parent / "model.onnx.data").unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)


def test_external_data_files_are_listed(project):
    path = project.root / "model.onnx"
    assert external_data_files(path) == []
    _save_external(path, 1.0)
    assert external_data_files(path) == [project.root / "model.onnx.data"]


def test_weights_only_change_reruns_parse_and_publishes_the_new_weights(project):
    path = project.root / "model.onnx"
    _save_external(path, 1.0)
    cfg = project.config(PLAIN)
    engine = Engine()
    assert engine.run(cfg, until="parse").ok
    before = path.read_bytes()
    _save_external(path, -2.0)
    assert path.read_bytes() == before  # only the data file changed
    report = engine.run(cfg, until="parse")
    assert report.ok and statuses(report)["parse"] == "ran"
    published = onnx.load(str(project.root / "model_output" / "tiny_original_float_model.onnx"))
    user = onnx.load(str(path))
    name = user.graph.node[0].input[1]  # the conv weight, scaled by -2
    want = next(numpy_helper.to_array(i) for i in user.graph.initializer if i.name == name)
    got = {i.name: numpy_helper.to_array(i) for i in published.graph.initializer}
    np.testing.assert_array_equal(got[name], want)
