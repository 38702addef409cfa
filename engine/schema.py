"""Read-only access to `schemas/hb_compile.schema.json`, the one source of keys, enums and docs.

Nothing else in the code base lists config keys or enum values: the loader, the rules, the
language server and the docs generator all ask this module.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from schemas import schema_path

SECTIONS = ("model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters", "custom_op")


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with open(schema_path(), encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


def sections() -> list[str]:
    return list(load_schema().get("properties", {}))


def section_schema(section: str) -> dict[str, Any] | None:
    return load_schema().get("properties", {}).get(section)


def keys(section: str) -> list[str]:
    sec = section_schema(section) or {}
    return list(sec.get("properties", {}))


def key_schema(section: str, key: str) -> dict[str, Any] | None:
    sec = section_schema(section) or {}
    return sec.get("properties", {}).get(key)


def iter_keys():
    """(section, key, key schema) for every key, in schema order."""
    for section in sections():
        for key in keys(section):
            yield section, key, key_schema(section, key)


def item_enum(section: str, key: str, hidden: bool = True) -> list[str]:
    """Allowed values of one key (`enum`) or of each item of a `;` list (`x-hb-item-enum`)."""
    ks = key_schema(section, key) or {}
    values = list(ks.get("enum") or ks.get("x-hb-item-enum") or [])
    if hidden:
        values += [v for v in ks.get("x-hb-item-enum-hidden", []) if v not in values]
    return values


def list_kind(section: str, key: str) -> str | None:
    return (key_schema(section, key) or {}).get("x-hb-list")


def marches() -> dict[str, dict[str, Any]]:
    return load_schema().get("x-hb-marches", {})


def train_rt_pairs() -> dict[str, list[str]]:
    return load_schema().get("x-hb-train-rt-pairs", {})


def enum_description(section: str, key: str, value: str) -> str | None:
    ks = key_schema(section, key) or {}
    return (ks.get("x-hb-enum-descriptions") or {}).get(value)


def is_deprecated(section: str, key: str) -> bool:
    return bool((key_schema(section, key) or {}).get("deprecated"))
