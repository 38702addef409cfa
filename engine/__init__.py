"""hbcompile engine: config → parse → optimize → calibrate → quantize → compile → report.

The engine never imports `hblsp`; editors reach it through `engine.pipeline.run` and the
`Problem` values in `engine.problems`.
"""

__version__ = "0.1.0"
