"""JSON-Schema validation of the config, with each error told in hb_compile's words.

jsonschema finds the problems; this module only turns each `ValidationError` into a `Problem`
at the offending key path (reference §13 wording, "did you mean" for unknown keys).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from typing import Any

from jsonschema.exceptions import ValidationError

from engine import schema
from engine.problems import Problem, error, warning

_TYPE_WORDS = {"boolean": "bool", "integer": "int", "number": "float", "string": "str", "object": "dict",
               "array": "list"}
_PY_TYPE = {bool: "bool", int: "int", float: "float", str: "str", dict: "dict", list: "list"}


def check_schema(data: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for err in sorted(schema.validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        problems.extend(_translate(err, data))
    problems.extend(_deprecations(data))
    told = {p.path for p in problems}
    problems.extend(p for p in _non_finite(data) if p.path not in told)
    return _dedupe(problems)


def _non_finite(data: Any, path: tuple = ()) -> Iterator[Problem]:
    """`.nan` / `.inf` pass JSON Schema's minimum and maximum (every comparison with NaN is false)."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _non_finite(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _non_finite(v, path + (i,))
    elif isinstance(data, float) and not math.isfinite(data):
        yield error("out-of-range", f"Invalid {_name(path)}: {data}, a finite number is required", path)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        k = (p.code, p.message, p.path)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


def _name(path: tuple) -> str:
    """The config key a path ends in: the user's own names (input_source's input names, node_info's node
    names, …) are values of a key, so the key's name is told, not theirs."""
    name, node = "config", schema.load_schema()
    for step in path:
        props = node.get("properties", {}) if isinstance(node, dict) else {}
        if isinstance(step, str) and step in props:
            name, node = step, props[step]
        elif isinstance(node, dict) and isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif isinstance(node, dict) and isinstance(node.get("items"), dict):
            node = node["items"]
        else:
            break
    return name


def _home_sections(key: str, path: tuple) -> list[str]:
    """The sections other than `path`'s whose keys include `key` (a key written in the wrong section, or at the
    top level); none for keys deeper down (node_info entries, custom_op fields)."""
    if len(path) > 1:
        return []
    return [section for section in schema.sections() if (not path or section != path[0])
            and key in schema.keys(section)]


def _closest_elsewhere(key: str, path: tuple, here: str | None) -> tuple[str, str] | None:
    """(section, key) of another section's key closer to `key` than `here`, this section's closest (if any)."""
    if len(path) > 1:
        return None
    def ratio(other: str) -> float:
        return difflib.SequenceMatcher(None, key, other).ratio()
    best = max(((ratio(k), section, k) for section in schema.sections() if not path or section != path[0]
                for k in schema.keys(section)), default=None)
    if best is None or best[0] < 0.6 or (here is not None and ratio(here) >= best[0]):
        return None
    return best[1], best[2]


def _translate(err: ValidationError, data: dict) -> Iterator[Problem]:
    if {"then", "else", "not", "dependentRequired"} & set(map(str, err.schema_path)):
        # Cross-key rules: engine.config.rules says these in hb_compile's words (the schema keeps
        # them for editors that only speak JSON Schema, e.g. yaml-language-server).
        return
    path = tuple(err.absolute_path)
    v = err.validator
    name = _name(path)
    if v == "additionalProperties":
        props = set(err.schema.get("properties", {}))
        pattern_props = err.schema.get("patternProperties", {})
        import re
        extras = [k for k in err.instance if k not in props and not any(re.search(p, k) for p in pattern_props)]
        where = ".".join(str(p) for p in path) or "the config"
        for key in extras:
            home = _home_sections(str(key), path)
            if home:  # a real key in the wrong place: a look-alike here would be a harmful rename
                yield error("unknown-key", f"Wrong key '{key}' in {where}: it belongs in {' or '.join(home)}",
                            path + (key,), data={"on_key": True, "did_you_mean": None, "belongs_in": home})
                continue
            close = difflib.get_close_matches(str(key), sorted(props), n=1, cutoff=0.6)
            elsewhere = _closest_elsewhere(str(key), path, close[0] if close else None)
            if elsewhere is not None:  # optimise_level in model_parameters: optimize_level, not log_level
                yield error("unknown-key", f"Wrong key '{key}' in {where}, did you mean '{elsewhere[1]}' (a key of "
                            f"{elsewhere[0]})?", path + (key,), data={"on_key": True, "did_you_mean": None,
                                                                      "belongs_in": [elsewhere[0]]})
                continue
            hint = f", did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(sorted(props))}"
            yield error("unknown-key", f"Wrong key '{key}' in {where}{hint}", path + (key,),
                        data={"on_key": True, "did_you_mean": close[0] if close else None})
    elif v == "required":
        present = set(err.instance) if isinstance(err.instance, dict) else set()
        missing = [k for k in err.validator_value if k not in present]
        where = _name(path) if path else "config"
        yield error("missing-key", f"Key '{where}' error: Missing keys: " + ", ".join(f"'{k}'" for k in missing),
                    path, data={"on_key": True, "missing": missing})
    elif v == "dependentRequired":
        present = set(err.instance)
        for trigger, needed in err.validator_value.items():
            if trigger in present:
                missing = [k for k in needed if k not in present]
                if missing:
                    yield error("missing-key", f"Key '{name}' error: Missing keys: "
                                + ", ".join(f"'{k}'" for k in missing), path + (trigger,),
                                data={"on_key": True, "missing": missing})
    elif v == "type":
        expected = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
        got = _PY_TYPE.get(type(err.instance), type(err.instance).__name__)
        yield error("wrong-type", f"Wrong parameter '{name}' specified, {words} value is required but get type "
                    f"<class '{got}'>", path)
    elif v == "enum":
        allowed = err.validator_value
        if name == "march":
            msg = f"The specified march '{err.instance}' is invalid, the march parameter only supports values in {allowed}"
        else:
            msg = (f"The specified {name} is invalid, the {name}: '{err.instance}' can only be specified as "
                   f"values in {allowed}")
        close = difflib.get_close_matches(str(err.instance), [str(a) for a in allowed], n=len(allowed), cutoff=0)
        yield error("invalid-enum", msg, path, data={"allowed": close})
    elif v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        lo = err.schema.get("minimum", err.schema.get("exclusiveMinimum", ""))
        hi = err.schema.get("maximum", err.schema.get("exclusiveMaximum", ""))
        if name == "input_batch":
            msg = input_batch_range_error(err.instance, data)
        elif name == "max_percentile":
            msg = f"Invalid max_percentile: {err.instance}, avaliable range: {lo}~{hi}"
        elif name == "balance_factor":
            msg = f"Invalid balance_factor received: {err.instance}, value range is {lo}-{hi}"
        elif hi == "":  # "available range: 1~" reads as a cut-off message
            msg = f"Invalid {name}: {err.instance}, it should be at least {lo}"
        else:
            msg = f"Invalid {name}: {err.instance}, available range: {lo}~{hi}"
        yield error("out-of-range", msg, path)
    elif v == "pattern":
        yield error("bad-format", format_error(path, err.instance), path)
    elif v in ("minLength",) and name == "output_model_file_prefix":
        yield error("empty-prefix", "The output_model_file_prefix cannot be empty, please specify a valid prefix "
                    "in your yaml config file", path)
    elif v in ("not", "if", "then", "else", "allOf", "anyOf", "oneOf", "dependentSchemas"):
        # Cross-key rules are told by engine.config.rules in hb_compile's words; the schema
        # carries them for editors that only speak JSON Schema (yaml-language-server).
        return
    else:
        yield error("schema", f"{'.'.join(map(str, path)) or 'config'}: {err.message}", path)


def format_error(path: tuple, value: Any) -> str:
    """A value of the wrong form, told with the key's own example (`x-hb-format-error`): the schema's
    regular expression is for validators, not for people."""
    node = schema.key_schema(str(path[0]), str(path[1])) if len(path) >= 2 else None
    text = (node or {}).get("x-hb-format-error")
    if text:
        return text.replace("{value}", str(value))
    return f"Invalid {_name(path)} format: '{value}'"


def input_batch_range(march: Any) -> tuple[int, int]:
    """The march's input_batch range (reference §5: 1–128 on bernoulli2, 1–4096 on the others); an unknown
    or missing march takes the widest."""
    spec = schema.marches().get(march) if isinstance(march, str) else None
    lo, hi = ((spec or {}).get("input_batch") or [1, 4096])[:2]
    return int(lo), int(hi)


def input_batch_range_error(batch: Any, data: dict) -> str:
    """The one wording of an input_batch out of its march's range (the schema's minimum and the rule's
    march check say the same)."""
    mp = data.get("model_parameters")
    march = mp.get("march") if isinstance(mp, dict) else None
    lo, hi = input_batch_range(march)
    where = f" for march {march}" if isinstance(march, str) and march in schema.marches() else ""
    return f"Invalid input_batch: {batch}, available range{where}: {lo}~{hi}"


def march_generation(data: dict) -> str:
    """'hb_mapper' or 'hb_compile': the generation of the config's march (an unknown or missing march
    counts as hb_compile, the tool this project reimplements)."""
    mp = data.get("model_parameters")
    march = mp.get("march") if isinstance(mp, dict) else None
    spec = schema.marches().get(march) if isinstance(march, str) else None
    return (spec or {}).get("generation") or "hb_compile"


def deprecated_here(ks: dict, data: dict) -> bool:
    """A key deprecated in one generation only (`x-hb-deprecated-in`) is a normal key on the other's marches."""
    if not ks.get("deprecated"):
        return False
    only = ks.get("x-hb-deprecated-in")
    return only is None or only == march_generation(data)


def deprecation_text(section: str, key: str) -> str:
    """The key's own deprecation wording (`x-hb-deprecation`), else hb_compile's "no effect" line."""
    return (schema.key_schema(section, key) or {}).get("x-hb-deprecation") or (
        f"Please note that the parameter '{key}' has been deprecated. Specifying this parameter will have no effect")


def _deprecations(data: dict) -> Iterator[Problem]:
    for section, body in data.items():
        if not isinstance(body, dict):
            continue
        for key in body:
            ks = schema.key_schema(section, key) or {}
            if ks.get("x-hb-deprecation-by-value"):
                continue  # engine.config.rules words it after what the value does
            if deprecated_here(ks, data):
                msg = deprecation_text(section, key)
                if ks.get("x-hb-replacement"):
                    msg += f" (use '{ks['x-hb-replacement']}' instead)"
                yield warning("deprecated-key", msg, (section, key),
                              data={"on_key": True, "replacement": ks.get("x-hb-replacement")})
