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

A warm engine also keeps the statistics it decoded or computed (`DecodedStats`, one memo folder's,
within a byte budget): after one of 32 calibration files changed, decoding the other 31 archives
was 8.6 ms each on PP-OCRv4 det 640 (0.27 CPU s, half of the warm statistics step). An entry is
served from there only while the pack still holds the very archive it came from (same size and
CRC-32), so a damaged or replaced entry is decoded, and computed again, as without it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from engine.calibration.stats import HELD_BUDGET, SampleStats, TensorStats

log = logging.getLogger("hbcompile")
PACK_SUFFIX = ".hbpack"
PACK_MAGIC = b"HBSPACK\x01"
PACK_FORMAT = "hbcompile.calibration.StatsPack"
MEMORY_BYTES = 2 << 20  # archives of one run held in memory before they go to the spool file (`StatsMemo.put`)


def pack_header(sizes: dict[str, int]) -> bytes:
    """`PACK_MAGIC`, the JSON header's length (uint32 LE), the header {format, entries: [[digest,
    offset, length], …]} (offsets from the end of the header); the archives follow in that order."""
    index, offset = [], 0
    for digest, size in sizes.items():
        index.append([digest, offset, size])
        offset += size
    header = json.dumps({"format": PACK_FORMAT, "entries": index}).encode()
    return PACK_MAGIC + len(header).to_bytes(4, "little") + header


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
class DecodedStats:
    """Per-sample statistics already in memory, by digest, for one memo folder at a time: what a warm
    engine keeps between calibrate runs. Each entry carries the size and CRC-32 of the archive it
    stands for; at most `budget` histogram bytes are kept (beyond, samples are decoded per run, as
    the stage packs them: memory must not grow with the number of samples)."""

    budget: int = HELD_BUDGET
    folder: Path | None = None
    entries: dict[str, tuple[tuple[int, int], SampleStats]] = field(default_factory=dict)
    nbytes: int = 0

    def use(self, folder: Path) -> None:
        """Start holding `folder`'s entries (another folder's are dropped: one model at a time)."""
        if folder != self.folder:
            self.folder, self.entries, self.nbytes = folder, {}, 0

    def get(self, digest: str, archive: tuple[int, int]) -> SampleStats | None:
        hit = self.entries.get(digest)
        return hit[1] if hit is not None and hit[0] == archive else None

    def add(self, digest: str, archive: tuple[int, int], stats: Mapping[str, TensorStats]) -> None:
        """Keep `stats` (a compact `SampleStats`; a packed one is not worth holding decoded) if it fits."""
        if not isinstance(stats, SampleStats):
            return
        self.drop(digest)
        size = sum(s.hist.nbytes for s in stats.tensors.values())
        if self.nbytes + size <= self.budget:
            self.entries[digest] = (archive, stats)
            self.nbytes += size

    def drop(self, digest: str) -> None:
        hit = self.entries.pop(digest, None)
        if hit is not None:
            self.nbytes -= sum(s.hist.nbytes for s in hit[1].tensors.values())

    def keep_only(self, digests: set[str]) -> None:
        for digest in [d for d in self.entries if d not in digests]:
            self.drop(digest)


def archive_key(blob: bytes) -> tuple[int, int]:
    """What identifies an archive's bytes for `DecodedStats`: its size and CRC-32."""
    return len(blob), zlib.crc32(blob)


@dataclass
class StatsMemo:
    """One memo folder's entries: read once when built, written once by `save`. `decoded`: a warm
    engine's `DecodedStats`, which `get` serves from and `remember` fills."""

    folder: Path
    decoded: DecodedStats | None = None
    _blobs: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)  # digest → archive (read)
    _spooled: dict[str, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)  # put: (offset, size)
    _spool: BinaryIO | None = field(default=None, init=False, repr=False)
    _packs: list[Path] = field(default_factory=list, init=False, repr=False)
    _added: bool = field(default=False, init=False, repr=False)
    _put_keys: dict[str, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    _in_memory: int = field(default=0, init=False, repr=False)  # bytes of `put` archives held in `_blobs`

    def __post_init__(self) -> None:
        if self.decoded is not None:
            self.decoded.use(self.folder)
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
        key = archive_key(blob) if self.decoded is not None else None
        if key is not None and (found := self.decoded.get(digest, key)) is not None:
            return found
        try:
            stats = SampleStats.from_bytes(blob)
        except ValueError as e:  # a torn or altered entry: computed again
            log.debug(f"statistics memo entry {digest[:12]} not read: {e}")
            self._blobs.pop(digest, None)
            self._spooled.pop(digest, None)
            if self.decoded is not None:
                self.decoded.drop(digest)
            return None
        if key is not None:
            self._put_keys[digest] = key
        return stats

    def remember(self, digest: str, held: Mapping[str, TensorStats]) -> None:
        """Keep `held` (the form the caller holds of the statistics of `digest`, which `put` or `get`
        just handled) in `decoded` for the next run of a warm engine: one copy, not a second."""
        key = self._put_keys.get(digest)
        if self.decoded is not None and key is not None:
            self.decoded.add(digest, key, held)

    def put(self, digest: str, stats: SampleStats) -> None:
        """Remember `stats` for `save`. Its archive stays in memory while a run's new archives take at
        most `MEMORY_BYTES`, beyond that it goes to an anonymous spool file at once: a run's new entries
        would otherwise grow with the number of samples (digits at 128 samples: +6 MB; PP-OCRv4 det
        ~1 MB per sample), which the statistics pass must not. The spool's file, writes and reads back
        were a fifth of digits' memo work for 32 samples (1.5 MB), which now stay in memory."""
        blob = stats.to_bytes()
        if self.decoded is not None:
            self._put_keys[digest] = archive_key(blob)
        if self._spool is None and self._in_memory + len(blob) <= MEMORY_BYTES:
            self._in_memory += len(blob)
            self._blobs[digest] = blob  # nothing is spooled before the spool exists
            self._added = True
            return
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
        if self.decoded is not None:
            self.decoded.keep_only(set(kept))
        unchanged = not self._added and len(self._packs) == 1 and set(kept) == held
        if unchanged or not kept:  # nothing to write: only strays (per-sample files, dead temp files) go
            prune_memo_files(self.folder, {self._packs[0].name} if unchanged else set())
            return None
        tmp = memo_temp(self.folder, f"pack{PACK_SUFFIX}")
        try:  # streamed: one archive in memory at a time
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                sizes = {d: (self._spooled[d][1] if d in self._spooled else len(self._blobs[d])) for d in kept}
                head = pack_header(sizes)
                fh.write(head)
                for d in kept:
                    fh.write(self._blob(d))
            # named by its header (which samples, how many bytes each): an entry's bytes follow from its sample's
            # digest in this folder (model, tensors and format are the folder's key), so the header names the
            # content without hashing every archive (PP-OCRv4 det: 21 MB, ~11 ms of a warm re-run's 19 ms save)
            path = self.folder / f"{hashlib.sha256(head).hexdigest()[:32]}{PACK_SUFFIX}"
            tmp.replace(path)
        except OSError as e:
            log.debug(f"statistics memo not saved: {e}")
            tmp.unlink(missing_ok=True)
            return None
        prune_memo_files(self.folder, {path.name})
        self._packs, self._added = [path], False
        return path


__all__ = ["PACK_SUFFIX", "DecodedStats", "StatsMemo", "archive_key", "pack_header", "read_pack"]
