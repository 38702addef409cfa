"""The accuracy steps' result kept by what it is computed from (issue #8).

`engine.accuracy.improve` (data checks, int16 thresholds, bias corrections applied, sensitivity,
mixed precision: ~18 CPU s on PP-OCRv4 det) is a pure function of its inputs, but the calibrate
stage re-runs whenever any calibration file changes — also when the statistics and thresholds come
out identical (a file re-saved with the same values, a sample past the accuracy samples that moves
no threshold). `AccuracyMemo` files the result under a key made of exactly what `improve` reads:

- the optimized model (its bytes) and the input specs the data checks read;
- the thresholds in (`Calibration`: thresholds, node_info, bias corrections) and the bias
  corrections passed;
- of the merged statistics, the fields the steps read (`MERGED_FIELDS`: widen_int16, the local
  noise of the sensitivity ranking and the int16 thresholds of mixed precision);
- the accuracy samples' values (`sessions.sample_key`: a file re-saved in other bytes with the
  same values is the same sample);
- QuantOptions, AccuracySettings, and the implementation (`accuracy_version`: the source of the
  modules `improve` runs, and the onnx / onnxruntime / numpy versions).

The result is stored as JSON (no pickle), written by `result_to_json` and read back by
`result_from_json` exactly: floats by their shortest repr (JSON round-trips them bit for bit),
arrays and numpy scalars with their dtype, tuples as tuples, dataclasses field by field (only the
classes of `RESULT_CLASSES` are rebuilt: a memo file cannot name code to run). A file that cannot
be read or rebuilt is a miss: the steps run again.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from engine.accuracy import AccuracyResult, AccuracySettings
from engine.accuracy.checks import DataCheck
from engine.accuracy.mixed import MixedPrecision, Move, Searched
from engine.accuracy.sensitivity import NodeSensitivity, Sensitivity
from engine.accuracy.sessions import sample_key, update_array
from engine.calibration.stats import MergedStats
from engine.quantize.planner import Calibration, OffsetAct, QuantOptions
from engine.quantize.types import ActQuant

log = logging.getLogger("hbcompile")
MEMO_VERSION = 1  # of the file format and the key's layout
# the fields of MergedStats the accuracy steps read (tests/unit/accuracy/test_memo_roundtrip.py checks
# that improve reads no other): a change elsewhere (min / max / count / which sample held the max)
# moves no result
MERGED_FIELDS = ("absmax", "hist", "channel_absmax")
# besides every module of engine.accuracy: what improve runs (plans, ptq / switchable models, sessions)
IMPLEMENTATION_MODULES = ("engine.quantize.planner", "engine.quantize.types", "engine.quantize.registry",
                          "engine.quantize.luts", "engine.quantize.calibrated", "engine.quantize.ptq",
                          "engine.quantize.search", "engine.passes.graph", "engine.passes.groups",
                          "engine.similarity", "engine.runtime.session", "engine.calibration.observer")
RESULT_CLASSES: tuple[type, ...] = (AccuracyResult, DataCheck, Sensitivity, NodeSensitivity, MixedPrecision, Move,
                                    ActQuant, OffsetAct)
KEEP_PER_OWNER = 8  # results kept per optimized model (the latest used): one per threshold set tried


# ------------------------------------------------------------------------------ serialization
def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_CLASSES = {_class_name(c): c for c in RESULT_CLASSES}


class _Encoder:
    """Values → JSON values, exactly; a dataclass or Calibration met twice is written once (`$ref`)."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        self.kept: list[Any] = []  # keeps encoded objects alive so their ids stay unique

    def __call__(self, v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int) and type(v) is int:
            return v
        if type(v) is float:
            return v
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                raise TypeError("an object array cannot be memoised")
            return {"$array": v.dtype.str, "shape": list(v.shape),
                    "data": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode()}
        if isinstance(v, np.generic):
            return {"$scalar": np.dtype(type(v)).str, "value": v.item()}
        if isinstance(v, tuple):
            return {"$tuple": [self(x) for x in v]}
        if isinstance(v, list):
            return [self(x) for x in v]
        if isinstance(v, (set, frozenset)):
            items = sorted((self(x) for x in v), key=lambda e: json.dumps(e, sort_keys=True))
            return {"$frozenset" if isinstance(v, frozenset) else "$set": items}
        if isinstance(v, Calibration) or (dataclasses.is_dataclass(v) and not isinstance(v, type)):
            if id(v) in self.seen:
                return {"$ref": self.seen[id(v)]}
            self.seen[id(v)] = len(self.seen)
            self.kept.append(v)
            if isinstance(v, Calibration):
                return {"$calibration": self({**v}), "attrs": self(dict(vars(v)))}
            return {"$dataclass": _class_name(type(v)),
                    "fields": {f.name: self(getattr(v, f.name)) for f in dataclasses.fields(v)}}
        if isinstance(v, Mapping):
            if all(type(k) is str and not k.startswith("$") for k in v):
                return {k: self(x) for k, x in v.items()}
            return {"$dict": [[self(k), self(x)] for k, x in v.items()]}
        raise TypeError(f"cannot memoise a {type(v).__name__}")


class _Decoder:
    def __init__(self) -> None:
        self.refs: list[Any] = []

    def __call__(self, e: Any) -> Any:
        if isinstance(e, list):
            return [self(x) for x in e]
        if not isinstance(e, dict):
            return e
        if "$array" in e:
            data = base64.b64decode(e["data"], validate=True)
            return np.frombuffer(data, np.dtype(e["$array"])).reshape(e["shape"]).copy()
        if "$scalar" in e:
            return np.dtype(e["$scalar"]).type(e["value"])
        if "$tuple" in e:
            return tuple(self(x) for x in e["$tuple"])
        if "$frozenset" in e:
            return frozenset(self(x) for x in e["$frozenset"])
        if "$set" in e:
            return {self(x) for x in e["$set"]}
        if "$dict" in e:
            return {self(k): self(x) for k, x in e["$dict"]}
        if "$ref" in e:
            return self.refs[e["$ref"]]
        if "$calibration" in e:
            slot = len(self.refs)
            self.refs.append(None)
            out = Calibration(self(e["$calibration"]))
            for k, x in self(e["attrs"]).items():
                setattr(out, k, x)
            self.refs[slot] = out
            return out
        if "$dataclass" in e:
            cls = _CLASSES.get(e["$dataclass"])
            if cls is None:
                raise ValueError(f"memo names an unknown class {e['$dataclass']}")
            slot = len(self.refs)
            self.refs.append(None)
            values = {k: self(x) for k, x in e["fields"].items()}
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if set(values) != set(fields):
                raise ValueError(f"memo's {cls.__name__} has fields {sorted(values)}, the class {sorted(fields)}")
            out = cls(**{k: x for k, x in values.items() if fields[k].init})
            for k, x in values.items():
                if not fields[k].init:
                    object.__setattr__(out, k, x)
            self.refs[slot] = out
            return out
        if any(k.startswith("$") for k in e):
            raise ValueError(f"memo holds an unknown marker {sorted(e)}")
        return {k: self(x) for k, x in e.items()}


def result_to_json(result: AccuracyResult) -> dict[str, Any]:
    """`result` as JSON values from which `result_from_json` builds an equal AccuracyResult (every field,
    its Calibration's thresholds, node_info and bias corrections, arrays and numpy scalars with their dtype)."""
    return {"memo_version": MEMO_VERSION, "result": _Encoder()(result)}


def result_from_json(data: Mapping[str, Any]) -> AccuracyResult:
    """The AccuracyResult `result_to_json` wrote; ValueError when `data` is not one."""
    if not isinstance(data, Mapping) or data.get("memo_version") != MEMO_VERSION:
        raise ValueError("not an accuracy memo of this version")
    try:
        out = _Decoder()(data["result"])
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"malformed accuracy memo: {e!r}") from e
    if not isinstance(out, AccuracyResult) or not isinstance(out.calibration, Calibration):
        raise ValueError("the memo does not hold an AccuracyResult")
    return out


# --------------------------------------------------------------------------------------- the key
@cache
def accuracy_version() -> str:
    """A digest of the accuracy steps' implementation: the source of every module of engine.accuracy
    and of `IMPLEMENTATION_MODULES`, and the onnx / onnxruntime / numpy versions."""
    import onnxruntime as ort

    package = Path(importlib.util.find_spec("engine.accuracy").origin).parent
    files = sorted(package.glob("*.py")) + [Path(importlib.util.find_spec(m).origin) for m in IMPLEMENTATION_MODULES]
    h = hashlib.sha256(json.dumps([MEMO_VERSION, onnx.__version__, ort.__version__, np.__version__]).encode())
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_Encoder()(value), sort_keys=True).encode()).hexdigest()


def merged_digest(merged: Mapping[str, MergedStats]) -> str:
    """sha256 of the merged statistics' `MERGED_FIELDS`, tensor by tensor."""
    h = hashlib.sha256()
    for tensor, stats in merged.items():
        h.update(tensor.encode() + b"\0")
        for name in MERGED_FIELDS:
            value = getattr(stats, name)
            if value is None:
                h.update(b"none\0")
            else:
                update_array(h, name, value)
    return h.hexdigest()


def memo_key(model: onnx.ModelProto | bytes | str, calibration: Calibration, options: QuantOptions,
             merged: Mapping[str, MergedStats], samples: Sequence[Mapping[str, np.ndarray]],
             specs: Sequence[Mapping[str, Any]], settings: AccuracySettings,
             bias_corrections: Mapping[str, np.ndarray] | None = None, searched: Searched | None = None) -> str:
    """The key of `improve(model, calibration, options, merged, samples, specs, settings, bias_corrections,
    searched=)`: sha256 of every input it reads (module docstring). `model`: the model, its serialized bytes, or
    the sha256 (hex) of those bytes — the stage passes the process's memoised hash of the model file instead
    of reading and hashing it again on every run. `searched` (the threshold search's cosine, measured on the
    accuracy samples themselves: the stage passes it only then) is keyed as given."""
    if isinstance(model, str):
        model_digest = model
    else:
        body = model if isinstance(model, bytes) else model.SerializeToString(deterministic=True)
        model_digest = hashlib.sha256(body).hexdigest()
    parts = [MEMO_VERSION, accuracy_version(), model_digest, _digest(calibration),
             _digest(dict(bias_corrections or {})), merged_digest(merged),
             [sample_key(s) for s in list(samples)[:settings.samples]], _digest(list(specs)), _digest(options),
             _digest(settings)]
    if searched is not None:  # absent: the keys of results computed without it stay what they were
        parts.append([repr(float(searched.cosine)), int(searched.samples)])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


# ------------------------------------------------------------------------------------- the store
@dataclass(frozen=True)
class AccuracyMemo:
    """Accuracy results in `folder` (a stage memo folder), one JSON file per key, named
    `memo_name(owner, …)`: `owner` is the optimize stage entry whose model they were computed on, so
    they are pruned with it (engine.pipeline.cache.prune_memos); of one owner's, the
    `KEEP_PER_OWNER` last used are kept. Only an accelerator: a missing or unreadable file is a miss."""

    folder: Path
    owner: str

    def path(self, key: str) -> Path:
        from engine.pipeline.cache import memo_name

        return self.folder / memo_name(self.owner, f"{key[:32]}.json")

    def load(self, key: str) -> AccuracyResult | None:
        path = self.path(key)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("key") != key:
                raise ValueError("written for another key")
            result = result_from_json(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:
            log.debug(f"accuracy memo {path.name} unreadable ({e}); the accuracy steps run again")
            return None
        try:
            os.utime(path)  # recency for pruning
        except OSError:
            pass
        return result

    def save(self, key: str, result: AccuracyResult) -> None:
        from engine.pipeline.cache import atomic_write_text

        path = self.path(key)
        try:
            text = json.dumps({**result_to_json(result), "key": key})
        except (TypeError, ValueError) as e:  # a field this module cannot write exactly: not memoised
            log.debug(f"accuracy result not memoised: {e}")
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        except OSError as e:
            log.debug(f"accuracy memo {path.name} not saved: {e}")
            return
        self.prune(keep=path)

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Remove this owner's results beyond the `KEEP_PER_OWNER` most recently used."""
        from engine.pipeline.cache import memo_name

        prefix = memo_name(self.owner, "")
        mine = []
        for p in self.folder.glob(f"{prefix}*.json"):
            try:
                mine.append((p.stat().st_mtime, p))
            except OSError:
                pass
        mine.sort(reverse=True)
        removed = []
        for _, p in mine[KEEP_PER_OWNER:]:
            if p != keep:
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed


__all__ = ["KEEP_PER_OWNER", "MERGED_FIELDS", "AccuracyMemo", "accuracy_version", "memo_key", "merged_digest",
           "result_from_json", "result_to_json"]
