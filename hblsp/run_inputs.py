"""What a run of a config reads from disk, by content: the fingerprint the watcher compares.

A run reads the config text and every stage's input files (the model, the calibration samples,
a thresholds file…; each stage declares them, `engine.stages`); a new file dropped into a
calibration folder is read too. `read_inputs` hashes all of them through the engine's
`HashMemo` (only files whose size or mtime changed are read again), so "did anything a run
reads change?" is answered by content: a touch, or a save that writes the same bytes, changes
nothing and runs nothing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import load_config_text
from engine.pipeline.hashing import HashMemo

MISSING = "missing"


def norm(path: str | Path) -> Path:
    """Absolute, with `..` resolved by name (as the watcher reports paths), symlinks kept."""
    return Path(os.path.abspath(path))


@dataclass(frozen=True)
class RunInputs:
    config: Path
    files: dict[str, str] = field(default_factory=dict)  # absolute path → sha256 (config text included)
    folders: tuple[Path, ...] = ()  # folders whose every file is an input (cal_data_dir)
    ok: bool = True  # the config loaded without errors

    def dirs(self) -> set[Path]:
        """The folders to watch: each input file's folder and each input folder."""
        return {Path(p).parent for p in self.files} | set(self.folders)

    def concerns(self, path: Path) -> bool:
        """Would a change to `path` change what a run reads? (dot files are never samples)"""
        return str(path) in self.files or (path.parent in self.folders and not path.name.startswith("."))

    def changed(self, other: RunInputs | None) -> list[str]:
        """Paths whose content differs from `other` (added and removed files included)."""
        if other is None:
            return sorted(self.files)
        return sorted(p for p in set(self.files) | set(other.files) if self.files.get(p) != other.files.get(p))


def _hash(hashes: HashMemo, path: Path) -> str:
    try:
        return hashes.file(path) if path.is_file() else MISSING
    except OSError:
        return MISSING


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def read_inputs(hashes: HashMemo, config_path: Path, text: str | None = None) -> RunInputs:
    """The inputs of a run of `config_path` with `text` (None: the file's own text)."""
    from engine.stages import STAGES

    config_path = norm(config_path)
    if text is None:
        try:
            text = config_path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError:
            return RunInputs(config_path, {str(config_path): MISSING}, ok=False)
    files = {str(config_path): text_hash(text)}
    loaded = load_config_text(text, config_path.parent.resolve(), str(config_path), path=config_path)
    if loaded.config is None:
        return RunInputs(config_path, files, ok=False)
    config = loaded.config
    for stage in STAGES:
        try:
            paths = stage.files(config)
        except OSError:  # a folder vanished while it was listed: the next event lists it again
            paths = []
        for p in paths:
            p = norm(p)
            files[str(p)] = _hash(hashes, p)
    folders = tuple(norm(d) for d in config.calibration.cal_data_dir if d is not None)
    return RunInputs(config_path, files, folders, ok=True)
