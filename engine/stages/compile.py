"""compile: the `.bc` → `*.hbm` (deployable, checksummed), `*_quantized_removed_model.bc`,
`*_advice.json` (what runs where and why) and the static performance report `{prefix}.json/.html`.

The latency measured on this machine is kept per program digest (`perf.LatencyMemo` in the memo
folder `latency`): a compiler_parameters edit that builds the same program (compile_mode,
balance_factor, advice, debug…) re-estimates but does not re-measure. The optimized program is
kept too (`package.ProgramMemo`, memo folder `optimized_program`, owned by the quantize entry):
such an edit does not run the optimize_level rewrites and their bit-exactness checks again, nor
copy, stamp or serialize the `.bc` (the memo is keyed by the digest of the `.bc` file read here).
In this process (the warm engine) the estimate's program-only part is kept by the program's digest
(with its 8 candidate plans: a compile_mode / balance_factor edit re-times them), the O0 / O1
programs of one `.bc` share their tensor types (digits: one onnxruntime probe for both levels), the
`.bc`'s runtime I/O specs are kept by its digest, and the parsed upstream files (`upstream_inputs`),
advice.json and the report page's similarity / sensitivity sections — made from upstream entries
alone — are kept for those entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import onnx

from engine.pipeline.hashing import path_stamp, sha256_json
from engine.pipeline.stage import Stage, StageContext
from engine.stages.ptq import stage_plan
from engine.stages.quantize import READS as QUANTIZE_READS
from engine.stages.report import ROWS_FILE

if TYPE_CHECKING:
    from engine.quantize.types import QuantPlan

log = logging.getLogger("hbcompile")
READS = QUANTIZE_READS + ("compiler_parameters", "model_parameters.march", "model_parameters.remove_node_type",
                          "model_parameters.remove_node_name",
                          "model_parameters.output_model_file_prefix")  # the .hbm's source name, the perf report's model


def run(ctx: StageContext) -> dict[str, Any]:
    from dataclasses import replace

    from engine.compile.package import ProgramMemo, build_hbm
    from engine.compile.params import resolve
    from engine.compile.partition import advice_json, partition
    from engine.compile.perf import LatencyMemo, perf_log_lines, perf_report, write_perf_reports
    from engine.compile.remove_nodes import remove_nodes
    from engine.problems import StageError
    from engine.runtime.threads import plan_of

    config, out = ctx.config, ctx.out_dir
    inputs = upstream_inputs(ctx)
    optimized, bc, bc_sha256 = inputs.optimized, inputs.bc, inputs.bc_sha256
    plan = stage_plan(ctx, optimized)
    options, problems = resolve(config.compiler, config.model.march, inputs.specs)
    for p in problems:
        if p.is_error:
            raise StageError(p)
        log.warning(p.message)
    removed = []
    if config.model.remove_node_type or config.model.remove_node_name:
        bc, removed = remove_nodes(bc, list(config.model.remove_node_type), list(config.model.remove_node_name))
        bc_bytes = bc.SerializeToString()
        (out / "removed.bc").write_bytes(bc_bytes)  # what onnx.save writes
        bc_sha256 = hashlib.sha256(bc_bytes).hexdigest()  # remove_nodes logged "deleted nodes: NAME"
    # the digest of what this stage read: an edit outside its slice reuses the .hbm, which must not name it
    build = build_hbm(bc, options, plan=plan, config_sha256=sha256_json(config.slice(*READS)),
                      source_name=config.prefix, source_sha256=bc_sha256,
                      memo=ProgramMemo(ctx.memo_dir("optimized_program"), ctx.upstream["quantize"].name),
                      threads=True)
    build.write(out / "model.hbm", atomic=False)  # out is a temporary entry folder, committed whole
    log.info("Successfully compile the hbm model")
    (out / "advice.json").write_text(_advice_text(ctx, plan, lambda: advice_json(partition(optimized, plan))))
    # measured as the runtime opens the .hbm for a budget of `jobs` threads: with the threads its plan uses
    used = plan_of(build.manifest).threads_for(options.jobs)
    perf = perf_report(build.program, replace(options, jobs=used), config.prefix,
                       memo=LatencyMemo(ctx.memo_dir("latency")), types=build.tensor_types(),
                       digest=build.program_sha256)
    write_perf_reports(out, "perf", perf, quality=_quality_html(ctx), atomic=False)
    log.info("HBDK hbm perf SUCCESS")
    for line in perf_log_lines(perf, f"{config.prefix}.html"):
        log.info(line)
    return {"removed": [r.to_json() for r in removed], "perf": perf.get("summary", {}),
            "optimize_level": options.optimize_level if hasattr(options, "optimize_level") else None}


@dataclass(frozen=True)
class UpstreamInputs:
    """What the compile stage reads of earlier stages' entries, parsed: the optimized float model, the
    `.bc` with the sha256 of its bytes, and the input specs. Nobody modifies them (`remove_nodes`,
    `build_hbm` and `partition` copy what they change)."""

    optimized: onnx.ModelProto
    bc: onnx.ModelProto
    bc_sha256: str
    specs: Any


def upstream_inputs(ctx: StageContext) -> UpstreamInputs:
    """The stage's `UpstreamInputs`, kept in the warm engine by the files' stat stamps (path, size, mtime,
    ctime, inode): cache entries never change once committed, so a compiler_parameters edit reads the
    same three files as the run before — parsed again only when one of them is another file (digits:
    0.5 ms of a ~5 ms stage; PP-OCRv4 det: the 1.4 MB `.bc` read, parsed and hashed, ~5 ms)."""
    files = (ctx.input("optimize", "model.onnx"), ctx.input("quantize", "model.bc"),
             ctx.input("calibrate", "inputs.json"))
    key = tuple(path_stamp(f) for f in files)
    kept = ctx.engine.warm.get("compile_inputs")
    if kept is not None and kept[0] == key:
        return kept[1]
    bc_bytes = files[1].read_bytes()
    made = UpstreamInputs(onnx.load(str(files[0])), onnx.load_from_string(bc_bytes),
                          hashlib.sha256(bc_bytes).hexdigest(), json.loads(files[2].read_text()))
    ctx.engine.warm["compile_inputs"] = (key, made)
    return made


def _advice_text(ctx: StageContext, plan: QuantPlan, advice: Callable[[], Any]) -> str:
    """`advice.json`'s text: what runs where, from the float model and its plan alone — kept in the warm
    engine for the plan object `stage_plan` gives (one per model file, thresholds and options), so
    a compiler_parameters edit does not partition and dump it again (digits: 0.45 of ~4 ms)."""
    source = ctx.input("optimize", "model.onnx")  # a cache file: it never changes once committed
    st = source.stat()
    key = (str(source), st.st_size, st.st_mtime_ns, id(plan))
    kept = ctx.engine.warm.get("compile_advice")
    if kept is not None and kept[0] == key and kept[1] is plan:
        return kept[2]
    text = json.dumps(advice(), indent=1)
    ctx.engine.warm["compile_advice"] = (key, plan, text)  # the plan held: its id is not reused meanwhile
    return text


def _quality_html(ctx: StageContext) -> str:
    """perf.html's similarity and sensitivity sections: from the report and calibrate entries alone
    (cache folders whose files never change once committed), kept in the warm engine for those two
    entries — a compiler_parameters edit does not read and draw them again."""
    from engine.compile.perf_html import quality_sections
    from engine.report.culprits import load_culprits

    report, calibrate = ctx.upstream.get("report"), ctx.upstream["calibrate"]
    key = (str(report), str(calibrate))
    kept = ctx.engine.warm.get("compile_quality_html")
    if kept is not None and kept[0] == key:
        return kept[1]
    rows = json.loads((report / ROWS_FILE).read_text()) if report else {}
    text = quality_sections(rows.get("nodes", []), rows.get("outputs", []), load_culprits(calibrate))
    ctx.engine.warm["compile_quality_html"] = (key, text)
    return text


# version 5: the measured latency stops after 3 runs once 0.25 s is spent (v2: 20 runs within 10 s)
# version 7: build.config_sha256 is the digest of the compile slice (was the whole config's)
# version 10: nodes onnxruntime made at O2 (unnamed) belong to their float node in the perf report
# version 11: the measured latency stops after 3 runs once 0.1 s is spent (was 0.25 s)
# version 12: "deleted nodes: NAME" once per removed node (an entry told it twice when reused)
# version 13: the .hbm's input spec follows a removed Transpose (layout NHWC with an NCHW shape before)
# version 14: the removed-node .bc keeps no initializer nothing reads
# version 15: O2 full_size_se_scale (squeeze-excitation scales multiplied at full size)
# version 16: full_size_se_scale withdrawn (it hid tensor sizes from the static estimate)
# version 17: the .hbm records its thread plan (.hbm format 1.1, `build.threads`; a static rule, not measured)
STAGE = Stage("compile", 17, run, after=("optimize", "calibrate", "quantize", "report"), reads=READS,
              artefacts={"model.hbm": "{prefix}.hbm", "removed.bc": "{prefix}_quantized_removed_model.bc",
                         "advice.json": "{prefix}_advice.json", "perf.json": "{prefix}.json",
                         "perf.html": "{prefix}.html"},
              describe="deployable .hbm, advice, static performance")
