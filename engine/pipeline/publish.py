"""Publishing: each stage's artefacts copied from its cache entry into working_dir.

working_dir is the user's folder — often the config's own (`working_dir: .`), beside the model and
the calibration data — so this module removes or replaces there only what this tool wrote:
`.hb_cache/published.json` records every artefact it published (file name → sha256 of the bytes
it wrote; a folder artefact → `"folder"`, and the folder carries `FOLDER_MARK`). An artefact this
run does not make (`--skip compile`, sensitivity off, no removed nodes) is removed only while it
still holds what was published, or, with no record (a working_dir from before the record, or its
`.hb_cache` deleted), when it is recognizably one of ours (`.hbm` magic, an ONNX model stamped
`hbcompile.stage`): an old `.hbm` must not stay beside a new `.bc`. A user's other file or folder
that merely has an artefact's name is never removed; a file artefact overwrites a file of its own
name (hb_compile's artefact names are reserved), but never one of the run's inputs (`protected`:
the config, the model files, calibration folders); a folder artefact (the calibration dump)
refuses to replace a folder it did not write.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from engine.pipeline.cache import atomic_copy, atomic_write_text, published_mode
from engine.pipeline.hashing import HashMemo, stat_stamp
from engine.pipeline.recent import Recent
from engine.problems import HbError, error

log = logging.getLogger("hbcompile")
RECORD = "published.json"  # in the cache root: {artefact file name: sha256 | "folder"}
FOLDER_MARK = ".hb_compile_artefact"  # inside a published folder: hb_compile wrote this folder
FOLDER = "folder"
# entry files whose sha256, published files and working_dirs' records a Publisher keeps (the latest used):
# a long-lived daemon publishes a new compile entry per edit, into any number of working_dirs
ENTRY_SHA_KEEP, COPIES_KEEP, RECORDS_KEEP = 1024, 4096, 64
FOLDER_STAMP: tuple[int, ...] = ()  # a published folder is known by its path (replace_folder swaps it whole)


class ArtefactCollisionError(HbError):
    """An artefact would replace an input of the run, or a folder hb_compile did not write."""


class Publisher:
    """Copies artefacts into working_dirs; kept by a warm engine (what it copied, by stat).

    A warm engine publishes after every run, mostly files already in place: each is then one `stat` of
    the published file and of its entry file. An entry file's sha256 is kept by its stat stamp (cache
    entries never change once committed; the hash memo would hash a file written in the last 2 s again),
    and the record by the record file's stamp."""

    def __init__(self, hashes: HashMemo) -> None:
        self.hashes = hashes
        # published artefact -> (cache file, its stamp: size, mtime, ctime, inode); a folder's stamp is FOLDER_STAMP
        self.copied: Recent[str, tuple[str, tuple[int, ...]]] = Recent(COPIES_KEEP)
        self._entry_sha: Recent[str, tuple[tuple[int, ...], str]] = Recent(ENTRY_SHA_KEEP)  # entry file -> (stamp, sha256)
        self._records: Recent[str, tuple[tuple[int, ...], dict[str, str]]] = Recent(RECORDS_KEEP)  # record -> (stamp, it)

    def publish(self, working_dir: Path, cache_root: Path, artefacts: Iterable[tuple[str, Path | None]],
                protected: Iterable[Path] = ()) -> dict[str, Path]:
        """`artefacts`: (file name in working_dir, the entry file or folder to publish there, or None when
        this run does not make it); `protected`: the run's inputs (never overwritten nor removed). Returns
        {name: published path}. Raises OSError when working_dir cannot be written, ArtefactCollisionError
        when an artefact would replace an input, or a folder artefact a folder not ours."""
        record_path = cache_root / RECORD
        before, legacy = self._read_record(record_path)  # legacy: from before the record (or .hb_cache deleted)
        record = dict(before)
        inputs = _Inputs(protected)
        plan: list[tuple[str, Path, Path | None, os.stat_result | None, os.stat_result | None]] = []
        for name, src in artefacts:  # before anything is written: all of this run's artefacts, or none
            dest = working_dir / name
            src_st = _stat(src) if src is not None else None
            dest_st = _stat(dest)
            if src_st is not None and inputs.holds(dest, dest_st):
                raise ArtefactCollisionError(error(
                    "artefact-collision", f"the artefact {name} would overwrite {dest}, an input of this run: "
                    "choose another output_model_file_prefix or working_dir"))
            if src_st is not None and stat.S_ISDIR(src_st.st_mode):
                self._check_folder(src, dest, record)
            plan.append((name, dest, src if src_st is not None else None, src_st, dest_st))
        out: dict[str, Path] = {}
        try:
            for name, dest, src, src_st, dest_st in plan:
                if src is None or src_st is None:
                    self._unpublish(dest, record, inputs, legacy)
                elif stat.S_ISDIR(src_st.st_mode):
                    self._publish_folder(src, dest, record)
                    out[name] = dest
                else:
                    if not self._published_from(dest, src, dest_st, src_st):
                        digest = atomic_copy(src, dest)
                        self._remember_copy(dest, src)  # stat after the rename, which moves the ctime
                        self._keep_sha(src, src_st, digest)
                    record[name] = self._sha(src, src_st)
                    out[name] = dest
        finally:
            if record != before:
                cache_root.mkdir(parents=True, exist_ok=True)
                atomic_write_text(record_path, json.dumps(record, indent=0, sort_keys=True))
                self._remember_record(record_path, record)
        return out

    def _read_record(self, path: Path) -> tuple[dict[str, str], bool]:
        """The record (`RECORD`) and whether there is none; read again only when its stat stamp changed."""
        st = _stat(path)
        if st is None:
            self._records.pop(str(path))
            return {}, True
        kept = self._records.get(str(path))
        if kept is not None and kept[0] == stat_stamp(st):
            return dict(kept[1]), False
        record = _read_record(path)
        self._keep_record(path, st, record)
        return dict(record), False

    def _remember_record(self, path: Path, record: dict[str, str]) -> None:
        st = _stat(path)
        if st is not None:
            self._keep_record(path, st, dict(record))

    def _keep_record(self, path: Path, st: os.stat_result, record: dict[str, str]) -> None:
        self._records.put(str(path), (stat_stamp(st), record))

    def _sha(self, src: Path, st: os.stat_result) -> str:
        """sha256 of an entry file, kept by its stat stamp: entries never change once committed."""
        kept = self._entry_sha.get(str(src))
        if kept is not None and kept[0] == stat_stamp(st):
            return kept[1]
        return self._keep_sha(src, st, self.hashes.file(src))

    def _keep_sha(self, src: Path, st: os.stat_result, digest: str) -> str:
        self._entry_sha.put(str(src), (stat_stamp(st), digest))
        return digest

    def _check_folder(self, src: Path, dest: Path, record: Mapping[str, str]) -> None:
        if self.copied.get(str(dest)) == (str(src), FOLDER_STAMP) and dest.is_dir():
            return
        if (dest.exists() or dest.is_symlink()) and not _ours_folder(dest, record):
            raise ArtefactCollisionError(error(
                "artefact-collision", f"working_dir already has {dest.name} ({dest}), which hb_compile did not "
                f"write; the {dest.name} artefact would replace it: choose another working_dir or move it"))

    def _publish_folder(self, src: Path, dest: Path, record: dict[str, str]) -> None:
        """`dest` becomes `src` (`publish` checked first that it may)."""
        if self.copied.get(str(dest)) == (str(src), FOLDER_STAMP) and dest.is_dir():
            return
        replace_folder(src, dest)
        record[dest.name] = FOLDER
        self.copied.put(str(dest), (str(src), FOLDER_STAMP))

    def _published_from(self, dest: Path, src: Path, st: os.stat_result | None, src_st: os.stat_result) -> bool:
        """Whether `dest` (stat `st`, None when missing) holds `src`'s bytes: this engine copied it from that
        entry (entries never change) and its stamp (size, mtime, ctime, inode) is what the copy left — a write
        in place with the mtime put back changes the ctime —; else compared by content
        when the sizes agree (files written in the last 2 s are hashed again on every look: the hash memo's
        racy window)."""
        if st is None:
            return False
        if self.copied.get(str(dest)) == (str(src), stat_stamp(st)):
            return True
        if st.st_size != src_st.st_size or self.hashes.file(dest) != self._sha(src, src_st):
            return False
        self._remember_copy(dest, src, st)
        return True

    def _remember_copy(self, dest: Path, src: Path, st: os.stat_result | None = None) -> None:
        """`dest` now holds `src`'s bytes: remembered by its stamp so the next publish skips it."""
        self.copied.put(str(dest), (str(src), stat_stamp(st or os.stat(dest))))

    def _unpublish(self, dest: Path, record: dict[str, str], inputs: _Inputs, legacy: bool) -> None:
        """An artefact this run does not make leaves working_dir — when it is still what was published
        there (a folder: marked as ours; with no record at all (`legacy`), a model recognizably ours),
        never an input of the run (`inputs`, resolved) nor a file or folder of the user's with its name."""
        self.copied.pop(str(dest))
        published = record.pop(dest.name, None)
        if not (dest.exists() or dest.is_symlink()):
            return
        target = _resolved(dest)
        if any(p == target or target in p.parents for p in inputs.resolved):
            log.info("kept %s: an input of this run is there", dest)
            return
        if published is None and legacy and dest.is_file() and not dest.is_symlink() and recognizably_ours(dest):
            dest.unlink()  # made by an earlier run before there was a record
        elif published is None:
            return
        elif published == FOLDER and _marked_folder(dest):
            shutil.rmtree(dest)
        elif published != FOLDER and dest.is_file() and not dest.is_symlink() and self.hashes.file(dest) == published:
            dest.unlink()
        else:
            log.info("kept %s: it is not the artefact hb_compile published there (changed or replaced since)", dest)
            return
        log.info("removed %s: this run does not make it", dest.name)


ONNX_STAMP = b"hbcompile.stage"  # the metadata key every ONNX / .bc artefact carries
STAMP_TAIL = 4 << 20  # metadata is serialized after the graph; a .bc's node map puts the stamp ~60 KB (rec) from the end


def recognizably_ours(path: Path) -> bool:
    """A model file an earlier run of this tool wrote, known by its content: a `.hbm` by its magic, an
    ONNX model or `.bc` by the `hbcompile.stage` stamp in its metadata (stored after the graph: the
    file's tail is searched)."""
    # imported here: only a working_dir without a record asks, and the compile package takes ~0.4 s to load
    from engine.compile.hbm import MAGIC

    try:
        with open(path, "rb") as fh:
            if path.suffix == ".hbm":
                return fh.read(len(MAGIC)) == MAGIC
            if path.suffix not in (".onnx", ".bc"):
                return False
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - STAMP_TAIL))
            return ONNX_STAMP in fh.read()
    except OSError:
        return False


class _Inputs:
    """A run's input paths (`publish`'s `protected`), asked whether a working_dir path is one of them: by
    file identity (device, inode: the same file whatever the path, links included) for the inputs that
    exist, by resolved path for any that do not; `resolved` (for an input inside a folder artefact) is
    taken on first use — a run that removes nothing never resolves a path."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)
        self.ids: set[tuple[int, int]] = set()
        self.missing: list[Path] = []
        for p in self.paths:
            st = _stat(p)
            if st is None:
                self.missing.append(_resolved(p))
            else:
                self.ids.add((st.st_dev, st.st_ino))
        self._resolved: set[Path] | None = None

    def holds(self, dest: Path, st: os.stat_result | None) -> bool:
        """Whether `dest` (its `os.stat`, None when it does not exist) is one of the inputs."""
        if st is not None and (st.st_dev, st.st_ino) in self.ids:
            return True
        return bool(self.missing) and _resolved(dest) in self.missing

    @property
    def resolved(self) -> set[Path]:
        if self._resolved is None:
            self._resolved = {_resolved(p) for p in self.paths}
        return self._resolved


def _stat(p: Path) -> os.stat_result | None:
    """`os.stat` (links followed), None when there is nothing there."""
    try:
        return os.stat(p)
    except (OSError, ValueError):
        return None


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except OSError:
        return p.absolute()


def _ours_folder(dest: Path, record: Mapping[str, str]) -> bool:
    return record.get(dest.name) == FOLDER and _marked_folder(dest)


def _marked_folder(dest: Path) -> bool:
    """A real folder (not a link) carrying the mark `replace_folder` leaves."""
    return dest.is_dir() and not dest.is_symlink() and (dest / FOLDER_MARK).is_file()


def _read_record(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}


def replace_folder(src: Path, dest: Path) -> None:
    """`dest` becomes a copy of `src` (marked as hb_compile's: `FOLDER_MARK`): copied beside it first,
    then swapped in by renames."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        (tmp / FOLDER_MARK).write_text("written by hb_compile: removed or replaced by its next runs\n")
        os.chmod(tmp, published_mode())  # after copytree: it copies the entry folder's mode
        if dest.is_dir():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
