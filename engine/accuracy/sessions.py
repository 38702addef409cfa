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
outputs — across its instances too, by content (`FloatOutputs`): the threshold search compares on
the first 4 calibration samples and the accuracy steps on the first 8, and each built its own
References (PP-OCRv4 det: 4 float runs and a session build, ~0.9 CPU s, done twice).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import onnx

from engine.pipeline.recent import Recent

Sample = Mapping[str, np.ndarray]


def quiet_session(model: onnx.ModelProto | bytes, threads: int | None = None):
    """An onnxruntime session that computes a (Q/DQ) model as written, without busy-waiting. A small
    model given as bytes is served by `KEPT` (the session of its layout, its changed values fed)."""
    from engine.runtime.session import qdq_session

    if isinstance(model, bytes) and len(model) <= KEPT_MODEL_BYTES:
        return KEPT.session(model, threads)
    return qdq_session(model, threads)


KEPT_MODEL_BYTES = 1 << 20  # models up to this size keep their session (a large one's arena would stay)
KEPT_LAYOUTS = 4  # layouts whose session is kept (the ptq model of mixed precision, the search's model, …)


class FedSession:
    """A kept session and the values one model gives the initializers it takes as inputs: runs as
    that model's own session would (`run`, `get_inputs`, `get_outputs`)."""

    def __init__(self, session, feeds: Mapping[str, np.ndarray]):
        self.session, self.feeds = session, dict(feeds)

    def get_inputs(self):
        return [i for i in self.session.get_inputs() if i.name not in self.feeds]

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feeds, *args, **kwargs):
        return self.session.run(names, {**feeds, **self.feeds}, *args, **kwargs)


class KeptSessions:
    """Sessions of small models kept by layout: the model with its initializers' values left out.

    The accuracy steps judge the ptq model of the thresholds just chosen (`mixed.PlanEvaluator`); after
    one calibration file changed, the thresholds move a little and that model differs from the last one
    only in the values of a few initializers (activation scales, int32 biases), yet a session was built
    for it (digits: ~3.5 of the accuracy steps' ~10 CPU ms). Here the first model of a layout gets a
    session taking what a threshold move changes as graph inputs (`lifted`: activation scales and zero
    points, int32 biases: `_threshold_operands`), fed this model's values (`FedSession`); the models after
    it reuse that session while their differences stay among its lifted names, and one whose other Q/DQ
    operands differ (a coarsened weight scale) gets a session lifting those too. Only what Q/DQ nodes read
    is lifted: a model differing elsewhere (a corrected float bias of a CPU conv) gets a plain session of
    its own, kept in place of the layout's. Fed or constant, the values give the same outputs bit for bit
    (onnxruntime runs the same kernels on them; the threshold search's scoring session relies on the same,
    `search.CandidateScorer`): tests compare them.
    """

    def __init__(self, size: int = KEPT_LAYOUTS) -> None:
        self._kept: Recent[str, _Layout] = Recent(size)
        self.built = 0  # sessions built (tests)

    def session(self, data: bytes, threads: int | None = None):
        from engine.runtime.session import qdq_session

        model = onnx.load_from_string(data)
        values = {t.name: t.SerializeToString() for t in model.graph.initializer}
        key = f"{layout_key(model)}|{threads}"
        kept = self._kept.get(key)
        if kept is None:  # what a threshold move changes is taken as inputs from the start
            self.built += 1
            lifted = frozenset(_threshold_operands(model))
            return self._kept.put(key, _Layout(qdq_session(_lifted(model, lifted) if lifted else data, threads),
                                               lifted, values)).fed(model)
        changed = {name for name, value in values.items() if kept.values.get(name) != value}
        if changed <= kept.lifted:
            return kept.fed(model)
        self.built += 1
        if not changed <= _quantization_operands(model):  # e.g. a float weight: it stays a constant
            return self._kept.put(key, _Layout(qdq_session(data, threads), frozenset(), values)).fed(model)
        lifted = frozenset(changed | kept.lifted)
        return self._kept.put(key, _Layout(qdq_session(_lifted(model, lifted), threads), lifted, values)).fed(model)


class _Layout:
    def __init__(self, session, lifted: frozenset[str], values: dict[str, bytes]):
        self.session, self.lifted, self.values = session, lifted, values

    def fed(self, model: onnx.ModelProto) -> FedSession:
        from onnx import numpy_helper

        return FedSession(self.session, {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                                         if t.name in self.lifted})


def layout_key(model: onnx.ModelProto) -> str:
    """sha256 of `model` without its initializers' values (names, types and shapes kept) and without the
    nodes' doc strings (a Q/DQ pair's names its threshold): what stays when only thresholds move."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for t in skeleton.graph.initializer:
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                     "string_data"):
            t.ClearField(name)
    for node in skeleton.graph.node:
        node.ClearField("doc_string")
    return hashlib.sha256(skeleton.SerializeToString(deterministic=True)).hexdigest()


QDQ = ("QuantizeLinear", "DequantizeLinear")


def _quantization_operands(model: onnx.ModelProto) -> set[str]:
    """The initializers QuantizeLinear / DequantizeLinear nodes read (codes, scales, zero points): the only
    ones taken as inputs, so that whatever onnxruntime does with a constant float weight it still does."""
    inits = {t.name for t in model.graph.initializer}
    return {name for node in model.graph.node if node.op_type in QDQ for name in node.input if name in inits}


def _threshold_operands(model: onnx.ModelProto) -> set[str]:
    """What a threshold move changes: the scale and zero point of every activation's Q/DQ pair, and the
    int32 codes, scale and zero point of every bias (at s_in · s_w). A weight's pair stays constant (its
    scale moves only where a bias would overflow): fewer arrays are fed per run (onnxruntime's basic level
    does not fold a weight's DequantizeLinear either way; the measured gain is the feeding)."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    out: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in QDQ or not node.input:
            continue
        source = node.input[0]
        if source not in types:  # an activation's pair
            out.update(n for n in node.input[1:] if n in types)
        elif types[source] == onnx.TensorProto.INT32 and node.op_type == "DequantizeLinear":  # a bias
            out.update(n for n in node.input if n in types)
    return out


def lift_initializers(model: onnx.ModelProto, names: Collection[str]) -> onnx.ModelProto:
    """`model` (in place) with the initializers `names` turned into graph inputs the caller feeds: an
    overridden initializer would keep its value in the model's bytes, a fed input does not."""
    from onnx import helper

    kept = [t for t in model.graph.initializer if t.name not in names]
    moved = [t for t in model.graph.initializer if t.name in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
    return model


def _lifted(model: onnx.ModelProto, names: frozenset[str]) -> bytes:
    """`model`'s bytes with the initializers `names` turned into graph inputs (`model` is left as it is)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return lift_initializers(out, names).SerializeToString()


KEPT = KeptSessions()
FLOAT_SESSIONS_KEPT = 2
_float_sessions: Recent = Recent(FLOAT_SESSIONS_KEPT)  # model_key → session of a small float model


def float_session(model: onnx.ModelProto, key: str):
    """A session of the float model `model` (`key`: its `model_key`), kept for a small model: after one of
    the first calibration samples changed, its float outputs are computed again for that sample only,
    and each time that built a session of the same model (digits: ~2 CPU ms of such a run)."""
    if model.ByteSize() > KEPT_MODEL_BYTES:
        return quiet_session(model)
    from engine.runtime.session import cpu_count

    full = f"{key}|{cpu_count()}"  # quiet_session's threads: this process's cores
    return _float_sessions.get(full) or _float_sessions.put(full, quiet_session(model))


def run_outputs(session, sample: Sample, names: Sequence[str] | None = None,
                extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """`names` (default: every output) of one run, fed the sample's inputs the session has plus `extra`."""
    wanted = {i.name for i in session.get_inputs()}
    names = list(names) if names is not None else [o.name for o in session.get_outputs()]
    feeds = {k: v for k, v in sample.items() if k in wanted}
    if extra:
        feeds.update(extra)
    return dict(zip(names, session.run(names, feeds), strict=True))


class FloatOutputs:
    """The float model's outputs by (model bytes, sample content), kept for the latest model only.

    Outputs are a pure function of the model and the sample under one session configuration
    (`quiet_session`), so a run of the same model on the same sample is looked up, not repeated.
    At most `budget` bytes of one model's outputs are kept, the oldest samples going first (a new
    model replaces them all: a daemon keeps no old model's outputs; PP-OCRv4 det: 1.6 MB per
    sample); the arrays are read-only, so no caller can alter what another reads.
    """

    def __init__(self, budget: int = 64 << 20):
        self.budget = budget
        self._model: str | None = None
        self._outputs: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def get(self, model_key: str, sample_key: str) -> dict[str, np.ndarray] | None:
        with self._lock:
            return self._outputs.get(sample_key) if model_key == self._model else None

    def put(self, model_key: str, sample_key: str, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        frozen = {}
        for name, value in outputs.items():
            value = np.asarray(value)
            value.setflags(write=False)
            frozen[name] = value
        with self._lock:
            if model_key != self._model:
                self._model, self._outputs = model_key, {}
            self._outputs[sample_key] = frozen
            while len(self._outputs) > 1 and sum(a.nbytes for o in self._outputs.values() for a in o.values()) > self.budget:
                self._outputs.pop(next(iter(self._outputs)))
        return frozen


FLOAT_OUTPUTS = FloatOutputs()
# the float outputs of the centre crops the sensitivity ranking runs on (`sensitivity.cropped`): kept apart,
# so that the crop's model does not replace the whole model's outputs, which the next calibration reads
CROP_OUTPUTS = FloatOutputs(budget=16 << 20)


def model_key(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def update_array(h, name: str, value: np.ndarray) -> None:
    """Feed `h` an array's name, dtype, shape and bytes (the content keys of samples and statistics)."""
    a = np.ascontiguousarray(value)
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.data)


def sample_key(sample: Sample) -> str:
    """The sample's content: every input's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in sorted(sample):
        update_array(h, name, sample[name])
    return h.hexdigest()


class References:
    """The float model's outputs on fixed samples, each computed once and only when asked for (one
    session per call that needs a run, opened only for samples whose outputs `FLOAT_OUTPUTS` does not
    hold). Indexable per sample: the accuracy steps' memoised runs (`engine.accuracy.runs`) need the
    float outputs only of the samples whose runs they do not find, i.e. of the samples that changed."""

    def __init__(self, model: onnx.ModelProto, samples: Sequence[Sample], kept: FloatOutputs | None = None):
        self.model = model
        self.samples = list(samples)
        self.kept = kept  # where the outputs are kept across instances (None: FLOAT_OUTPUTS)
        self.outputs = [o.name for o in model.graph.output]
        self._values: dict[int, dict[str, np.ndarray]] = {}
        self._sample_keys: dict[int, str] = {}
        self._key: str | None = None

    @property
    def model_key(self) -> str:
        """sha256 of the float model's bytes, computed once."""
        if self._key is None:
            self._key = model_key(self.model)
        return self._key

    def sample_key(self, index: int) -> str:
        """`sample_key` of sample `index`, computed once."""
        if index not in self._sample_keys:
            self._sample_keys[index] = sample_key(self.samples[index])
        return self._sample_keys[index]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.some([index])[0]

    @property
    def values(self) -> list[dict[str, np.ndarray]]:
        return self.first(len(self.samples))

    def first(self, n: int) -> list[dict[str, np.ndarray]]:
        """The outputs of the first `n` samples, computing no other: the data checks read 4 samples'
        outputs before mixed precision knows whether it needs all 8 (digits: a float session and 4 runs,
        ~2 ms of the ~7 the steps took, when the threshold search's cosine decides alone)."""
        return self.some(range(max(0, min(int(n), len(self.samples)))))

    def some(self, indices: Iterable[int]) -> list[dict[str, np.ndarray]]:
        """The outputs of the samples at `indices`, in that order; those not known yet computed in one session."""
        indices = [range(len(self.samples))[i] for i in indices]  # IndexError past the end, negatives resolved
        session = None
        kept = self.kept if self.kept is not None else FLOAT_OUTPUTS
        for i in dict.fromkeys(indices):
            if i in self._values:
                continue
            skey = self.sample_key(i)
            got = kept.get(self.model_key, skey)
            if got is None:
                session = session or float_session(self.model, self.model_key)
                got = kept.put(self.model_key, skey, run_outputs(session, self.samples[i], self.outputs))
            self._values[i] = got
        return [self._values[i] for i in indices]


__all__ = ["CROP_OUTPUTS", "FLOAT_OUTPUTS", "KEPT", "FedSession", "FloatOutputs", "KeptSessions", "References", "float_session", "layout_key", "model_key", "quiet_session", "run_outputs", "sample_key"]
