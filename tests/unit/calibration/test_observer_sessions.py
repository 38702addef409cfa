"""One onnxruntime session per observer: the symbolic-batch copy serves single runs and batches (a
second session's build and first run were ~4 of digits' ~30 ms statistics pass), and a model that
takes no symbolic batch is observed unbatched on its static copy, with the same statistics."""

from __future__ import annotations

import numpy as np
import onnx

import engine.calibration.observer as observer_module
from engine.calibration import Observer, activation_tensors
from tests.unit.calibration.calib_support import conv_relu_model, flatten_model, samples

TENSORS = ["data", "conv_out", "relu_out", "output"]


def count_sessions(monkeypatch) -> list[bool]:
    """Records each session build: True for the symbolic-batch copy (its first dimension has a name)."""
    built: list[bool] = []
    real = Observer._session

    def counted(self, proto: onnx.ModelProto, quiet: bool = False):
        built.append(bool(proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param))
        return real(self, proto, quiet)

    monkeypatch.setattr(Observer, "_session", counted)
    return built


def unbatched(model: onnx.ModelProto, data: list[dict], tensors: list[str]) -> list:
    return list(Observer(model, tensors, batch=1).observe(iter(data)))


def test_a_small_model_builds_one_session_for_single_runs_and_batches(monkeypatch):
    built = count_sessions(monkeypatch)
    data = list(samples((1, 3, 16, 16), 9, seed=21))
    observer = Observer(conv_relu_model(), TENSORS, exact_batch=True)
    got = list(observer.observe(iter(data)))
    assert observer.batch_used > 1 and built == [True]  # the batch check compared runs of one session
    again = list(observer.again(1).observe(iter(data[4:5])))  # a warm re-run of one sample: no new session
    assert built == [True] and again[0].tensors == got[4].tensors
    assert all(a.tensors == b.tensors for a, b in zip(got, unbatched(conv_relu_model(), data, TENSORS), strict=True))


def test_an_observer_that_never_batches_uses_the_static_model(monkeypatch):
    built = count_sessions(monkeypatch)
    list(Observer(conv_relu_model(), TENSORS, batch=1).observe(samples((1, 3, 16, 16), 3, seed=22)))
    list(Observer(conv_relu_model(), TENSORS, memory_budget=1).observe(samples((1, 3, 16, 16), 3, seed=22)))
    assert built == [False, False]  # asked for batch 1; planned sizes allow no batch of two


def test_a_model_that_does_not_load_with_a_symbolic_batch_is_observed_on_its_static_copy(monkeypatch):
    def unloadable(model: onnx.ModelProto) -> onnx.ModelProto:
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        broken.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
        broken.graph.node[0].op_type = "NoSuchOp"
        return broken

    monkeypatch.setattr(observer_module, "with_symbolic_batch", unloadable)
    built = count_sessions(monkeypatch)
    data = list(samples((1, 3, 16, 16), 5, seed=23))
    observer = Observer(conv_relu_model(), TENSORS, exact_batch=True)
    got = list(observer.observe(iter(data)))
    assert built == [True, False] and observer.batch_used == 1
    assert any("does not load with a batch" in n for n in observer.notes), observer.notes
    assert all(a.tensors == b.tensors for a, b in zip(got, unbatched(conv_relu_model(), data, TENSORS), strict=True))


def test_a_model_that_runs_only_with_static_shapes_moves_to_its_static_copy(monkeypatch):
    """A single run the symbolic-batch session fails while the static model runs it: the observer
    goes on with the static session, unbatched; a sample that fails on both is a ModelError."""
    real_run = Observer._run

    def picky(self, session, chunk):
        if self._symbolic and session is self._single:
            raise RuntimeError("needs static shapes")
        return real_run(self, session, chunk)

    monkeypatch.setattr(Observer, "_run", picky)
    model = flatten_model()
    tensors = activation_tensors(model)
    data = list(samples((1, 3, 4, 4), 4, seed=24))
    observer = Observer(model, tensors, exact_batch=True)
    got = list(observer.observe(iter(data)))
    assert observer.batch_used == 1 and not observer._symbolic
    assert any("only with its static shapes" in n for n in observer.notes), observer.notes
    monkeypatch.setattr(Observer, "_run", real_run)
    assert all(a.tensors == b.tensors for a, b in zip(got, unbatched(model, data, tensors), strict=True))


def test_a_bad_sample_is_a_model_error_and_keeps_the_symbolic_session():
    from engine.problems import ModelError

    observer = Observer(conv_relu_model(), TENSORS, exact_batch=True)
    good = list(samples((1, 3, 16, 16), 3, seed=25))
    try:
        list(observer.observe(iter(good + [{"data": np.zeros((1, 3, 8, 8), np.float32)}])))
    except ModelError as e:
        assert "calibration sample 3" in str(e)
    else:
        raise AssertionError("a sample of the wrong shape ran")
    assert observer._symbolic  # the static copy failed the same way: nothing to move to
