"""Observe a float ONNX model: per-sample statistics of the tensors that will be quantized.

The model is copied with every observed tensor added as a graph output and run with onnxruntime
over the calibration samples. Each sample's activations are reduced to `TensorStats` as soon as
they come back and then dropped, so memory holds at most one batch of activations whatever the
number of samples.

Batching (hb_mapper logs "Calibration using batch 8"): consecutive samples are concatenated
along axis 0 when a copy of the model with a symbolic batch dimension gives, on the first two
samples, the same tensors as two single runs (a model that reshapes across the batch fails that
check and runs one sample at a time). The batch is sized so one batch of observed activations
fits `memory_budget`. A batched run that fails later falls back to one sample at a time
("Reset batch_size=1 and execute forward again"). When the planned sizes allow a batch, the single
runs use that symbolic-batch session too (with batch 1): one session instead of two (digits: its
build and first run were ~4 of the statistics pass's ~30 ms), and a sample's statistics come from
one session however it was run. A model that does not load with a symbolic batch uses its static
copy, unbatched.

With `exact_batch` (the calibrate stage: statistics are cached per sample, so a sample's must not
depend on its batch peers) the check asks for equal bits, not closeness.

Statistics of one run's tensors are computed on `threads` threads (numpy and the compiled kernel
release the GIL), largest tensors first, when a sample holds at least `PARALLEL_VALUES` values:
on PP-OCRv4 det (58 M values per sample) they cost as much as the forward pass. One sample at a
time, the next sample runs in onnxruntime while the current one's statistics are computed and
consumed (10-13 % faster on det, measured; at a yield only the next run's outputs are alive).
When the histogram work is large (`KERNEL_WORK`) the compiled kernel is loaded in the background
(`stats.load_kernel`); until it is ready numpy computes the same bins, unless the work is so large
(`KERNEL_WAIT_WORK`) that statistics wait for the load (onnxruntime runs the next sample meanwhile). Small samples (below
`STACK_VALUES`) are reduced several at a time, from a batched run or from single runs stacked
(`stats.stacked_stats`): on digits numpy's per-call cost was most of the statistics' time.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from engine.calibration.stats import (
    DEFAULT_BINS,
    SampleStats,
    finite_absmax,
    load_kernel,
    stacked_stats,
    tensor_stats,
)
from engine.problems import ModelError, error
from engine.runtime.session import cpu_count

MAX_BATCH = 32
MEMORY_BUDGET = 32 << 20  # observed bytes per batch: batching pays on small models only (measured)
PARALLEL_VALUES = 1 << 20  # values per run from which statistics are spread over threads
STACK_VALUES = 1 << 16  # values per sample below which several samples' statistics are computed at once
STACK_LIMIT = 1 << 20  # values of one tensor's stack (its temporaries: ~20 bytes per value)
KERNEL_WAIT_WORK = 1 << 29  # histogram values from which statistics wait for the kernel's load rather than run
# numpy meanwhile: numpy's 2.0 ns per value against the kernel's 0.54 spent ~0.4 CPU s of PP-OCRv4 det 640's pass on
# the samples that came back during the load; waiting idles the cores for less (onnxruntime runs the next sample)
KERNEL_WORK = 1 << 27  # histogram values (per sample × samples) from which the compiled kernel is loaded:
# ~0.25 s of numpy against ~1 s CPU (background) and ~150 MB RSS for numba + LLVM, paid once per process, so
# a large model loads it at 16 samples as at 128 (PP-OCRv4 det at 320x320: 14.5 M values per sample)
_BATCH_DIM = "hb_calibration_batch"
_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                 "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int16)": np.int16,
                 "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
                 "tensor(bool)": np.bool_}


def with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `tensors` (intermediate tensors, by name).

    Graph inputs are not added (their values are the feeds). Element types come from shape
    inference; a tensor it cannot type is assumed float.
    """
    return _with_outputs(model, tensors)[0]


def _with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> tuple[onnx.ModelProto, int | None]:
    """`with_outputs`, and how many values one sample's `tensors` hold by shape inference (None
    when a shape is not fully known): one inference for both."""
    graph = model.graph
    produced = {o for n in graph.node for o in n.output if o}
    inputs = {i.name for i in graph.input}
    initializers = {i.name for i in graph.initializer}
    for name in tensors:
        if name in initializers and name not in inputs:
            raise ValueError(f"'{name}' is a constant initializer (a weight), not an activation to observe")
        if name not in produced and name not in inputs:
            raise ValueError(f"'{name}' is not a tensor of the model")
    out = copy.deepcopy(model)
    present = {o.name for o in out.graph.output}
    wanted = [t for t in tensors if t not in present and t not in inputs]
    types: dict[str, int] = {}
    sizes: dict[str, int | None] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
            if vi.type.HasField("tensor_type"):
                types[vi.name] = vi.type.tensor_type.elem_type
                dims = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else None
                known = dims is not None and all(d.HasField("dim_value") for d in dims)
                sizes[vi.name] = int(np.prod([d.dim_value for d in dims])) if known else None
    except Exception:  # noqa: BLE001 - inference is only a source of types; unknown → float
        pass
    counts = [sizes.get(t) for t in tensors]
    planned = None if any(c is None for c in counts) else sum(counts)
    for name in dict.fromkeys(wanted):
        out.graph.output.append(helper.make_tensor_value_info(name, types.get(name) or TensorProto.FLOAT, None))
    return out, planned


def with_symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose inputs' and outputs' first dimension is symbolic; intermediate shapes dropped."""
    out = copy.deepcopy(model)
    init = {i.name for i in out.graph.initializer}
    for vi in [*out.graph.input, *out.graph.output]:
        if vi.name in init or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        if len(shape.dim) >= 1:
            shape.dim[0].Clear()
            shape.dim[0].dim_param = _BATCH_DIM
    del out.graph.value_info[:]
    return out


@dataclass
class Observer:
    """Runs a float model and turns each sample's observed tensors into `SampleStats`.

    Build it once (sessions are created lazily and reused); call `observe` for each batch of
    samples to (re)compute. `channel_axis` is the per-channel axis (1 for NCHW), or a mapping
    tensor name → axis (None: no per-channel absmax) with 1 for names not in it.
    """

    model: onnx.ModelProto | str | Path
    tensors: Sequence[str]
    bins: int = DEFAULT_BINS
    channel_axis: int | Mapping[str, int | None] = 1
    batch: int | None = None  # None: automatic (≤ MAX_BATCH, within memory_budget); 1: never batch
    threads: int | None = None  # intra_op_num_threads; None: the cores this process may use
    memory_budget: int = MEMORY_BUDGET
    prefetch: bool = True  # one sample at a time: run sample k+1 while sample k's statistics are computed
    exact_batch: bool = False  # batch only when batched tensors equal single runs bit for bit
    expected_samples: int | None = None  # how many samples `observe` will see (None: unknown); sizes the kernel choice
    batch_used: int = field(default=1, init=False)  # the batch size the last `observe` settled on
    notes: list[str] = field(default_factory=list, init=False)  # e.g. why batching was turned off
    planned_values: int | None = field(default=None, init=False)  # observed values per sample by shape inference
    _proto: onnx.ModelProto = field(init=False, repr=False)
    _single: ort.InferenceSession | None = field(default=None, init=False, repr=False)
    _symbolic: bool = field(default=False, init=False, repr=False)  # `_single` takes any batch (symbolic dim 0)
    _batched: ort.InferenceSession | None = field(default=None, init=False, repr=False)
    _batch_checked: bool = field(default=False, init=False, repr=False)
    _wait_kernel: bool = field(default=False, init=False, repr=False)  # statistics wait for the kernel's load

    def __post_init__(self) -> None:
        proto = self.model if isinstance(self.model, onnx.ModelProto) else onnx.load(str(self.model))
        self.tensors = list(dict.fromkeys(self.tensors))
        self._proto, planned = _with_outputs(proto, self.tensors)
        self.planned_values = planned
        if planned is not None and self.expected_samples is not None:  # start the kernel's load now when
            self._kernel_for(planned, self.expected_samples)  # the shapes tell: it overlaps the session build
        self._inputs = [i.name for i in proto.graph.input
                        if i.name not in {t.name for t in proto.graph.initializer}]

    def again(self, expected_samples: int | None = None) -> Observer:
        """This observer, ready for another `observe` of other samples: its sessions and batching
        decision stay (a warm engine's calibrate re-run on one changed sample builds no session)."""
        self.expected_samples, self.notes = expected_samples, []
        if self.planned_values is not None and expected_samples is not None:
            self._kernel_for(self.planned_values, expected_samples)
        return self

    # ------------------------------------------------------------------ sessions

    def _options(self, quiet: bool = False) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or cpu_count()
        opts.inter_op_num_threads = 1
        # the batched copy is a probe: its shape errors are expected and must not reach the console
        opts.log_severity_level = 4 if quiet else 3
        # idle onnxruntime workers would spin on the cores the statistics threads need (18 % slower, measured)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def _session(self, proto: onnx.ModelProto, quiet: bool = False) -> ort.InferenceSession:
        return ort.InferenceSession(proto.SerializeToString(), self._options(quiet), providers=["CPUExecutionProvider"])

    def _may_batch(self) -> bool:
        """Whether batches may run: asked for, or (automatic) unless the planned sizes say one sample's
        observed tensors already fill `memory_budget` (PP-OCRv4 det: its static session, as before)."""
        if self.batch is not None:
            return int(self.batch) > 1
        return self.planned_values is None or self._batch_size(4 * self.planned_values) > 1

    @property
    def single(self) -> ort.InferenceSession:
        """The session of single runs: the symbolic-batch copy when batches may run (also the batched
        session once checked), else the model as it is."""
        if self._single is None:
            if self._may_batch():
                try:
                    self._single, self._symbolic = self._session(with_symbolic_batch(self._proto), quiet=True), True
                except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; the static copy is used
                    self.notes.append(f"batching off: the model does not load with a batch of samples "
                                      f"({e.__class__.__name__})")
                    self._batch_checked = True
            if self._single is None:
                self._single = self._static_session()
            self._feed_types = {i.name: _ORT_TO_NUMPY.get(i.type, np.float32) for i in self._single.get_inputs()}
            self._fetch = [t for t in self.tensors if t not in self._inputs]
        return self._single

    def _static_session(self) -> ort.InferenceSession:
        try:
            return self._session(self._proto)
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are its own types
            raise ModelError(error("calibration-load", f"onnxruntime cannot load the model to calibrate it: "
                                   f"{_one_line(e)}")) from e

    # ------------------------------------------------------------------ running

    def _feeds(self, samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        self.single  # noqa: B018 - builds the feed types
        feeds = {}
        for name in self._inputs:
            if any(name not in s for s in samples):
                raise KeyError(f"calibration sample has no data for model input '{name}'")
            parts = [np.asarray(s[name]) for s in samples]
            arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            feeds[name] = arr.astype(self._feed_types[name], copy=False)
        return feeds

    def _run(self, session: ort.InferenceSession, samples: Sequence[Mapping[str, np.ndarray]]
             ) -> dict[str, np.ndarray]:
        feeds = self._feeds(samples)
        # no run at all when every observed tensor is a graph input (run([]) would fetch all outputs)
        values = dict(zip(self._fetch, session.run(self._fetch, feeds), strict=True)) if self._fetch else {}
        values.update({t: feeds[t] for t in self.tensors if t in feeds})
        return values

    def _axis(self, name: str) -> int | None:
        if isinstance(self.channel_axis, Mapping):
            return self.channel_axis.get(name, 1)
        return self.channel_axis

    def _stats(self, values: Mapping[str, np.ndarray]) -> SampleStats:
        if self._wait_kernel:
            load_kernel(wait=True)
        workers = self.threads or cpu_count()
        if workers < 2 or sum(np.size(values[t]) for t in self.tensors) < PARALLEL_VALUES:
            return SampleStats({t: tensor_stats(values[t], self.bins, self._axis(t)) for t in self.tensors})
        largest_first = sorted(self.tensors, key=lambda t: -np.size(values[t]))
        done = dict(zip(largest_first, _pool(workers).map(
            lambda t: tensor_stats(values[t], self.bins, self._axis(t)), largest_first)))
        return SampleStats({t: done[t] for t in self.tensors})

    def _stacked(self, values: Mapping[str, np.ndarray], count: int, dim0: Mapping[str, int]) -> list[SampleStats]:
        """Statistics of `count` samples whose tensors are concatenated along axis 0 (a batched run, or
        single runs stacked by `_group`), each tensor's samples at once (`stacked_stats`)."""
        per_tensor = {t: stacked_stats(values[t], count, self.bins, self._axis(t)) for t in self.tensors}
        return [SampleStats({t: per_tensor[t][k] for t in self.tensors}) for k in range(count)]

    def _group(self, runs: Sequence[Mapping[str, np.ndarray]]) -> list[SampleStats]:
        """Statistics of several single runs of a small model at once (numpy's per-call cost is most of
        the work on tensors of a few thousand values: digits 1.3 → 0.2 ms per sample)."""
        if len(runs) == 1 or any(r[t].ndim == 0 or r[t].shape != runs[0][t].shape for r in runs for t in self.tensors):
            return [self._stats(r) for r in runs]
        stacked = {t: np.concatenate([r[t] for r in runs]) for t in self.tensors}
        return self._stacked(stacked, len(runs), _first_dims(runs[0]))

    def _group_size(self, values: Mapping[str, np.ndarray]) -> int:
        """How many samples' statistics to compute at once: 1 unless the sample is small."""
        sizes = [np.size(values[t]) for t in self.tensors]
        total, nbytes = sum(sizes), sum(values[t].nbytes for t in self.tensors)
        if not sizes or total >= STACK_VALUES:
            return 1
        return int(max(1, min(MAX_BATCH, self.memory_budget // max(nbytes, 1), STACK_LIMIT // max(max(sizes), 1))))

    def _maybe_load_kernel(self, values: Mapping[str, np.ndarray], samples: Iterable) -> None:
        """Start loading the compiled histogram kernel (in the background) when the histogram work is large."""
        count = self.expected_samples
        if count is None:
            count = len(samples) if isinstance(samples, Sized) else MAX_BATCH
        self._kernel_for(sum(np.size(values[t]) for t in self.tensors), count)

    def _kernel_for(self, values_per_sample: int, samples: int) -> None:
        work = values_per_sample * samples
        if work >= KERNEL_WORK:
            load_kernel()
        self._wait_kernel = work >= KERNEL_WAIT_WORK

    def _split(self, values: dict[str, np.ndarray], count: int, dim0: Mapping[str, int]
               ) -> list[dict[str, np.ndarray]] | None:
        """Cut a batched run into per-sample values; None if a tensor's first axis is not the batch."""
        if any(values[t].ndim == 0 or values[t].shape[0] != count * dim0[t] for t in self.tensors):
            return None
        return [{t: values[t][k * dim0[t]:(k + 1) * dim0[t]] for t in self.tensors} for k in range(count)]

    def _batch_size(self, per_sample: int) -> int:
        if self.batch is not None:
            return max(int(self.batch), 1)
        return int(min(MAX_BATCH, max(self.memory_budget // max(per_sample, 1), 1)))

    def _try_batched(self, chunk: Sequence[Mapping[str, np.ndarray]], singles: Sequence[Mapping[str, np.ndarray]],
                     dim0: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        """Build the symbolic-batch session and run `chunk` (whose first samples gave `singles` alone):
        its values when every sample's tensors split off axis 0 and the first ones equal the single
        runs (bit for bit with `exact_batch`), else None with a note saying why."""
        self._batch_checked = True
        if not self._symbolic:  # the static copy serves single runs only
            return None
        session = self.single
        try:
            values = self._run(session, chunk)
            parts = self._split(values, len(chunk), dim0)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; any failure → batch 1
            self.notes.append(f"batching off: the model does not run with a batch of samples ({e.__class__.__name__})")
            return None
        same = _equal if self.exact_batch else _close
        pairs = list(zip(parts or [], singles))
        if parts is None or not all(same(p[t], v[t]) for p, v in pairs for t in self.tensors):
            self.notes.append("batching off: batched tensors differ from single runs (the model mixes the batch axis)"
                              if parts is None or not all(_close(p[t], v[t]) for p, v in pairs for t in self.tensors)
                              else "batching off: batched tensors differ from single runs in the last bits")
            return None
        self._batched = session
        return values

    def observe(self, samples: Iterable[Mapping[str, np.ndarray]]) -> Iterator[SampleStats]:
        """Per-sample statistics, one `SampleStats` per sample, in order, streamed.

        A model onnxruntime cannot load or run raises `ModelError` naming the sample position.
        """
        it = iter(samples)
        head = list(islice(it, 2))
        if not head:
            return
        singles = [self._run_single(s, k) for k, s in enumerate(head)]
        self._maybe_load_kernel(singles[0], samples)
        group = self._group_size(singles[0])
        k = self._batch_size(sum(a.nbytes for a in singles[0].values()))
        dim0 = _first_dims(singles[0])
        batched, first_stats = self._batched is not None, None
        if len(head) == 2 and k > 1 and not batched and not self._batch_checked:
            # the check runs a whole first batch: for a small model (statistics of a group at once) its
            # values serve every sample of it, instead of a batch of two for the check alone
            chunk = head + list(islice(it, k - 2)) if group > 1 else head
            values = self._try_batched(chunk, singles, dim0)
            batched = values is not None
            if batched and group > 1:
                first_stats = self._stacked(values, len(chunk), dim0)
            elif len(chunk) > 2:
                it = chain(chunk[2:], it)  # batching off: the samples drawn for the check run as usual
            del values, chunk
        if first_stats is None:
            first_stats = self._group(singles) if group > 1 else [self._stats(v) for v in singles]
        del singles, head  # only statistics outlive a sample
        self.batch_used = k if batched else 1
        done = len(first_stats)
        while first_stats:
            yield first_stats.pop(0)
        if self.batch_used == 1 and self.prefetch and group == 1:
            yield from self._one_ahead(it, done)
            return
        step = self.batch_used if self.batch_used > 1 else group
        while chunk := list(islice(it, step)):
            parts = None
            if self.batch_used > 1 and len(chunk) > 1:
                try:
                    values = self._run(self._batched, chunk)
                    if self._split(values, len(chunk), dim0) is not None:  # views only: every tensor splits
                        parts = self._stacked(values, len(chunk), dim0) if group > 1 else \
                            [self._stats(v) for v in self._split(values, len(chunk), dim0)]
                    del values
                except ModelError:
                    raise
                except Exception as e:  # noqa: BLE001 - fall back like hb_mapper, then keep going at batch 1
                    self.notes.append(f"Reset batch_size=1 and execute forward again ({e.__class__.__name__})")
                if parts is None:
                    self.batch_used, self._batched = 1, None
            if parts is None and group > 1:  # a small model one run at a time: statistics of the group at once
                runs = []
                for s in chunk:
                    runs.append(self._run_single(s, done + len(runs)))
                parts = self._group(runs)
                del runs
            if parts is None:  # one sample at a time: never more than one run's outputs alive
                for s in chunk:
                    yield self._stats(self._run_single(s, done))
                    done += 1
                continue
            del chunk
            while parts:
                yield parts.pop(0)
                done += 1

    def _one_ahead(self, samples: Iterator[Mapping[str, np.ndarray]], position: int) -> Iterator[SampleStats]:
        """One sample at a time, onnxruntime running sample k+1 on its own thread (it releases the GIL)
        while sample k's statistics are computed and consumed: at a yield only the next run's outputs
        are alive, and never more than two runs' outputs at all."""
        runner = _pool(1, "hb-calibration-run")

        def run_next(position: int) -> dict[str, np.ndarray] | None:
            sample = next(samples, None)  # only this thread reads `samples` from here on
            return None if sample is None else self._run_single(sample, position)

        pending = runner.submit(run_next, position)
        try:
            while (values := pending.result()) is not None:
                position += 1
                pending = runner.submit(run_next, position)
                stats = self._stats(values)
                del values
                yield stats
        finally:
            pending.cancel()

    def _run_single(self, sample: Mapping[str, np.ndarray], position: int) -> dict[str, np.ndarray]:
        session = self.single
        try:
            return self._run(session, [sample])
        except KeyError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are its own types
            failure = e
        if self._symbolic:  # a model that runs only with its static shapes: from now on, unbatched
            static = self._static_session()
            try:
                values = self._run(static, [sample])
            except Exception:  # noqa: BLE001 - the sample itself fails: said below, the session stays
                pass
            else:
                self.notes.append(f"batching off: the model runs only with its static shapes "
                                  f"({failure.__class__.__name__})")
                self._single, self._symbolic, self._batched, self._batch_checked = static, False, None, True
                self.batch_used = 1
                return values
        raise ModelError(error("calibration-run", f"onnxruntime failed on calibration sample {position}: "
                               f"{_one_line(failure)}")) from failure


_pools: dict[tuple[int, str], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int, name: str = "hb-calibration-stats") -> ThreadPoolExecutor:
    """Shared pools by (size, job): observers come and go with every run, the threads stay."""
    with _pools_lock:
        if (workers, name) not in _pools:
            _pools[workers, name] = ThreadPoolExecutor(workers, thread_name_prefix=name)
        return _pools[workers, name]


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or e.__class__.__name__


def _first_dims(values: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Each tensor's first dimension in a one-sample run (a scalar counts as 1; it cannot be split)."""
    return {t: a.shape[0] if a.ndim else 1 for t, a in values.items()}


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    scale = finite_absmax(b)  # a model computing NaN / Inf (Log of a negative) compares them as equal
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1e-6), equal_nan=True))


def observe(model: onnx.ModelProto | str | Path, samples: Iterable[Mapping[str, np.ndarray]],
            tensors: Sequence[str], *, bins: int = DEFAULT_BINS, channel_axis: int | Mapping[str, int | None] = 1,
            batch: int | None = None, threads: int | None = None) -> Iterator[SampleStats]:
    """One-shot form of `Observer(...).observe(samples)`."""
    return Observer(model, tensors, bins=bins, channel_axis=channel_axis, batch=batch, threads=threads
                    ).observe(samples)


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float tensor a node produces, plus float graph inputs (the default set to observe)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
             if vi.type.HasField("tensor_type")}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    init = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in init]
    names += [o for n in model.graph.node for o in n.output if o]
    return [n for n in dict.fromkeys(names) if types.get(n, TensorProto.FLOAT) in floats]


__all__ = ["MAX_BATCH", "Observer", "activation_tensors", "cpu_count", "observe", "with_outputs",
           "with_symbolic_batch"]
