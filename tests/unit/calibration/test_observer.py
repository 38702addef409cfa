"""The observer on generated models: same statistics as the tensors computed directly, batching
only where it is provably harmless, and memory that does not grow with the number of samples."""

from __future__ import annotations

import tracemalloc
import weakref

import numpy as np
import onnx
import pytest

from engine.calibration import Observer, SampleStats, activation_tensors, observe, tensor_stats, with_outputs
from engine.calibration.observer import with_symbolic_batch
from tests.unit.calibration.calib_support import (
    batch_mixing_model,
    conv2d,
    conv_relu_model,
    conv_weights,
    flatten_model,
    samples,
)

TENSORS = ["data", "conv_out", "relu_out", "output"]


def assert_stats_close(got, want, hist_slack: int = 8):
    assert got.count == want.count and got.axis == want.axis
    np.testing.assert_allclose([got.min, got.max, got.absmax], [want.min, want.max, want.absmax], rtol=1e-5,
                               atol=1e-6)
    if want.channel_absmax is not None:
        np.testing.assert_allclose(got.channel_absmax, want.channel_absmax, rtol=1e-5, atol=1e-6)
    assert got.hist.sum() == want.hist.sum()
    assert np.abs(got.hist - want.hist).sum() <= hist_slack  # values a rounding away from a bin edge


def test_observer_stats_equal_stats_of_directly_computed_tensors():
    data = list(samples((1, 3, 16, 16), 5, seed=1, scale=2.0))
    w, b = conv_weights(3, 8, 3, seed=0)
    got = list(observe(conv_relu_model(), iter(data), TENSORS, batch=1))
    assert len(got) == 5 and all(isinstance(s, SampleStats) and list(s) == TENSORS for s in got)
    for s, sample in zip(got, data, strict=True):
        conv = conv2d(sample["data"], w, b)
        relu = np.maximum(conv, 0)
        assert s["data"] == tensor_stats(sample["data"])  # the feed itself: bit for bit
        assert_stats_close(s["conv_out"], tensor_stats(conv))
        assert_stats_close(s["relu_out"], tensor_stats(relu))
        assert_stats_close(s["output"], tensor_stats(relu.mean(axis=(2, 3), keepdims=True)))
        assert s["relu_out"].min == 0.0 and s["relu_out"].hist[0] >= (relu == 0).sum()


@pytest.mark.parametrize("batch_dim", ["N", 1])
def test_batched_observation_equals_one_at_a_time(batch_dim):
    model = conv_relu_model(batch=batch_dim)
    data = list(samples((1, 3, 16, 16), 11, seed=2))
    observer = Observer(model, TENSORS, batch=4)
    batched = list(observer.observe(iter(data)))
    assert observer.batch_used == 4 and not observer.notes  # a static batch of 1 is relaxed as well
    single = list(observe(model, iter(data), TENSORS, batch=1))
    assert len(batched) == len(single) == 11
    for a, b in zip(batched, single, strict=True):
        for t in TENSORS:
            assert_stats_close(a[t], b[t])
    again = list(observer.observe(iter(data[:6])))  # the checked batched session is reused
    assert len(again) == 6 and observer.batch_used == 4


@pytest.mark.parametrize("make,note", [(batch_mixing_model, "mixes the batch axis"),
                                       (flatten_model, "mixes the batch axis")])
def test_models_that_mix_the_batch_run_one_sample_at_a_time(make, note):
    model = make()
    data = list(samples((1, 3, 4, 4), 5, seed=4))
    tensors = activation_tensors(model)
    observer = Observer(model, tensors, batch=4)
    got = list(observer.observe(iter(data)))
    assert observer.batch_used == 1 and any(note in n for n in observer.notes), observer.notes
    single = list(observe(model, iter(data), tensors, batch=1))
    for a, b in zip(got, single, strict=True):
        assert a.tensors == b.tensors


def test_statistics_of_one_sample_do_not_depend_on_the_others():
    model = conv_relu_model(batch="N")
    data = list(samples((1, 3, 16, 16), 9, seed=7))
    alone = next(observe(model, iter(data[5:6]), TENSORS))
    among = list(observe(model, iter(data), TENSORS, batch=4))[5]
    for t in TENSORS:
        assert_stats_close(alone[t], among[t])


class CountingObserver(Observer):
    """Records every array a run hands back, to count how many are still alive at each sample."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refs: list[weakref.ref] = []

    def _run(self, session, batch):
        values = super()._run(session, batch)
        self.refs += [weakref.ref(a) for a in values.values()]
        return values

    def alive(self) -> int:
        return sum(r() is not None for r in self.refs)


def test_memory_does_not_grow_with_the_number_of_samples():
    """64 samples of a model with a 1×32×128×128 activation (2 MiB each, 4 MiB observed per sample).

    onnxruntime's output buffers are not Python allocations (tracemalloc does not see them), so
    their lifetime is checked directly: at every yielded sample at most one run's outputs are alive.
    tracemalloc covers what the observer itself allocates (batch feeds, |x|, bin indices).
    """
    observer = CountingObserver(conv_relu_model(c_in=3, c_out=32, hw=128), ["conv_out", "relu_out"])

    def peak(n: int) -> tuple[int, int]:
        most_alive = 0
        tracemalloc.start()
        try:
            for _ in observer.observe(samples((1, 3, 128, 128), n, seed=n)):
                most_alive = max(most_alive, observer.alive())
            return tracemalloc.get_traced_memory()[1], most_alive
        finally:
            tracemalloc.stop()

    peak(4)  # build the sessions outside the measurement
    (small, alive_small), (large, alive_large) = peak(24), peak(64)
    assert observer.batch_used > 1 and alive_small <= 2 and alive_large <= 2  # at most one batch run's two outputs
    per_sample = 2 * 32 * 128 * 128 * 4
    assert large <= small * 1.25 + (1 << 20), (small, large)
    assert large < 4 * per_sample, large  # a few samples' worth, never 64


def test_with_outputs_adds_typed_outputs_and_refuses_non_tensors():
    model = conv_relu_model()
    out = with_outputs(model, ["conv_out", "relu_out", "output", "data"])
    assert [o.name for o in out.graph.output] == ["output", "conv_out", "relu_out"]
    assert out.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in model.graph.output] == ["output"]  # the original is untouched
    with pytest.raises(ValueError, match="not a tensor"):
        with_outputs(model, ["nope"])
    with pytest.raises(ValueError, match="weight"):
        with_outputs(model, ["w"])
    relaxed = with_symbolic_batch(out)
    assert relaxed.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert activation_tensors(model) == TENSORS


def test_a_sample_without_a_model_input_is_a_key_error():
    with pytest.raises(KeyError, match="data"):
        list(observe(conv_relu_model(), iter([{"other": np.zeros((1, 3, 16, 16), np.float32)}]), TENSORS))


def test_scalar_tensors_are_observed_without_batching():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["data"], ["act"]),
             helper.make_node("ReduceMax", ["act"], ["peak"], keepdims=0)]
    g = helper.make_graph(nodes, "scalar", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("peak", TensorProto.FLOAT, [])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    data = [{"data": np.array([[1.0, -2.0, float(k)]], np.float32)} for k in range(5)]
    observer = Observer(model, ["act", "peak"], batch=4)
    got = list(observer.observe(iter(data)))
    assert observer.batch_used == 1 and [s["peak"].max for s in got] == [1.0, 1.0, 2.0, 3.0, 4.0]
    assert got[4]["act"].channel_absmax.tolist() == [1.0, 0.0, 4.0]


def test_onnxruntime_failures_are_model_errors_naming_the_sample():
    from engine.problems import ModelError

    data = list(samples((1, 3, 16, 16), 3, seed=9)) + [{"data": np.zeros((1, 3, 8, 8), np.float32)}]
    with pytest.raises(ModelError) as e:
        list(observe(conv_relu_model(), iter(data), TENSORS))
    assert e.value.problems[0].code == "calibration-run" and "calibration sample 3" in str(e.value)
    broken = conv_relu_model()
    broken.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(ModelError, match="cannot load the model") as e:
        list(observe(broken, iter(data), TENSORS))
    assert e.value.problems[0].code == "calibration-load" and "\n" not in e.value.problems[0].message


def test_small_samples_statistics_computed_together_equal_one_at_a_time():
    """A small model's samples are reduced several at a time (`stacked_stats`): the same statistics,
    bit for bit, as one sample at a time (a memory budget below one sample forces that)."""
    data = list(samples((1, 3, 16, 16), 11, seed=12))
    together = Observer(conv_relu_model(), TENSORS, batch=1)
    alone = Observer(conv_relu_model(), TENSORS, batch=1, memory_budget=1)
    got, want = list(together.observe(iter(data))), list(alone.observe(iter(data)))
    assert together._group_size(together._run_single(data[0], 0)) > 1
    assert alone._group_size(alone._run_single(data[0], 0)) == 1
    assert len(got) == len(want) == 11 and all(a.tensors == b.tensors for a, b in zip(got, want, strict=True))


def test_exact_batching_gives_each_sample_the_statistics_of_its_single_run():
    """`exact_batch` (the calibrate stage's setting: statistics are cached per sample) batches only when
    batched tensors equal single runs bit for bit; then every sample's statistics are its own."""
    model = conv_relu_model(batch="N")
    data = list(samples((1, 3, 16, 16), 9, seed=13))
    exact = Observer(model, TENSORS, exact_batch=True)
    got = list(exact.observe(iter(data)))
    want = list(observe(model, iter(data), TENSORS, batch=1))
    assert exact.batch_used > 1 or any("last bits" in n for n in exact.notes), exact.notes
    assert all(a.tensors == b.tensors for a, b in zip(got, want, strict=True))
    mixing = Observer(batch_mixing_model(), activation_tensors(batch_mixing_model()), exact_batch=True)
    list(mixing.observe(samples((1, 3, 4, 4), 4, seed=1)))
    assert mixing.batch_used == 1 and any("mixes the batch axis" in n for n in mixing.notes)


def test_the_histogram_kernel_starts_loading_when_the_shapes_promise_enough_work(monkeypatch):
    """Static shapes tell the observer how many values it will histogram before any run: the
    compiled kernel's ~1 s load starts with the observer (overlapping the session build), only for
    work that repays it."""
    import engine.calibration.observer as observer_module

    calls = []
    monkeypatch.setattr(observer_module, "load_kernel", lambda wait=False: calls.append(wait) or False)
    per_sample = 3 * 16 * 16 + 2 * 8 * 16 * 16 + 8  # data, conv_out, relu_out, output
    Observer(conv_relu_model(), TENSORS, expected_samples=observer_module.KERNEL_WORK // per_sample + 1)
    assert calls == [False]  # in the background
    Observer(conv_relu_model(), TENSORS, expected_samples=observer_module.KERNEL_WORK // per_sample - 1)
    Observer(conv_relu_model(batch="N"), TENSORS, expected_samples=10 ** 9)  # unknown batch: decided after runs
    assert calls == [False]


def test_statistics_wait_for_the_kernel_only_when_the_work_is_large(monkeypatch):
    """While the kernel loads, numpy's histograms cost ~4x its own: a pass whose work is large
    (`KERNEL_WAIT_WORK`) waits for the load instead; a smaller one goes on in numpy."""
    import engine.calibration.observer as observer_module

    calls = []
    monkeypatch.setattr(observer_module, "load_kernel", lambda wait=False: calls.append(wait) or False)
    monkeypatch.setattr(observer_module, "STACK_VALUES", 1)  # statistics sample by sample, as for a large model
    per_sample = 3 * 16 * 16 + 2 * 8 * 16 * 16 + 8
    data = list(samples((1, 3, 16, 16), 2, seed=3))
    large = Observer(conv_relu_model(), TENSORS, batch=1, expected_samples=observer_module.KERNEL_WAIT_WORK // per_sample + 1)
    got = list(large.observe(iter(data)))
    assert calls == [False, False, True, True]  # started at init and after the first run; waited per sample
    calls.clear()
    small = Observer(conv_relu_model(), TENSORS, batch=1, expected_samples=observer_module.KERNEL_WAIT_WORK // per_sample - 1)
    assert list(small.observe(iter(data))) == got and True not in calls


def test_the_batching_check_runs_a_whole_first_batch_and_uses_it(monkeypatch):
    """A small model: the check that batched runs equal single runs is made on a full first batch,
    whose values then give its samples' statistics (no batch of two run for the check alone)."""
    runs = []
    original = Observer._run

    def counted(self, session, chunk):
        runs.append(len(chunk))
        return original(self, session, chunk)

    monkeypatch.setattr(Observer, "_run", counted)
    data = list(samples((1, 3, 16, 16), 7, seed=6))
    observer = Observer(conv_relu_model(batch="N"), TENSORS, batch=4, exact_batch=True)
    got = list(observer.observe(iter(data)))
    assert runs == [1, 1, 4, 3] and observer.batch_used == 4  # two singles, the checked batch, the rest
    runs.clear()
    single = list(observe(conv_relu_model(batch="N"), iter(data), TENSORS, batch=1))
    assert len(runs) == 7
    for a, b in zip(got, single, strict=True):
        assert a.tensors == b.tensors  # the checked batch's values: the same bits as one at a time
