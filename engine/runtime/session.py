"""One way to open an onnxruntime session on an integer program (`.bc`, `.hbm`) or any artefact.

The `.bc` and the `.hbm` must give the same bits on the same input (hb_verifier's consistency
mode), the quantize stage's "Quantized Cosine" is measured on the `.bc`, and the lowering builds
its tables by running onnxruntime kernels: every one of those sessions uses `session_options()`
(or `open_session`, which adds a clear error), so they all run the same graph.

The options: all graph optimizations (onnxruntime's NHWC integer conv kernels and QLinear
fusions need them), sequential execution, deterministic compute, a fixed intra-op thread count
(1 also makes float islands reproducible across machines), warnings off — except the rewrites
in `DISABLED_REWRITES`, which change what the program computes rather than how fast:

- `WeightBiasQuantization` (on from the basic level) finds a float Conv / Gemm / ConvTranspose
  between a DequantizeLinear and a QuantizeLinear — exactly a CPU-island conv of the `.bc` — and
  quantizes its float weight to per-tensor int8 and its bias to int32 so the QDQ fusion can make
  it a QLinearConv. The program asked for that conv in float; measured on PP-OCRv4 rec 48x320,
  the rewrite takes the `.bc`'s output cosine from 0.982 to 0.957.

They are disabled by the session config entry `optimization.disable_specified_optimizers`
(the same effect as `InferenceSession(..., disabled_optimizers=[...])`), so callers that build
their own `InferenceSession` from `session_options()` get them disabled too.

With more than one thread the pool's workers do not spin between kernels
(`session.intra_op.allow_spinning` 0), as in `qdq_session`: an integer program is many short
kernels, and on a shared machine a spinning worker takes the core the other thread needs, so every
parallel kernel waits for it. Scheduling only: the same values (`.bc` == `.hbm` at 2 threads on
100/100 inputs of digits, cls, rec). Measured at 2 threads on the loaded 2-core machine, best of 7
interleaved rounds, wall: digits batch 16 2.38 → 0.88 ms, PP-OCR cls 2.69 → 1.32 ms, PP-OCRv4 rec
61 → 29 ms (the float model with onnxruntime's defaults: 2.03, 1.47, 51 ms).

How many threads an `.hbm` uses of the budget it is opened with is its thread plan's answer
(`engine.runtime.threads`, decided when it is built; `LoadedModel` applies it): a program of small
kernels (digits, cls) is faster on one thread than on two even without spinning.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort

from engine.problems import ModelError, error

PROVIDERS = ["CPUExecutionProvider"]
DISABLED_REWRITES: tuple[str, ...] = ("WeightBiasQuantization",)
_DISABLE_KEY = "optimization.disable_specified_optimizers"
NO_SPINNING = "session.intra_op.allow_spinning"


def session_options(threads: int = 1) -> ort.SessionOptions:
    """The fixed onnxruntime configuration for running an integer program (`threads` >= 1)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.use_deterministic_compute = True
    so.log_severity_level = 3
    if so.intra_op_num_threads > 1:
        so.add_session_config_entry(NO_SPINNING, "0")
    return without_value_rewrites(so)


def without_value_rewrites(options: ort.SessionOptions) -> ort.SessionOptions:
    """`options` with `DISABLED_REWRITES` off (in place; returned for chaining). Also for sessions
    on Q/DQ models (calibrated, ptq), whose CPU convs the same rewrite would quantize."""
    options.add_session_config_entry(_DISABLE_KEY, ",".join(DISABLED_REWRITES))
    return options


def qdq_session(model: onnx.ModelProto | bytes, threads: int | None = None) -> ort.InferenceSession:
    """A session that computes a float or Q/DQ model (calibrated, ptq, switchable) as written.

    Basic optimizations only (the extended level would fuse Q/DQ pairs into integer kernels),
    without `DISABLED_REWRITES` (they would quantize the float convs of CPU nodes), and a thread
    pool that does not spin between kernels: idle workers busy-waiting take CPU from everything
    sharing the cores and change no value (PP-OCRv4 det ptq run 0.235 -> 0.141 CPU s). `threads`:
    the cores this process may use when not given.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = threads or cpu_count()
    options.log_severity_level = 3
    options.add_session_config_entry(NO_SPINNING, "0")
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, without_value_rewrites(options), providers=PROVIDERS)


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's count: taskset, a cgroup's cpuset)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_threads(requested: int) -> int:
    """`jobs` as a thread count this process can honour (its cores, `cpu_count`)."""
    return max(1, min(int(requested), cpu_count()))


def open_session(program: bytes | str | Path | onnx.ModelProto, threads: int = 1,
                 what: str = "the model", as_written: bool = False
                 ) -> ort.InferenceSession:
    """An onnxruntime session on `program` (serialized bytes, a file path or a ModelProto) with
    `session_options(threads)`; a program onnxruntime refuses is a ModelError naming `what`.
    `as_written`: a float or Q/DQ `.onnx`
    (original, optimized, calibrated, ptq), computed as the report computes it (`qdq_session`'s
    options: onnxruntime's extended level would fuse its Q/DQ pairs into integer kernels, and
    hb_verifier gave PP-OCRv4 rec's calibrated model 0.994058 where the table said 0.999506)."""
    source = program.SerializeToString() if isinstance(program, onnx.ModelProto) else \
        str(program) if isinstance(program, Path) else program
    try:
        if as_written:
            return qdq_session(source if isinstance(source, bytes) else Path(source).read_bytes(), threads)
        return ort.InferenceSession(source, session_options(threads), providers=PROVIDERS)
    except Exception as e:  # onnxruntime's own exception types (Fail, InvalidGraph, NotImplemented …)
        text = str(e).strip().splitlines()
        raise ModelError(error("model-load", f"onnxruntime cannot load {what}: "
                                             f"{text[0] if text else type(e).__name__}")) from None
