"""`hb_verifier -m A,B [-i in.npy[,in2.npy]]`: run two models on the same input and compare their outputs.

Modes (chosen by the files):
- **consistency** — both are integer programs (`.bc` / `.hbm`): every output must be equal bit
  for bit (same dtype, shape and bytes); exit 1 otherwise, naming the first differing output and
  how many values differ.
- **cosine** — anything else (e.g. the float `.onnx` against the `.bc`): per output, cosine
  similarity and the L1 / L2 / Chebyshev distances hb_mapper prints; exit 0.

Inputs: ``-i`` gives one `.npy` per input (``allow_pickle=False``), in the first model's input
order. An array that fits a model's input is fed as it is; a train-view sample (e.g. a calibration
sample) is converted to the runtime view a `.bc` / `.hbm` takes (NV12 etc., `engine.runtime.feeds`).
Without ``-i``, seeded random inputs (``--seed``). A plain float model (an `.onnx` without hbcompile's
input spec: the user's own model, trained on normalized input) compared with a model that normalizes
inside (mean_value / scale_value / std_value) gets the train-view sample normalized in numpy as the
other does, and a note says so; an array it cannot be given so is an error, or a WARNING that the
inputs differ when the float model takes it as it is. Outputs whose Dequantize was removed are
dequantized before a cosine comparison, and float values given to an input whose Quantize was
removed are quantized as that node did. Two integer programs with different boundary nodes removed
(a `_quantized_model.bc` and the `.hbm` of a `remove_node_type` run) are no consistency pair: the
error names the `_quantized_removed_model.bc` to compare with. Bad input is one ``ERROR`` line and
exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from engine.problems import HbError, error
from engine.similarity import distances

CONSISTENCY_FORMATS = {"bc", "hbm"}
EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2


class VerifierInputError(HbError):
    """The command line or the input files do not fit the models."""


def load_arrays(paths: Sequence[str]) -> list[np.ndarray]:
    arrays = []
    for p in paths:
        try:
            arrays.append(np.load(p, allow_pickle=False))
        except FileNotFoundError:
            raise VerifierInputError(error("verifier-input", f"Can not find input file: '{p}'")) from None
        except (ValueError, OSError) as e:
            raise VerifierInputError(error("verifier-input", f"'{p}' is not a readable .npy array ({e})")) from None
    return arrays


def _fits(spec, x: np.ndarray) -> bool:
    want = spec.static_shape
    return (want is None or tuple(x.shape) == want) and (np.dtype(spec.dtype) == x.dtype or
                                                         (np.dtype(spec.dtype).kind == "f" and x.dtype.kind == "f"))


def feeds_for(model, named: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`named` arrays as `model` takes them: as they are, or train view → runtime view."""
    from engine.runtime.feeds import to_runtime

    out = {}
    for spec in model.inputs:
        if spec.name not in named:
            raise VerifierInputError(error("verifier-input", f"No input given for '{spec.name}' of {model.path}"))
        x = np.asarray(named[spec.name])
        train_shape = spec.info.get("train_shape")
        if _fits(spec, x) or model.view == "train":
            out[spec.name] = x
        elif _takes_codes(spec):
            out[spec.name] = _quantized(spec, x, model)
        elif train_shape and list(x.shape) == list(train_shape):
            out[spec.name] = to_runtime(x, spec.info)
        else:
            also = (f", or a train-view {spec.info.get('input_type_train')} sample of shape {tuple(train_shape)}"
                    if train_shape else "")
            raise VerifierInputError(error("verifier-input", f"Input '{spec.name}' of {model.path.name} expects "
                                                             f"{spec.describe()}{also}; got {x.dtype} "
                                                             f"{tuple(x.shape)}"))
    return out


def _train_sample(spec, rng: np.random.Generator) -> np.ndarray:
    """A random train-view sample for an input: pixels 0–255 for images, normal floats for featuremaps."""
    kind = spec.info.get("input_type_train") or "featuremap"
    shape = spec.info.get("train_shape") or spec.shape
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    if kind == "featuremap":
        return rng.standard_normal(dims).astype(np.float32)
    return rng.integers(0, 256, dims).astype(np.float32)


def shared_inputs(a, b, arrays: Sequence[np.ndarray] | None, seed: int) -> dict[str, np.ndarray]:
    """One array per input name of model `a`: from `-i`, or random (runtime view when both take it)."""
    names = a.input_names
    if arrays is not None:
        if len(arrays) != len(names):
            raise VerifierInputError(error("verifier-input", f"{len(arrays)} input file(s) given, {a.path} has "
                                                             f"{len(names)} input(s): {', '.join(names)}"))
        return dict(zip(names, arrays))
    same = a.view == b.view and [(s.name, s.shape, s.dtype) for s in a.inputs] == \
        [(s.name, s.shape, s.dtype) for s in b.inputs]
    if same:
        return a.random_inputs(seed)
    rng = np.random.default_rng(seed)
    specs: dict[str, object] = {}  # per input, the spec that knows its train view (hbcompile's input spec first)
    for model in sorted((a, b), key=lambda m: m.view != "train"):
        for spec in model.inputs:
            if spec.name not in specs or (spec.info.get("input_type_train") and
                                          not specs[spec.name].info.get("input_type_train")):
                specs[spec.name] = spec
    return {name: _train_sample(specs[name], rng) for name in names}


# ------------------------------------------------------------------ a plain float model beside one that normalizes

def _is_plain(model) -> bool:
    """The user's own float model: an `.onnx` without hbcompile's input spec, fed its inputs as they are."""
    return model.format == "onnx" and not any(s.info.get("input_type_train") for s in model.inputs)


def _normalizes_inside(model, input_name: str) -> bool:
    """`model` already holds hbcompile's inserted normalization for the input (HZ_PREPROCESS_FOR_<input>)."""
    from engine.preprocess.normalization import preprocess_prefix

    prefix = preprocess_prefix(input_name)
    return any(n.name == prefix or n.name.startswith(prefix + "_") for n in model.program.graph.node)


def _norm_text(info: Mapping) -> str:
    parts = [f"{k} {' '.join(f'{v:g}' for v in np.atleast_1d(info[k]))}" for k in ("mean_value", "scale_value",
                                                                                    "std_value")
             if info.get(k) is not None]
    return ", ".join(parts)


def feeds_for_plain(plain, other, named: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """What a plain float model takes when compared with `other`, which normalizes inside (mean_value /
    scale_value / std_value of its input spec, reference §5): the train-view sample normalized in numpy
    as `other` does. Returns the arrays and the lines that say so; an input that cannot be matched (a
    runtime-view array such as an NV12 frame) is fed as it is, with a WARNING that the inputs differ."""
    from engine.preprocess.normalization import Normalization, broadcast_shape
    from engine.problems import ConfigError

    out, notes = dict(named), []
    theirs = {s.name: s for s in other.inputs}
    for spec in plain.inputs:
        ref = theirs.get(spec.name)
        if spec.name not in named or ref is None or not ref.info.get("input_type_train") \
                or _normalizes_inside(plain, spec.name):
            continue
        info = ref.info
        if all(info.get(k) is None for k in ("mean_value", "scale_value", "std_value")):
            continue
        x = np.asarray(named[spec.name])
        train_shape = tuple(info.get("train_shape") or ())
        layout = info.get("input_layout_train")
        channels = x.shape[-1 if layout == "NHWC" else 1] if x.ndim >= 2 else 1
        wanted = f"a train-view {info.get('input_type_train')} sample of shape {train_shape}"
        try:
            if tuple(x.shape) != train_shape:
                raise ValueError
            norm = Normalization.from_values(info.get("mean_value"), info.get("scale_value"), info.get("std_value"),
                                             channels)
        except (ValueError, ConfigError):
            if not _fits(spec, x):  # e.g. an NV12 frame: the float model cannot take it at all
                raise VerifierInputError(error("verifier-input", (
                    f"Input '{spec.name}' is given as {x.dtype} {tuple(x.shape)}, which {plain.path.name} (a float "
                    f"model without hbcompile's input spec, {spec.describe()}) cannot take: give {wanted}; "
                    f"hb_verifier normalizes it for {plain.path.name} as {other.path.name} does inside "
                    f"({_norm_text(info)})"))) from None
            notes.append(f"WARNING {plain.path.name} has no hbcompile input spec and its input '{spec.name}' is not "
                         f"given as {wanted} (got {x.dtype} {tuple(x.shape)}), so it is not normalized as "
                         f"{other.path.name} does inside ({_norm_text(info)}): the two models read different "
                         "inputs and the cosine above may compare nothing; give a train-view sample with -i")
            continue
        shape = broadcast_shape(layout, x.ndim, channels)
        mean, mult = norm.mean_or_zero(channels).reshape(shape), norm.multiplier(channels).reshape(shape)
        out[spec.name] = ((x.astype(np.float64) - mean) * mult).astype(np.float32)
        notes.append(f"note: {plain.path.name} has no hbcompile input spec: its input '{spec.name}' is the sample "
                     f"normalized as {other.path.name} does inside ({_norm_text(info)})")
    return out, notes


def _scale_and_zero_point(q: Mapping, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(q["scale"], dtype=np.float32)
    zp = np.asarray(q.get("zero_point", 0), dtype=np.float32)
    if scale.ndim and "axis" in q:
        shape = [1] * ndim
        shape[q["axis"] % ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def _dequantized(spec, value: np.ndarray) -> np.ndarray:
    """An output as the model computed it before its tail nodes were removed: codes dequantized (the
    recorded axis is the current tensor's), then each removed Transpose applied again, innermost first
    (a removed `Dequantize; Transpose` tail compared the pre-transpose values in the wrong order)."""
    q = spec.quantization
    if q and value.dtype.kind != "f":
        scale, zp = _scale_and_zero_point(q, value.ndim)
        value = (value.astype(np.float32) - zp) * scale
    for r in reversed(spec.info.get("removed_nodes") or []):
        perm = (r.get("params") or {}).get("perm") if isinstance(r, dict) and r.get("op_type") == "Transpose" else None
        if perm and len(perm) == value.ndim:
            value = np.transpose(value, [int(p) for p in perm])
    return value


def _takes_codes(spec) -> bool:
    """An input whose Quantize was removed: it takes the integer codes that node made."""
    return bool(spec.quantization) and np.dtype(spec.dtype).kind in "iu"


def _quantized(spec, x: np.ndarray, model) -> np.ndarray:
    """Float values → the codes an input whose Quantize was removed takes, computed as that
    QuantizeLinear did (x / scale rounded half to even, plus the zero point, saturated)."""
    want = spec.static_shape or tuple(spec.info.get("train_shape") or ())
    if x.dtype.kind != "f" or (want and tuple(x.shape) != tuple(want)):
        q = spec.quantization
        raise VerifierInputError(error("verifier-input", (
            f"Input '{spec.name}' of {model.path.name} expects {spec.describe()}; got {x.dtype} {tuple(x.shape)}: "
            f"give the codes as {spec.dtype}, or float values (quantized with scale {q['scale']} and zero point "
            f"{q.get('zero_point', 0)}, as the removed QuantizeLinear did)")))
    scale, zp = _scale_and_zero_point(spec.quantization, x.ndim)
    limits = np.iinfo(np.dtype(spec.dtype))
    codes = np.rint(x.astype(np.float32) / scale) + zp
    return np.clip(codes, limits.min, limits.max).astype(spec.dtype)


def _differing(x: np.ndarray, y: np.ndarray) -> int:
    """How many elements differ in any bit (NaN payloads and signed zeros included)."""
    if x.size == 0:
        return 0
    xb = np.ascontiguousarray(x).reshape(-1).view(np.uint8).reshape(x.size, x.itemsize)
    yb = np.ascontiguousarray(y).reshape(-1).view(np.uint8).reshape(y.size, y.itemsize)
    return int(np.count_nonzero(np.any(xb != yb, axis=1)))


def _pairs(a, b) -> list[tuple[str, str]]:
    names_a, names_b = a.output_names, b.output_names
    if set(names_a) == set(names_b):
        return [(n, n) for n in names_a]
    if len(names_a) != len(names_b):
        raise VerifierInputError(error("verifier-outputs", f"{a.path} has {len(names_a)} outputs, {b.path} has "
                                                           f"{len(names_b)}: they cannot be compared"))
    return list(zip(names_a, names_b))


def _removed(model) -> list[tuple[str, str, str, str]]:
    """The boundary nodes removed from `model` (remove_node_type / remove_node_name), as its specs
    record them: (op type, node name, input or output, tensor)."""
    return [(str(r.get("op_type")), str(r.get("name")), str(r.get("position")), str(r.get("tensor")))
            for spec in (*model.inputs, *model.outputs) for r in spec.info.get("removed_nodes") or ()
            if isinstance(r, dict)]


def _check_same_removals(a, b) -> None:
    """A program with boundary nodes removed takes or gives integer codes where the other has floats:
    not a pair to compare bit for bit. Say which nodes, and which file is the right pair."""
    ra, rb = _removed(a), _removed(b)
    if set(ra) == set(rb):
        return
    (more, removed_more), (less, removed_less) = ((b, rb), (a, ra)) if set(rb) - set(ra) else ((a, ra), (b, rb))
    extra = [r for r in removed_more if r not in set(removed_less)]
    nodes = ", ".join(f"{op} '{name}' at {position} '{tensor}'" for op, name, position, tensor in extra)
    text = (f"{more.path.name} has nodes removed that {less.path.name} has not ({nodes}; remove_node_type / "
            f"remove_node_name): their inputs or outputs differ, so they are not a consistency pair")
    twin = _removed_twin(more, less)
    if twin is not None:
        pair = f"{twin},{more.path}" if more.format == "hbm" else f"{more.path},{twin}"
        text += f"; compare {more.path.name} with {twin.name}, which has the same nodes removed: hb_verifier -m {pair}"
    elif more.format == "hbm":
        text += (f"; compare it with the {more.path.stem}_quantized_removed_model.bc its run wrote (the .hbm is "
                 "built from it)")
    raise VerifierInputError(error("verifier-models", text))


def _removed_twin(more, less) -> Path | None:
    """The `{prefix}_quantized_removed_model.bc` next to the files: what the .hbm of a run with
    removed nodes is built from, so the .bc it must equal bit for bit."""
    names = []
    if less.path.name.endswith("_quantized_model.bc"):
        names.append(less.path.with_name(less.path.name[:-len("_quantized_model.bc")] + "_quantized_removed_model.bc"))
    if more.format == "hbm":
        names.append(more.path.with_name(f"{more.path.stem}_quantized_removed_model.bc"))
    return next((p for p in names if p.is_file() and p != more.path), None)


def verify(paths: Sequence[str], inputs: Sequence[str] | None = None, seed: int = 0,
           digits: int = 6) -> tuple[int, list[str]]:
    """(exit code, lines to print)."""
    from engine.runtime.model import load

    if len(paths) != 2:
        raise VerifierInputError(error("verifier-models", f"-m takes two models separated by a comma, got "
                                                          f"{len(paths)}: {','.join(paths)}"))
    a, b = load(paths[0]), load(paths[1])
    consistency = a.format in CONSISTENCY_FORMATS and b.format in CONSISTENCY_FORMATS
    if consistency:
        _check_same_removals(a, b)
    arrays = load_arrays(inputs) if inputs else None
    named = shared_inputs(a, b, arrays, seed)
    named_a, named_b, notes = named, named, []
    if _is_plain(a) and not _is_plain(b):
        named_a, notes = feeds_for_plain(a, b, named)
    elif _is_plain(b) and not _is_plain(a):
        named_b, notes = feeds_for_plain(b, a, named)
    out_a, out_b = a.run(feeds_for(a, named_a)), b.run(feeds_for(b, named_b))
    pairs = _pairs(a, b)
    lines = [f"mode: {'consistency' if consistency else 'cosine'} ({Path(paths[0]).name} vs {Path(paths[1]).name}, "
             f"{'given' if arrays is not None else f'random (seed {seed})'} input)"]
    if consistency:
        lines.append(f"{'Output':<24} {'Result':<10} {'Different values':>16}  Max abs difference")
        code = EXIT_OK
        for na, nb in pairs:
            x, y = out_a[na], out_b[nb]
            if x.dtype != y.dtype or x.shape != y.shape:
                lines.append(f"{na:<24} {'MISMATCH':<10} {'-':>16}  {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
                code = EXIT_MISMATCH
                continue
            differing = _differing(x, y)
            worst = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if differing else 0.0
            lines.append(f"{na:<24} {'OK' if not differing else 'MISMATCH':<10} {differing:>16}  {worst:.{digits}g}")
            if differing:
                code = EXIT_MISMATCH
        lines.append("consistency check passed: outputs are bit-identical" if code == EXIT_OK else
                     "consistency check FAILED: the models' outputs differ")
        return code, lines
    lines.append(f"{'Output':<24} {'Cosine Similarity':>18} {'L1 Distance':>14} {'L2 Distance':>14} "
                 f"{'Chebyshev Distance':>19}")
    for na, nb in pairs:
        x, y = _dequantized(a.spec(na), out_a[na]), _dequantized(b.spec(nb), out_b[nb])
        try:
            row = distances(x, y, na)
        except ValueError as e:
            raise VerifierInputError(error("verifier-outputs", str(e))) from None
        lines.append(f"{na:<24} {row.cosine:>18.{digits}f} {row.l1:>14.{digits}f} {row.l2:>14.{digits}f} "
                     f"{row.chebyshev:>19.{digits}f}")
    return EXIT_OK, lines + notes


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hb_verifier", description="Compare two models' outputs on the same input "
                                     "(cosine mode), or check a .bc and a .hbm agree bit for bit (consistency mode).")
    parser.add_argument("-m", "--model", required=True, help="two models separated by a comma: a.onnx,b.bc")
    parser.add_argument("-i", "--input", help="one .npy per input, separated by commas (random if absent)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    parser.add_argument("-c", "--digits", type=int, default=6, help="decimals printed (default 6)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        code, lines = verify([p for p in args.model.split(",") if p], args.input.split(",") if args.input else None,
                             args.seed, args.digits)
    except HbError as exc:
        for p in exc.problems:
            print(f"ERROR {p.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK
    for line in lines:
        print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
