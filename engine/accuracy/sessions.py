"""onnxruntime sessions for the accuracy steps and the threshold search: built once, run many times.

The accuracy steps ask hundreds of small questions of a handful of models (the float model, the
switchable fake-quant model, a few ptq models), each on the same few samples. Two fixed costs
dominated them, measured on PP-OCRv4 det 640×640 (CPU seconds, 2 threads, loaded machine):

- a session per question: `engine.similarity.run_model` builds a session on every call (0.1 s
  on det), so the float reference of 8 samples built 8 sessions, and the search one per sample
  and candidate;
- onnxruntime's spinning thread pool: its idle workers busy-wait between kernels, which on two
  shared cores is CPU taken from everything else (ptq model run 0.235 → 0.141 CPU s without
  spinning, float 0.184 → 0.127, wall unchanged).

`quiet_session` is `engine.runtime.session.qdq_session` (basic optimizations, which keep Q/DQ
pairs as written; without onnxruntime's WeightBiasQuantization, which silently quantizes float
convs next to a DequantizeLinear; no spinning). `References` runs the float model once per sample and keeps its
outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

Sample = Mapping[str, np.ndarray]


def quiet_session(model: onnx.ModelProto | bytes, threads: int | None = None):
    """An onnxruntime session that computes a (Q/DQ) model as written, without busy-waiting."""
    from engine.runtime.session import qdq_session

    return qdq_session(model, threads)


def run_outputs(session, sample: Sample, names: Sequence[str] | None = None,
                extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """`names` (default: every output) of one run, fed the sample's inputs the session has plus `extra`."""
    wanted = {i.name for i in session.get_inputs()}
    names = list(names) if names is not None else [o.name for o in session.get_outputs()]
    feeds = {k: v for k, v in sample.items() if k in wanted}
    if extra:
        feeds.update(extra)
    return dict(zip(names, session.run(names, feeds), strict=True))


class References:
    """The float model's outputs on fixed samples, each computed once (one session)."""

    def __init__(self, model: onnx.ModelProto, samples: Sequence[Sample]):
        self.model = model
        self.samples = list(samples)
        self.outputs = [o.name for o in model.graph.output]
        self._values: list[dict[str, np.ndarray]] | None = None

    @property
    def values(self) -> list[dict[str, np.ndarray]]:
        if self._values is None:
            session = quiet_session(self.model)
            self._values = [run_outputs(session, s, self.outputs) for s in self.samples]
        return self._values

    def first(self, n: int) -> list[dict[str, np.ndarray]]:
        return self.values[:n]


__all__ = ["References", "quiet_session", "run_outputs"]
