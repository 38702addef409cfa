"""Stages + content-keyed cache: `run(config_path, until=None) -> RunReport` (DESIGN §3)."""

from engine.pipeline.engine import Engine, default_engine, run
from engine.pipeline.preload import preload
from engine.pipeline.report import RunReport, StageRun
from engine.pipeline.stage import Cancelled, Stage, StageContext

__all__ = ["Cancelled", "Engine", "RunReport", "Stage", "StageContext", "StageRun", "default_engine", "preload", "run"]
