"""Accuracy on real models (issue #10): ours vs onnxruntime's `quantize_static`, same data, same run.

For PP-OCRv4 det (640×640), PP-OCRv4 rec (48×320), PP-OCR cls (48×192) and the bundled digits
model: 32 calibration samples, then task metrics on held-out samples (other crops / other words,
never calibration samples) against the float model's *own* outputs:

- det: output cosine of the probability map and IoU of the DB text mask (map > 0.3);
- rec: character error rate of greedy CTC decoding (argmax indices, repeats merged, blank 0
  dropped — the same CER as decoded text, without the character dictionary) against the float
  model's own decoding;
- cls: output cosine (and agreement of the 0° / 180° decision);
- digits: top-1 agreement with the float model.

Samples: words rendered with Pillow's scalable default font on scikit-image's bundled photos
(det: 3–9 words per photo, dark on light and light on dark, some on plain signs; rec / cls: one
line of 1–3 words on a dimmed photo crop, cls half of them turned by 180°), BGR, the PaddleOCR
normalization (x/255 − 0.5) / 0.5 given to hb_compile as mean_value 127.5 / scale_value 1/127.5.

Ours: `hb_compile` with defaults plus the accuracy keys (target_output_cosine 0.99 by default),
measured on the `.bc` (the integer program, opened as every integer program is:
`engine.runtime.session`; the `.hbm` holds the same program, checked bit for bit here) and on
the ptq model (the same program computed in float, bias corrections included in both). Peer:
onnxruntime.quantization.quantize_static, QDQ, per-channel int8 weights, MinMax (Entropy /
Percentile on rec and cls only: on det 640×640 they need tens of GB). Speed: the `.bc` and the
`.hbm` (through `engine.runtime`) against the float model in onnxruntime, 2 threads each,
interleaved, fastest of 10 rounds (wall in the table, process CPU time printed below it).

    .venv/bin/python bench/bench_accuracy.py [det] [rec] [cls] [digits] [--target 0.995] [--bias]
                                             [--samples N] [--no-peers] [--held N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, print_table  # noqa: E402

CAL, HELD = 32, {"det": 16, "rec": 64, "cls": 64}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text")
WORDS = ("total", "price", "open", "exit", "station", "coffee", "rocket", "horizon", "quantize", "north",
         "street", "hotel", "bank", "welcome", "parking", "menu", "2024", "12:45", "No. 7", "OCR",
         "express", "market", "library", "gate B", "sale -30%", "tea", "bus", "museum", "hello", "world")
SHAPES = {"det": (640, 640), "rec": (48, 320), "cls": (48, 192)}
DB_THRESHOLD = 0.3


# ------------------------------------------------------------------------------------ samples
def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _crop(rng: np.random.Generator, index: int, h: int, w: int):
    from PIL import Image

    img = _photo(PHOTOS[index % len(PHOTOS)])
    ih, iw = img.shape[:2]
    fh, fw = rng.uniform(0.3, 1.0, 2)
    ch, cw = max(int(ih * fh), 16), max(int(iw * fw), 16)
    y, x = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
    part = img[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        part = part[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(part)).resize((w, h), Image.BILINEAR)


def det_image(index: int, seed: int) -> np.ndarray:
    """A photo with 3–9 rendered words: HxWx3 uint8 RGB."""
    from PIL import ImageDraw, ImageFont

    h, w = SHAPES["det"]
    rng = np.random.default_rng([seed, index])
    img = _crop(rng, index, h, w)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 10))):
        size = int(rng.integers(h // 40, h // 10))
        font = ImageFont.load_default(size=size)
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        x0, y0 = int(rng.integers(0, max(w - size * 4, 1))), int(rng.integers(0, max(h - size, 1)))
        dark = rng.random() < 0.5
        ink = tuple(int(v) for v in (rng.integers(0, 60, 3) if dark else rng.integers(200, 256, 3)))
        if rng.random() < 0.4:
            box = draw.textbbox((x0, y0), text, font=font)
            paper = tuple(int(v) for v in (rng.integers(200, 256, 3) if dark else rng.integers(0, 60, 3)))
            draw.rectangle((box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4), fill=paper)
        draw.text((x0, y0), text, fill=ink, font=font)
    return np.asarray(img, np.uint8)


def line_image(name: str, index: int, seed: int) -> np.ndarray:
    """One text line resized to height H and padded to width W (PaddleOCR's rec / cls input)."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = SHAPES[name]
    rng = np.random.default_rng([seed, index, 7])
    text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
    font = ImageFont.load_default(size=int(rng.integers(28, 44)))
    box = ImageDraw.Draw(Image.new("RGB", (8, 8))).textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0] + 16, box[3] - box[1] + 12
    dark = rng.random() < 0.6
    bg = np.asarray(_crop(rng, index, th, tw)).astype(np.float32) * 0.35 + (160 if dark else 20)
    line = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    ink = tuple(int(v) for v in (rng.integers(0, 50, 3) if dark else rng.integers(210, 256, 3)))
    ImageDraw.Draw(line).text((8 - box[0], 6 - box[1]), text, fill=ink, font=font)
    if name == "cls" and index % 2:
        line = line.rotate(180)
    nw = min(w, max(1, round(h * tw / th)))
    out = np.full((h, w, 3), 128, np.uint8)  # PaddleOCR pads with 0 after normalization, i.e. 127.5
    out[:, :nw] = np.asarray(line.resize((nw, h), Image.BILINEAR))
    return out


def sample(name: str, index: int, seed: int) -> np.ndarray:
    """1×3×H×W float32 BGR pixels 0–255 (the train view the calibration files hold)."""
    img = det_image(index, seed) if name == "det" else line_image(name, index, seed)
    return np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)[None]).astype(np.float32)


def normalized(x: np.ndarray) -> np.ndarray:
    return (x - 127.5) / 127.5


# ------------------------------------------------------------------------------------ metrics
def ctc_indices(probs: np.ndarray) -> list[int]:
    best = probs[0].argmax(-1)
    return [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def edit_distance(a: list[int], b: list[int]) -> int:
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(b) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
    return d[len(b)]


def metrics(name: str, refs: list[np.ndarray], outs: list[np.ndarray]) -> dict[str, float]:
    from engine.similarity import cosine

    cos = [cosine(r, o) for r, o in zip(refs, outs, strict=True)]
    m = {"cosine": float(np.mean(cos)), "min cosine": float(np.min(cos))}
    if name == "det":
        ious = []
        for r, o in zip(refs, outs, strict=True):
            a, b = r > DB_THRESHOLD, o > DB_THRESHOLD
            ious.append((a & b).sum() / max((a | b).sum(), 1))
        m["IoU"] = float(np.mean(ious))
    if name == "rec":
        errors = sum(edit_distance(ctc_indices(r), ctc_indices(o)) for r, o in zip(refs, outs, strict=True))
        m["CER"] = errors / max(sum(len(ctc_indices(r)) for r in refs), 1)
    if name == "cls":
        m["agree"] = float(np.mean([r.argmax() == o.argmax() for r, o in zip(refs, outs, strict=True)]))
    return m


# ------------------------------------------------------------------------------------ runs
def config_text(name: str, model: Path, root: Path, extra: str) -> str:
    h, w = SHAPES[name]
    return f"""model_parameters:
  onnx_model: {model}
  march: nash-e
  working_dir: {root}/out
  output_model_file_prefix: {name}
input_parameters:
  input_name: x
  input_type_train: bgr
  input_layout_train: NCHW
  input_type_rt: bgr
  input_shape: 1x3x{h}x{w}
  mean_value: 127.5
  scale_value: 0.00784313725490196
calibration_parameters:
  cal_data_dir: ./cal
  calibration_type: default
{extra}"""


def run_ours(name: str, model: Path, root: Path, held: list[np.ndarray], extra: str) -> dict:
    import onnx
    import onnxruntime as ort

    from engine import runtime
    from engine.accuracy.switchable import fake_quant_session
    from engine.pipeline import Engine
    from engine.preprocess.samples import to_runtime
    from engine.runtime.session import open_session

    (root / "cal").mkdir(parents=True, exist_ok=True)
    for i in range(CAL):
        np.save(root / "cal" / f"s{i:03d}.npy", sample(name, i, seed=0))
    cfg = root / "c.yaml"
    cfg.write_text(config_text(name, model, root, extra))
    t = time.perf_counter()
    report = Engine().run(cfg)
    seconds = time.perf_counter() - t
    if not report.ok:
        raise RuntimeError("; ".join(p.render() for p in report.problems))
    out = root / "out"
    float_model = onnx.load(str(out / f"{name}_original_float_model.onnx"))
    fl = ort.InferenceSession(float_model.SerializeToString(), providers=["CPUExecutionProvider"])
    bc = open_session(out / f"{name}_quantized_model.bc", threads=2)
    refs = [fl.run(None, {"x": x})[0] for x in held]
    feeds = [{"x": to_runtime(x, "bgr", "bgr", "NCHW", "regular", None)} for x in held]
    outs = [bc.run(None, f)[0] for f in feeds]
    hbm = runtime.load(out / f"{name}.hbm", threads=2)
    same_bits = all(np.asarray(next(iter(hbm.run(f).values()))).tobytes() == o.tobytes()
                    for f, o in zip(feeds, outs, strict=True))
    ptq = fake_quant_session(onnx.load(str(out / f"{name}_ptq_model.onnx")))  # the integer program in float
    ptq_metrics = metrics(name, refs, [ptq.run(None, {"x": x})[0] for x in held])
    cal = report.results["calibrate"]
    mixed = cal.get("mixed_precision") or {}
    nodes = len([n for n in onnx.load(str(out / f"{name}_optimized_float_model.onnx")).graph.node
                 if n.op_type != "Constant"])
    stages = {s.name: s.seconds for s in report.stages}
    cpu = {s.name: getattr(s, "cpu_seconds", 0.0) for s in report.stages}
    speed = hbm_speed(name, out, held[0])
    return {**metrics(name, refs, outs), "ptq": ptq_metrics, "bc == hbm bits": same_bits,
            "method": cal.get("method"), "moved": mixed.get("moved_nodes", 0),
            "mixed": {k: mixed.get(k) for k in ("before", "after", "met")},
            "nodes": nodes, "node_info": mixed.get("node_info") or {}, "seconds": seconds,
            "calibrate s": stages.get("calibrate", 0.0), "calibrate cpu s": cpu.get("calibrate", 0.0), **speed}


def hbm_speed(name: str, out: Path, x: np.ndarray, repeat: int = 10) -> dict:
    """Latency of the float model (onnxruntime), the `.bc` and the `.hbm` (engine.runtime), 2 threads.

    The three run interleaved (one run of each per round, so a load change on the shared machine
    hits all three alike); each reports its fastest round, wall clock and process CPU time.
    """
    import onnxruntime as ort

    from engine import runtime
    from engine.preprocess.samples import to_runtime
    from engine.runtime.session import open_session

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    fl = ort.InferenceSession(str(out / f"{name}_original_float_model.onnx"), so, providers=["CPUExecutionProvider"])
    feed = {"x": to_runtime(x, "bgr", "bgr", "NCHW", "regular", None)}
    runs = {"float": lambda: fl.run(None, {"x": x})}
    bc = open_session(out / f"{name}_quantized_model.bc", threads=2)
    runs["bc"] = lambda: bc.run(None, feed)
    hbm = out / f"{name}.hbm"
    if hbm.is_file():
        loaded = runtime.load(hbm, threads=2)
        runs["hbm"] = lambda: loaded.run(feed)
    wall = {k: float("inf") for k in runs}
    cpu = dict(wall)
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeat):
        for k, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[k], cpu[k] = min(wall[k], time.perf_counter() - t), min(cpu[k], time.process_time() - c)
    return {**{f"{k} ms": 1e3 * v for k, v in wall.items()}, **{f"{k} cpu ms": 1e3 * v for k, v in cpu.items()}}


def run_ort(name: str, model: Path, root: Path, held: list[np.ndarray], method: str) -> dict:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from tests.support.ppocr import ppocr_model

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": normalized(sample(name, i, seed=0))} for i in range(CAL)])

        def get_next(self):
            return next(self.items, None)

    src, dst = root / f"{name}_float.onnx", root / f"{name}_ort_{method}.onnx"
    onnx.save(ppocr_model(name, model), str(src))
    t = time.perf_counter()
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    seconds = time.perf_counter() - t
    fl = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    refs = [fl.run(None, {"x": normalized(x)})[0] for x in held]
    outs = [q.run(None, {"x": normalized(x)})[0] for x in held]
    return {**metrics(name, refs, outs), "seconds": seconds}


def run_digits(extra: str) -> dict:
    """The bundled example through hb_compile: top-1 of the `.bc` against the float model."""
    import shutil

    import onnxruntime as ort

    from engine.pipeline import Engine
    from engine.preprocess.samples import to_runtime
    from engine.quantize.integer import session_options

    src = REPO / "examples" / "digits"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        shutil.copytree(src, root, ignore=shutil.ignore_patterns("model_output"))
        cfg = root / "digits.hb.yaml"
        text = cfg.read_text()
        if extra:
            text = text.replace("  calibration_type: default\n", "  calibration_type: default\n" + extra)
        cfg.write_text(text)
        report = Engine().run(cfg)
        assert report.ok, [p.render() for p in report.problems]
        out = root / "model_output"
        with np.load(src / "heldout.npz") as z:
            images = z["images"]
        fl = ort.InferenceSession(str(out / "digits_original_float_model.onnx"), providers=["CPUExecutionProvider"])
        bc = ort.InferenceSession(str(out / "digits_quantized_model.bc"), session_options(2),
                                  providers=["CPUExecutionProvider"])
        same = total = 0
        for img in images.reshape(-1, 1, 1, 32, 32).astype(np.float32):
            a = fl.run(None, {"input": img})[0].argmax()
            b = bc.run(None, {"input": to_runtime(img, "gray", "gray", "NCHW", "regular", None)})[0].argmax()
            same, total = same + int(a == b), total + 1
        return {"top-1 agree": same / total, "images": total}


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort

    from tests.support.ppocr import ppocr_models, why_missing

    ort.set_default_logger_severity(3)
    args = list(sys.argv[1:] if argv is None else argv)
    extra = ""
    if "--target" in args:
        i = args.index("--target")
        extra += f"  target_output_cosine: {args[i + 1]}\n"
        del args[i:i + 2]
    if "--samples" in args:  # accuracy_samples: what mixed precision judges its moves on
        i = args.index("--samples")
        extra += f"  accuracy_samples: {args[i + 1]}\n"
        del args[i:i + 2]
    if "--bias" in args:
        args.remove("--bias")
        extra += "  optimization: bias_correction\n"
    peers_wanted = "--no-peers" not in args  # ours only: a rec run in ~1 min instead of ~2
    if not peers_wanted:
        args.remove("--no-peers")
    held_count = dict(HELD)
    if "--held" in args:  # more held-out samples: rec's CER over 64 lines (~730 characters) moves ±0.007
        i = args.index("--held")
        held_count = dict.fromkeys(HELD, int(args[i + 1]))
        del args[i:i + 2]
    wanted = [a for a in args if a in ("det", "rec", "cls", "digits")] or ["det", "rec", "cls", "digits"]
    models = ppocr_models()
    rows, details = [], {}
    for name in [w for w in wanted if w != "digits"]:
        if not models:
            print(f"bench_accuracy {name}: skipped ({why_missing()})")
            continue
        held = [sample(name, i, seed=1) for i in range(held_count[name])]
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_ours(name, models[name], Path(tmp) / "ours", held, extra)
            peers = {} if not peers_wanted else {m: run_ort(name, models[name], Path(tmp), held, m)
                     for m in (("MinMax",) if name == "det" else ("MinMax", "Entropy", "Percentile"))}
        details[name] = {"ours": ours, "ort": peers}
        key = {"det": "IoU", "rec": "CER", "cls": "agree"}[name]
        for who, m in [("hbcompile .bc", ours), ("hbcompile ptq", ours["ptq"]),
                       *((f"ORT {k}", v) for k, v in peers.items())]:
            rows.append((name, who, f"{m['cosine']:.4f}", f"{m['min cosine']:.4f}", f"{key} {m[key]:.4f}",
                         f"{m.get('moved', '-')}/{m.get('nodes', '-')}", f"{m['seconds']:.0f}" if "seconds" in m else "-",
                         f"{m['bc ms']:.1f} / {m['hbm ms']:.1f} / {m['float ms']:.1f}" if "hbm ms" in m else "-",
                         {True: "yes", False: "NO"}.get(m.get("bc == hbm bits"), "-")))
    if "digits" in wanted:
        d = run_digits(extra)
        details["digits"] = d
        rows.append(("digits", "hbcompile .bc", "-", "-", f"top-1 agree {d['top-1 agree']:.4f}", "-", "-", "-", "-"))
    print_table(f"accuracy on held-out samples vs the float model ({extra.strip() or 'defaults'})", rows,
                ("model", "who", "cosine", "min cos", "task metric", "moved/nodes", "build s", "bc / hbm / float ms",
                 ".bc == .hbm"))
    for name, d in details.items():
        if name != "digits":
            print(f"{name} calibrate stage: {d['ours']['calibrate s']:.1f} s wall, {d['ours']['calibrate cpu s']:.1f} CPU s; "
                  f"mixed precision on the accuracy samples: {json.dumps(d['ours']['mixed'])}")
        if name != "digits" and "float cpu ms" in d["ours"]:
            print(f"{name} CPU ms (fastest round, 2 threads): " + ", ".join(
                f"{k} {d['ours'][f'{k} cpu ms']:.1f}" for k in ("bc", "hbm", "float") if f"{k} cpu ms" in d["ours"]))
        if name != "digits" and d["ours"]["node_info"]:
            print(f"{name} mixed precision node_info: {json.dumps(d['ours']['node_info'])}")


if __name__ == "__main__":
    main()
