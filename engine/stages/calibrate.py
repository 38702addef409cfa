"""calibrate: optimized model + calibration samples → thresholds and `*_calibrated_model.onnx`.

Statistics are computed per sample and kept in a memo keyed by (optimized model, observed
tensors, sample content hash), then merged: after one calibration file changes, only that
sample's forward pass runs again. The thresholds are chosen by `calibration_type`; then the
accuracy steps (engine.accuracy: calibration-data checks, int16 thresholds, bias correction with
its own per-sample memo of channel means, sensitivity, automatic mixed precision) refine them,
and the fake-quant model is built from the quantization plan. `thresholds.json` holds the
thresholds, `accuracy.json` the node_info and bias corrections every later stage's plan applies
(`load_thresholds` returns both as one `Calibration`), `sensitivity.json` the node ranking.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from engine.calibration import (
    CalibrationSet,
    CalibrationSource,
    Observer,
    TensorStats,
    calibration_dir_files,
    load_calibration_set,
    merge_samples,
)
from engine.calibration.memo import DecodedStats, StatsMemo
from engine.calibration.stats import MergedStats, RebinnedRows
from engine.config import Config
from engine.pipeline.cache import memo_name, memo_write, prune_memo_files
from engine.pipeline.hashing import shared_hashes
from engine.pipeline.recent import Recent
from engine.pipeline.stage import Stage, StageContext
from engine.problems import CalibrationDataError, error
from engine.quantize.planner import Calibration, QuantOptions, make_plan, plan_tensors
from engine.quantize.types import ActQuant

if TYPE_CHECKING:
    from engine.accuracy import AccuracySettings, Searched

log = logging.getLogger("hbcompile")
READS = ("calibration_parameters", "model_parameters.node_info", "model_parameters.debug_mode")
DUMP_FOLDER = "calibration_data"  # debug_mode: dump_calibration_data
STATS_VERSION = 6  # 2: SampleStats format 3 (one deflate stream); 3: one pack per folder (`StatsMemo`), same statistics; 4-5: formats 4-5;
# 6: a batchable model's single runs come from its symbolic-batch session (`Observer.single`): its last bits may differ
WARM_OBSERVER_VALUES = 1 << 20  # observed values per sample up to which a warm engine keeps the observer
SEARCH_SAMPLES = 4  # calibration samples the `default` search compares output cosines on
SEARCH_SESSIONS_KEPT = 2  # scoring sessions a warm engine keeps (one per model and plan layout)
LOADED_SAMPLES_BYTES = 48 << 20  # decoded calibration samples a warm engine keeps (PP-OCRv4 det 640: 9)
ACCURACY_FILE = "accuracy.json"  # node_info of mixed precision, bias corrections, checks
SENSITIVITY_FILE = "sensitivity.json"


def calibration_files(config: Config) -> list[Path]:
    """Every file of every cal_data_dir (the stage key hashes their contents)."""
    if config.calibration.calibration_type == "skip":
        return []
    files: list[Path] = []
    for d in config.calibration.cal_data_dir:
        if d is not None and d.is_dir():
            files += calibration_dir_files(d)
    return files


def sources(config: Config, specs: list[dict[str, Any]]) -> list[CalibrationSource]:
    out = []
    for i, spec in enumerate(specs):
        d = config.calibration.cal_data_dir[i] if i < len(config.calibration.cal_data_dir) else None
        if d is None:
            raise CalibrationDataError(error("cal-dir-missing", f"cal_data_dir gives no folder for input "
                                             f"'{spec['name']}' (input {i})", ("calibration_parameters",
                                                                                "cal_data_dir")))
        dtype = config.calibration.cal_data_type[i] if i < len(config.calibration.cal_data_type) else None
        out.append(CalibrationSource(spec["name"], d, tuple(spec["shape"]), dtype, spec["input_layout_train"],
                                     config.calibration.preprocess_on, spec["input_type_train"]))
    return out


def _memo_key(optimize_key: str, tensors: list[str]) -> str:
    """The memo folder of one (optimized model, observed tensors): removed with the optimize entry."""
    h = hashlib.sha256(json.dumps([STATS_VERSION, optimize_key, tensors]).encode()).hexdigest()
    return memo_name(optimize_key, h[:32])


def collect_stats(ctx: StageContext, model: onnx.ModelProto, tensors: list[str],
                  specs: list[dict[str, Any]]) -> tuple[list[Mapping[str, TensorStats]], CalibrationSet, dict[str, Any]]:
    """Per-sample statistics (memoised by content hash), the calibration set, and what was done.

    Samples are batched only where batched tensors equal single runs bit for bit (a sample's
    statistics must not depend on its batch peers: they are cached alone). Computed statistics are
    kept as computed, not read back; a memo entry that cannot be read is computed again. The memo
    is one pack per folder (`StatsMemo`), written once at the end, also when the run stops early
    (cancelled, or a file changed under it): what was computed is kept.
    """
    config = ctx.config
    folder = ctx.memo_dir("sample_stats") / _memo_key(ctx.upstream["optimize"].name, tensors)
    cs = load_calibration_set(sources(config, specs))
    for name in cs.input_names:
        log.info(f"input name: {name},  number_of_samples: {len(cs)}")
    log.info(f"There are {len(cs)} samples in the calibration data set.")
    hashes = cs.content_hashes()
    # a warm engine keeps the statistics it decoded or computed (one memo folder's, within a budget)
    memo = StatsMemo(folder, decoded=ctx.engine.warm.setdefault("calibration_sample_stats", DecodedStats()))
    stats: list[Mapping[str, TensorStats] | None] = [None] * len(cs)
    for i, h in enumerate(hashes):
        found = memo.get(h)
        if found is not None:
            stats[i] = found.held(len(cs))
            memo.remember(h, stats[i])
    todo = [i for i, st in enumerate(stats) if st is None]
    observer = _observer(ctx, model, tensors, folder.name, len(todo))
    t0 = time.perf_counter()
    try:
        for done, (i, st) in enumerate(zip(todo, observer.observe(cs.samples(todo))), start=1):
            ctx.check_cancel()
            read = cs.content_hash(i)  # the bytes these statistics came from (load() records it)
            memo.put(read, st)
            if read != hashes[i]:  # rewritten after the stage key was taken: this run's result would be filed wrongly
                raise _changed_during_run(cs, i)
            stats[i] = st.held(len(cs))  # compact, or packed beyond a budget: memory must not grow with the samples
            memo.remember(read, stats[i])
            rate = done / max(time.perf_counter() - t0, 1e-9)
            ctx.report(f"calibration sample {done}/{len(todo)} ({rate:.1f} samples/s)", done / len(todo))
    finally:
        memo.save(cs.content_hashes())  # the current samples' entries; replaced samples' are dropped
    for note in observer.notes:
        log.debug(f"calibration: {note}")
    return stats, cs, {"samples": len(cs), "computed": len(todo), "reused": len(cs) - len(todo),
                       "batch": observer.batch_used}


def _observer(ctx: StageContext, model: onnx.ModelProto, tensors: list[str], key: str, samples: int) -> Observer:
    """The observer of (optimized model, tensors) `key`: a warm engine keeps a small model's (its
    sessions: digits, one file changed, ~2 of the statistics step's ~9 CPU ms went to building them).
    A large model's is built per run: its session's memory arena would stay at the size of one
    sample's observed tensors (PP-OCRv4 det 640: ~500 MB) to save ~20 ms."""
    kept = ctx.engine.warm.get("calibration_observer")
    if kept is not None and kept[0] == key:
        return kept[1].again(samples)
    observer = Observer(model, tensors, exact_batch=True, expected_samples=samples)
    planned = observer.planned_values
    if planned is not None and planned <= WARM_OBSERVER_VALUES:
        ctx.engine.warm["calibration_observer"] = (key, observer)
    else:
        ctx.engine.warm.pop("calibration_observer", None)
    return observer


def _search_sessions(ctx: StageContext) -> Recent | None:
    """Where `default`'s scoring session is kept between runs: a warm engine's, for a model whose
    observer it keeps too (`_observer`: a small model; a large one's session arena would stay at the
    size of its activations). Digits, one calibration file changed: ~2.5 CPU ms of the search."""
    if ctx.engine.warm.get("calibration_observer") is None:
        ctx.engine.warm.pop("search_sessions", None)
        return None
    return ctx.engine.warm.setdefault("search_sessions", Recent(SEARCH_SESSIONS_KEPT))


class LoadedSamples:
    """Decoded calibration samples by (content hash, sources), the newest first within `budget` bytes: the
    search and the accuracy steps read the first 8 samples on every run, and after one file changed the
    other 7 were read and decoded again (digits: 8 opens of ~0.1 ms each; PP-OCRv4 det 640: ~5 MB each).
    The arrays are read-only: every run reads the same ones."""

    def __init__(self, budget: int = LOADED_SAMPLES_BYTES) -> None:
        self.budget = budget
        self._kept: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        found = self._kept.pop(key, None)
        if found is not None:
            self._kept[key] = found
        return found

    def put(self, key: str, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for value in sample.values():
            value.flags.writeable = False
        size = sum(v.nbytes for v in sample.values())
        if size <= self.budget:
            self._kept[key] = sample
            while sum(v.nbytes for s in self._kept.values() for v in s.values()) > self.budget:
                self._kept.popitem(last=False)
        return sample


def loaded_samples(ctx: StageContext, cs: CalibrationSet, n: int) -> list[dict[str, np.ndarray]]:
    """The first `n` samples of `cs`, decoded, through the warm engine's `LoadedSamples` (keyed by their
    content hash, which the stage key was taken from, and how the sources decode them)."""
    kept = ctx.engine.warm.setdefault("calibration_loaded_samples", LoadedSamples())
    how = repr(cs.sources)
    out = []
    for i in range(n):
        suffixes = ",".join(Path(f).suffix.lower() for f in cs.files[i])  # .npy / image / raw decode differently
        key = f"{cs.content_hash(i)}|{suffixes}|{how}"
        found = kept.get(key)
        if found is None:
            found = cs.load(i)
            # keyed again: load() records the hash of the bytes it read, which a file rewritten meanwhile changes
            found = kept.put(f"{cs.content_hash(i)}|{suffixes}|{how}", found)
        out.append(dict(found))  # the arrays are read-only; the mapping is the caller's
    return out


def dump_calibration_inputs(folder: Path, cs: CalibrationSet) -> None:
    """`debug_mode: dump_calibration_data`: each sample as the model's input sees it (read, decoded and
    shaped; mean / scale are applied inside the model), `<folder>/<input>/<k>.npy` as hb_compile does."""
    for k in range(len(cs)):
        for name, value in cs.load(k).items():
            sub = folder / name.replace("/", "_")
            sub.mkdir(parents=True, exist_ok=True)
            np.save(sub / f"{k}.npy", value)


def _changed_during_run(cs: CalibrationSet, i: int) -> CalibrationDataError:
    names = ", ".join(str(p) for p in cs.files[i])
    return CalibrationDataError(error("cal-data-changed", f"calibration file {names} changed during the run; "
                                      "run again", ("calibration_parameters", "cal_data_dir")))


def collect_channel_means(ctx: StageContext, model: onnx.ModelProto, cs: CalibrationSet,
                          wanted: dict[str, int]) -> dict[str, Any]:
    """Per-channel means of the bias-corrected layers' inputs over every calibration sample, memoised
    per sample like the statistics (sums and counts merge exactly)."""
    from engine.accuracy import bias
    from engine.similarity import run_model

    memo = ctx.memo_dir("channel_means") / _memo_key(ctx.upstream["optimize"].name, sorted(wanted))
    memo.mkdir(parents=True, exist_ok=True)
    per_sample = []
    for i, h in enumerate(cs.content_hashes()):
        path = memo / f"{h}.npz"
        try:
            per_sample.append(bias.from_bytes(path.read_bytes()))
            continue
        except (OSError, ValueError, KeyError):
            pass
        ctx.check_cancel()
        means = bias.channel_means(run_model(model, cs.load(i), list(wanted)), wanted)
        memo_write(memo, f"{cs.content_hash(i)}.npz", bias.to_bytes(means))
        if cs.content_hash(i) != h:
            raise _changed_during_run(cs, i)
        per_sample.append(means)
    prune_memo_files(memo, {f"{h}.npz" for h in cs.content_hashes()})
    return bias.merge_means(per_sample)


def load_source(config: Config) -> Path | None:
    """calibration_type load: a `quant_config` path (QDQ .onnx or JSON thresholds), else the user's model."""
    qc = config.calibration.quant_config
    if isinstance(qc, str) and qc.strip():
        p = Path(qc).expanduser()
        return p if p.is_absolute() else config.base_dir / p
    return config.model.onnx_model


def calibrate_files(config: Config) -> list[Path]:
    """Calibration files, plus the thresholds source for `load`."""
    files = calibration_files(config)
    if config.calibration.calibration_type == "load":
        src = load_source(config)
        if src is not None and src.is_file():
            files.append(src)
    return files


def has_calibration_data(config: Config, specs: list[dict[str, Any]]) -> bool:
    """A cal_data_dir folder for every input and some files in them (`load` may go without)."""
    dirs = config.calibration.cal_data_dir
    return (len(dirs) >= len(specs) and all(d is not None and d.is_dir() for d in dirs[:len(specs)])
            and bool(calibration_files(config)))


def report_sample(config: Config, specs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The sample the report compares float and quantized models on when thresholds are not calibrated.

    `load` with calibration files: the first of them (random data would report damage the real
    inputs do not see). Otherwise skip's first random sample (`skip_samples`: 0–255 for image
    inputs, standard normal for featuremaps), one its thresholds were taken on.
    """
    if config.calibration.calibration_type == "load" and has_calibration_data(config, specs):
        cs = load_calibration_set(sources(config, specs))
        if len(cs):
            return cs.load(0)
    from engine.quantize.search import skip_samples

    return next(skip_samples({s["name"]: s["shape"] for s in specs}, 1, featuremaps=featuremap_inputs(specs)))


def featuremap_inputs(specs: list[dict[str, Any]]) -> list[str]:
    return [s["name"] for s in specs if s.get("input_type_train") == "featuremap"]


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.accuracy import AccuracySettings, Searched
    from engine.quantize.calibrated import build_calibrated_model
    from engine.quantize.search import SearchSettings, choose_thresholds

    config = ctx.config
    model = onnx.load(str(ctx.input("optimize", "model.onnx")))
    specs = json.loads(ctx.input("optimize", "inputs.json").read_text())
    options = QuantOptions.from_config(config)
    settings = SearchSettings.from_config(config)
    tensors = plan_tensors(model, options)
    kind = config.calibration.calibration_type
    if kind in ("skip", "load"):  # skip's warning comes from search_skip, which makes the random data
        info: dict[str, Any] = {"samples": 0}

        def observe(missing):
            """load: statistics of the tensors the source has no threshold for, on the calibration data."""
            stats, _, seen = collect_stats(ctx, model, list(missing), specs)
            info.update(seen)
            return merge_samples(stats)

        result = choose_thresholds(settings, model, None, options=options, tensors=tensors,
                                   load_source=load_source(config) if kind == "load" else None,
                                   featuremaps=featuremap_inputs(specs),
                                   observe=observe if kind == "load" and has_calibration_data(config, specs) else None)
        first = report_sample(config, specs)
        calibration, accuracy = Calibration(result.acts), {}
    else:
        stats, cs, info = collect_stats(ctx, model, tensors, specs)
        if config.model.debug_mode == "dump_calibration_data":
            dump_calibration_inputs(ctx.out_dir / DUMP_FOLDER, cs)
        # a warm engine moves only the changed samples' histograms onto the merged grid (same bits)
        merged = merge_samples(stats, rows=ctx.engine.warm.setdefault("calibration_rebinned_rows", RebinnedRows()))
        warn_nonfinite(model, merged)
        acc = AccuracySettings.from_config(config)
        loaded = loaded_samples(ctx, cs, min(max(SEARCH_SAMPLES, acc.samples), len(cs)))
        # no float run of the accuracy samples here: when the accuracy steps' result is memoised
        # (`_improve`) they need none (PP-OCRv4 det: ~0.15 CPU s a sample); the search's and the
        # steps' float outputs are still computed once each, by content (sessions.FLOAT_OUTPUTS)
        # `default` compares candidates on a few samples, not hb_mapper's one: on PP-OCRv4 det the
        # first sample alone picked max (held-out cosine 0.957) over max-percentile (0.980); and keeps max
        # unless another candidate's output error is smaller by more than these samples' noise
        # (`choose_candidate`): on PP-OCRv4 rec the mean cosine of 4 picked max-percentile, which is worse
        # held-out (calibrated model, 256 lines: CER 0.063 against max's 0.034)
        compare = loaded[:SEARCH_SAMPLES]
        first = compare[0]
        settings = dataclasses.replace(settings, cosine_samples=len(compare))
        result = choose_thresholds(settings, model, merged, compare, options, tensors=tensors,
                                   sessions=_search_sessions(ctx))
        # default's own output cosine for the thresholds it chose: the accuracy steps take it instead of a
        # ptq run when it clears the target by far (engine.accuracy.mixed.searched_meets; digits ~8 -> ~2 ms),
        # only when measured on exactly the samples they judge: 4 samples cleared 0.9992 where the 8 the
        # steps judge missed it (0.996631, 5-8 dimmed) and no move was made
        searched = Searched(result.cosines[result.method], len(compare)) \
            if result.method in result.cosines and len(compare) == min(acc.samples, len(loaded)) else None
        calibration, accuracy, reused = _improve(ctx, model, Calibration(result.acts), options, merged, cs, specs,
                                                 acc, loaded[:acc.samples], searched)
        info["accuracy_steps"] = "reused" if reused else "computed"
    plan = make_plan(model, calibration, options)
    for note in plan.notes:  # advice (a split output head, …) is worth a line; the rest is detail
        (log.info if " joins " in note else log.debug)(note)
    onnx.save(build_calibrated_model(model, plan), str(ctx.out_dir / "model.onnx"))
    save_thresholds(ctx.out_dir / "thresholds.json", dict(calibration))
    (ctx.out_dir / ACCURACY_FILE).write_text(json.dumps(accuracy, indent=1, default=_jsonable))
    # by value: a first sample re-saved in other bytes (Fortran order) writes the same file (early cutoff)
    np.savez(ctx.out_dir / "first_sample.npz", **{k: np.ascontiguousarray(v) for k, v in first.items()})
    (ctx.out_dir / "inputs.json").write_text(json.dumps(specs, indent=1))
    mixed = accuracy.get("mixed_precision") or {}
    return {**info, "method": result.method, "cosines": result.cosines, "tensors": len(tensors),
            "notes": plan.notes + accuracy.get("notes", []),
            "mixed_precision": {k: mixed[k] for k in ("before", "after", "verified", "met", "moved_nodes", "budget",
                                                      "node_info") if k in mixed} or None}


def warn_nonfinite(model: onnx.ModelProto, merged: dict[str, MergedStats]) -> None:
    """The float model itself computing NaN / Inf on the calibration data (Sqrt or Log of negatives, a
    division by zero) is told once, at the first such tensor in graph order: no table explains NaN cosines."""
    bad = {t: s.nonfinite for t, s in merged.items() if s.nonfinite}
    if not bad:
        return
    order = [(o, n) for n in model.graph.node for o in n.output]
    first, node = next(((o, n) for o, n in order if o in bad), (next(iter(bad)), None))
    where = f" (node '{node.name}', {node.op_type})" if node is not None else ""
    more = f", and in {len(bad) - 1} observed tensors after it" if len(bad) > 1 else ""
    log.warning(f"The float model computes {bad[first]} NaN / Inf values in tensor '{first}'{where} on the calibration "
                f"data{more}: thresholds come from the finite values, cosines over them are NaN")


def _improve(ctx: StageContext, model: onnx.ModelProto, calibration: Calibration, options: QuantOptions,
             merged: dict, cs: CalibrationSet, specs: list[dict[str, Any]], acc: AccuracySettings,
             samples: list[dict[str, np.ndarray]], searched: Searched | None = None
             ) -> tuple[Calibration, dict[str, Any], bool]:
    """The accuracy steps (engine.accuracy) on the first `acc.samples` calibration samples, what they
    tell the user (the same log lines whether computed or reused), and whether the result was reused
    (`engine.accuracy.memo`)."""
    from engine.accuracy import CHECK_SAMPLES, improve
    from engine.accuracy import bias as bias_mod
    from engine.accuracy.checks import CheckMemo
    from engine.accuracy.memo import AccuracyMemo, memo_key

    corrections = None
    if acc.bias_correction:
        layers, notes = bias_mod.layers(model, make_plan(model, calibration, options))
        means = collect_channel_means(ctx, model, cs, {layer.input: layer.channel_axis for layer in layers})
        corrections = bias_mod.corrections(model, make_plan(model, calibration, options), means)
        log.info(f"bias_correction: {len(corrections)} layers corrected on {len(cs)} calibration samples")
        for note in notes:
            log.debug(note)
    # the data check is memoised per sample by content (issue #8: one changed file re-runs one sample)
    checked = range(min(CHECK_SAMPLES, len(samples)))
    memo = CheckMemo(ctx.memo_dir("data_checks"), ctx.upstream["optimize"].name, [cs.content_hash(i) for i in checked])
    # the whole result is memoised by its inputs: a calibration change that moves no threshold (a file
    # re-saved with the same values, a sample past the accuracy samples) does not run the steps again
    results = AccuracyMemo(ctx.memo_dir("accuracy"), ctx.upstream["optimize"].name)
    try:
        key = memo_key(shared_hashes().file(ctx.input("optimize", "model.onnx")), calibration, options, merged,
                       samples, specs, acc, corrections, searched=searched)
    except (TypeError, ValueError) as e:  # an input the key cannot hold exactly: computed, not memoised
        log.debug(f"accuracy steps not memoised: {e}")
        key = None
    res = results.load(key) if key is not None else None
    reused = res is not None
    if res is None:
        res = improve(model, calibration, options, merged, samples, specs, acc, corrections,
                      progress=lambda m, f: ctx.report(m, f), check_memo=memo, searched=searched)
        if key is not None:
            results.save(key, res)
    else:
        ctx.report("accuracy steps: reused (same model, thresholds, statistics and samples)", 1.0)
    for check in res.checks:
        if check.suspicious:
            log.warning(check.message())
        else:
            log.debug(f"calibration data check, input {check.input}, {check.variant}: output entropy "
                      f"{check.entropy_variant:.4f} vs {check.entropy_given:.4f} as given")
    if res.sensitivity is not None:
        (ctx.out_dir / SENSITIVITY_FILE).write_text(json.dumps(res.sensitivity.to_json(), indent=1))
        if acc.sensitivity > 0:
            log.info(f"Sensitivity of the quantized nodes (output cosine loss when only the node is quantized, on "
                     f"{res.sensitivity.samples} calibration sample; all quantized: "
                     f"{res.sensitivity.output_cosine:.6f}):\n{res.sensitivity.table_text(acc.sensitivity)}")
    mp = res.mixed
    if mp is not None and mp.moves:
        log.info(mp.summary())
        for move in mp.moves:
            log.info(f"  {move.line()}")
        log.info("To keep these placements without the search, set in model_parameters: node_info: "
                 + json.dumps(mp.node_info))
    elif mp is not None and not mp.met:
        log.warning(mp.summary())
    for note in (mp.notes if mp is not None else []) + res.notes:
        log.info(note)
    return res.calibration, res.to_json(), reused


def save_thresholds(path: Path, found: dict[str, Any]) -> None:
    """{tensor: {threshold, axis, method, detail}}: what later stages re-plan from."""
    from engine.quantize.planner import _threshold_of

    out = {}
    for tensor, value in found.items():
        t, method, axis = _threshold_of(value)
        detail = getattr(value, "detail", None)
        out[tensor] = {"threshold": np.asarray(t).tolist(), "axis": axis, "method": method,
                       "detail": json.loads(json.dumps(detail or {}, default=_jsonable))}
    path.write_text(json.dumps(out, indent=1))


def load_thresholds(path: Path) -> Calibration:
    """The calibration result saved beside `path` (thresholds.json): thresholds by tensor, plus the
    node_info and bias corrections of `accuracy.json` in the same folder, which make_plan applies."""
    out = {}
    for tensor, v in json.loads(path.read_text()).items():
        t = v["threshold"]
        out[tensor] = ActQuant(tensor, np.asarray(t, np.float64) if isinstance(t, list) else float(t),
                               axis=v.get("axis"), method=v.get("method", ""))
    extra = path.parent / ACCURACY_FILE
    accuracy = json.loads(extra.read_text()) if extra.is_file() else {}
    return Calibration(out, accuracy.get("node_info") or {}, accuracy.get("bias_corrections") or {})


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


# version 4: `load` reports on the first calibration sample when there is one; `skip` takes thresholds
# and reports on normal values for featuremap inputs (both were uniform 0–255); `load` from an
# asymmetric QDQ range covers its larger side. 5: mixed precision aims with a margin, counts float
# kernels, and moves at most floor(budget × nodes). 6: lookup-table outputs with offset ranges,
# per-channel outputs only where a conv / matmul writes them, scalar scales, dump_calibration_data.
# 7: with bias_correction, the switchable model's corrected bias goes with its int8 weight only
# 9: `default` keeps max unless another candidate beats it by more than the noise (`choose_candidate`)
# 12: statistics of a batchable model from its symbolic-batch session (STATS_VERSION 6)
# 13: `default`'s own output cosine stands for the ptq check when it clears the target by far (accuracy.json)
# 14: ... only when the search measured it on the samples the accuracy steps judge
# 15: `load` derives the thresholds of the inserted normalization and of a tensor before a Relu / Clip that
# onnxruntime fused, keys a pair's threshold by its DequantizeLinear output too, and calibrates what the source
# left unquantized with max on the calibration data
STAGE = Stage("calibrate", 15, run, after=("optimize",), reads=READS, files=calibrate_files,
              artefacts={"model.onnx": "{prefix}_calibrated_model.onnx", SENSITIVITY_FILE: "{prefix}_sensitivity.json",
                         DUMP_FOLDER: DUMP_FOLDER},
              describe="statistics per calibration sample, thresholds, accuracy steps, fake-quant model")
