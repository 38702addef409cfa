"""QDQ models as onnxruntime's `quantize_static` makes them (what a QAT export or a user's own ORT
quantization hands us): the tests of strip_qdq and `calibration_type: load` start from one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np


def ort_qdq(float_path: Path, qdq_path: Path, feeds: Iterable[Mapping[str, np.ndarray]], per_channel: bool = False,
            **options) -> None:
    """`quantize_static` of `float_path` into `qdq_path`, calibrated on `feeds`: QDQ format, uint8
    activations and int8 weights unless `options` say otherwise."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([dict(f) for f in feeds])

        def get_next(self):
            return next(self.feeds, None)

    kwargs = {"quant_format": QuantFormat.QDQ, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
              "per_channel": per_channel, **options}
    quantize_static(str(float_path), str(qdq_path), Reader(), **kwargs)
