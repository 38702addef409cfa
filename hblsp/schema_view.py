"""The schema seen from a cursor: which keys a mapping takes, what a value may be, what it means.

Every key, enum value, default and description hblsp shows comes from
`schemas/hb_compile.schema.json` through `engine.schema`; this module only walks it by key path
(sections → keys → nested objects such as `node_info.<node>` or `input_source.<input>`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine import schema
from engine.config import values as V
from engine.config.model import STRING_FORM_FIELD
from engine.config.rules import accepted_rts, rt_by_input, sources_of

SEPARATORS = {"per-input": ";", "names": ";", "comma": ","}


def at(path: tuple[str, ...]) -> dict[str, Any] | None:
    """Schema of the value at `path` (() is the whole config), or None where the schema says nothing."""
    node: dict[str, Any] | None = schema.load_schema()
    for part in path:
        if node is None:
            return None
        props = node.get("properties") or {}
        if part in props:
            node = props[part]
            continue
        for pattern, sub in (node.get("patternProperties") or {}).items():
            if re.search(pattern, part):
                node = sub
                break
        else:
            extra = node.get("additionalProperties")
            node = extra if isinstance(extra, dict) else None
    return node


def key_names(path: tuple[str, ...]) -> list[str]:
    """Declared keys of the mapping at `path`, in schema order."""
    return list((at(path) or {}).get("properties") or {})


def entry_schema(path: tuple[str, ...]) -> dict[str, Any] | None:
    """Schema of a user-named entry (a node name under node_info, an input under input_source)."""
    extra = (at(path) or {}).get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def types_of(s: dict[str, Any]) -> list[str]:
    t = s.get("type")
    return list(t) if isinstance(t, list) else ([t] if t else [])


def separator(s: dict[str, Any] | None) -> str | None:
    return SEPARATORS.get((s or {}).get("x-hb-list", ""))


def model_values(s: dict[str, Any] | None) -> str | None:
    """'input_name', 'node_name' or 'op_type' when the values (or entry keys) come from the model."""
    return (s or {}).get("x-hb-model-values")


@dataclass(frozen=True)
class Choice:
    value: str
    description: str | None = None


def value_choices(s: dict[str, Any] | None) -> list[Choice]:
    """The values one item may take: enum, per-item enum (public values only) or true/false."""
    if not s:
        return []
    described = s.get("x-hb-enum-descriptions") or {}
    values = s.get("enum") or s.get("x-hb-item-enum") or []
    if values:
        return [Choice(str(v), described.get(v)) for v in values]
    if "boolean" in types_of(s):
        return [Choice("true"), Choice("false")]
    return []


def all_values(s: dict[str, Any] | None) -> list[str]:
    """Public and hidden allowed values (what the checker accepts)."""
    if not s:
        return []
    return [str(v) for v in (s.get("enum") or s.get("x-hb-item-enum") or [])] + \
        [str(v) for v in s.get("x-hb-item-enum-hidden", [])]


def enum_description(s: dict[str, Any] | None, value: str) -> str | None:
    return ((s or {}).get("x-hb-enum-descriptions") or {}).get(value)


def required(path: tuple[str, ...]) -> list[str]:
    """Keys a mapping must have: `required`, plus the first of an x-hb-required-unless group."""
    s = at(path) or {}
    out = list(s.get("required") or [])
    for key, sub in (s.get("properties") or {}).items():
        unless = sub.get("x-hb-required-unless")
        if unless and not any(u in out for u in unless) and key not in out:
            out.insert(0, key)
    return out


def march(value: str) -> dict[str, Any] | None:
    return schema.marches().get(value)


def is_march_key(path: tuple[str, ...]) -> bool:
    """The key whose values are the marches described in `x-hb-marches`."""
    s = at(path) or {}
    return bool(s.get("enum")) and set(s["enum"]) == set(schema.marches())


def string_form(path: tuple[str, ...]) -> tuple[str, dict[str, Any]] | None:
    """A mapping of named entries that may also be written `'name:value;name:value'` (node_info): the
    entry field that string form sets, as the engine's reader maps it, and that field's schema."""
    s = at(path)
    entry = entry_schema(path)
    if s is None or entry is None or not {"string", "object"} <= set(types_of(s)):
        return None
    sub = (entry.get("properties") or {}).get(STRING_FORM_FIELD)
    return (STRING_FORM_FIELD, sub) if isinstance(sub, dict) else None


def accepted(path: tuple[str, ...], data: dict[str, Any] | None, model_inputs: list[str] | None = None,
             item: int | None = None) -> set[str] | None:
    """The values the config checks accept at `path` given the rest of the config, or None when every
    schema value is: the march's own list in `x-hb-marches` (optimize_level: O0–O2 on nash-*, where
    O3 is warned about and replaced), an input_source entry's sources for that input's
    input_type_rt (`x-hb-rt-types`: a featuremap input is fed from ddr only), or the input_type_rt an
    input's input_type_train converts to (`item`: the input's place in the `;` list; reference §9)."""
    data = data if isinstance(data, dict) else {}
    if path == ("input_parameters", "input_type_rt"):
        trains = V.split_list((data.get("input_parameters") or {}).get("input_type_train"))
        train = trains[item or 0] if (item or 0) < len(trains) else None
        return accepted_rts(train)
    if len(path) == 2:
        spec = march(str((data.get("model_parameters") or {}).get("march")))
        allowed = (spec or {}).get(path[-1])
        if isinstance(allowed, list) and allowed and all(isinstance(v, str) for v in allowed):
            return set(allowed)
        return None
    if len(path) != 3 or not isinstance((at(path[:-1]) or {}).get("x-hb-rt-types"), dict):
        return None
    rts = rt_by_input(data.get("input_parameters"), model_inputs)
    rt = rts.get(path[-1], rts.get(""))
    return None if rt is None else sources_of(rt)
