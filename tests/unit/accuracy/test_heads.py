"""Output heads: boxes (pixels) and scores (0–1) joined in one output keep both parts."""

from __future__ import annotations

import numpy as np

from engine.quantize.integer import lower_to_integer, session_options
from engine.quantize.ptq import build_ptq_model
from engine.similarity import cosine, run_model
from tests.unit.accuracy.acc_models import calibrate, detector_head, samples


def _parts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return y[:, :4], y[:, 4:]


def test_boxes_and_scores_both_keep_their_cosine_and_the_user_is_told():
    import onnxruntime as ort

    model = detector_head()
    data = samples(model, 6)
    _, _, plan = calibrate(model, data)
    assert plan.nodes["head_concat"].on == "CPU" and plan.nodes["head_reshape"].on == "CPU"
    assert plan.acts["boxes"].threshold > 100 * plan.acts["scores"].threshold  # each part its own scale
    assert any("head_concat joins model-output tensors" in n and "stay in float" in n for n in plan.notes)
    ptq = build_ptq_model(model, plan)
    bc = lower_to_integer(model, plan)
    session = ort.InferenceSession(bc.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    for s in samples(model, 3, seed=4):
        ref = run_model(model, s)["out"]
        for got in (run_model(ptq, s)["out"], session.run(None, s)[0]):
            boxes, scores = _parts(got)
            assert cosine(_parts(ref)[0], boxes) >= 0.99 and cosine(_parts(ref)[1], scores) >= 0.99


def test_one_shared_int8_scale_would_have_lost_the_scores():
    """What the split avoids: the scores under the boxes' int8 step (640/127) are all zero."""
    model = detector_head()
    data = samples(model, 4)
    _, _, plan = calibrate(model, data)
    step = plan.acts["boxes"].threshold / 127
    scores = run_model(model, data[0])["out"][:, 4:]
    shared = np.clip(np.rint(scores / step), -128, 127) * step
    assert not shared.any() and cosine(scores, shared) == 0.0
