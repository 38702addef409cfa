"""Completion: section keys, each section's keys, values, model names and paths.

- Keys: the mapping's declared keys not already present (deprecated ones last, struck through),
  inserted as `key: ` with a snippet offering the allowed values; a section comes with snippets
  for its required children.
- Values: every enum (one entry per allowed value, with its meaning), true/false for booleans, the
  default otherwise; in a `;` list the item under the cursor is completed, not the whole value.
- From the model: input names, node names (with op type) for the keys the schema marks with
  `x-hb-model-values`, also as keys where the schema takes user-named entries (node_info,
  input_source).
- Paths: files with the key's suffix and folders, relative to the config's folder.
- Flow collections (`node_info: {conv1: {ON: BPU}}`, `input_source: {img: ddr}`): the same keys and
  values, inserted as `key: value` on the line; node_info's string form (`'conv1:int16;conv2:int16'`)
  offers node names, then after `name:` the types.
- Only what the config checks accept there: optimize_level by the march, an input's source by its
  input_type_rt (`schema_view.accepted`).

Works from the lines around the cursor (`hblsp.cursor`), so it answers while the YAML is broken.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from engine.config.schema_check import deprecated_here
from engine.config.yamltree import parse_yaml
from engine.frontend.model_info import ModelInfo
from hblsp import schema_view as sv
from hblsp.cursor import Cursor, cursor_at, indent_of, indent_unit, sibling_keys
from hblsp.documents import ConfigDoc
from hblsp.explain import (
    input_detail,
    key_markdown,
    node_detail,
    type_words,
    value_doc,
)

if TYPE_CHECKING:
    from hblsp.server import HbServer

TRIGGERS = [":", ";", "/", ","]


@dataclass(frozen=True)
class Env:
    snippets: bool = True
    limit: int = 500
    model: ModelInfo | None = None
    edit_range_default: bool = False  # the client takes `itemDefaults.editRange` (smaller answers)


def _escape_choice(value: str) -> str:
    return "".join("\\" + c if c in "$}\\,|" else c for c in value)


def _escape(value: str) -> str:
    return "".join("\\" + c if c in "$}\\" else c for c in value)


Accepted = Callable[..., "set[str] | None"]  # (path, item index=None) → the values the checks accept there, None: all


def _no_limit(path: tuple[str, ...]) -> set[str] | None:
    return None


def _value_snippet(s: dict[str, Any] | None, n: int, allowed: set[str] | None = None) -> str:
    choices = [c for c in sv.value_choices(s) if allowed is None or c.value in allowed]
    if choices:
        return f"${{{n}|{','.join(_escape_choice(c.value) for c in choices)}|}}"
    default = (s or {}).get("default")
    if isinstance(default, (str, int, float)) and not isinstance(default, bool) and str(default) != "":
        return f"${{{n}:{_escape(str(default))}}}"
    return f"${n}"


def _key_insert(path: tuple[str, ...], key: str, indent: int, unit: int, env: Env,
                accepted: Accepted = _no_limit) -> tuple[str, types.InsertTextFormat]:
    """`key: <value>` (or `key:` + its required children) as a snippet when the client takes them."""
    s = sv.at(path + (key,)) or {}
    if not env.snippets:
        return (f"{key}:" if "object" in sv.types_of(s) and "string" not in sv.types_of(s) else f"{key}: ",
                types.InsertTextFormat.PlainText)
    if not path:  # a section: its required keys come along
        pad = " " * (indent + unit)
        lines = [f"{key}:"]
        for i, child in enumerate(sv.required((key,)), start=1):
            lines.append(f"{pad}{child}: {_value_snippet(sv.at((key, child)), i, accepted((key, child)))}")
        if len(lines) == 1:
            lines.append(f"{pad}$0")
        return "\n".join(lines), types.InsertTextFormat.Snippet
    if sv.types_of(s) == ["object"]:
        return f"{key}:\n{' ' * (indent + unit)}$0", types.InsertTextFormat.Snippet
    return f"{key}: {_value_snippet(s, 1, accepted(path + (key,)))}", types.InsertTextFormat.Snippet


def _flow_key_insert(s: dict[str, Any] | None, key: str, env: Env,
                     allowed: set[str] | None = None) -> tuple[str, types.InsertTextFormat]:
    """`key: <value>` inside a flow mapping: a nested mapping opens as `{}` on the same line."""
    if not env.snippets:
        return f"{key}: ", types.InsertTextFormat.PlainText
    if sv.types_of(s or {}) == ["object"]:
        return f"{key}: {{$0}}", types.InsertTextFormat.Snippet
    return f"{key}: {_value_snippet(s, 1, allowed)}", types.InsertTextFormat.Snippet


def _doc(markdown: str) -> types.MarkupContent:
    return types.MarkupContent(kind=types.MarkupKind.Markdown, value=markdown)


def _edit_range(doc: ConfigDoc, line: int, start: int, end: int) -> types.Range:
    p = doc.positions
    return types.Range(start=p.position(line, start), end=p.position(line, end))


def _accepted_in(doc: ConfigDoc, env: Env, line: int) -> Accepted:
    """What the config checks accept at a path, given this document and its model's inputs. The document is
    read again without the typed line only when asked (a key completion in a plain client never asks)."""
    inputs = [t.name for t in env.model.inputs] if env.model is not None else None
    read: list[dict[str, Any] | None] = []

    def accepted(path: tuple[str, ...], item: int | None = None) -> set[str] | None:
        if not read:
            read.append(doc.data if doc.data is not None else _data_without(doc.positions.lines, line))
        return sv.accepted(path, read[0], inputs, item)

    return accepted


def _data_without(lines: list[str], line: int) -> dict[str, Any] | None:
    """The config read without the line being typed (`  optimize` breaks the YAML until its colon):
    what the rest says (the march, the input types) still narrows the values offered."""
    root = parse_yaml("\n".join(lines[:line] + lines[line + 1:])).root
    data = root.to_python() if root is not None and root.kind == "map" else None
    return data if isinstance(data, dict) else None


def key_items(doc: ConfigDoc, cur: Cursor, env: Env) -> tuple[list[types.CompletionItem], bool]:
    lines = doc.positions.lines
    indent = cur.key_start if lines[cur.line].strip() else cur.column
    present = set(cur.siblings) if cur.siblings is not None else \
        sibling_keys(lines, cur.line, indent_of(lines[cur.line]) if lines[cur.line].strip() else indent)
    unit = indent_unit(lines)
    rng = _edit_range(doc, cur.line, cur.key_start, cur.key_end if cur.has_colon else max(cur.key_end, cur.column))
    items: list[types.CompletionItem] = []
    names = sv.key_names(cur.path)
    data = doc.data or {}
    accepted = _accepted_in(doc, env, cur.line)
    for order, key in enumerate(names):
        if key in present and key != cur.key:
            continue
        s = sv.at(cur.path + (key,)) or {}
        deprecated = deprecated_here(s, data)
        if cur.has_colon:
            text, fmt = key, types.InsertTextFormat.PlainText
        elif cur.flow:
            text, fmt = _flow_key_insert(s, key, env, accepted(cur.path + (key,)))
        else:
            text, fmt = _key_insert(cur.path, key, indent, unit, env, accepted)
        items.append(types.CompletionItem(
            label=key,
            kind=types.CompletionItemKind.Module if not cur.path else types.CompletionItemKind.Property,
            detail=type_words(s) if cur.path else "section",
            documentation=_doc(key_markdown(cur.path + (key,), data)),
            tags=[types.CompletionItemTag.Deprecated] if deprecated else None,
            sort_text=f"{1 if deprecated else 0}{order:04d}",
            insert_text_format=fmt,
            text_edit=types.TextEdit(range=rng, new_text=text)))
    entry = sv.entry_schema(cur.path)
    kind = sv.model_values(sv.at(cur.path))
    incomplete = False
    if entry is not None and kind and env.model is not None:
        typed = cur.key.lower()
        for order, (name, detail) in enumerate(_model_names(kind, env.model)):
            if (name in present and name != cur.key) or (typed and typed not in name.lower()):
                continue
            if len(items) >= env.limit:
                incomplete = True  # the client asks again as the user types more of the name
                break
            if cur.has_colon:
                text, fmt = name, types.InsertTextFormat.PlainText
            elif cur.flow:
                text, fmt = _flow_key_insert(entry, name, env, accepted(cur.path + (name,)))
            elif sv.types_of(entry) == ["object"] and env.snippets:
                text, fmt = f"{name}:\n{' ' * (indent + unit)}$0", types.InsertTextFormat.Snippet
            elif env.snippets:
                text, fmt = f"{name}: {_value_snippet(entry, 1, accepted(cur.path + (name,)))}", \
                    types.InsertTextFormat.Snippet
            else:
                text, fmt = f"{name}: ", types.InsertTextFormat.PlainText
            items.append(types.CompletionItem(
                label=name, kind=types.CompletionItemKind.Reference, detail=detail, sort_text=f"2{order:06d}",
                insert_text_format=fmt, text_edit=types.TextEdit(range=rng, new_text=text)))
    return items, incomplete


def _model_names(kind: str, model: ModelInfo) -> list[tuple[str, str]]:
    if kind == "input_name":
        return [(t.name, input_detail(t)) for t in model.inputs]
    if kind == "node_name":
        return [(n.name, node_detail(n, model)) for n in model.nodes]
    if kind == "op_type":
        return [(op, "op type") for op in sorted({n.op_type for n in model.nodes})]
    return []


def _path_entries(base: Path, typed: str, kind: str, suffix: str | None, limit: int) -> list[tuple[str, bool]]:
    head = typed[:typed.rfind("/") + 1]
    folder = Path(os.path.expanduser(head)) if head else Path(".")
    folder = folder if folder.is_absolute() else base / folder
    tail = typed[len(head):]
    out: list[tuple[str, bool]] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".") and not tail.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if is_dir or (kind == "file" and (not suffix or entry.name.lower().endswith(suffix.lower()))):
                    out.append((head + entry.name, is_dir))
                if len(out) >= limit:
                    break
    except OSError:
        return []
    return sorted(out, key=lambda e: (not e[1], e[0]))


def value_items(doc: ConfigDoc, cur: Cursor, env: Env) -> tuple[list[types.CompletionItem], bool]:
    s = sv.at(cur.path)
    if s is None or (cur.sequence and "array" not in sv.types_of(s)):
        return [], False  # a YAML list where the key takes a string is refused whatever its items
    form = sv.string_form(cur.path)
    if form is not None:
        return name_value_items(doc, cur, env, form)
    line = doc.positions.lines[cur.line]
    sep = sv.separator(s)
    item = cur.item(line, sep)
    rng = _edit_range(doc, cur.line, item.start, item.end)
    lead = " " if item.start > 0 and line[item.start - 1] == ":" else ""
    items: list[types.CompletionItem] = []
    incomplete = False

    def add(label: str, kind: types.CompletionItemKind, order: int, detail: str | None = None,
            documentation: str | None = None, text: str | None = None) -> None:
        new = text if text is not None else label
        items.append(types.CompletionItem(
            label=label, kind=kind, detail=detail, sort_text=f"{order:06d}", filter_text=new if new != label else None,
            documentation=_doc(documentation) if documentation else None,
            text_edit=types.TextEdit(range=rng, new_text=lead + new)))

    allowed = _accepted_in(doc, env, cur.line)(cur.path, item.index)
    for order, choice in enumerate(c for c in sv.value_choices(s) if allowed is None or c.value in allowed):
        add(choice.value, types.CompletionItemKind.EnumMember, order, documentation=value_doc(cur.path, choice.value))
    kind = sv.model_values(s)
    if kind and env.model is not None:
        used = {p.strip() for p in line[cur.value_start:cur.value_end].split(sep)} if sep else set()
        typed = item.text.lower()
        names = _model_names(kind, env.model)
        names.sort(key=lambda nd: nd[0] in used)  # names not yet in the list first
        for order, (name, detail) in enumerate(names):
            if typed and typed not in name.lower():
                continue
            if len(items) >= env.limit:
                incomplete = True
                break
            add(name, types.CompletionItemKind.Reference if kind == "node_name" else types.CompletionItemKind.Variable,
                1000 + order, detail=detail)
    path_kind = s.get("x-hb-path")
    if path_kind and isinstance(item.text, str):
        for order, (path, is_dir) in enumerate(_path_entries(doc.base_dir, item.text, path_kind, s.get("x-hb-suffix"),
                                                             env.limit)):
            label = path.rstrip("/").rsplit("/", 1)[-1] + ("/" if is_dir else "")
            text = path + "/" if is_dir and path_kind == "file" else path
            add(label, types.CompletionItemKind.Folder if is_dir else types.CompletionItemKind.File, 2000 + order,
                text=text)
    default = s.get("default")
    if not items and default not in (None, "", {}, []) and not isinstance(default, (dict, list)):
        text = str(default).lower() if isinstance(default, bool) else str(default)
        add(text, types.CompletionItemKind.Value, 0, detail="default")
    return items, incomplete


def name_value_items(doc: ConfigDoc, cur: Cursor, env: Env, form: tuple[str, dict[str, Any]]
                     ) -> tuple[list[types.CompletionItem], bool]:
    """A `'name:value;name:value'` string (node_info): node names before the item's colon, then the
    values of the entry field that form sets (OutputType: int8, int16)."""
    entry_field, field_schema = form
    line = doc.positions.lines[cur.line]
    item = cur.item(line, ";")
    colon = line.rfind(":", item.start, max(cur.column, item.start))
    items: list[types.CompletionItem] = []
    if colon != -1:  # after `name:`: the types
        start = colon + 1
        while start < cur.column and line[start] in " \t":
            start += 1
        rng = _edit_range(doc, cur.line, start, max(item.end, start))
        name = line[item.start:colon].strip()
        for order, choice in enumerate(sv.value_choices(field_schema)):
            items.append(types.CompletionItem(
                label=choice.value, kind=types.CompletionItemKind.EnumMember, detail=entry_field,
                documentation=_doc(d) if (d := value_doc(cur.path + (name or "_", entry_field), choice.value)) else None,
                sort_text=f"{order:06d}", text_edit=types.TextEdit(range=rng, new_text=choice.value)))
        return items, False
    if env.model is None:
        return items, False
    after = line.find(":", item.start, item.end)
    end = after if after != -1 else item.end
    rng = _edit_range(doc, cur.line, item.start, max(end, item.start))
    lead = " " if item.start > 0 and line[item.start - 1] == ":" else ""
    typed = line[item.start:cur.column].strip().lower()
    used = {part.rpartition(":")[0].strip() for part in line[cur.value_start:cur.value_end].split(";")}
    names = sorted(_model_names("node_name", env.model), key=lambda nd: nd[0] in used)
    for order, (name, detail) in enumerate(names):
        if typed and typed not in name.lower():
            continue
        if len(items) >= env.limit:
            return items, True
        text = lead + name + ("" if after != -1 else ":")
        items.append(types.CompletionItem(
            label=name, kind=types.CompletionItemKind.Reference, detail=detail, sort_text=f"{1000 + order:06d}",
            filter_text=name if text != name else None, text_edit=types.TextEdit(range=rng, new_text=text)))
    return items, False


def complete_at(doc: ConfigDoc, pos: types.Position, env: Env) -> types.CompletionList | None:
    """Pure core: completion items at a client position (None outside config context)."""
    if not doc.is_config:
        return None
    cur = cursor_at(doc.positions.lines, pos.line, doc.positions.column(pos))
    if cur is None:
        return None
    if cur.in_value:
        items, incomplete = value_items(doc, cur, env)
    else:
        items, incomplete = key_items(doc, cur, env)
    result = types.CompletionList(is_incomplete=incomplete, items=items)
    return shared_range(result) if env.edit_range_default else result


def shared_range(result: types.CompletionList) -> types.CompletionList:
    """Send the one edit range once (`itemDefaults.editRange`) instead of in every item."""
    edits = [i.text_edit for i in result.items]
    if not edits or not all(isinstance(e, types.TextEdit) and e.range == edits[0].range for e in edits):
        return result
    for item in result.items:
        item.text_edit_text, item.text_edit = item.text_edit.new_text, None
    result.item_defaults = types.CompletionItemDefaults(edit_range=edits[0].range)
    return result


def _client_env(ls: HbServer) -> tuple[bool, bool]:
    """(snippets, itemDefaults.editRange) as the client declared them."""
    caps = ls.client_capabilities.text_document
    completion = caps.completion if caps else None
    item = completion.completion_item if completion else None
    defaults = completion.completion_list.item_defaults if completion and completion.completion_list else None
    return bool(item and item.snippet_support), bool(defaults and "editRange" in defaults)


def register(ls: HbServer) -> None:
    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=TRIGGERS))
    def on_completion(ls: HbServer, params: types.CompletionParams) -> types.CompletionList | None:
        doc = ls.documents.get(params.text_document.uri)
        if doc is None:
            return None
        snippets, edit_range_default = _client_env(ls)
        env = Env(snippets, ls.settings.completion_limit, ls.model_info(doc.uri), edit_range_default)
        return complete_at(doc, params.position, env)
