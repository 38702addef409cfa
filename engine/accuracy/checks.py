"""Checks before calibration: do the calibration samples look like what the float model expects?

A wrong `input_type_train` (RGB fed as BGR) or a normalization applied twice (samples already
scaled to [-1, 1] while the config adds `mean_value` / `scale_value` again) is the most frequent
cause of poor accuracy (reference §17: "the main cause of accuracy loss above 4%"), and no
similarity table shows it: the quantized model follows the float model faithfully, on the wrong
data. The float model itself tells: a trained model is more confident on inputs like its
training data. So the check runs the float model on a few samples as given and on variants —

- ``channels swapped``: the colour channels reversed (3-channel rgb / bgr inputs);
- ``normalized twice``: the samples as if they were already normalized, i.e. x / scale + mean,
  so that the model's own normalization gives back x (inputs with mean / scale / std, and only
  when the samples lie in the normalized range: out-of-range inputs saturate a model's outputs,
  which then look confident for the wrong reason — measured on the digits example);

— and compares the mean entropy of its outputs (a probability vector along the class axis, a
per-element probability map, or softmax of logits). A variant that is clearly more confident
(entropy lower by `margin` of the given samples' entropy, and by at least `min_gap` nats) gives a
warning naming the input and what to check. Only a warning: a model whose outputs carry no
confidence (a regression head) can mislead it.

The entropies are per sample, so a `CheckMemo` keeps them per sample by content (the optimized
model's key, the sample files' digest, the input specs): after one calibration file changed,
only that sample is run again — none when it is not among the checked ones (issue #8). The memo
only accelerates: the same inputs give the same entropies, so the same checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

Sample = Mapping[str, np.ndarray]
EPS = 1e-7
MEMO_VERSION = 1


@dataclass(frozen=True)
class CheckMemo:
    """Per-sample entropies on disk: `folder` (a stage memo folder), the key of the model the check
    runs (the optimize stage's), and each checked sample's content digest in sample order."""

    folder: Path
    model_key: str
    sample_keys: Sequence[str]

    def path(self, index: int, specs: Sequence[Mapping[str, Any]]) -> Path:
        text = json.dumps([MEMO_VERSION, self.model_key, self.sample_keys[index], list(specs)], sort_keys=True,
                          default=str)
        from engine.pipeline.cache import memo_name

        # owned by the model's stage entry: pruned with it (engine.pipeline.cache.prune_memos)
        return self.folder / memo_name(self.model_key, f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json")

    def load(self, index: int, specs: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
        """{"given" / "<input>|<variant>": entropy per model output} saved for sample `index`; {} if none."""
        try:
            saved = json.loads(self.path(index, specs).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(saved, dict):
            return {}
        return {k: [float(x) for x in v] for k, v in saved.items() if isinstance(v, list)}

    def save(self, index: int, specs: Sequence[Mapping[str, Any]], entry: Mapping[str, list[float]]) -> None:
        from engine.pipeline.cache import atomic_write_text

        atomic_write_text(self.path(index, specs), json.dumps(dict(entry)))  # NaN as JSON's NaN literal


@dataclass(frozen=True)
class DataCheck:
    input: str
    variant: str  # "channels swapped" / "normalized twice"
    entropy_given: float
    entropy_variant: float
    suspicious: bool

    def message(self) -> str:
        advice = {"channels swapped": "check input_type_train (rgb vs bgr) and the channel order of the "
                                      "calibration files",
                  "normalized twice": "the calibration files may already be normalized: they must hold the train "
                                      "data without mean / scale (those come from input_parameters)"}[self.variant]
        return (f"calibration data of input '{self.input}': the float model is more confident with the samples "
                f"{self.variant} (output entropy {self.entropy_variant:.4f}) than as given ({self.entropy_given:.4f}); "
                f"{advice}")


def output_entropy(y: np.ndarray) -> float:
    """Mean entropy (nats) of one output, read as probabilities where it looks like them."""
    y = np.asarray(y, np.float64)
    if y.size == 0 or not np.isfinite(y).all():
        return float("nan")
    axis = 1 if y.ndim >= 2 and y.shape[1] > 1 else -1
    if y.min() >= 0 and y.max() <= 1:
        sums = y.sum(axis=axis)
        if y.shape[axis] > 1 and np.allclose(sums, 1.0, atol=1e-3):  # a distribution along the class axis
            return float(np.mean(-(y * np.log(y + EPS)).sum(axis=axis)))
        p = np.clip(y, EPS, 1 - EPS)  # independent probabilities (sigmoid maps)
        return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    if y.shape[axis] < 2:
        return float("nan")
    z = y - y.max(axis=axis, keepdims=True)  # logits
    p = np.exp(z)
    p /= p.sum(axis=axis, keepdims=True)
    return float(np.mean(-(p * np.log(p + EPS)).sum(axis=axis)))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _channel_axis(spec: Mapping[str, Any]) -> int:
    return 1 if str(spec.get("input_layout_train") or "NCHW").upper() == "NCHW" else -1


def variants(spec: Mapping[str, Any]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The alternative readings of one input's samples worth comparing."""
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    axis = _channel_axis(spec)
    shape = spec.get("shape") or []
    if spec.get("input_type_train") in ("rgb", "bgr") and len(shape) == 4 and shape[axis] == 3:
        out["channels swapped"] = lambda x: np.ascontiguousarray(np.flip(x, axis=axis))
    mean = np.asarray(spec.get("mean_value") or [0.0], np.float32)
    if spec.get("scale_value"):
        scale = np.asarray(spec["scale_value"], np.float32)
    elif spec.get("std_value"):
        scale = 1.0 / np.asarray(spec["std_value"], np.float32)
    else:
        scale = None
    if spec.get("mean_value") or scale is not None:
        scale = np.ones(1, np.float32) if scale is None else scale
        rank = len(shape) or 4

        def per_channel(v: np.ndarray) -> np.ndarray:
            if v.size == 1:
                return v.reshape(())
            view = [1] * rank
            view[axis] = v.size
            return v.reshape(view)

        out["normalized twice"] = lambda x: (x / per_channel(scale) + per_channel(mean)).astype(np.float32)
    return out


def looks_normalized(x: np.ndarray, spec: Mapping[str, Any]) -> bool:
    """Samples already inside the range the model's normalization gives 0–255 pixels (and far from
    0–255 themselves): only then is "normalized twice" a plausible reading — otherwise the variant
    is out of range, and a saturated output would look confident for the wrong reason."""
    mean = np.asarray(spec.get("mean_value") or [0.0], np.float64)
    if spec.get("scale_value"):
        scale = np.asarray(spec["scale_value"], np.float64)
    elif spec.get("std_value"):
        scale = 1.0 / np.asarray(spec["std_value"], np.float64)
    else:
        scale = np.ones(1)
    ends = np.concatenate([(0.0 - mean) * scale, (255.0 - mean) * scale])
    lo, hi = float(ends.min()), float(ends.max())
    span = hi - lo
    return bool(x.min() >= lo - 0.1 * span and x.max() <= hi + 0.1 * span and float(x.max() - x.min()) < 0.25 * 255)


def check_calibration_data(model: onnx.ModelProto, samples: Sequence[Sample], specs: Sequence[Mapping[str, Any]],
                           margin: float = 0.25, min_gap: float = 0.02,
                           given: Sequence[Mapping[str, np.ndarray]] | None = None,
                           memo: CheckMemo | None = None) -> list[DataCheck]:
    """One `DataCheck` per input and variant (module docstring); `suspicious` ones deserve a warning.
    One float session for every run, opened only when a run is needed (a session per run cost more
    than the runs on small models); `given`: the float model's outputs on `samples` when the caller
    has them; `memo`: per-sample entropies kept by content (`CheckMemo`), read first, completed here."""
    from engine.accuracy.sessions import quiet_session, run_outputs

    if not samples:
        return []
    if given is not None and len(given) != len(samples):
        raise ValueError(f"check_calibration_data: {len(given)} float outputs for {len(samples)} samples")
    outputs = [o.name for o in model.graph.output]
    sessions: list[Any] = []
    entries = [memo.load(i, specs) if memo is not None else {} for i in range(len(samples))]
    changed: set[int] = set()

    def run(s: Sample) -> Mapping[str, np.ndarray]:
        if not sessions:
            sessions.append(quiet_session(model))
        return run_outputs(sessions[0], s, outputs)

    def entropies(i: int, key: str, values: Callable[[], Mapping[str, np.ndarray]]) -> list[float]:
        """Sample i's entropy per output under `key`, from the memo or computed (`values`: its outputs)."""
        if len(entries[i].get(key, ())) != len(outputs):
            y = values()
            entries[i][key] = [output_entropy(y[o]) for o in outputs]
            changed.add(i)
        return entries[i][key]

    mean_given = _mean([e for i, s in enumerate(samples)
                        for e in entropies(i, "given", lambda s=s, i=i: given[i] if given is not None else run(s))])
    found = []
    for spec in specs:
        name = spec["name"]
        for label, change in variants(spec).items():
            if label == "normalized twice" and not all(looks_normalized(np.asarray(s[name]), spec) for s in samples):
                continue
            other = _mean([e for i, s in enumerate(samples) for e in entropies(
                i, f"{name}|{label}", lambda s=s, n=name, f=change: run({**s, n: f(np.asarray(s[n], np.float32))}))])
            if not (np.isfinite(mean_given) and np.isfinite(other)):
                continue
            suspicious = other < mean_given * (1 - margin) and mean_given - other >= min_gap
            found.append(DataCheck(name, label, mean_given, other, bool(suspicious)))
    if memo is not None:
        for i in sorted(changed):
            memo.save(i, specs, entries[i])
    return found


__all__ = ["CheckMemo", "DataCheck", "check_calibration_data", "output_entropy", "variants"]
