"""Per-sample statistics on disk, by the content hash of each calibration sample, in one pack file.

The calibrate stage keeps every sample's `SampleStats` under the digest of the bytes it was
computed from, so that after one calibration file changes only that sample runs again (issue #8).
One file per sample cost an open / write / rename per sample and a failed open per sample of a
cold run: 7–10 ms CPU of digits' 40–50 ms statistics pass (32 samples against a 12 ms float pass).
Here the entries live in one pack per memo folder, written once per run:

    memo = StatsMemo(folder)                  # reads the folder's packs: digest → archive bytes
    stats = memo.get(digest)                  # SampleStats, or None (missing or corrupt)
    memo.put(digest, stats)                   # remembered, written by `save`
    memo.save(keep)                           # one pack of exactly the `keep` digests it holds

`save` writes a new pack when the folder's packs are not already exactly the kept entries, then
removes the older packs (and anything else in the folder but another process's fresh temp file).
Entries are each a `SampleStats.to_bytes` archive with its own checksum, so one torn entry is one
sample computed again. A pack is written to a temp name and renamed: a reader sees the old pack or
the new one. Two processes on one folder may remove each other's packs: a lost memo only costs
the forward passes again, as a pruned per-sample file did.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from engine.calibration.stats import SampleStats

log = logging.getLogger("hbcompile")
PACK_SUFFIX = ".hbpack"
PACK_MAGIC = b"HBSPACK\x01"
PACK_FORMAT = "hbcompile.calibration.StatsPack"


def pack_header(sizes: dict[str, int]) -> bytes:
    """`PACK_MAGIC`, the JSON header's length (uint32 LE), the header {format, entries: [[digest,
    offset, length], …]} (offsets from the end of the header); the archives follow in that order."""
    index, offset = [], 0
    for digest, size in sizes.items():
        index.append([digest, offset, size])
        offset += size
    header = json.dumps({"format": PACK_FORMAT, "entries": index}).encode()
    return PACK_MAGIC + len(header).to_bytes(4, "little") + header


def pack_bytes(entries: dict[str, bytes]) -> bytes:
    """A whole pack in memory (`pack_header`, then every archive)."""
    return pack_header({d: len(b) for d, b in entries.items()}) + b"".join(entries.values())


def read_pack(data: bytes) -> dict[str, bytes]:
    """The archives of a pack by digest; ValueError for a foreign or torn header (a torn archive
    is found by its own checksum when it is read)."""
    if data[:len(PACK_MAGIC)] != PACK_MAGIC:
        raise ValueError("not a statistics pack")
    start = len(PACK_MAGIC) + 4
    size = int.from_bytes(data[len(PACK_MAGIC):start], "little")
    try:
        header = json.loads(data[start:start + size].decode())
        if header.get("format") != PACK_FORMAT:
            raise ValueError(f"format {header.get('format')}")
        body = memoryview(data)[start + size:]
        return {str(d): bytes(body[int(o):int(o) + int(n)]) for d, o, n in header["entries"]
                if int(o) + int(n) <= len(body)}
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt statistics pack: {e}") from e


@dataclass
class StatsMemo:
    """One memo folder's entries: read once when built, written once by `save`."""

    folder: Path
    _blobs: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)  # digest → archive (read)
    _spooled: dict[str, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)  # put: (offset, size)
    _spool: BinaryIO | None = field(default=None, init=False, repr=False)
    _packs: list[Path] = field(default_factory=list, init=False, repr=False)
    _added: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            names = sorted(p for p in self.folder.iterdir() if p.name.endswith(PACK_SUFFIX))
        except OSError:  # not there yet, or pruned meanwhile
            names = []
        for path in names:
            try:
                found = read_pack(path.read_bytes())
            except (OSError, ValueError) as e:  # replaced meanwhile, or damaged: its samples run again
                log.debug(f"statistics memo {path.name} not read: {e}")
                continue
            self._packs.append(path)
            for digest, blob in found.items():
                self._blobs.setdefault(digest, blob)

    def get(self, digest: str) -> SampleStats | None:
        """The statistics kept for `digest`, or None when there are none or they do not read back."""
        blob = self._blob(digest)
        if blob is None:
            return None
        try:
            return SampleStats.from_bytes(blob)
        except ValueError as e:  # a torn or altered entry: computed again
            log.debug(f"statistics memo entry {digest[:12]} not read: {e}")
            self._blobs.pop(digest, None)
            self._spooled.pop(digest, None)
            return None

    def put(self, digest: str, stats: SampleStats) -> None:
        """Remember `stats` for `save`. Its archive goes to an anonymous spool file at once, not into
        memory: a run's new entries would otherwise grow with the number of samples (digits at 128
        samples: +6 MB; PP-OCRv4 det ~1 MB per sample), which the statistics pass must not."""
        blob = stats.to_bytes()
        try:
            if self._spool is None:
                self._spool = tempfile.TemporaryFile()
            offset = self._spool.seek(0, io.SEEK_END)
            self._spool.write(blob)
            self._spooled[digest] = (offset, len(blob))
            self._blobs.pop(digest, None)
        except OSError:  # no temp space: keep it in memory
            self._blobs[digest] = blob
        self._added = True

    def _blob(self, digest: str) -> bytes | None:
        if digest in self._spooled:
            offset, size = self._spooled[digest]
            self._spool.seek(offset)
            return self._spool.read(size)
        return self._blobs.get(digest)

    def save(self, keep: Iterable[str]) -> Path | None:
        """Write the kept entries it holds as one pack, remove the folder's other files (old packs,
        per-sample files, stale temp files); nothing is written when the one pack there already
        holds exactly them. Returns the pack written, if any. A failure only loses the memo."""
        from engine.pipeline.cache import memo_temp, prune_memo_files

        held = set(self._blobs) | set(self._spooled)
        kept = [d for d in dict.fromkeys(keep) if d in held]
        unchanged = not self._added and len(self._packs) == 1 and set(kept) == held
        if unchanged or not kept:  # nothing to write: only strays (per-sample files, dead temp files) go
            prune_memo_files(self.folder, {self._packs[0].name} if unchanged else set())
            return None
        tmp = memo_temp(self.folder, f"pack{PACK_SUFFIX}")
        try:  # streamed: one archive in memory at a time
            self.folder.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(tmp, "wb") as fh:
                sizes = {d: (self._spooled[d][1] if d in self._spooled else len(self._blobs[d])) for d in kept}
                head = pack_header(sizes)
                fh.write(head)
                digest.update(head)
                for d in kept:
                    blob = self._blob(d)
                    fh.write(blob)
                    digest.update(blob)
            path = self.folder / f"{digest.hexdigest()[:32]}{PACK_SUFFIX}"
            tmp.replace(path)
        except OSError as e:
            log.debug(f"statistics memo not saved: {e}")
            tmp.unlink(missing_ok=True)
            return None
        prune_memo_files(self.folder, {path.name})
        self._packs, self._added = [path], False
        return path


__all__ = ["PACK_SUFFIX", "StatsMemo", "pack_bytes", "pack_header", "read_pack"]
