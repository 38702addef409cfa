"""What a run did: per stage ran / reused / failed and why, artefacts, timings, problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.problems import Problem, errors


@dataclass
class StageRun:
    name: str
    status: str  # ran | reused | failed | cancelled
    reason: str = ""
    seconds: float = 0.0
    key: str = ""
    peak_rss_mb: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (all its threads) while the stage ran

    def line(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.name}: {self.status}{why} [{self.seconds:.2f}s]"


@dataclass
class RunReport:
    config_path: Path
    config: Any = None  # engine.config.Config once it loaded
    stages: list[StageRun] = field(default_factory=list)
    artefacts: dict[str, Path] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time over the run: on a shared machine, the steadier clock
    until: str | None = None

    @property
    def ok(self) -> bool:
        return not errors(self.problems) and all(s.status in ("ran", "reused") for s in self.stages)

    @property
    def cancelled(self) -> bool:
        return any(s.status == "cancelled" for s in self.stages)

    def stage(self, name: str) -> StageRun | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.stages if s.status == "ran"]

    @property
    def reused(self) -> list[str]:
        return [s.name for s in self.stages if s.status == "reused"]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": str(self.config_path),
            "ok": self.ok,
            "seconds": round(self.seconds, 4),
            "cpu_seconds": round(self.cpu_seconds, 4),
            "stages": [s.__dict__ for s in self.stages],
            "artefacts": {k: str(v) for k, v in self.artefacts.items()},
            "problems": [{"code": p.code, "severity": p.severity.label, "message": p.message,
                          "path": list(p.path), "file": p.file,
                          "span": p.span.__dict__ if p.span else None} for p in self.problems],
            "results": self.results,
        }
