"""compiler_parameters resolved for one march and one model: checked, defaulted, and what each acts on.

The config check (engine.config.rules) already reports most range errors on the YAML; this is the
same check for callers that skip the config (bc recompile, tests, the API), plus the per-model
ones (input_source names). Where each key acts here:

| key | effect |
|---|---|
| optimize_level | which ahead-of-time rewrites the `.hbm` program gets (`engine.compile.optimize`) |
| compile_mode, balance_factor | the static perf plan: how many activations stay on chip (`engine.compile.perf`) |
| core_num | the BPU cores the perf estimate divides the march's peak by |
| max_time_per_fc | perf: the number of BPU function calls a frame is cut into |
| jobs | the thread budget the `.hbm`'s thread plan is decided for, and the measured latency's budget (capped at the machine's cores) |
| advice | perf: layers whose estimated time exceeds their compute-bound time by more than N µs |
| debug | perf: per-layer details in `{prefix}.json` / `.html` |
| input_source | recorded per input in the `.hbm` manifest (pyramid / resizer / ddr) |
| extra_params | recorded |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.config.model import CompilerParameters
from engine.problems import Problem, error, warning
from engine.schema import marches

XP = "compiler_parameters"
COMPILE_MODES = ("latency", "bandwidth", "balance")
# reference §7: which rt types each input_source accepts
SOURCES = {"pyramid": {"nv12", "gray", "yuv420sp_bt601_video", "yuv_bt601_full"},
           "resizer": {"nv12", "gray", "yuv420sp_bt601_video", "yuv_bt601_full"},
           "ddr": {"rgb", "bgr", "yuv444", "yuv444_128", "gray", "featuremap"}}


@dataclass(frozen=True)
class CompileOptions:
    march: str
    compile_mode: str = "latency"
    balance_factor: int = 100  # resolved: latency → 100, bandwidth → 0
    optimize_level: str = "O2"
    core_num: int = 1
    max_time_per_fc: int = 0
    jobs: int = 16
    advice: float = 0.0
    debug: bool = True
    input_source: dict[str, str] = field(default_factory=dict)  # per input, defaults filled in
    extra_params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_source(rt_type: str | None) -> str:
    """Reference §7: pyramid when the rt type is one pyramid accepts, else ddr."""
    return "pyramid" if rt_type in SOURCES["pyramid"] else "ddr"


def resolve(params: CompilerParameters, march: str,
            inputs: Sequence[Mapping[str, Any]] = ()) -> tuple[CompileOptions, list[Problem]]:
    """The options, and the problems (errors mean: do not compile)."""
    problems: list[Problem] = []
    spec = marches().get(march)
    if spec is None:
        problems.append(error("invalid-enum", f"The specified march '{march}' is invalid, the march parameter only "
                                              f"supports values in {sorted(marches())}", ("model_parameters", "march")))
        spec = {}
    mode = params.compile_mode
    if mode not in COMPILE_MODES:
        problems.append(error("invalid-enum", f"Invalid compile model received. {mode} is invalid, it should in list "
                                              f"{list(COMPILE_MODES)}", (XP, "compile_mode")))
        mode = "latency"
    factor = params.balance_factor
    if mode == "balance" and factor is None:
        problems.append(error("balance-factor", "Parameter compile_mode is set to balance, please set balance_factor "
                                                "to use this mode", (XP, "balance_factor")))
    if factor is not None and not (isinstance(factor, int) and 0 <= factor <= 100):
        problems.append(error("out-of-range", f"Invalid balance_factor received: {factor}, value range is 0-100",
                              (XP, "balance_factor")))
        factor = None
    if mode != "balance" or factor is None:
        factor = {"latency": 100, "bandwidth": 0}.get(mode, 50) if mode != "balance" else 50
    level = params.optimize_level
    allowed = spec.get("optimize_level") or ["O0", "O1", "O2", "O3"]
    if level not in ("O0", "O1", "O2", "O3"):
        problems.append(error("invalid-enum", f"The specified optimize_level is invalid, the optimize_level: "
                                              f"'{level}' can only be specified as values in {allowed}",
                              (XP, "optimize_level")))
        level = max(allowed)
    elif level not in allowed:
        problems.append(warning("optimize-level-generation", f"optimize_level {level} is not available on march "
                                                             f"{march} ({allowed}); {max(allowed)} is used",
                                (XP, "optimize_level")))
        level = max(allowed)
    lo, hi = (spec.get("core_num") or [1, 1])[:2]
    if not lo <= params.core_num <= hi:
        problems.append(error("out-of-range", f"Invalid core_num: {params.core_num}, march {march} supports {lo}~{hi}",
                              (XP, "core_num")))
    tlo, thi = (spec.get("max_time_per_fc") or [1000, 4294967295])[:2]
    if params.max_time_per_fc != 0 and not tlo <= params.max_time_per_fc <= thi:
        problems.append(error("out-of-range", f"Invalid max_time_per_fc: {params.max_time_per_fc}, it should be 0 or "
                                              f"in {tlo}~{thi} for march {march}", (XP, "max_time_per_fc")))
    if params.jobs < 1:
        problems.append(error("out-of-range", f"Invalid jobs: {params.jobs}, it should be a positive integer",
                              (XP, "jobs")))
    if params.advice < 0:
        problems.append(error("out-of-range", f"Invalid advice: {params.advice}, it should be 0 or more (µs)",
                              (XP, "advice")))
    sources = _sources(params.input_source, inputs, problems)
    options = CompileOptions(march, mode, int(factor), level, params.core_num, params.max_time_per_fc,
                             max(1, params.jobs), max(0.0, float(params.advice)), bool(params.debug), sources,
                             dict(params.extra_params))
    return options, problems


def _sources(given: Mapping[str, str], inputs: Sequence[Mapping[str, Any]], problems: list[Problem]) -> dict[str, str]:
    rt = {str(s.get("name")): s.get("input_type_rt") or "featuremap" for s in inputs}
    out = {name: default_source(t) for name, t in rt.items()}
    for name, src in (given or {}).items():
        if name == "_default_value":
            continue
        if rt and name not in rt:
            problems.append(error("input-source-name", f"input_source names '{name}', which is not a model input "
                                                       f"({', '.join(rt)})", (XP, "input_source", name)))
            continue
        if src not in SOURCES:
            problems.append(error("invalid-enum", f"The specified input_source is invalid, the input_source: '{src}' "
                                                  f"can only be specified as values in {list(SOURCES)}",
                                  (XP, "input_source", name)))
            continue
        if name in rt and rt[name] not in SOURCES[src]:
            problems.append(error("input-source", f"Wrong input_source received. input type rt : {rt[name]} does not "
                                                  f"support input_source {src}", (XP, "input_source", name)))
            continue
        out[name] = src
    return out
