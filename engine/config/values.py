"""Parsing hb_compile's string conventions: `;` lists, per-channel numbers, `NxCxHxW` shapes.

Reference §3: strip surrounding quotes, drop a trailing `;`, split on `;`, trim each item; `''`
and `'None'` mean "not set" for that position. Per-channel numbers are space or comma separated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_UNSET = {"", "none", "null"}
# an `optimization` item setting one op type's input or output bits: (op type, input|output, 8|16)
OP_BITS_ITEM = re.compile(r"set_([A-Za-z0-9]+)_(input|output)_int(8|16)")


def split_list(value: Any) -> list[str | None]:
    """`'a; b;'` → ['a', 'b']; `'x; None'` → ['x', None]; a bare number → ['<number>']."""
    if value is None:
        return []
    if isinstance(value, list):
        return [None if _is_unset(v) else str(v).strip() for v in value]
    text = str(value).strip().strip("'\"")
    if text.endswith(";"):
        text = text[:-1]
    if not text.strip():
        return []
    return [None if _is_unset(part) else part.strip() for part in text.split(";")]


def resolve_path(value: Any, base: Path) -> Path:
    """A path the config names, as hb_compile reads it: `~` expanded, relative to the config's folder."""
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def _is_unset(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().strip("'\"").lower() in _UNSET)


def split_names(value: Any) -> list[str]:
    """A `;` list of names with unset entries removed (run_on_cpu, output_nodes, …)."""
    return [v for v in split_list(value) if v]


def split_comma(value: Any) -> list[str]:
    if value is None:
        return []
    return [v.strip() for v in str(value).split(",") if v.strip()]


class ValueFormatError(ValueError):
    pass


def parse_numbers(item: str | float | int | None) -> tuple[float, ...] | None:
    """'103.94 116.78 123.68' or '1,2,3' or 0.5 → tuple of floats; None stays None."""
    if item is None:
        return None
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return (float(item),)
    parts = str(item).replace(",", " ").split()
    try:
        return tuple(float(p) for p in parts)
    except ValueError as exc:
        raise ValueFormatError(str(item)) from exc


def per_input_numbers(value: Any) -> list[tuple[float, ...] | None]:
    """A `;` list of per-channel number groups, one per input."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [(float(value),)]
    return [parse_numbers(v) for v in split_list(value)]


_SHAPE = re.compile(r"^\s*\d+(\s*x\s*\d+)*\s*$", re.IGNORECASE)


def parse_shape(item: str | None) -> tuple[int, ...] | None:
    """'1x3x224x224' → (1, 3, 224, 224). Raises ValueFormatError on anything else."""
    if item is None:
        return None
    if not _SHAPE.match(str(item)):
        raise ValueFormatError(str(item))
    shape = tuple(int(p) for p in str(item).lower().replace(" ", "").split("x"))
    if 0 in shape:  # an empty tensor: nothing to calibrate or run
        raise ValueFormatError(str(item))
    return shape


def format_shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)
