"""One way to open an onnxruntime session on an artefact: fixed, deterministic options.

The `.bc` and the `.hbm` must give the same bits on the same input (hb_verifier's consistency
mode), and the quantize stage's "Quantized Cosine" is measured on the `.bc`: every run of an
integer program therefore uses the same session options — the integer lowering's
`engine.quantize.integer.session_options()` when that module exists, else our own, which match
it in spirit: onnxruntime's graph rewrites off (the program is executed exactly as written; the
`.hbm`'s ahead-of-time optimizations are applied and checked at compile time instead, see
`engine.compile.optimize`), one sequential executor, a fixed thread count.
"""

from __future__ import annotations

import os

import onnxruntime as ort

from engine.problems import ModelError, error

PROVIDERS = ["CPUExecutionProvider"]


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Deterministic options; `threads` sets onnxruntime's intra-op thread count (>= 1)."""
    try:
        from engine.quantize.integer import session_options as integer_options
    except ImportError:
        integer_options = None
    options = integer_options() if integer_options is not None else ort.SessionOptions()
    if integer_options is None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def available_threads(requested: int) -> int:
    """`jobs` as a thread count this machine can honour."""
    return max(1, min(int(requested), os.cpu_count() or 1))


def open_session(program: bytes, threads: int = 1, what: str = "the model") -> ort.InferenceSession:
    try:
        return ort.InferenceSession(program, session_options(threads), providers=PROVIDERS)
    except Exception as e:  # onnxruntime's own exception types (Fail, InvalidGraph, NotImplemented …)
        text = str(e).strip().splitlines()
        raise ModelError(error("model-load", f"onnxruntime cannot load {what}: "
                                             f"{text[0] if text else type(e).__name__}")) from None
