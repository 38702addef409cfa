"""The stage list, in order (DESIGN §3). Each module declares one `STAGE`."""

from engine.stages import calibrate, compile, optimize, parse, ptq, quantize, report

STAGES = [parse.STAGE, optimize.STAGE, calibrate.STAGE, ptq.STAGE, quantize.STAGE, report.STAGE, compile.STAGE]
