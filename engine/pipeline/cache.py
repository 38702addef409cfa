"""Content-addressed stage outputs under `working_dir/.hb_cache/<stage>/<key>/`.

An entry is a folder written under a temporary name and renamed into place, so it is either
complete or absent. `meta.json` lists its files; an entry whose files are missing is a corrupt
entry: logged, removed and treated as a miss.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("hbcompile")
KEEP_PER_STAGE = 4


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Path | None:
        d = self.entry(stage, key)
        meta = d / "meta.json"
        if not meta.is_file():
            return None
        try:
            files = json.loads(meta.read_text())["files"]
            if all((d / f).is_file() for f in files):
                os.utime(d)  # recency for pruning
                return d
        except (OSError, ValueError, KeyError):
            pass
        log.warning("cache entry %s/%s is corrupt; it is removed and recomputed", stage, key[:12])
        shutil.rmtree(d, ignore_errors=True)
        return None

    def new_temp(self, stage: str) -> Path:
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root / stage))

    def commit(self, stage: str, key: str, tmp: Path, result: dict[str, Any] | None) -> Path:
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / "meta.json").write_text(json.dumps({"stage": stage, "key": key, "files": files,
                                                   "result": result or {}}, indent=1, default=str))
        dest = self.entry(stage, key)
        for _ in range(3):
            try:
                os.replace(tmp, dest)  # atomic; refused (ENOTEMPTY / EEXIST) when dest holds an entry
                break
            except OSError:
                if not dest.is_dir():
                    raise
            if self._complete(dest):  # another process committed this key meanwhile: same inputs, keep theirs
                self.discard(tmp)
                break
            shutil.rmtree(dest, ignore_errors=True)  # a torn entry: ours replaces it
        else:
            raise OSError(f"cannot commit cache entry {dest}: it keeps reappearing incomplete")
        self._prune(stage, keep=dest)
        return dest

    @staticmethod
    def _complete(entry: Path) -> bool:
        try:
            return all((entry / f).is_file() for f in json.loads((entry / "meta.json").read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def result(self, entry: Path) -> dict[str, Any]:
        return json.loads((entry / "meta.json").read_text()).get("result", {})

    def _prune(self, stage: str, keep: Path) -> None:
        entries = [p for p in (self.root / stage).iterdir() if p.is_dir() and not p.name.startswith(".tmp-")]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP_PER_STAGE:]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def discard(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- what the last run was made of, for explanations
    def last_parts(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "last_run.json").read_text())
        except (OSError, ValueError):
            return {}

    def save_parts(self, parts: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / "last_run.json", json.dumps(parts, indent=1, default=str))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
