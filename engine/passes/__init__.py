"""The optimize stage's graph passes: original float model → optimized float model.

`OPTIMIZE` is the pass order, as data. `optimize` runs it over a copy of the model until a whole
round changes nothing (at most MAX_ITERATIONS rounds), then runs ONNX shape inference and the ONNX
checker. Each pass is a module with `NAME`, `VERSION` and `run(model) -> PassResult`; passes edit
the model in place, keep node and tensor names stable (a fused node keeps the Conv's / MatMul's
name, graph outputs are never renamed) and say why they refused a match (`Skip`).

Order, and why: fold constants first (exporters hide weights and shapes behind Constant / Shape
nodes), strip a QDQ model's fake quantization (its weights become float constants, its activation
Q→DQ pairs plain tensors: the float model hbcompile quantizes), then remove pass-through nodes, fold BN, recognise activations *before* the Conv Mul/Add
fold (a HardSigmoid's `+3` right after a Conv would otherwise vanish into the bias), fuse
MatMul+Add and reshapes, drop what became dead, and finally record the Conv fusion groups on the
graph as it now is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from engine.frontend.onnx_model import name_nodes
from engine.passes import (
    collapse_reshape,
    fold_bn,
    fold_constants,
    fold_conv_mul_add,
    fuse_activations,
    fuse_conv_act,
    fuse_conv_add,
    fuse_hard_sigmoid,
    fuse_matmul_add,
    remove_dead,
    remove_dropout,
    remove_identity,
    strip_qdq,
)
from engine.passes.groups import FusionGroup, read_groups
from engine.passes.result import Pass, PassResult, Skip
from engine.problems import StageError, error

__all__ = ["OPTIMIZE", "FusionGroup", "OptimizeResult", "Pass", "PassResult", "Skip", "optimize",
           "passes_signature", "read_groups"]

OPTIMIZE: list[Pass] = [
    fold_constants,
    strip_qdq,
    remove_identity,
    remove_dropout,
    fold_bn,
    fuse_hard_sigmoid,
    fuse_activations,
    fold_conv_mul_add,
    fuse_matmul_add,
    collapse_reshape,
    remove_dead,
    fuse_conv_act,
    fuse_conv_add,
]
MAX_ITERATIONS = 10


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    results: dict[str, PassResult]  # per pass: rewrites summed over rounds, skips of the last round
    iterations: int
    seconds: dict[str, float] = field(default_factory=dict)  # per pass, summed over rounds


def passes_signature(passes: list[Pass] | None = None) -> list[tuple[str, int]]:
    """(NAME, VERSION) of each pass in order: part of the optimize stage key."""
    return [(p.NAME, p.VERSION) for p in (OPTIMIZE if passes is None else passes)]


def _failure(name: str, before: list[str], exc: BaseException) -> StageError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    ran = ", ".join(before) if before else "none"
    return StageError(error("optimize-pass-failed",
                            f"There is an error in pass: {name}. Error message: {message} "
                            f"(passes run before it: {ran})",
                            data={"pass": name, "before": list(before), "exception": type(exc).__name__}))


def optimize(model: onnx.ModelProto, passes: list[Pass] | None = None,
             max_iterations: int = MAX_ITERATIONS) -> OptimizeResult:
    """Run `passes` (default OPTIMIZE) on a copy of `model` until nothing changes; see module doc.

    Raises StageError with hb_compile's wording when a pass (or the final check) fails.
    """
    passes = OPTIMIZE if passes is None else passes
    work = onnx.ModelProto()
    work.CopyFrom(model)
    name_nodes(work)  # passes address nodes by name; the parse stage already did this (then a no-op)
    results = {p.NAME: PassResult() for p in passes}
    seconds = dict.fromkeys(results, 0.0)
    ran: list[str] = []
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        work = _infer_shapes(work, ran)
        changed = 0
        for p in passes:
            start = time.perf_counter()
            try:
                r = p.run(work)
            except Exception as exc:  # a pass bug or an unforeseen model: one clear line, no traceback
                raise _failure(p.NAME, ran, exc) from exc
            seconds[p.NAME] += time.perf_counter() - start
            if p.NAME not in ran:
                ran.append(p.NAME)
            results[p.NAME].changed += r.changed
            results[p.NAME].skipped = r.skipped
            changed += r.changed
        if changed == 0:
            break
    work = _infer_shapes(work, ran)
    try:
        onnx.checker.check_model(work)
    except Exception as exc:
        raise _failure("check_model", ran, exc) from exc
    return OptimizeResult(work, results, iterations, seconds)


def _infer_shapes(model: onnx.ModelProto, ran: list[str]) -> onnx.ModelProto:
    """ONNX shape inference (non-strict: unknown ops keep unknown shapes); passes rely on ranks."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:
        raise _failure("shape_inference", ran, exc) from exc
