"""The accuracy steps' model runs memoised one by one: the output cosines of one run on one sample.

Mixed precision asks hundreds of questions of a few models on a few samples (PP-OCRv4 det: 229
switchable-model runs for the sensitivity ranking and the weight culprits, 40 ptq runs for the prefix
scan), and the whole-result memo (`engine.accuracy.memo`) misses as soon as one accuracy sample
changes. Each run is a pure function of

- the model run: its bytes (the switchable model's, with the feeds of the switches its setting turns
  on, or a ptq model's), under one session configuration (`quiet_session` at this process's threads);
- the values fed: the sample as fed, after any crop (`sessions.sample_key`);
- the outputs compared, and the float model they are compared with (its bytes: with the sample, that
  fixes the float reference);

so its result is filed under the sha256 of exactly those (`run_key`), in the spirit of the per-sample
calibration statistics: after one calibration file changes, only the runs on that sample execute, and
the float reference is computed for that sample only (`References` is lazy per sample). A moved
threshold changes the model's bytes: every run on it misses.

What is kept is what the callers read, never tensors: the cosine of each output (and, for the
sensitivity analysis's all-quantized run, of each exposed tensor), as the float the unmemoised path
computed — callers average them in the same order, so a warm engine's numbers are a cold one's bit
for bit. The map lives in the process (`RUNS`, bounded: `ENTRIES` runs, a few MB) for the warm
engine of hblsp and the daemon; a cold process computes everything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence

from engine.pipeline.recent import Recent

# runs kept: PP-OCRv4 det's accuracy steps make ~300 per calibration (one float or two each, the
# all-quantized run ~140): ~2 MB at most, room for the last few calibrations of a few models
ENTRIES = 8192
Cosines = tuple  # per output (and per exposed tensor): floats, in the order the caller asked for


class RunMemo:
    """At most `size` runs' cosines by `run_key`; `hits` / `misses` count lookups (tests, reports)."""

    def __init__(self, size: int = ENTRIES) -> None:
        self._recent: Recent[str, Cosines] = Recent(size)
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Cosines | None:
        found = self._recent.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, value: Cosines) -> Cosines:
        return self._recent.put(key, value)

    def __len__(self) -> int:
        return len(self._recent)

    def clear(self) -> None:
        self._recent.clear()
        self.hits = self.misses = 0


RUNS = RunMemo()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_key(model: str, sample: str, outputs: Sequence[str], reference: str, setting: str = "",
            kind: str = "output cosines") -> str:
    """The key of one run: `model` (digest of the bytes run), `sample` (`sample_key` of the values fed),
    the `outputs` compared, `reference` (digest of the float model they are compared with), `setting`
    (the switchable model's switch feeds, `SwitchableModel.setting_key`), `kind` (what the value holds),
    and the session configuration (onnxruntime's thread count: `quiet_session` runs at this process's)."""
    from engine.runtime.session import cpu_count

    return digest(json.dumps([kind, model, setting, sample, list(outputs), reference, cpu_count()]).encode())


def lookup(key: str) -> Cosines | None:
    return RUNS.get(key)


def store(key: str, value: Cosines) -> Cosines:
    return RUNS.put(key, tuple(value))


def memoised(keys: Sequence[str], compute: Callable[[list[int]], Iterable[Sequence]]) -> list[Cosines]:
    """Per key, the value the memo holds; `compute(missing)` gives the values of the keys it does not hold
    (their positions, in order), each stored as it comes. The callers' one loop: look up, run what is
    missing (one session, one batch of float references), file."""
    per = [lookup(k) for k in keys]
    missing = [i for i, found in enumerate(per) if found is None]
    if missing:
        for i, value in zip(missing, compute(missing), strict=True):
            per[i] = store(keys[i], value)
    return per


def mean_loss(per_sample: Sequence[Cosines]) -> float:
    """1 − the mean over samples and outputs of the cosines, as `sensitivity.output_loss` averages them
    (`similarity.mean_output_cosine`: one flat list, sample by sample, output by output)."""
    import numpy as np

    values = [c for cosines in per_sample for c in cosines]
    return 1.0 - (float(np.mean(values)) if values else 1.0)


__all__ = ["ENTRIES", "RUNS", "RunMemo", "digest", "lookup", "mean_loss", "memoised", "run_key", "store"]
