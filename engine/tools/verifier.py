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
Without ``-i``, seeded random inputs (``--seed``). Outputs whose Dequantize was removed are
dequantized before a cosine comparison. Bad input is one ``ERROR`` line and exit 2.
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
    train = a if a.view == "train" else b
    specs = {s.name: s for s in train.inputs}
    return {name: (_train_sample(specs[name], rng) if name in specs else
                   _train_sample(next(s for s in a.inputs if s.name == name), rng)) for name in names}


def _dequantized(spec, value: np.ndarray) -> np.ndarray:
    q = spec.quantization
    if not q or value.dtype.kind == "f":
        return value
    scale = np.asarray(q["scale"], dtype=np.float32)
    zp = np.asarray(q.get("zero_point", 0), dtype=np.float32)
    if scale.ndim and "axis" in q:
        shape = [1] * value.ndim
        shape[q["axis"] % value.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (value.astype(np.float32) - zp) * scale


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


def verify(paths: Sequence[str], inputs: Sequence[str] | None = None, seed: int = 0,
           digits: int = 6) -> tuple[int, list[str]]:
    """(exit code, lines to print)."""
    from engine.runtime.model import load

    if len(paths) != 2:
        raise VerifierInputError(error("verifier-models", f"-m takes two models separated by a comma, got "
                                                          f"{len(paths)}: {','.join(paths)}"))
    a, b = load(paths[0]), load(paths[1])
    arrays = load_arrays(inputs) if inputs else None
    named = shared_inputs(a, b, arrays, seed)
    out_a, out_b = a.run(feeds_for(a, named)), b.run(feeds_for(b, named))
    pairs = _pairs(a, b)
    consistency = a.format in CONSISTENCY_FORMATS and b.format in CONSISTENCY_FORMATS
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
    return EXIT_OK, lines


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
