"""A stage declares its name, version, upstream stages, config slice and input files (DVC-style).

The key is computed from the declaration, so a read the stage forgot to declare is a visible
omission rather than a hidden cache bug:

    key = sha256(canonical_json({stage, version, slice, files: sorted (path, sha256), upstream keys}))
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.pipeline.hashing import canonical_json, sha256_json

if TYPE_CHECKING:
    from engine.config import Config
    from engine.pipeline.engine import Engine


class Cancelled(Exception):
    """The run was cancelled between or inside stages (an editor change superseded it)."""


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    fn: Callable[[StageContext], dict[str, Any] | None]
    after: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # dotted config keys / sections this stage reads
    files: Callable[[Config], list[Path]] = lambda config: []
    extra: Callable[[Config], dict[str, Any]] = lambda config: {}  # e.g. pass list signature
    artefacts: dict[str, str] = field(default_factory=dict)  # cache file -> working_dir name template
    describe: str = ""


@dataclass(frozen=True)
class KeyParts:
    """What a key is made of, kept so a later run can say *why* a stage re-ran."""

    stage: str
    version: int
    slice: dict[str, Any]
    files: dict[str, str]
    upstream: dict[str, str]
    extra: dict[str, Any]

    @property
    def key(self) -> str:
        return sha256_json({"stage": self.stage, "version": self.version, "slice": self.slice,
                            "files": sorted(self.files.items()), "upstream": self.upstream, "extra": self.extra})

    def as_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "version": self.version, "slice": self.slice, "files": self.files,
                "upstream": self.upstream, "extra": self.extra}


def explain(new: KeyParts, old: dict[str, Any] | None) -> str:
    """Why `new` differs from the previous run's parts, in a phrase a person reads."""
    if old is None:
        return "no earlier run"
    reasons = []
    if old.get("version") != new.version:
        reasons.append(f"stage version {old.get('version')} → {new.version}")
    changed_up = [k for k, v in new.upstream.items() if old.get("upstream", {}).get(k) != v]
    if changed_up:
        reasons.append(f"upstream {', '.join(changed_up)} changed")
    fresh = json.loads(canonical_json(new.as_json()))  # the old parts came back from JSON: compare like with like
    old_slice, new_slice = old.get("slice", {}), fresh["slice"]
    changed_keys = sorted(k for k in set(new_slice) | set(old_slice) if new_slice.get(k) != old_slice.get(k))
    if changed_keys:
        reasons.append("config changed: " + ", ".join(changed_keys))
    old_files = old.get("files", {})
    if old_files != new.files:
        total = len(new.files)
        changed = sum(1 for p, h in new.files.items() if old_files.get(p) != h)
        removed = sum(1 for p in old_files if p not in new.files)
        what = "input files" if new.stage != "calibrate" else "calibration files"
        part = f"{changed} of {total} {what} changed"
        if removed:
            part += f", {removed} removed"
        reasons.append(part)
    if old.get("extra") != fresh["extra"]:
        reasons.append("implementation changed")
    return "; ".join(reasons) or "cache entry missing"


@dataclass
class StageContext:
    """What a stage function may use: its config, upstream outputs and a folder to write into."""

    stage: Stage
    config: Config
    out_dir: Path
    upstream: dict[str, Path]
    engine: Engine
    key: str
    cancel: threading.Event | None = None
    progress: Callable[[str, float | None], None] | None = None
    log: Any = None

    def input(self, stage: str, name: str) -> Path:
        return self.upstream[stage] / name

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(self.stage.name)

    def report(self, message: str, fraction: float | None = None) -> None:
        self.check_cancel()  # every progress report is a point where a superseded run may stop
        if self.progress is not None:
            self.progress(message, fraction)

    def memo_dir(self, name: str) -> Path:
        """A folder shared across runs for finer-grained caches (e.g. per-sample statistics)."""
        d = self.engine.cache_root(self.config) / "memo" / name
        if not d.is_dir():  # one stat when it is there (mkdir with exist_ok: a failed mkdir and a stat)
            d.mkdir(parents=True, exist_ok=True)
        return d
