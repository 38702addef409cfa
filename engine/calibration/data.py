"""Calibration samples: one folder per model input, one file per sample, read lazily.

Files are matched across inputs by position after sorting each folder by file name (hidden files
and subfolders are ignored). A sample is the tensor fed to the float model *before* mean/scale
(train view, DESIGN §6), in the input's shape (`input_shape`; with batch N > 1 each file holds
N×C×H×W). Formats (reference §6.2, §15):

- ``.npy`` — read with ``allow_pickle=False``; any numeric dtype, cast to float32;
- images (``.jpg .jpeg .png .bmp``) when ``preprocess_on`` — read with Pillow in the train colour
  order (rgb / bgr / gray / yuv444), resized to the input H×W, laid out per the layout, 0–255;
- anything else — raw ``numpy.tofile`` bytes read with `dtype` (``cal_data_type``); without one,
  a folder name ending in ``_f32`` means float32, else uint8 (as hb_mapper does).

Each sample has a content hash (sha256 of its files' bytes, combined in input order) so the
calibrate stage can cache statistics per sample. The files' sha256 come from the process's file
hash memo (`engine.pipeline.hashing.shared_hashes`), the one the stage key was computed with: a
warm engine reads an unchanged file for neither (PP-OCRv4 det, 32 uint8 .npy samples of 1.2 MB:
0.027 CPU s of reading and hashing on every calibrate run before, 0.001 s now; 4× that for float32
samples). Every bad file is a `CalibrationDataError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.problems import CalibrationDataError, error, name_list

if TYPE_CHECKING:
    from engine.config.inputs import InputSpec

CP = "calibration_parameters"
log = logging.getLogger("hbcompile")
RAW_DTYPES = ("uint8", "float32", "int8", "int16", "int32")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# files a calibration folder holds beside its samples (a README, labels, the script that made them): never a
# sample (raw samples are .bin / .rgb / .nv12 / .gray / no suffix ...), left out with a warning naming them
NOT_SAMPLE_SUFFIXES = (".txt", ".md", ".rst", ".json", ".yaml", ".yml", ".csv", ".tsv", ".xml", ".html", ".log",
                       ".py", ".sh", ".ipynb", ".ini", ".cfg", ".toml")


@dataclass(frozen=True)
class CalibrationSource:
    """Where and how to read one model input's calibration samples."""

    input_name: str
    dir: Path
    shape: tuple[int, ...]
    dtype: str | None = None  # cal_data_type for raw files; None: inferred from the folder name
    layout: str | None = None  # input_layout_train (NCHW / NHWC), used for images
    preprocess_on: bool = False
    type_train: str = "rgb"  # colour order of decoded images: rgb / bgr / gray / yuv444

    @property
    def raw_dtype(self) -> str:
        """The dtype raw (non-.npy) files are read with: explicit, else ``_f32`` → float32, else uint8."""
        if self.dtype:
            return self.dtype
        return "float32" if Path(self.dir).name.endswith("_f32") else "uint8"


def source_for_input(spec: InputSpec, preprocess_on: bool = False) -> CalibrationSource:
    """The calibration source of one resolved model input (`engine.config.inputs.InputSpec`)."""
    if spec.cal_data_dir is None:
        raise ValueError(f"input '{spec.name}' has no cal_data_dir")
    return CalibrationSource(spec.name, Path(spec.cal_data_dir), tuple(spec.shape), spec.cal_data_type,
                             spec.layout_train, preprocess_on, spec.type_train)


def _fail(code: str, message: str, item: int | None = None, file: Path | None = None) -> CalibrationDataError:
    data = {} if item is None else {"item": item}
    if file is not None:
        data["file"] = str(file)
    return CalibrationDataError(error(code, message, (CP, "cal_data_dir"), data=data))


def _shape_text(shape: Sequence[int]) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else "(" + ",".join(str(d) for d in shape) + ")"  # numpy's: (1,3,8,8)


def calibration_dir_files(d: Path) -> list[Path]:
    """A cal_data_dir's sample files in name order (`split_dir_files`). The stage key and the loader list
    the same files."""
    return split_dir_files(d)[0]


def split_dir_files(d: Path) -> tuple[list[Path], list[Path]]:
    """(sample files, other files) of a cal_data_dir in name order: hidden files left out, and files with a
    documentation / text suffix (`NOT_SAMPLE_SUFFIXES`) set apart (scandir: each entry's type comes with
    the listing, no stat per file). A broken link is listed (reading it then names it) rather than skipped:
    a sample silently missing changes the thresholds without a word."""
    with os.scandir(d) as entries:
        files = sorted((d / e.name for e in entries if not e.name.startswith(".")
                        and (e.is_file() or (e.is_symlink() and not e.is_dir()))), key=lambda p: p.name)
    samples = [f for f in files if f.suffix.lower() not in NOT_SAMPLE_SUFFIXES]
    return samples, [f for f in files if f.suffix.lower() in NOT_SAMPLE_SUFFIXES]


def _list_files(source: CalibrationSource, item: int) -> list[Path]:
    d = Path(source.dir)
    if not d.exists():
        raise _fail("cal-dir-missing", f"Cal_data_dir does not exist: {d}", item)
    if not d.is_dir():
        raise _fail("cal-dir-missing", f"Cal_data_dir is not a directory: {d}", item)
    try:
        files, others = split_dir_files(d)
    except OSError as e:
        raise _fail("cal-dir-unreadable", f"Cal_data_dir {d} cannot be read: {e.strerror or e}", item) from e
    if others:
        shown = name_list([f.name for f in others], 3)
        log.warning(f"Cal_data_dir {d}: {shown} {'is' if len(others) == 1 else 'are'} not calibration data "
                    f"(a text or document file), left out")
    if not files:
        raise _fail("cal-dir-empty", f"Cal_data_dir {d} of input '{source.input_name}' holds no calibration files",
                    item)
    return files


@dataclass
class CalibrationSet:
    """The calibration samples of all inputs; file contents are read only when asked for."""

    sources: tuple[CalibrationSource, ...]
    files: tuple[tuple[Path, ...], ...]  # files[sample][input], inputs in `sources` order
    _hashes: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_names(self) -> list[str]:
        return [s.input_name for s in self.sources]

    def content_hash(self, index: int) -> str:
        """sha256 of the sample's files' bytes in input order (the bytes last read for it, else the
        files' memoised sha256)."""
        if index not in self._hashes:
            from engine.pipeline.hashing import shared_hashes

            try:
                digests = [bytes.fromhex(shared_hashes().file(p)) for p in self.files[index]]
            except OSError:  # read it to say what is wrong with which file
                digests = [hashlib.sha256(_read_bytes(p, k)).digest() for k, p in enumerate(self.files[index])]
            self._hashes[index] = _combine(digests)
        return self._hashes[index]

    def content_hashes(self) -> list[str]:
        return [self.content_hash(i) for i in range(len(self))]

    def load(self, index: int) -> dict[str, np.ndarray]:
        """Sample `index` as {input name: float32 array in the input's shape}."""
        blobs = [_read_bytes(p, k) for k, p in enumerate(self.files[index])]
        self._hashes[index] = _combined_hash(blobs)  # what the caller keys its statistics with
        return {s.input_name: decode_sample(s, p, b, k)
                for k, (s, p, b) in enumerate(zip(self.sources, self.files[index], blobs, strict=True))}

    def samples(self, indices: Sequence[int] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Samples one at a time (all, or `indices` in the given order); only one is in memory.

        Reading a sample records its content hash, so after a sample's statistics come back,
        `content_hash(i)` is the hash of exactly the bytes they were computed from.
        """
        for i in range(len(self)) if indices is None else indices:
            yield self.load(i)


def _combined_hash(blobs: Sequence[bytes]) -> str:
    return _combine([hashlib.sha256(b).digest() for b in blobs])


def _combine(digests: Sequence[bytes]) -> str:
    """The sample's hash from its files' sha256 digests in input order."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return h.hexdigest()


def _read_bytes(path: Path, item: int) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise _fail("cal-data-unreadable", f"Calibration file {path} cannot be read: {e.strerror or e}", item,
                    path) from e


def load_calibration_set(sources: Sequence[CalibrationSource]) -> CalibrationSet:
    """List every input's calibration files and check that the inputs have equally many samples."""
    if not sources:
        raise ValueError("load_calibration_set() needs at least one source")
    listed = []
    for k, s in enumerate(sources):
        if s.dtype is not None and s.dtype not in RAW_DTYPES:
            raise _fail("cal-data-type", f"cal_data_type '{s.dtype}' of input '{s.input_name}' is not one of "
                        f"{list(RAW_DTYPES)}", k)
        listed.append(_list_files(s, k))
    counts = [len(f) for f in listed]
    if len(set(counts)) > 1:
        k = counts.index(max(counts))
        first_extra = listed[k][min(counts)]
        described = ", ".join(f"'{s.input_name}' has {n} in {s.dir}" for s, n in zip(sources, counts, strict=True))
        raise _fail("cal-count-mismatch", f"The calibration inputs hold different numbers of samples: {described}; "
                    f"{first_extra} has no counterpart in the other inputs", k, first_extra)
    return CalibrationSet(tuple(sources), tuple(zip(*listed, strict=True)))


def decode_sample(source: CalibrationSource, path: Path, blob: bytes, item: int = 0) -> np.ndarray:
    """One file's bytes → float32 array of `source.shape`; every problem names the file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        arr = _decode_npy(source, path, blob, item)
    elif suffix in IMAGE_SUFFIXES and source.preprocess_on:
        arr = _decode_image(source, path, blob, item)
    else:
        arr = _decode_raw(source, path, blob, item)
    return arr


def _finite(source: CalibrationSource, path: Path, arr: np.ndarray, item: int) -> np.ndarray:
    """`arr` (float32, read from floating-point values) if every value is finite, else the error naming
    the file. Integer and image samples are finite by construction and skip the scan (PP-OCRv4 det:
    1.2 M values per uint8 sample)."""
    if not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        nan = int(np.isnan(arr).sum())
        raise _fail("cal-data-nonfinite", f"Calibration file {path} of input '{source.input_name}' holds "
                    f"{nan} NaN and {int(bad.sum()) - nan} Inf values (of {arr.size}); samples must be finite",
                    item, path)
    return arr


def _size_error(source: CalibrationSource, path: Path, size: int, item: int, read_as: str) -> CalibrationDataError:
    want = math.prod(source.shape)
    hint = ""
    if read_as == "uint8" and size == 4 * want:
        hint = " (the file holds 4 bytes per value: float32 data? name the folder *_f32 or set cal_data_type)"
    elif read_as == "float32" and size * 4 == want:
        hint = " (the file holds 1 byte per value: uint8 data? set cal_data_type: uint8)"
    return _fail("cal-data-size", f"load cal data for input {source.input_name} error: {path}: cannot reshape "
                 f"array of size {size} into shape {_shape_text(source.shape)} (read as {read_as}){hint}",
                 item, path)


def _decode_raw(source: CalibrationSource, path: Path, blob: bytes, item: int) -> np.ndarray:
    dtype = np.dtype(source.raw_dtype)
    if len(blob) % dtype.itemsize:
        raise _fail("cal-data-size", f"load cal data for input {source.input_name} error: {path}: {len(blob)} "
                    f"bytes is not a whole number of {dtype.name} values ({dtype.itemsize} bytes each)", item, path)
    arr = np.frombuffer(blob, dtype=dtype)
    if arr.size != math.prod(source.shape):
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            raise _fail("cal-data-size", f"load cal data for input {source.input_name} error: {path} is an image "
                        f"but preprocess_on is False; calibration files must hold the tensor itself "
                        f"(.npy or raw) of shape {_shape_text(source.shape)}", item, path)
        raise _size_error(source, path, arr.size, item, dtype.name)
    out = arr.astype(np.float32).reshape(source.shape)
    return _finite(source, path, out, item) if dtype.kind == "f" else out


def _decode_npy(source: CalibrationSource, path: Path, blob: bytes, item: int) -> np.ndarray:
    if not blob.startswith(np.lib.format.MAGIC_PREFIX):  # numpy reads any other bytes as a pickle and says so
        raise _fail("cal-data-corrupt", f"Calibration file {path} is named .npy but is not a .npy file (no NUMPY "
                    "header): save samples with numpy.save, or give raw binary samples (arr.tofile) another "
                    "extension such as .bin with cal_data_type", item, path)
    try:
        arr = _npy_array(blob)
        if arr is None:
            arr = np.load(io.BytesIO(blob), allow_pickle=False)
    except ValueError as e:
        reason = "it holds Python objects (pickle), which are not loaded" if "pickle" in str(e) else str(e)
        raise _fail("cal-data-corrupt", f"Calibration file {path} is not a readable .npy array: {reason}",
                    item, path) from e
    except (OSError, EOFError) as e:
        raise _fail("cal-data-corrupt", f"Calibration file {path} is not a readable .npy array: {e}",
                    item, path) from e
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        kind = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise _fail("cal-data-type", f"Calibration file {path} holds {kind} values; expected numbers", item, path)
    want = tuple(source.shape)
    if arr.size != math.prod(want):
        raise _size_error(source, path, arr.size, item, f".npy {arr.dtype} {_shape_text(arr.shape)}")
    squeezed = tuple(d for d in arr.shape if d != 1)
    if arr.ndim > 1 and squeezed != tuple(d for d in want if d != 1):  # a flat array is read like raw data
        raise _fail("cal-data-shape", f"Calibration file {path} holds shape {_shape_text(arr.shape)} but input "
                    f"'{source.input_name}' has shape {_shape_text(want)}: same size, different layout? "
                    f"(input_layout_train / input_shape)", item, path)
    with np.errstate(over="ignore"):  # float64 beyond float32's range: Inf, which `_finite` reports
        out = arr.astype(np.float32).reshape(want)
    return _finite(source, path, out, item) if arr.dtype.kind == "f" else out


NPY_HEADERS_KEPT = 64  # distinct .npy headers remembered (a calibration folder's files share one)
_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def _npy_array(blob: bytes) -> np.ndarray | None:
    """The array of a .npy file's bytes, its header parsed once per distinct header; None when
    `np.load` must read it (a header not seen yet that numpy's public readers do not take, object
    dtypes, a short body: np.load says what is wrong). np.load parsed every file's header with
    `ast.literal_eval`: ~0.1 ms of digits' ~0.13 ms per 1 KB sample."""
    major = blob[6] if len(blob) > 6 else 0
    size_bytes = 2 if major == 1 else 4
    start = 8 + size_bytes
    if major not in (1, 2) or len(blob) < start:  # version 3 (utf-8 header) and anything odd: np.load
        return None
    head = blob[:start + int.from_bytes(blob[8:start], "little")]
    found = _npy_headers.get(head)
    if found is None:
        fp = io.BytesIO(head)
        np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        try:
            shape, fortran, dtype = read(fp)
        except ValueError:
            return None
        if dtype.hasobject:
            return None
        if len(_npy_headers) >= NPY_HEADERS_KEPT:
            _npy_headers.clear()
        found = _npy_headers[head] = (dtype, tuple(shape), bool(fortran))
    dtype, shape, fortran = found
    count = math.prod(shape)
    if len(blob) - len(head) < count * dtype.itemsize:
        return None
    flat = np.frombuffer(blob, dtype, count=count, offset=len(head))
    return flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)


def _decode_image(source: CalibrationSource, path: Path, blob: bytes, item: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # imported here: only preprocess_on needs it

    shape = tuple(source.shape)
    if len(shape) != 4:
        raise _fail("cal-data-shape", f"preprocess_on reads images for 4-D inputs only; input "
                    f"'{source.input_name}' has shape {_shape_text(shape)} ({path})", item, path)
    layout = source.layout or ("NCHW" if shape[1] in (1, 3) else "NHWC")
    n, c, h, w = shape if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
    if n != 1:
        raise _fail("cal-data-shape", f"preprocess_on reads one image per sample but input '{source.input_name}' "
                    f"has batch {n}: give .npy samples of shape {_shape_text(shape)} ({path})", item, path)
    mode = "L" if c == 1 else ("YCbCr" if source.type_train == "yuv444" else "RGB")
    if c not in (1, 3):
        raise _fail("cal-data-shape", f"preprocess_on reads 1- or 3-channel images; input "
                    f"'{source.input_name}' has {c} channels ({path})", item, path)
    try:
        with Image.open(io.BytesIO(blob)) as im:
            img = np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _fail("cal-data-corrupt", f"Calibration image {path} cannot be decoded: {e}", item, path) from e
    img = img.reshape(h, w, c)
    if source.type_train == "bgr" and c == 3:
        img = img[:, :, ::-1]
    if layout == "NCHW":
        img = img.transpose(2, 0, 1)
    return np.ascontiguousarray(img)[None]


def random_samples(shapes: dict[str, Sequence[int]], n: int, seed: int = 0, *, low: float = 0.0,
                   high: float = 255.0) -> Iterator[dict[str, np.ndarray]]:
    """`calibration_type: skip`: n random samples (uniform in [low, high), the train view's 0–255).

    Sample i depends only on (seed, i), so a longer run starts with the same samples.
    Thresholds from these are for performance checks only.
    """
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        yield {name: rng.uniform(low, high, size=tuple(shape)).astype(np.float32) for name, shape in shapes.items()}


__all__ = ["CalibrationSet", "CalibrationSource", "RAW_DTYPES", "decode_sample", "load_calibration_set",
           "random_samples", "source_for_input"]
