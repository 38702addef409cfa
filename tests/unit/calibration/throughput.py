"""Observer throughput vs a plain onnxruntime float pass over the same samples (prints, never asserts).

Run: ``.venv/bin/python -m tests.unit.calibration.throughput [samples]``. The model is a mid-size
generated CNN (224×224 input, 12 Conv+Relu, 3 stride-2 stages, 32–128 channels); every
activation is observed, as the calibrate stage does.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from engine.calibration import Observer, activation_tensors, merge_samples, thresholds
from engine.calibration.observer import cpu_count


def mid_size_cnn(hw: int = 224, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "data", 3
    plan = [(32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1),
            (128, 1), (128, 1)]
    for i, (out, stride) in enumerate(plan):
        w = (rng.standard_normal((out, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        b = (rng.standard_normal(out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}"], pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"])]
        x, c = f"relu{i}", out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["output"]))
    g = helper.make_graph(nodes, "mid", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, hw, hw])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, c, 1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def main(n: int = 32) -> None:
    model = mid_size_cnn()
    rng = np.random.default_rng(0)
    data = [{"data": rng.uniform(0, 255, (1, 3, 224, 224)).astype(np.float32)} for _ in range(n)]
    tensors = activation_tensors(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cpu_count()
    plain = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    plain.run(None, data[0])
    t0 = time.perf_counter()
    for s in data:
        plain.run(None, s)
    t_plain = time.perf_counter() - t0

    rows = [("plain onnxruntime float pass", t_plain)]
    group_outputs = [t for t in tensors if not t.startswith("conv")]  # only Conv+Relu outputs are quantized
    for label, batch, observed in (("observer, batch 1", 1, tensors), ("observer, automatic batch", None, tensors),
                                   ("observer, Conv+Relu outputs only", None, group_outputs)):
        observer = Observer(model, observed, batch=batch)
        list(observer.observe(iter(data[:2])))  # sessions built outside the timing
        t0 = time.perf_counter()
        result = list(observer.observe(iter(data)))
        rows.append((f"{label} ({len(observed)} tensors, batch {observer.batch_used})", time.perf_counter() - t0))
        if observed is tensors:
            stats = result
    t0 = time.perf_counter()
    merged = merge_samples(stats)
    t_merge = time.perf_counter() - t0
    t0 = time.perf_counter()
    thresholds(merged, "kl")
    t_kl = time.perf_counter() - t0
    print(f"{n} samples, {len(tensors)} observed tensors, {cpu_count()} threads")
    for label, t in rows:
        print(f"  {label:56s} {t:7.3f} s  {n / t:7.1f} samples/s  {t / t_plain:5.2f}× plain")
    print(f"  merge {len(merged)} tensors × {n} samples {t_merge:7.3f} s; kl thresholds {t_kl:7.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 32)
