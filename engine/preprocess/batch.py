"""input_batch: the runtime model takes N samples at once for an `input_shape` with N = 1.

hb_compile compiles the model for batch 1 (calibration samples, the float/calibrated/ptq models)
and only the runtime model (`.bc`, `.hbm`) takes `input_batch` samples per call, every input at
once (hb_compile; hb_mapper allowed it for single-input models only). Decided here:

- the optimized float model is rewritten for batch N *before* integer lowering, so the `.bc` is
  the same program on N samples (same plan, same scales, same integer kernels);
- a Reshape whose constant shape starts with the batch 1 gets 0 there ("copy the input's first
  dim"), -1 when `allowzero` is set; a constant shape whose first entry is not the batch (a
  Reshape folding the batch into another axis, `-1` absorbing more than the batch) is refused,
  naming the node;
- then the rewritten model is run on two samples against two batch-1 runs: every float tensor
  must come out as the two batch-1 tensors stacked on axis 0. The first node that mixes samples
  (a Softmax / Reduce / Flatten over axis 0, a Transpose moving the batch, a constant of batch 1
  broadcast against N…) is refused with its name: `input_batch` then cannot apply, and nothing
  is written. Keeping the batch on axis 0 of every tensor is what lets a batch-N run be sliced
  back into N batch-1 results (the report compares the first sample).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.calibration.stats import finite_absmax
from engine.problems import ModelError, error

IP = "input_parameters"
CHECK_BATCH = 2  # samples in the per-sample check (the rewrite is the same for any N)
RTOL, ATOL = 1e-4, 1e-5  # float kernels may sum in another order for another batch


@dataclass(frozen=True)
class BatchRewrite:
    """A Reshape whose constant shape was changed so it keeps the batch."""

    node: str
    before: tuple[int, ...]
    after: tuple[int, ...]


def _refuse(message: str, **data) -> ModelError:
    return ModelError(error("input-batch-model", message, (IP, "input_batch"), data=data or None))


def _dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError / ValidationError subclasses of Exception
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _refuse(f"input_batch: the model does not take a batch of samples ({first})") from None


def _const_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _rewrite_reshapes(model: onnx.ModelProto) -> list[BatchRewrite]:
    """Batch-keeping constants for every Reshape of the batch-1 `model` (in place)."""
    shapes = {v.name: _dims(v) for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    done = []
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        target = _const_value(model, node.input[1])
        dims_in, dims_out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if target is None or not dims_in or dims_in[0] != 1:
            continue  # a computed shape (Shape → … → Concat) follows the batch by itself
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        first = target[0] if target else None
        if first == 0 and not allowzero:
            continue
        if first == -1 and dims_out and dims_out[0] == 1:
            continue  # -1 resolves to the batch: N for N samples
        if first == 1 and (not allowzero or -1 not in target[1:]):
            new = [0 if not allowzero else -1, *target[1:]]
        else:
            raise _refuse(f"input_batch: Reshape '{node.name}' has the constant shape {target}, whose first "
                          "dimension is not the batch of 1; the model cannot take a batch of samples",
                          node=node.name)
        name, k = f"{node.input[1]}_batched", 1
        while name in taken:
            name, k = f"{node.input[1]}_batched_{k}", k + 1
        taken.add(name)
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(new, np.int64), name))
        node.input[1] = name
        done.append(BatchRewrite(node.name, tuple(target), tuple(new)))
    return done


def _set_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value != 1:
            shown = _dims(vi)
            raise _refuse(f"input_batch needs the first dim of every input to be 1, input '{vi.name}' has "
                          f"{shown}", input=vi.name)
        dims[0].dim_value = batch
    return _inferred(m)


def _samples(model: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded, distinct inputs of `n` samples around the pixel range (the check compares the model
    with itself, so any values that differ between samples will do)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [n, *(_dims(vi) or [1])[1:]]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        out[vi.name] = (rng.standard_normal(dims) * 64 + 128).astype(dtype)
    return out


def _moved(node: onnx.NodeProto, tensor: str, got: list, one: list, n: int) -> ModelError:
    return _refuse(f"input_batch: node '{node.name}' ({node.op_type}) gives '{tensor}' the shape {got} for {n} "
                   f"samples, not {n} × {one}; every tensor must keep the batch on its first axis", node=node.name)


def _check_inferred_shapes(single: onnx.ModelProto, batched: onnx.ModelProto, tensors: list[str],
                           producer: dict[str, onnx.NodeProto], n: int) -> None:
    """Where shape inference knows both shapes, a tensor of n samples is n × the one-sample shape on
    axis 0 — caught here before anything runs (a Reshape further on would fail, hiding the cause)."""
    one = {v.name: _dims(v) for v in (*single.graph.value_info, *single.graph.output)}
    many = {v.name: _dims(v) for v in (*batched.graph.value_info, *batched.graph.output)}
    for t in tensors:
        a, b = one.get(t), many.get(t)
        if not a or not b or None in a or None in b:
            continue
        if len(a) != len(b) or b[0] != n * a[0] or a[1:] != b[1:]:
            raise _moved(producer[t], t, b, a, n)


def check_per_sample(single: onnx.ModelProto, batched: onnx.ModelProto, n: int = CHECK_BATCH) -> None:
    """`batched` (batch n) on n samples = `single` (batch 1) on each, stacked on axis 0, for every float
    tensor; else a ModelError naming the first node (graph order) that mixes or moves the batch."""
    from engine.similarity import run_model

    tensors = [o for node in single.graph.node for o in node.output if o]
    types = {v.name: v.type.tensor_type.elem_type for v in (*batched.graph.value_info, *batched.graph.output)}
    floats = [t for t in tensors if types.get(t) in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)]
    producer = {o: node for node in single.graph.node for o in node.output}
    _check_inferred_shapes(single, batched, floats, producer, n)
    feeds = _samples(single, n)
    try:
        together = run_model(batched, feeds, floats, threads=1)
    except Exception as exc:  # onnxruntime's own words name the node (`Name:'…'`)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        found = re.search(r"Name:'([^']*)'", first)
        where = f"node '{found.group(1)}' " if found else ""
        raise _refuse(f"input_batch: {where}fails on a batch of {n} samples; the model cannot take a batch of "
                      f"samples ({first[:300]})", node=found.group(1) if found else None) from None
    apart = [run_model(single, {k: v[i:i + 1] for k, v in feeds.items()}, floats, threads=1) for i in range(n)]
    for t in floats:
        want = np.concatenate([a[t] for a in apart], axis=0) if all(np.ndim(a[t]) for a in apart) else None
        got = together[t]
        node = producer[t]
        if want is None or got.shape != want.shape:
            raise _moved(node, t, list(np.shape(got)), list(np.shape(apart[0][t])), n)
        scale = finite_absmax(want)
        if not np.allclose(got, want, rtol=RTOL, atol=ATOL * max(scale, 1.0), equal_nan=True):
            raise _refuse(f"input_batch: node '{node.name}' ({node.op_type}) mixes the samples of a batch "
                          f"(its output '{t}' for one sample depends on the others)", node=node.name)


def with_batch(model: onnx.ModelProto, batch: int) -> tuple[onnx.ModelProto, list[BatchRewrite]]:
    """`model` (batch 1) rewritten to take `batch` samples per run, checked to treat each on its own.

    Raises ModelError (key input_parameters.input_batch) naming the node that prevents it.
    """
    single = _inferred(model)
    template = onnx.ModelProto()
    template.CopyFrom(single)
    rewrites = _rewrite_reshapes(template)
    check_per_sample(single, _set_batch(template, CHECK_BATCH))
    return _set_batch(template, batch), rewrites


__all__ = ["BatchRewrite", "check_per_sample", "with_batch"]
