"""The stage list, in order (DESIGN §3). Each module declares one `STAGE`."""

from engine.stages import optimize, parse

STAGES = [parse.STAGE, optimize.STAGE]
