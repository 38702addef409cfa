"""The model summary blocks hb_compile logs (reference §12.7), built from a finished RunReport."""

from __future__ import annotations

import platform
from typing import Any

from engine import __version__
from engine.config import Config


def _fmt(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, (list, tuple)):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + ","
    return str(v)


def deps_block() -> list[str]:
    import numpy
    import onnx
    import onnxruntime

    return ["############# model deps info #############",
            f"hb_compile version   : {__version__} (hbcompile)",
            f"onnx version         : {onnx.__version__}",
            f"onnxruntime version  : {onnxruntime.__version__}",
            f"numpy version        : {numpy.__version__}",
            f"python version       : {platform.python_version()}"]


def config_blocks(config: Config, inputs: list[dict[str, Any]]) -> list[str]:
    mp, cp, xp = config.model, config.calibration, config.compiler
    lines = ["############# model_parameters info #############"]
    if mp.onnx_model:
        lines.append(f"onnx_model           : {mp.onnx_model}")
    else:
        lines += [f"caffe_model          : {mp.caffe_model}", f"prototxt             : {mp.prototxt}"]
    lines += [f"BPU march            : {mp.march}",
              f"layer_out_dump       : {mp.layer_out_dump}",
              f"working dir          : {mp.working_dir}",
              f"output_model_file_prefix: {mp.output_model_file_prefix}"]
    for spec in inputs:
        lines += [f"---------input info : {spec['name']} ---------",
                  f"input_name           : {spec['name']}",
                  f"input_type_rt        : {spec['input_type_rt']}",
                  f"input_space&range    : {spec['input_space_and_range']}",
                  f"input_layout_rt      : {spec['input_layout_rt']}",
                  f"input_type_train     : {spec['input_type_train']}",
                  f"input_layout_train   : {spec['input_layout_train']}",
                  f"norm_type            : {spec['norm_type']}",
                  f"input_shape          : {'x'.join(map(str, spec['shape']))}",
                  f"mean_value           : {_fmt(spec['mean_value'])}",
                  f"scale_value          : {_fmt(spec['scale_value'])}",
                  f"std_value            : {_fmt(spec['std_value'])}"]
        lines.append("---------input info : end ---------")
    dirs = ";".join(str(d) for d in cp.cal_data_dir) or "None"
    lines += ["############# calibration_parameters info #############",
              f"cal_data_dir         : {dirs}",
              f"cal_data_type        : {';'.join(t or 'auto' for t in cp.cal_data_type) or 'auto'}",
              f"preprocess_on        : {cp.preprocess_on}",
              f"calibration_type     : {cp.calibration_type}",
              f"max_percentile       : {cp.max_percentile}",
              f"per_channel          : {cp.per_channel}",
              f"optimization         : {','.join(cp.optimization) or 'None'}",
              "############# compiler_parameters info #############",
              f"debug                : {xp.debug}",
              f"compile_mode         : {xp.compile_mode}",
              f"balance_factor       : {xp.balance_factor}",
              f"optimize_level       : {xp.optimize_level}",
              f"core_num             : {xp.core_num}",
              f"max_time_per_fc      : {xp.max_time_per_fc}",
              f"jobs                 : {xp.jobs}",
              f"advice               : {xp.advice}",
              f"input-source         : {xp.input_source or 'auto'}"]
    return lines


def memory_block(stage_rss: dict[str, float | None]) -> list[str]:
    """Peak RSS after each stage; None: the stage was reused (no work, no memory in this run)."""
    lines = ["############# memory info #############"]
    for stage, mb in stage_rss.items():
        lines.append(f"{stage:<20} : " + (f"peak RSS {mb:.1f} MB" if mb is not None else "reused (no work in this run)"))
    return lines
