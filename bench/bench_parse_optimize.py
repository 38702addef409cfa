"""parse + optimize on the real PP-OCR models, against one float inference pass of the same model.

Prints, per model: parse+optimize seconds (cold engine), the ratio to a float pass, node counts
before/after, and the equivalence of original vs optimized (cosine, max |diff| / range).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import float_pass_seconds, print_table, timed  # noqa: E402
from tests.support.ppocr import SHAPES, ppocr_models, why_missing  # noqa: E402


def photo(shape: list[int]) -> np.ndarray:
    """A real photo (scikit-image's bundled astronaut), resized and normalized as PP-OCR expects:
    on uniform noise the det model outputs ~1e-5 everywhere and relative errors mean nothing."""
    from skimage.data import astronaut
    from skimage.transform import resize

    img = resize(astronaut(), (shape[2], shape[3]), anti_aliasing=True).astype(np.float32)  # [0, 1] RGB
    return ((img - 0.5) / 0.5).transpose(2, 0, 1)[None]


def main() -> None:
    import onnx
    import onnxruntime as ort

    from engine.pipeline import Engine

    models = ppocr_models()
    if not models:
        print(f"bench_parse_optimize: skipped ({why_missing()})")
        return
    rows = []
    for name, path in models.items():
        shape = SHAPES[name]
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "c.yaml"
            cfg.write_text(f"""model_parameters:
  onnx_model: {path}
  march: nash-e
  working_dir: {tmp}/out
  output_model_file_prefix: {name}
input_parameters:
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: {'x'.join(map(str, shape))}
calibration_parameters:
  calibration_type: skip
""")
            seconds, report = timed(lambda cfg=cfg: Engine().run(cfg, until="optimize"))
            assert report.ok, [p.render() for p in report.problems]
            orig = Path(tmp) / "out" / f"{name}_original_float_model.onnx"
            opt = Path(tmp) / "out" / f"{name}_optimized_float_model.onnx"
            x = photo(shape)
            feeds = {onnx.load(str(orig), load_external_data=False).graph.input[0].name: x}
            peer = float_pass_seconds(orig, [feeds])
            a = ort.InferenceSession(str(orig), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            b = ort.InferenceSession(str(opt), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            cos = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
            rel = float(np.abs(a - b).max() / (a.max() - a.min() + 1e-30))
            res = report.results["optimize"]
            rows.append((name, "x".join(map(str, shape)), f"{seconds:.2f}", f"{peer:.3f}", f"{seconds / peer:.1f}x",
                         f"{res['nodes_before']}->{res['nodes_after']}", f"{cos:.7f}", f"{rel:.1e}"))
    print_table("parse + optimize vs one float pass (same model, 2 threads)", rows,
                ("model", "shape", "parse+opt s", "float pass s", "ratio", "nodes", "cosine", "max|d|/range"))


if __name__ == "__main__":
    main()
