"""Load any artefact (`.onnx`, `.bc`, `.hbm`) and run it on runtime-format inputs.

    model = engine.runtime.load("model_output/tiny.hbm")
    model.inputs[0].describe()     # "NV12 frames, uint8 (1, 12, 8) = (N, H*3/2, W)"
    out = model.run({"data": rgb_to_nv12(img)[None]})

The `.bc` and `.hbm` take the runtime view (what the device feeds: NV12 bytes as
``(N, H*3/2, W)`` uint8, uint8 images in their runtime layout, float featuremaps) and convert
inside; a float `.onnx` takes its graph inputs as they are (the train view). Inputs are checked
before onnxruntime sees them: a missing or unknown name, a wrong dtype or shape is an
`InputDataError` saying what was expected and what was given. Two conveniences, both stated in
the messages: float64 / float16 arrays are cast to float32 for float inputs, and an NV12 input
accepts a camera buffer with the right number of bytes per frame ``(N, H*W*3/2)``.

Sessions use `engine.runtime.session`'s fixed, deterministic options, so the `.bc` and the `.hbm`
run the same kernels the same way (hb_verifier's consistency mode compares them bit for bit).
`threads` is a budget: an `.hbm` built with a thread plan (`engine.runtime.threads`) uses the
threads its plan gives for that budget (`LoadedModel.threads`; 1 for a program of small kernels
that a second thread only slows down), any other model the whole budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from engine.problems import HbError, ModelError, error
from engine.runtime.feeds import random_array, to_runtime
from engine.runtime.session import open_session
from engine.runtime.threads import ThreadPlan, plan_of

FORMATS = {".onnx": "onnx", ".bc": "bc", ".hbm": "hbm"}


class InputDataError(HbError):
    """The data given to `LoadedModel.run` does not fit the model's inputs."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the runtime sees it (JSON form: `engine.compile.program.io_specs`)."""

    name: str
    shape: tuple[int | str | None, ...] | None
    dtype: str
    kind: str = ""  # what the tensor holds: nv12 / rgb / bgr / yuv444 / gray / featuremap; "" unknown
    layout: str | None = None
    quantization: dict | None = None  # the tensor holds integer codes: value = (code − zero_point) · scale
    info: dict = field(default_factory=dict, compare=False, repr=False)  # everything stored about it

    @classmethod
    def from_json(cls, spec: Mapping[str, Any], view: str = "runtime") -> TensorSpec:
        shape = spec.get("shape")
        kind = spec.get("input_type_rt" if view == "runtime" else "input_type_train") or ""
        layout = spec.get("input_layout_rt" if view == "runtime" else "input_layout_train")
        return cls(str(spec["name"]), tuple(shape) if shape is not None else None, str(spec.get("dtype", "")),
                   kind, layout, spec.get("quantization"), dict(spec))

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        if self.shape is None or not all(isinstance(d, int) and d > 0 for d in self.shape):
            return None
        return tuple(int(d) for d in self.shape)

    def describe(self) -> str:
        shape = "(" + ", ".join(str(d) if d is not None else "?" for d in self.shape) + ")" if self.shape else "(?)"
        if self.kind in ("nv12", "yuv420sp_bt601_video"):
            return f"NV12 frames, {self.dtype} {shape} = (N, H*3/2, W)"
        what = {"featuremap": "featuremap", "gray": "gray image"}.get(self.kind, f"{self.kind} image"
                                                                        if self.kind else "tensor")
        lay = f" {self.layout}" if self.layout and self.kind and self.kind != "featuremap" else ""
        codes = " (integer codes, see quantization)" if self.quantization else ""
        return f"{what}{lay}, {self.dtype} {shape}{codes}"

    def to_json(self) -> dict[str, Any]:
        return {**self.info, "name": self.name, "shape": list(self.shape) if self.shape is not None else None,
                "dtype": self.dtype}


class LoadedModel:
    """A model ready to run: `inputs` / `outputs` specs and `run(inputs) -> outputs`."""

    def __init__(self, path: Path | None, fmt: str, program: onnx.ModelProto, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], manifest: Mapping[str, Any] | None = None, threads: int = 1,
                 program_bytes: bytes | None = None):
        self.path, self.format, self.program = path, fmt, program
        self.inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self.manifest: dict[str, Any] = dict(manifest or {})
        self.view = "train" if fmt == "onnx" else "runtime"
        self.thread_budget = max(1, int(threads))
        self.thread_plan: ThreadPlan | None = plan_of(self.manifest)  # an .hbm's: the threads it uses of a budget
        self.threads = self.thread_plan.threads_for(self.thread_budget) if self.thread_plan else self.thread_budget
        self._session = open_session(program_bytes or program.SerializeToString(), self.threads,
                                     f"'{path}'" if path else "the model", as_written=fmt == "onnx")

    @property
    def session(self) -> Any:
        """The onnxruntime session `run` uses (for timing it without the input checks)."""
        return self._session

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def spec(self, name: str) -> TensorSpec:
        for s in (*self.inputs, *self.outputs):
            if s.name == name:
                return s
        raise KeyError(name)

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded inputs of the right shape and dtype (uniform bytes for uint8, normal floats)."""
        rng = np.random.default_rng(seed)
        return {s.name: random_array(s.shape or (), s.dtype, rng) for s in self.inputs}

    def from_train_view(self, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Train-view samples (e.g. calibration samples) converted to what this model takes."""
        if self.view == "train":
            return dict(samples)
        return {s.name: to_runtime(samples[s.name], s.info) for s in self.inputs if s.name in samples}

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs as onnxruntime will get them, or an `InputDataError` naming every problem."""
        problems = []
        names = self.input_names
        for extra in [k for k in inputs if k not in names]:
            problems.append(error("input-unknown", f"The model has no input named '{extra}'; its inputs are: "
                                                   f"{', '.join(names)}"))
        feeds: dict[str, np.ndarray] = {}
        for s in self.inputs:
            if s.name not in inputs:
                problems.append(error("input-missing", f"Input '{s.name}' is missing: expected {s.describe()}"))
                continue
            value, problem = _fit(s, inputs[s.name])
            if problem:
                problems.append(error("input-data", problem))
            else:
                feeds[s.name] = value
        if problems:
            raise InputDataError(problems)
        return feeds

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        feeds = self.check_inputs(inputs)
        names = list(outputs) if outputs is not None else self.output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise InputDataError(error("output-unknown", f"The model has no output named '{unknown[0]}'; its outputs "
                                                         f"are: {', '.join(self.output_names)}"))
        try:
            values = self._session.run(names, feeds)
        except Exception as e:  # onnxruntime's own exception types
            text = str(e).strip().splitlines()
            raise ModelError(error("model-run", f"Running {self.path or 'the model'} failed: "
                                                f"{text[0] if text else type(e).__name__}")) from None
        return dict(zip(names, values))


def _fit(spec: TensorSpec, value: Any) -> tuple[np.ndarray | None, str]:
    """`value` as `spec` wants it, or why it cannot be."""
    x = np.asarray(value)
    want = np.dtype(spec.dtype) if spec.dtype not in ("", "unknown") else None
    if want is not None and x.dtype != want:
        if want.kind == "f" and x.dtype.kind == "f":
            x = x.astype(want)
        else:
            hint = ""
            if spec.kind in ("nv12", "yuv420sp_bt601_video"):
                hint = " (make NV12 frames with engine.runtime.rgb_to_nv12 / bgr_to_nv12)"
            elif want.kind in "iu" and spec.kind in ("", "featuremap"):  # a removed Quantize: the codes it made
                hint = f" (integer codes as {want.name})"
            elif want == np.uint8:
                hint = " (pixels 0-255 as uint8)"
            return None, (f"Input '{spec.name}' expects {spec.describe()}; got dtype {x.dtype}{hint}")
    shape = spec.static_shape
    if shape is None:
        return x, ""
    if x.shape == shape:
        return x, ""
    if spec.kind in ("nv12", "yuv420sp_bt601_video") and x.size == math.prod(shape) and x.ndim <= 2 \
            and (x.ndim < 2 or x.shape[0] == shape[0]):
        return x.reshape(shape), ""  # a camera buffer with the frame's bytes, flat per frame
    if spec.kind in ("nv12", "yuv420sp_bt601_video") and len(shape) > 1 and shape[0] == 1 and x.shape == shape[1:]:
        return x.reshape(shape), ""  # one frame as rgb_to_nv12 / OpenCV make it: (H*3/2, W), no batch axis
    fixed = [d if isinstance(d, int) and d > 0 else None for d in (spec.shape or ())]
    if len(fixed) == x.ndim and all(d is None or d == g for d, g in zip(fixed, x.shape)):
        return x, ""
    return None, f"Input '{spec.name}' expects {spec.describe()}; got shape {tuple(x.shape)}"


# ----------------------------------------------------------------------------------------- load

def load(path: str | Path, threads: int = 1) -> LoadedModel:
    """Open an `.onnx`, `.bc` or `.hbm` (by content for `.hbm`, by suffix otherwise) with a budget
    of `threads` onnxruntime threads (an `.hbm` may use fewer: its thread plan)."""
    from engine.compile.hbm import is_hbm, read_hbm
    from engine.compile.program import io_specs

    path = Path(path)
    if not path.is_file():
        raise ModelError(error("model-missing", f"Can not find model file: '{path}'"))
    if is_hbm(path) or path.suffix == ".hbm":
        hbm = read_hbm(path)
        program = hbm.model()
        manifest = hbm.manifest
        inputs = [TensorSpec.from_json(s) for s in manifest.get("inputs", [])]
        outputs = [TensorSpec.from_json(s) for s in manifest.get("outputs", [])]
        if not inputs:
            ins, outs = io_specs(program)
            inputs, outputs = [TensorSpec.from_json(s) for s in ins], [TensorSpec.from_json(s) for s in outs]
        return LoadedModel(path, "hbm", program, inputs, outputs, manifest, threads, hbm.program)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ModelError(error("model-format", f"Unsupported model file '{path}': expected a .onnx, .bc or .hbm file"))
    try:
        program = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError …
        raise ModelError(error("model-invalid", f"'{path}' is not a valid ONNX/.bc model: "
                                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")) from None
    view = "train" if fmt == "onnx" else "runtime"
    ins, outs = io_specs(program, view)
    return LoadedModel(path, fmt, program, [TensorSpec.from_json(s, view) for s in ins],
                       [TensorSpec.from_json(s, view) for s in outs], None, threads)
