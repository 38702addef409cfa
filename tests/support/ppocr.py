"""The real PP-OCR models (det v4, rec v4, cls v2) for tests, from the rapidocr-onnxruntime wheel.

`ppocr_models()` downloads the wheel once with pip (`pip download --no-deps`) into
`<repo>/.cache/models/` (gitignored), extracts the three `.onnx` files and returns their paths;
it returns `{}` when the wheel cannot be fetched, and `why_missing()` says why, so tests can
`pytest.skip` with a visible reason. `ppocr_model(name)` returns the model in the state the
optimize stage receives: opset ≥ 13 (ONNX's version converter), static input shape (`SHAPES`),
nodes named, shapes inferred. The parse stage does this for users; this is the tests' shortcut.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter

from tests.support.models import finish

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "models"
REQUIREMENT = "rapidocr-onnxruntime==1.4.4"
FILES = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
         "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
SHAPES = {"det": [1, 3, 640, 640], "rec": [1, 3, 48, 320], "cls": [1, 3, 48, 192]}
TARGET_OPSET = 17

_why = ""


def why_missing() -> str:
    return _why or "PP-OCR models were not requested yet"


def ppocr_models(cache: Path = CACHE) -> dict[str, Path]:
    """{"det" | "rec" | "cls": path} of the extracted models, or {} when they cannot be fetched."""
    global _why
    folder = cache / "ppocr"
    paths = {name: folder / file for name, file in FILES.items()}
    if all(p.is_file() for p in paths.values()):
        return paths
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".ppocr.lock", "w") as lock:  # pytest-xdist workers: one download
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(p.is_file() for p in paths.values()):
            return paths
        wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   REQUIREMENT, "-d", str(cache)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                _why = f"cannot download {REQUIREMENT}: {exc}"
                return {}
            wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
            if done.returncode != 0 or not wheels:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
                _why = f"cannot download {REQUIREMENT}: {tail[0]}"
                return {}
        folder.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = {Path(n).name: n for n in wheel.namelist() if n.endswith(".onnx")}
            for name, file in FILES.items():
                if file not in members:
                    _why = f"{wheels[0].name} holds no {file}"
                    return {}
                tmp = paths[name].with_suffix(".tmp")
                tmp.write_bytes(wheel.read(members[file]))
                os.replace(tmp, paths[name])
    return paths


def make_static(model: onnx.ModelProto, shape: list[int]) -> onnx.ModelProto:
    """Fix the (single) input's dims and forget the exporter's symbolic output dims."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = value
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return model


def ppocr_model(name: str, path: Path) -> onnx.ModelProto:
    """The model as the optimize stage receives it (see the module docstring)."""
    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        model = version_converter.convert_version(model, TARGET_OPSET)
    return finish(make_static(model, SHAPES[name]))


def text_image(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A realistic input for model `name`: dark printed words on a light page, normalised the way
    PaddleOCR feeds each model (det: ImageNet mean/std; rec, cls: (x/255 - 0.5) / 0.5).

    Random noise is a poor probe for det: its probability map saturates to ~0 everywhere, and
    cosine then measures float rounding of nothing. Text gives the map a real range.
    """
    import cv2

    rng = np.random.default_rng(seed)
    _, _, h, w = SHAPES[name]
    page = np.full((h, w, 3), 235, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    lines = max(1, h // 64)
    for i in range(lines):
        words = " ".join("".join(chr(c) for c in rng.integers(97, 123, rng.integers(3, 8))) for _ in range(4))
        y = int((i + 0.7) * h / lines) if lines > 1 else int(h * 0.7)
        scale = 1.2 if lines > 1 else h / 40
        cv2.putText(page, words, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 2, cv2.LINE_AA)
    x = page.astype(np.float32) / 255.0
    if name == "det":
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    else:
        x = (x - 0.5) / 0.5
    return {"x": np.ascontiguousarray(x.transpose(2, 0, 1)[None])}
