"""The `.hbm` container: one self-contained, versioned, checksummed file holding the deployable model.

Layout (all integers little-endian; docs/formats.md, section ``.hbm``)::

    offset  size  field
    0       8     magic  b"\\x89HBM\\r\\n\\x1a\\n"   (PNG-style: catches text-mode and 7-bit transfers)
    8       2     format version (major)          readers refuse a major they do not know
    10      2     format version (minor)          additions only; readers ignore unknown sections
    12      4     section count n
    16      32    SHA-256 of the section table
    48      n×64  section table, one entry per section:
                    16 bytes name (ASCII, NUL padded) · 8 offset · 8 length · 32 SHA-256 of the bytes
    …             section bytes, in table order, each at its offset

Sections of version 1.0: ``manifest`` (UTF-8 JSON: march, input / output specs, removed-node
parameters, build info) and ``program`` (the integer program, ONNX protobuf bytes). Version 1.1
adds the manifest's ``build.threads``: the program's thread plan (`engine.runtime.threads`), which
the runtime reads to choose how many threads of its budget to use; a 1.0 file has none and gets the
whole budget. A damaged file
is a `ModelError` that says what is wrong — not an .hbm (magic), a newer format (version),
truncated (the header, the table or a section runs past the end), or which section's checksum
does not match — never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from engine.problems import ModelError, error

MAGIC = b"\x89HBM\r\n\x1a\n"
FORMAT_VERSION = (1, 1)
_HEAD = struct.Struct("<8sHHI32s")  # magic, major, minor, section count, table sha256
_ENTRY = struct.Struct("<16sQQ32s")  # name, offset, length, sha256
MANIFEST, PROGRAM = "manifest", "program"
REQUIRED = (MANIFEST, PROGRAM)
MAX_SECTIONS = 64


@dataclass(frozen=True)
class Hbm:
    """A read `.hbm`: its manifest, its program bytes, the format version and every section."""

    manifest: dict[str, Any]
    program: bytes
    version: tuple[int, int]
    sections: dict[str, bytes] = field(default_factory=dict, repr=False)
    path: Path | None = None

    def model(self) -> onnx.ModelProto:
        model = onnx.ModelProto()
        try:
            model.ParseFromString(self.program)
        except Exception:  # protobuf's DecodeError: checksums matched, so the writer stored bad bytes
            raise _bad(self.path, "hbm-program", "its program section is not an ONNX model") from None
        return model


def _bad(path: Path | str | None, code: str, what: str) -> ModelError:
    where = f"'{path}'" if path is not None else "the .hbm data"
    return ModelError(error(code, f"Cannot read {where}: {what}"))


def encode_hbm(program: bytes | onnx.ModelProto, manifest: dict[str, Any],
               extra: dict[str, bytes] | None = None, program_sha256: str | None = None) -> bytes:
    """The file's bytes: `program` (ONNX) and `manifest` (JSON-serialisable) plus `extra` sections.
    `program_sha256`: the hex sha256 of the program bytes when the caller has it (the manifest's)."""
    if isinstance(program, onnx.ModelProto):
        program = program.SerializeToString()
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
    sections = {MANIFEST: manifest_bytes, PROGRAM: bytes(program), **(extra or {})}
    if len(sections) > MAX_SECTIONS:
        raise ValueError(f"an .hbm holds at most {MAX_SECTIONS} sections")
    offset = _HEAD.size + _ENTRY.size * len(sections)
    table = b""
    for name, data in sections.items():
        raw = name.encode("ascii")
        if not raw or len(raw) > 16 or b"\0" in raw:
            raise ValueError(f"section name {name!r} must be 1-16 ASCII characters")
        digest = bytes.fromhex(program_sha256) if name == PROGRAM and program_sha256 else hashlib.sha256(data).digest()
        table += _ENTRY.pack(raw, offset, len(data), digest)
        offset += len(data)
    head = _HEAD.pack(MAGIC, *FORMAT_VERSION, len(sections), hashlib.sha256(table).digest())
    return head + table + b"".join(sections.values())


def write_hbm(path: str | Path, program: bytes | onnx.ModelProto, manifest: dict[str, Any],
              extra: dict[str, bytes] | None = None, atomic: bool = True, program_sha256: str | None = None) -> Path:
    """Write atomically (temp file in the same folder, then `os.replace`): never a partial .hbm.
    `atomic` False: straight into `path`, for a folder that is itself put in place whole (a stage's
    cache entry) — one file operation less. `program_sha256`: as `encode_hbm` takes it."""
    from engine.pipeline.cache import atomic_write_bytes

    path = Path(path)
    data = encode_hbm(program, manifest, extra, program_sha256)
    if atomic:
        atomic_write_bytes(path, data)
    else:
        path.write_bytes(data)
    return path


def read_hbm(path: str | Path) -> Hbm:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(error("hbm-missing", f"Can not find the .hbm file: '{path}'")) from None
    except OSError as e:
        raise ModelError(error("hbm-unreadable", f"Cannot read '{path}': {e.strerror or e}")) from None
    return decode_hbm(data, path)


def decode_hbm(data: bytes, path: str | Path | None = None) -> Hbm:
    if len(data) < len(MAGIC) and MAGIC.startswith(data):
        raise _bad(path, "hbm-truncated", f"the file is truncated: {len(data)} bytes" + (" (empty)" if not data else ""))
    if not data.startswith(MAGIC):
        raise _bad(path, "hbm-magic", "it is not an .hbm file (bad magic bytes "
                                      f"{data[:len(MAGIC)]!r}, expected {MAGIC!r})")
    if len(data) < _HEAD.size:
        raise _bad(path, "hbm-truncated", f"the file is truncated: {len(data)} bytes, shorter than the "
                                          f"{_HEAD.size}-byte header")
    _, major, minor, count, table_sha = _HEAD.unpack_from(data)
    if major != FORMAT_VERSION[0]:
        raise _bad(path, "hbm-version", f"format version {major}.{minor} is not supported (this hbcompile reads "
                                        f"version {FORMAT_VERSION[0]}.x); rebuild it with this hbcompile")
    if count > MAX_SECTIONS:
        raise _bad(path, "hbm-corrupt", f"the header claims {count} sections (at most {MAX_SECTIONS}): "
                                        "the header is damaged")
    table_end = _HEAD.size + _ENTRY.size * count
    if len(data) < table_end:
        raise _bad(path, "hbm-truncated", f"the file is truncated inside its section table ({len(data)} of at "
                                          f"least {table_end} bytes)")
    table = data[_HEAD.size:table_end]
    if hashlib.sha256(table).digest() != table_sha:
        raise _bad(path, "hbm-checksum", "checksum mismatch in section 'table' (the section table is damaged)")
    sections: dict[str, bytes] = {}
    for i in range(count):
        raw, offset, length, sha = _ENTRY.unpack_from(table, i * _ENTRY.size)
        name = raw.rstrip(b"\0").decode("ascii", errors="replace")
        if offset < table_end or offset + length > len(data):
            raise _bad(path, "hbm-truncated", f"the file is truncated: section '{name}' needs bytes "
                                              f"{offset}..{offset + length}, the file has {len(data)}")
        body = data[offset:offset + length]
        if hashlib.sha256(body).digest() != sha:
            raise _bad(path, "hbm-checksum", f"checksum mismatch in section '{name}' (its bytes are damaged)")
        sections[name] = body
    missing = [s for s in REQUIRED if s not in sections]
    if missing:
        raise _bad(path, "hbm-corrupt", f"section(s) {', '.join(missing)} missing")
    try:
        manifest = json.loads(sections[MANIFEST].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, "hbm-manifest", f"its manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise _bad(path, "hbm-manifest", "its manifest is not a JSON object")
    return Hbm(manifest, sections[PROGRAM], (major, minor), sections, Path(path) if path is not None else None)


def is_hbm(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
