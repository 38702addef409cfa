"""Render docs/config.md from schemas/hb_compile.schema.json.

The schema is the one source of config keys, types, enums, defaults and their meanings; this
page is only a view of it, so it is generated, committed, and checked for staleness in the tests
(`python docs/gen_config_doc.py --check` exits 1 when the committed page differs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "hb_compile.schema.json"
OUTPUT = ROOT / "docs" / "config.md"

GENERATION_WORDS = {"both": "hb_mapper and hb_compile", "hb_mapper": "hb_mapper (older generation)",
                    "hb_compile": "hb_compile (newer generation)", "hbcompile": "hbcompile only (this project's extension)"}
LIST_WORDS = {"per-input": "`;`-separated, one entry per input (in `input_name` order)",
              "names": "`;`-separated names", "comma": "comma-separated values"}
MODEL_VALUE_WORDS = {"input_name": "input names", "node_name": "node names", "op_type": "operator types"}


def cell(text: str) -> str:
    """Make text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def code(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value}`"


def type_words(ks: dict[str, Any]) -> str:
    types = ks.get("type", [])
    words = " or ".join(types) if isinstance(types, list) else str(types)
    if ks.get("x-hb-path"):
        what = "folder" if ks["x-hb-path"] == "dir" else "file"
        what = f"`{ks['x-hb-suffix']}` {what}" if ks.get("x-hb-suffix") else what
        words += f" (path of a {what}, relative to the YAML file's folder)"
    return words


def value_lines(values: list[str], meanings: dict[str, str]) -> str:
    return "<br>".join(f"`{v}`: {meanings.get(v, '')}".rstrip(": ") for v in values)


def inner_keys(ks: dict[str, Any]) -> str:
    """One line per inner key of an object-valued key (node_info entries, quant_config levels, ...)."""
    lines = []
    per_entry = ks.get("additionalProperties")
    if isinstance(per_entry, dict) and per_entry.get("properties"):
        ks = {**per_entry, "_per_entry": True}
    elif isinstance(per_entry, dict) and per_entry.get("enum"):
        return "each value: " + ", ".join(f"`{v}`" for v in per_entry["enum"])
    props = dict(ks.get("properties", {}))
    props.update(ks.get("patternProperties", {}))
    for name, sub in props.items():
        allowed = f" ({', '.join(f'`{v}`' for v in sub['enum'])})" if sub.get("enum") else ""
        lines.append(f"`{name}`{allowed}: {sub.get('description', '')}")
    prefix = "each entry: " if ks.get("_per_entry") else ""
    return prefix + "<br>".join(lines)


def key_table(name: str, ks: dict[str, Any], required: bool) -> list[str]:
    rows: list[tuple[str, str]] = [("Type", type_words(ks))]
    if "x-hb-list" in ks:
        rows.append(("Format", LIST_WORDS[ks["x-hb-list"]]))
    rows.append(("Default", code(ks["default"]) if "default" in ks else "–"))
    if required:
        rows.append(("Required", "yes"))
    if ks.get("x-hb-required-unless"):
        rows.append(("Required", "unless " + ", ".join(f"`{k}`" for k in ks["x-hb-required-unless"])
                     + " is given"))
    meanings = ks.get("x-hb-enum-descriptions", {})
    if ks.get("enum"):
        rows.append(("Allowed values", value_lines(ks["enum"], meanings)))
    if ks.get("x-hb-item-enum"):
        rows.append(("Allowed values (each item)", value_lines(ks["x-hb-item-enum"], meanings)))
    if ks.get("x-hb-item-enum-hidden"):
        rows.append(("Also accepted", value_lines(ks["x-hb-item-enum-hidden"], meanings)))
    if ks.get("x-hb-item-pattern"):
        rows.append(("Item pattern", f"`{ks['x-hb-item-pattern']}`"))
    ranges = [f"{word} {ks[k]}" for k, word in (("minimum", "min"), ("maximum", "max")) if k in ks]
    if ranges:
        rows.append(("Range", ", ".join(ranges)))
    if ks.get("properties") or isinstance(ks.get("additionalProperties"), dict):
        rows.append(("Inner keys", inner_keys(ks)))
    if ks.get("x-hb-model-values"):
        rows.append(("Completion", f"offers the model's {MODEL_VALUE_WORDS[ks['x-hb-model-values']]}"))
    rows.append(("Generation", GENERATION_WORDS[ks["x-hb-generation"]]))
    if ks.get("deprecated"):
        replacement = ks.get("x-hb-replacement")
        text = ks.get("x-hb-deprecation", "deprecated")
        if replacement:
            text += f" (use `{replacement}`)"
        rows.append(("Deprecated", text))
    out = [f"### `{name}`", "", ks["description"], "", "| | |", "|---|---|"]
    out += [f"| {label} | {cell(value)} |" for label, value in rows]
    return out + [""]


def span(pair: list[int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}–{pair[1]}"


def march_table(marches: dict[str, dict[str, Any]]) -> list[str]:
    out = ["## Targets (`march`)", "",
           "Per-march ranges that the loader applies on top of the schema's key ranges.", "",
           "| march | generation | boards | core_num | optimize_level | input_batch | max_time_per_fc (µs) "
           "| max_l2m_size |", "|---|---|---|---|---|---|---|---|"]
    for name, m in marches.items():
        lo, hi = m["max_time_per_fc"]
        out.append(f"| `{name}` | {m['generation']} | {cell(m['description'])} | {span(m['core_num'])} | "
                   f"{', '.join(m['optimize_level'])} | {span(m['input_batch'])} | 0 or {lo}–{hi} | {'yes' if m['max_l2m_size_supported'] else 'no'} |")
    return out + [""]


def conversion_tables(pairs: dict[str, list[str]], layouts: dict[str, str | None]) -> list[str]:
    out = ["## Input conversions", "", "Legal `input_type_train` → `input_type_rt` pairs:", "",
           "| input_type_train | input_type_rt |", "|---|---|"]
    out += [f"| `{train}` | {', '.join(f'`{rt}`' for rt in rts)} |" for train, rts in pairs.items()]
    out += ["", "Runtime layout implied by `input_type_rt`:", "", "| input_type_rt | layout |", "|---|---|"]
    out += [f"| `{rt}` | {layout or '– (YUV 4:2:0, no layout)'} |" for rt, layout in layouts.items()]
    return out + [""]


def render(schema: dict[str, Any]) -> str:
    out = [f"# {schema['title']}", "",
           "<!-- Generated by docs/gen_config_doc.py from schemas/hb_compile.schema.json: edit those, "
           "not this page. -->", "", schema["description"], "",
           "Top-level sections: " + ", ".join(
               f"[`{s}`](#{s})" + (" (required)" if s in schema.get("required", []) else "")
               for s in schema["properties"]) + ".", ""]
    for section, sec in schema["properties"].items():
        required = set(sec.get("required", []))
        out += [f"## {section}", "", sec["description"], ""]
        if required:
            out += ["Required keys: " + ", ".join(f"`{k}`" for k in sec["required"]) + ".", ""]
        if sec.get("$comment"):
            out += [f"Rules across keys: {sec['$comment']}", ""]
        for name, ks in sec["properties"].items():
            out += key_table(name, ks, name in required)
    out += march_table(schema["x-hb-marches"])
    out += conversion_tables(schema["x-hb-train-rt-pairs"], schema["x-hb-rt-layout"])
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the output file is stale, write nothing")
    parser.add_argument("--schema", type=Path, default=SCHEMA)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(json.loads(args.schema.read_text(encoding="utf-8")))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            print(f"{args.output} is stale: run python docs/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
