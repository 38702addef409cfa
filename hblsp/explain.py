"""How a key, a value, a march, a model input or a node is explained to a person (Markdown).

Shared by hover and by completion items' documentation, so both say the same thing; every word
about a key comes from the schema.
"""

from __future__ import annotations

from typing import Any

from engine.config.schema_check import deprecated_here
from engine.frontend.model_info import ModelInfo, NodeInfo, TensorInfo
from hblsp import schema_view as sv

GENERATIONS = {"hb_mapper": "hb_mapper (X3 / J5 / X5 generation) only",
               "hb_compile": "hb_compile (nash-* generation) only"}
LIST_WORDS = {"per-input": "`;` list, one item per input", "names": "`;` list of names",
              "comma": "`,` list"}


def type_words(s: dict[str, Any] | None) -> str:
    s = s or {}
    words = " or ".join(sv.types_of(s)) or "any"
    if s.get("x-hb-list"):
        words += ", " + LIST_WORDS.get(s["x-hb-list"], s["x-hb-list"])
    if s.get("x-hb-path"):
        words += f", path to a {s['x-hb-path']}" + (f" ({s['x-hb-suffix']})" if s.get("x-hb-suffix") else "")
    return words


def _fmt_default(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if value == "" else str(value)


def key_markdown(path: tuple[str, ...], data: dict | None = None) -> str:
    """Description, type, default, allowed values with their meaning, deprecation (as it stands on
    the march of the config `data`: `schema_check.deprecated_here`)."""
    s = sv.at(path) or {}
    out = [f"**{path[-1]}** — `{'.'.join(path)}`" if len(path) > 1 else f"**{path[-1]}** (section)"]
    if len(path) > 1:
        out[0] += f" · {type_words(s)}"
    if s.get("description"):
        out.append(s["description"])
    if "default" in s:
        out.append(f"Default: `{_fmt_default(s['default'])}`")
    choices = sv.value_choices(s) if "boolean" not in sv.types_of(s) else []
    if choices:
        march = sv.is_march_key(path)
        lines = []
        for c in choices:
            meaning = c.description or (_march_line(c.value) if march else None)
            lines.append(f"- `{c.value}`" + (f" — {meaning}" if meaning else ""))
        out.append("Allowed values:\n" + "\n".join(lines))
    if deprecated_here(s, data or {}):
        text = s.get("x-hb-deprecation") or "Deprecated."
        if s.get("x-hb-deprecation-by-value"):
            text = "hb_compile ignores it; hbcompile still applies what the value asks (the warning on it says what)."
        if s.get("x-hb-replacement"):
            text += f" Use `{s['x-hb-replacement']}` instead."
        only = s.get("x-hb-deprecated-in")
        out.append(f"**Deprecated{f' on {only} marches' if only else ''}.** {text}")
    if s.get("x-hb-generation") in GENERATIONS:
        out.append(f"_{GENERATIONS[s['x-hb-generation']]}_")
    return "\n\n".join(out)


def _march_line(name: str) -> str:
    m = sv.march(name) or {}
    parts = [m.get("description", "")]
    if m.get("generation"):
        parts.append(f"{m['generation']} generation")
    return ", ".join(p for p in parts if p)


def march_ranges(name: str) -> str:
    """The per-march limits other keys are checked against (from the schema's x-hb-marches)."""
    m = sv.march(name) or {}
    out = []
    for key in ("optimize_level", "core_num", "input_batch", "max_time_per_fc"):
        v = m.get(key)
        if isinstance(v, list) and v:
            out.append(f"- {key}: " + (", ".join(map(str, v)) if key == "optimize_level" else f"{v[0]}–{v[1]}"))
    return "\n".join(out)


def value_doc(path: tuple[str, ...], value: str) -> str | None:
    """What one allowed value means (for a march: its board and limits)."""
    s = sv.at(path)
    meaning = sv.enum_description(s, value)
    if sv.is_march_key(path) and sv.march(value):
        meaning = (meaning or _march_line(value)) + "\n\n" + march_ranges(value)
    return meaning


def value_markdown(path: tuple[str, ...], value: str) -> str | None:
    meaning = value_doc(path, value)
    return f"**`{value}`** ({path[-1]}): {meaning}" if meaning else None


def shape_text(shape: tuple | None) -> str:
    if shape is None:
        return "unknown shape"
    return "x".join("?" if d is None else str(d) for d in shape) if shape else "scalar"


def input_detail(t: TensorInfo) -> str:
    return f"input {shape_text(t.shape)} {t.dtype_name}"


def node_detail(n: NodeInfo, model: ModelInfo) -> str:
    outs = ", ".join(shape_text(model.value_shapes.get(o)) for o in n.outputs)
    return f"{n.op_type} → {outs}" if outs else n.op_type


def node_markdown(n: NodeInfo, model: ModelInfo) -> str:
    out = [f"**{n.name}** · `{n.op_type}`"]
    for word, names in (("input", n.inputs), ("output", n.outputs)):
        for name in names:
            if name:
                out.append(f"- {word} `{name}`: {shape_text(model.value_shapes.get(name))}")
    return "\n".join(out)


def input_markdown(t: TensorInfo) -> str:
    return f"**{t.name}** · model input\n- shape: {shape_text(t.shape)}\n- type: {t.dtype_name}"
