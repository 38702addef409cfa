"""Client settings (`workspace/configuration`, section ``hblsp``): a typed, fully defaulted tree.

Bad values never stop the server: each bad field keeps its default and is named in one message
the client shows (jedi-language-server's `initialization_options`, without cattrs: a dozen flat
fields do not need a framework). The live recompile's switches (`compileOnSave`, `watchFiles`,
`watchDelayMs`) and the cosine thresholds its warning and hints use live here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

SECTION = "hblsp"

DEFAULT_PATTERNS = ("*.hb.yaml", "*.hb.yml", "*hb_compile*.yaml", "*hb_compile*.yml", "*hb_mapper*.yaml",
                    "*hb_mapper*.yml", "*hb_config*.yaml", "*hb_config*.yml")
DEFAULT_LANGUAGE_IDS = ("yaml.hbcfg", "hbcfg")


@dataclass(frozen=True)
class Settings:
    """What a user may tune; the client sends each field in camelCase (`debounceMs`)."""

    debounce_ms: int = 150
    file_patterns: tuple[str, ...] = DEFAULT_PATTERNS
    language_ids: tuple[str, ...] = DEFAULT_LANGUAGE_IDS
    modeline: bool = True
    check_files: bool = True
    max_model_megabytes: int = 1024
    completion_limit: int = 500
    compile_on_save: bool = True  # saving a config without errors compiles it
    watch_files: bool = True  # changes on disk re-run a compiled config and re-check an open one
    watch_delay_ms: int = 300  # file events within this window are one change
    node_cosine_threshold: float = 0.99  # nodes under this Quantized Cosine are listed in a warning
    output_cosine_threshold: float = 0.8  # outputs under this one too (hb_compile calls it serious)

    @property
    def debounce_s(self) -> float:
        return self.debounce_ms / 1000.0

    @property
    def max_model_bytes(self) -> int:
        return self.max_model_megabytes * 1024 * 1024


def json_name(field_name: str) -> str:
    """`debounce_ms` → `debounceMs`: the client's spelling."""
    head, *rest = field_name.split("_")
    return head + "".join(part.title() for part in rest)


_BOUNDS = {"debounce_ms": (0, 10_000), "max_model_megabytes": (1, 1 << 20), "completion_limit": (10, 100_000),
           "watch_delay_ms": (0, 60_000), "node_cosine_threshold": (-1.0, 1.0), "output_cosine_threshold": (-1.0, 1.0)}


@dataclass
class Parsed:
    settings: Settings
    problems: list[str] = field(default_factory=list)


def parse_settings(raw: Any, base: Settings | None = None) -> Parsed:
    """Client JSON → Settings; unknown keys are ignored, bad values keep the default and are named."""
    base = base or Settings()
    if raw is None:
        return Parsed(base)
    if not isinstance(raw, dict):
        return Parsed(base, [f"settings '{SECTION}' must be an object, found {type(raw).__name__}"])
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        key = json_name(f.name)
        if key not in raw:
            continue
        value, want = raw[key], type(getattr(base, f.name))
        if want is tuple:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
        elif want in (int, float):
            ok = isinstance(value, (int, float) if want is float else int) and not isinstance(value, bool)
            if ok and want is float:
                value = float(value)
                ok = math.isfinite(value)
            if ok and f.name in _BOUNDS:
                lo, hi = _BOUNDS[f.name]
                ok = lo <= value <= hi
        else:
            ok = isinstance(value, want)
        if ok:
            changes[f.name] = value
        else:
            problems.append(f"{SECTION}.{key}: {value!r} is not valid, using {getattr(base, f.name)!r}")
    return Parsed(replace(base, **changes), problems)
