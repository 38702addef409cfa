"""Similarity numbers: how far a quantized model's tensors are from the float model's.

- `cosine(a, b)`: float64 cosine similarity of two tensors (flattened). Both all-zero → 1.0 (the
  same tensor); exactly one all-zero → 0.0 (nothing of the signal is left).
- `node_similarity(float_model, calibrated_model, sample, plan)`: one `NodeRow` per node of the
  table hb_compile prints (`Node, NodeType, ON, Threshold, Calibrated Cosine, Quantized Cosine,
  Output Data Type`), a fusion group as one row named ``Conv_0+Relu_1`` of type ``Conv+Relu``,
  compared on the group's (last node's) output. Both models run once in onnxruntime with every
  compared tensor exposed as an output; the calibrated model's value of tensor T is the
  fake-quantized one (found through the model's `hb_calibration_tensors` map).
- `output_similarity(...)`: per model output, cosine and the distances hb_mapper prints:
  L1 = mean |a − b|, L2 = √(mean (a − b)²) (root mean square), Chebyshev = max |a − b|.
- `Reference`: the float model's tensors on a sample, keeping each row's x·x once summed
  (`row_cosine`): the same float tensor is compared with the calibrated model and with the `.bc`,
  and the report stage keeps a reference across runs.

- `tensor_digests(model)`: per tensor, a digest of everything its value is computed from (the
  graph above it: operators, attributes, constants, input types), and `RowMemo`: the numbers of rows
  compared before, by the reference they were compared with and those digests. A calibration change
  moves a few thresholds (PP-OCRv4 det, one of 32 files: 4–7 of 134), and every tensor above the
  first moved one keeps its value bit for bit (56 % of det's compared values): its row is not
  summed again, and a model none of whose rows changed is not run.

`NodeRow.quantized_cosine` / `OutputRow.quantized_cosine` stay None here: they are filled (with
`dataclasses.replace`) by the integer lowering's comparison against the `.bc`, which reads the
row's `tensor` to know which float tensor each row compares.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from engine.passes.graph import subgraphs
from engine.quantize.calibrated import calibration_map
from engine.quantize.types import QuantPlan

CHUNK = 1 << 15  # values per float64 slice: two slices stay in L2 while their three sums are taken


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in float64; both zero → 1.0, one zero → 0.0; shapes must have equal size.

    The sums are taken on float64 slices of `CHUNK` values with `np.einsum` (numpy's own loops,
    one thread), not `np.dot`: OpenBLAS's threaded ddot fights onnxruntime for the cores the
    engine shares (measured on a 2-core machine beside onnxruntime: 38 ms against 5.6 ms on a
    640×640 output), and the slices never hold float64 copies of whole tensors.
    """
    return _cosine(a, b)[0]


def _cosine(a: np.ndarray, b: np.ndarray, aa: float | None = None) -> tuple[float, float]:
    """(cosine of `a` and `b`, a·a); `aa`: a·a as an earlier call returned it, so the slices of `a`
    are read for a·b only (a float reference is compared with two models, and memoised across runs)."""
    x = np.asarray(a).reshape(-1)
    y = np.asarray(b).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"cosine of tensors of different sizes: {np.shape(a)} vs {np.shape(b)}")
    with np.errstate(over="ignore", invalid="ignore"):
        xx, yy, xy = _sums(x, y, 1.0, 1.0, aa)
        if xx == 0.0 and yy == 0.0:
            return 1.0, xx
        if xx == 0.0 or yy == 0.0:
            return 0.0, xx
        if not (np.isfinite(xx) and np.isfinite(yy) and np.isfinite(xx * yy)):  # overflow: directions scaled down
            sx, sy, sxy = _sums(x, y, float(np.max(np.abs(x))), float(np.max(np.abs(y))))
            return float(np.clip(sxy / np.sqrt(sx * sy), -1.0, 1.0)), xx
    # one square root of the product: identical tensors give exactly 1.0
    return float(np.clip(xy / np.sqrt(xx * yy), -1.0, 1.0)), xx


def _sums(x: np.ndarray, y: np.ndarray, x_div: float, y_div: float,
          xx_known: float | None = None) -> tuple[float, float, float]:
    """(x·x, y·y, x·y) in float64 of x / x_div and y / y_div, slice by slice; x·x is `xx_known`
    when given (unscaled sums only) and not summed again. Slices are converted into two float64
    buffers taken once per call: a new 256 KB array per slice came from fresh pages in the engine's
    process (PP-OCRv4 det report: ~16,000 slices, 100 µs each against 23 µs in a small process)."""
    scaled = x_div != 1.0 or y_div != 1.0
    skip_xx = xx_known is not None and not scaled
    xx = float(xx_known) if skip_xx else 0.0
    yy = xy = 0.0
    x_buf, y_buf = (_buffer(v, scaled, x.size) for v in (x, y))
    for start in range(0, x.size, CHUNK):
        xs, ys = _float64(x[start:start + CHUNK], x_buf), _float64(y[start:start + CHUNK], y_buf)
        if scaled:
            xs /= x_div
            ys /= y_div
        if not skip_xx:
            xx += float(np.einsum("i,i->", xs, xs))
        yy += float(np.einsum("i,i->", ys, ys))
        xy += float(np.einsum("i,i->", xs, ys))
    return xx, yy, xy


def _buffer(values: np.ndarray, scaled: bool, size: int) -> np.ndarray | None:
    """A float64 slice buffer for `values`, None when their float64 slices are read in place."""
    return None if values.dtype == np.float64 and not scaled else np.empty(min(size, CHUNK), np.float64)


def _float64(part: np.ndarray, buffer: np.ndarray | None) -> np.ndarray:
    """`part` as float64: itself (read in place) without a buffer, else converted into the buffer."""
    if buffer is None:
        return part
    out = buffer[:part.size]
    np.copyto(out, part, casting="unsafe")
    return out


class Reference(dict):
    """The float model's tensors on one sample (name → array), with x·x of each compared row kept
    once summed: a row's float tensor is compared with the calibrated model and with the `.bc`, and
    the report stage keeps the reference across runs of a warm engine (engine.stages.report)."""

    def __init__(self, values: Mapping[str, np.ndarray], key: str | None = None):
        super().__init__(values)
        self.squares: dict[tuple[str, ...], float] = {}
        self.key = key  # what the values were computed from (model, sample, tensors), when the caller knows it

    @property
    def nbytes(self) -> int:
        return sum(np.asarray(v).nbytes for v in self.values())


def row_cosine(reference: Mapping[str, np.ndarray], tensors: Sequence[str], other: np.ndarray) -> float:
    """The cosine of the float `tensors` (flattened, joined) against `other`; with a `Reference`,
    their x·x is summed once and then read from it (same sums: the same slices in the same order)."""
    names = tuple(tensors)
    squares = reference.squares if isinstance(reference, Reference) else None
    cos, xx = _cosine(_flat([reference[t] for t in names]), other, None if squares is None else squares.get(names))
    if squares is not None:
        squares[names] = xx
    return cos


def tensor_digests(model: onnx.ModelProto) -> dict[str, bytes | None]:
    """Tensor name → a digest of what its value on given feeds is computed from: the graph inputs' types,
    every constant, and each node above it (operator, domain, attributes, inputs) — two models that give
    a tensor the same digest compute it the same way from the same feeds. None for a tensor read by or
    below a node with a subgraph (what it reads from the outer scope is not in its inputs)."""
    digests: dict[str, bytes | None] = {"": b""}
    for i in model.graph.input:
        digests[i.name] = hashlib.sha256(b"input\0" + i.SerializeToString()).digest()
    for t in model.graph.initializer:
        digests[t.name] = hashlib.sha256(b"constant\0" + t.SerializeToString()).digest()
    for node in model.graph.node:
        inputs = [digests.get(i) for i in node.input]
        if any(d is None for d in inputs) or next(subgraphs(node), None) is not None:
            digests.update((o, None) for o in node.output)
            continue
        h = hashlib.sha256(f"{node.domain}\0{node.op_type}\0".encode())
        for a in node.attribute:
            h.update(a.SerializeToString())
        for d in inputs:
            h.update(d)  # type: ignore[arg-type]
        base = h.digest()
        digests.update((o, hashlib.sha256(base + k.to_bytes(4, "little")).digest()) for k, o in enumerate(node.output))
    return digests


class RowMemo:
    """The numbers of rows compared before, by (the reference's key, what the other value is computed
    from): a value whose digest is unchanged is the same bits, so its cosine is the same. Kept in a warm
    engine (engine.stages.report); bounded, most recently used first."""

    def __init__(self, size: int = 8192):
        from engine.pipeline.recent import Recent

        self._kept: Recent[Hashable, object] = Recent(size)

    def get(self, key: Hashable | None) -> object | None:
        return None if key is None else self._kept.get(key)

    def put(self, key: Hashable | None, value: object) -> None:
        if key is not None:
            self._kept.put(key, value)


def _memo_key(reference: Mapping[str, np.ndarray], *parts: object) -> Hashable | None:
    """A `RowMemo` key, None (no memo) when the reference has no key or a part is unknown."""
    key = getattr(reference, "key", None)
    if key is None or any(p is None or (isinstance(p, tuple) and None in p) for p in parts):
        return None
    return (key, *parts)


@dataclass(frozen=True)
class NodeRow:
    """One row of the node table; numbers are None where hb_compile prints ``--``."""

    node: str  # node name, or the fusion group's name "Conv_0+Relu_1"
    node_type: str  # op type, or the group's type "Conv+Relu"
    on: str  # BPU / CPU
    tensor: str  # the float model's tensor this row compares
    threshold: float | None  # the output's calibrated threshold (hb: thresholds[0][0]); None on CPU / si32
    calibrated_cosine: float | None
    output_dtype: str  # si8 / si16 / si32 / f32
    quantized_cosine: float | None = None
    nodes: tuple[str, ...] = ()  # the member nodes (one for an unfused node)


@dataclass(frozen=True)
class OutputRow:
    tensor: str
    cosine: float
    l1: float
    l2: float
    chebyshev: float
    quantized_cosine: float | None = None


@dataclass
class Similarity:
    nodes: list[NodeRow] = field(default_factory=list)
    outputs: list[OutputRow] = field(default_factory=list)


def distances(reference: np.ndarray, other: np.ndarray, tensor: str = "") -> OutputRow:
    a = np.asarray(reference, dtype=np.float64).reshape(-1)
    b = np.asarray(other, dtype=np.float64).reshape(-1)
    d = np.abs(a - b) if a.shape == b.shape else None
    if d is None:
        raise ValueError(f"output '{tensor}' has {a.size} values in one model and {b.size} in the other")
    empty = d.size == 0
    return OutputRow(tensor, cosine(a, b), 0.0 if empty else float(d.mean()),
                     0.0 if empty else float(np.sqrt(np.mean(d * d))), 0.0 if empty else float(d.max()))


def run_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], tensors: Sequence[str] = (),
              threads: int | None = None, fetch: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Run `model` in onnxruntime (CPU) and return its outputs plus the named intermediate tensors,
    in `engine.runtime.session.qdq_session` (Q/DQ pairs and float CPU convs computed as written;
    no spinning thread pool: the report's float + calibrated runs on PP-OCRv4 det 640 went
    1.38 -> 0.97 CPU s). `fetch`: only these of them are returned (the graph still outputs every one,
    so onnxruntime fuses nothing it would not fuse for all: the same values)."""
    from engine.calibration.observer import with_outputs
    from engine.runtime.session import qdq_session

    inputs = {i.name for i in model.graph.input}
    extra = [t for t in dict.fromkeys(tensors) if t not in inputs]
    proto = with_outputs(model, extra) if extra else model
    session = qdq_session(proto, threads)
    names = [o.name for o in session.get_outputs()]
    if fetch is not None:
        fetched = set(fetch)
        names = [n for n in names if n in fetched]
    wanted = {i.name for i in session.get_inputs()}
    values = dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted}), strict=True))
    values.update((k, np.asarray(v)) for k, v in feeds.items() if k in inputs and (fetch is None or k in fetch))
    return values


def output_rows(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray],
                names: Sequence[str]) -> list[OutputRow]:
    return [distances(reference[n], other[n], n) for n in names]


def _row_tensors(float_model: onnx.ModelProto, plan: QuantPlan) -> list[tuple[str, str, tuple[str, ...], list[str]]]:
    """(row name, row type, member nodes, compared tensors) in graph order, one per node or group."""
    groups = {g.name: g for g in plan.groups}
    by_name = {n.name: n for n in float_model.graph.node}
    rows, done = [], set()
    for node in float_model.graph.node:
        np_ = plan.nodes.get(node.name)
        group = groups.get(np_.group) if np_ is not None and np_.group else None
        if group is not None:
            if group.name in done:
                continue
            done.add(group.name)
            last = by_name[group.nodes[-1]]
            rows.append((group.name, group.type, group.nodes, [o for o in last.output if o][:1]))
        else:
            rows.append((node.name, node.op_type, (node.name,), [o for o in node.output if o]))
    return rows


def with_quantized(similarity: Similarity, reference: Mapping[str, np.ndarray],
                   intermediates: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                   memo: RowMemo | None = None, digests: Mapping[tuple[str, str], Hashable] | None = None
                   ) -> Similarity:
    """`similarity` with `quantized_cosine` filled: each node row's float tensor (`reference`)
    against the integer program's dequantized value of it (`intermediates`), each output row against
    the program's output. A row whose tensor the program does not hold (inside a fusion group)
    keeps None, printed as ``--``. With a `memo` and `digests` (("quantized", float tensor) and
    ("quantized output", output name) → what the program's value of it is computed from), a row compared
    before is read from the memo, and the program's values of such rows need not be given."""
    memo = memo if memo is not None and digests is not None else None

    def cosine_of(tensor: str, kind: str, values: Mapping[str, np.ndarray]) -> float | None:
        key = _quantized_key(reference, kind, tensor, digests) if memo is not None else None
        kept = memo.get(key) if memo is not None else None
        if kept is not None:
            return kept  # type: ignore[return-value]
        if tensor not in values or tensor not in reference:
            return None
        cos = row_cosine(reference, (tensor,), values[tensor])
        if memo is not None:
            memo.put(key, cos)
        return cos

    nodes = [r if r.tensor == "" or (c := cosine_of(r.tensor, "quantized", intermediates)) is None
             else replace(r, quantized_cosine=c) for r in similarity.nodes]
    rows = [o if (c := cosine_of(o.tensor, "quantized output", outputs)) is None else replace(o, quantized_cosine=c)
            for o in similarity.outputs]
    return Similarity(nodes, rows)


def quantized_needed(similarity: Similarity, reference: Mapping[str, np.ndarray], memo: RowMemo,
                     digests: Mapping[tuple[str, str], Hashable]) -> list[str]:
    """The float tensors and outputs whose quantized value `with_quantized` would compute (not in `memo`):
    empty when the integer program need not run."""
    need = [r.tensor for r in similarity.nodes if ("quantized", r.tensor) in digests and r.tensor in reference
            and memo.get(_quantized_key(reference, "quantized", r.tensor, digests)) is None]
    return need + [o.tensor for o in similarity.outputs
                   if memo.get(_quantized_key(reference, "quantized output", o.tensor, digests)) is None]


def _quantized_key(reference: Mapping[str, np.ndarray], kind: str, tensor: str,
                   digests: Mapping[tuple[str, str], Hashable]) -> Hashable:
    """The memo key of a quantized row (`kind`: "quantized" or "quantized output"): `with_quantized` files
    it and `quantized_needed` looks it up, so the two agree on what the program must compute."""
    return _memo_key(reference, kind, tensor, digests.get((kind, tensor)))


def compared_tensors(float_model: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    """The float tensors `compare` reads (every row's tensors, then the model outputs): a caller that
    runs the float model anyway passes `run_model(float_model, sample, compared_tensors(...))` as
    `compare`'s reference."""
    return _with_outputs([t for *_, ts in _row_tensors(float_model, plan) for t in ts], float_model)


def _with_outputs(wanted: list[str], float_model: onnx.ModelProto) -> list[str]:
    return list(dict.fromkeys(wanted + [o.name for o in float_model.graph.output]))


def compare(float_model: onnx.ModelProto, calibrated_model: onnx.ModelProto, sample: Mapping[str, np.ndarray],
            plan: QuantPlan, reference: Mapping[str, np.ndarray] | None = None, memo: RowMemo | None = None
            ) -> Similarity:
    """Node rows and output rows from one run of each model on `sample`; `reference`: the float
    model's values of `compared_tensors` on `sample` when the caller has them (the report stage
    compares the `.bc` with the same run), else the float model runs here. `memo` (with a keyed
    `Reference`): rows whose calibrated value is computed as in an earlier comparison with the same
    reference (`tensor_digests`) are read from it, and only the other values are fetched from the
    calibrated model — which does not run when there are none."""
    from engine.calibration.observer import cpu_count

    rows = _row_tensors(float_model, plan)
    mapping = calibration_map(calibrated_model)
    wanted = [t for *_, ts in rows for t in ts]
    if reference is not None:
        missing = [t for t in _with_outputs(wanted, float_model) if t not in reference]
        if missing:
            raise ValueError(f"compare: the float reference lacks tensor(s) {', '.join(missing[:5])}")
    ref = Reference(run_model(float_model, sample, wanted)) if reference is None else reference
    outputs = [o.name for o in float_model.graph.output]
    digests = tensor_digests(calibrated_model) if memo is not None and getattr(ref, "key", None) else {}
    threads = cpu_count()  # the calibrated session's (qdq_session): a float reduction may split by threads

    def key(kind: str, tensors: Sequence[str]) -> Hashable | None:
        return _memo_key(ref, kind, threads, tuple(tensors), tuple(digests.get(mapping.get(t, t)) for t in tensors)) \
            if digests else None

    row_keys = [key("calibrated", tensors) if tensors else None for *_, tensors in rows]
    kept = [memo.get(k) if memo is not None else None for k in row_keys]
    # an output row compares the calibrated model's own output of that name (its value as the model gives it)
    out_keys = [_memo_key(ref, "calibrated output", threads, n, digests.get(n)) if digests else None for n in outputs]
    kept_outputs = [memo.get(k) if memo is not None else None for k in out_keys]
    fetch = {mapping.get(t, t) for (*_, tensors), cos in zip(rows, kept) if cos is None for t in tensors} | \
        {n for n, row in zip(outputs, kept_outputs) if row is None}
    got = run_model(calibrated_model, sample, [mapping.get(t, t) for t in wanted], fetch=sorted(fetch)) if fetch else {}
    thresholds = plan.calibrated_acts or plan.acts
    result = Similarity()
    for (name, op_type, members, tensors), row_key, cos in zip(rows, row_keys, kept):
        last = plan.nodes.get(members[-1])
        on = last.on if last is not None else "CPU"
        if tensors and cos is None:  # as they are: cosine takes float64 slices (a float64 copy of each cost 0.3 s on det)
            cos = row_cosine(ref, tensors, _flat([got[mapping.get(t, t)] for t in tensors]))
            if memo is not None:
                memo.put(row_key, cos)
        act = thresholds.get(tensors[0]) if tensors and on == "BPU" else None
        result.nodes.append(NodeRow(name, op_type, on, tensors[0] if tensors else "",
                                    None if act is None else float(np.max(act.threshold)), cos,
                                    last.output_dtype if last is not None else "f32", None, tuple(members)))
    for name, out_key, row in zip(outputs, out_keys, kept_outputs):
        if row is None:
            row = distances(ref[name], got[name], name)
            if memo is not None:
                memo.put(out_key, row)
        result.outputs.append(row)  # type: ignore[arg-type]
    return result


def _flat(values: Sequence[np.ndarray]) -> np.ndarray:
    """One flat array of `values` (a view of a single one); each value converts to float64 exactly in
    `cosine`, so the sums are those of their float64 concatenation."""
    if len(values) == 1:
        return np.asarray(values[0]).reshape(-1)
    return np.concatenate([np.asarray(v).reshape(-1) for v in values])


def node_similarity(float_model: onnx.ModelProto, calibrated_model: onnx.ModelProto,
                    sample: Mapping[str, np.ndarray], plan: QuantPlan) -> list[NodeRow]:
    """The per-node table (calibrated cosine per node / fusion group) on one sample."""
    return compare(float_model, calibrated_model, sample, plan).nodes


def output_similarity(float_model: onnx.ModelProto, other_model: onnx.ModelProto,
                      sample: Mapping[str, np.ndarray]) -> list[OutputRow]:
    """Per model output: cosine, L1, L2, Chebyshev of `other_model` against the float model."""
    names = [o.name for o in float_model.graph.output]
    return output_rows(run_model(float_model, sample), run_model(other_model, sample), names)


def mean_output_cosine(reference: Sequence[Mapping[str, np.ndarray]], other: Sequence[Mapping[str, np.ndarray]],
                       names: Sequence[str]) -> float:
    """Mean over samples and outputs of the output cosine (what `default` calibration compares)."""
    values = [cosine(r[n], o[n]) for r, o in zip(reference, other, strict=True) for n in names]
    return float(np.mean(values)) if values else 1.0


__all__ = ["NodeRow", "OutputRow", "Reference", "Similarity", "compare", "compared_tensors", "with_quantized", "cosine",
           "distances", "mean_output_cosine", "node_similarity", "output_rows", "output_similarity", "row_cosine",
           "run_model"]
